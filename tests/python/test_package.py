"""The ctypes package itself: errors that are RuntimeErrors, where the library
comes from, close() against calls in flight, and the GPU module on a
machine without a GPU (conftest.py's pool)."""

import ctypes as C
import os
import pathlib
import threading
import time
import weakref

import pytest

import kvpool
import kvpool.gpu
from conftest import BLOCK, namespace_args, scaled

BUILTIN = {
    kvpool.InvalidArgument: ValueError,
    kvpool.NotFound: LookupError,
    kvpool.Unavailable: ConnectionError,
    kvpool.DeadlineExceeded: TimeoutError,
    kvpool.Unimplemented: NotImplementedError,
    kvpool.PermissionDenied: PermissionError,
}


def test_every_error_is_a_runtime_error_and_keeps_its_builtin():
    classes = set(kvpool.errors._BY_CODE.values())
    assert len(classes) == 12
    for cls in classes:
        e = kvpool.errors.from_status(cls.code, "why")
        assert type(e) is cls and isinstance(e, kvpool.Error) and isinstance(e, RuntimeError), cls
        assert (e.code, e.message, str(e)) == (cls.code, "why", f"{cls.code}: why")
        if cls in BUILTIN:
            assert isinstance(e, BUILTIN[cls]), cls
    unknown = kvpool.errors.from_status("brand_new_code", "m")
    assert type(unknown) is kvpool.Error and isinstance(unknown, RuntimeError) and unknown.code == "brand_new_code"


def test_refusals_from_the_pool_and_from_argument_checks_are_runtime_errors(client, ns):
    keys = kvpool.prefix_keys(range(32), ns, 16)
    with pytest.raises(RuntimeError) as e:
        client.lookup(ns + 1, keys)  # refused by the coordinator
    assert isinstance(e.value, kvpool.NotFound)
    with pytest.raises(RuntimeError) as e:
        client.put(ns, keys, bytearray(BLOCK))  # one block for two keys
    assert isinstance(e.value, kvpool.InvalidArgument)
    with pytest.raises(RuntimeError):
        kvpool.set_log_level("loud")
    with pytest.raises(RuntimeError):
        kvpool.namespace_id(**dict(namespace_args("m"), num_layers=-1))  # ctypes would wrap it silently
    with pytest.raises(RuntimeError):
        kvpool.engine_keys(1 << 64, "k")


def test_the_library_the_package_picks_is_the_one_loaded():
    # $KVPOOL_C_LIB first, else the package's own copy (ctest empties the variable).
    path = pathlib.Path(kvpool.library_path())
    package = pathlib.Path(kvpool.__file__).resolve().parent
    expected = os.environ.get("KVPOOL_C_LIB") or package / "_native" / "libkvpool_c.so.1"
    assert path.resolve() == pathlib.Path(expected).resolve()
    assert kvpool.__version__.count(".") == 2


def test_ucx_module_dir_points_at_bundled_modules_unless_the_user_set_it(tmp_path, monkeypatch):
    from kvpool import _capi
    monkeypatch.setattr(_capi, "NATIVE_DIR", tmp_path)
    monkeypatch.delenv("UCX_MODULE_DIR", raising=False)
    _capi._point_ucx_at_bundled_modules()
    assert "UCX_MODULE_DIR" not in os.environ  # no bundled modules (the build tree): left alone
    (tmp_path / "ucx").mkdir()
    _capi._point_ucx_at_bundled_modules()
    assert os.environ["UCX_MODULE_DIR"] == str(tmp_path / "ucx")  # the wheel's modules
    monkeypatch.setenv("UCX_MODULE_DIR", "/opt/my-ucx/lib/ucx")
    _capi._point_ucx_at_bundled_modules()
    assert os.environ["UCX_MODULE_DIR"] == "/opt/my-ucx/lib/ucx"  # the user's choice wins


def test_read_only_and_strided_buffers(client, ns):
    keys = kvpool.prefix_keys(range(1000, 1016), ns, 16)
    data = bytes(range(256)) * (BLOCK // 256)
    assert client.put(ns, keys, data).written == 1  # bytes: read-only is fine to put from
    with pytest.raises(kvpool.InvalidArgument) as e:
        client.get(ns, keys, data)  # but not to load into
    assert "writable" in e.value.message
    wide = bytearray(2 * BLOCK)
    with pytest.raises(kvpool.InvalidArgument) as e:
        client.get(ns, keys, [memoryview(wide)[::2]])  # not contiguous
    assert "contiguous" in e.value.message
    out = bytearray(BLOCK)
    assert client.get(ns, keys, out) == 1 and bytes(out) == data


def test_close_waits_for_a_call_running_in_another_thread(private_pool):
    c = kvpool.Client(private_pool.coordinator, timeout_s=scaled(10))
    ns = c.register_namespace(**namespace_args("close-waits"))
    keys = kvpool.prefix_keys(range(64), ns, 16)
    blocks = bytearray(os.urandom(4 * BLOCK))
    c.put(ns, keys, blocks)
    out = bytearray(4 * BLOCK)
    loaded = []
    private_pool.pause()
    try:
        getter = threading.Thread(target=lambda: loaded.append(c.get(ns, keys, out)))
        getter.start()
        time.sleep(0.2)  # the get is inside the C library, waiting on the paused pool
        closer = threading.Thread(target=c.close)
        closer.start()
        closer.join(0.3)
        assert closer.is_alive(), "close() returned while a get was still running on the client"
    finally:
        private_pool.resume()
    getter.join(scaled(10))
    closer.join(scaled(10))
    assert loaded == [4] and out == blocks
    assert c.closed
    with pytest.raises(kvpool.FailedPrecondition):
        c.lookup(ns, keys)


def test_a_future_still_running_raises_a_deadline_that_is_a_runtime_error(private_pool):
    with kvpool.Client(private_pool.coordinator, timeout_s=scaled(10)) as c:
        ns = c.register_namespace(**namespace_args("future-timeout"))
        keys = kvpool.prefix_keys(range(16), ns, 16)
        c.put(ns, keys, bytearray(BLOCK))
        private_pool.pause()
        try:
            f = c.get_async(ns, keys, bytearray(BLOCK))
            with pytest.raises(kvpool.DeadlineExceeded) as e:
                f.wait(timeout_s=0.05)
            assert isinstance(e.value, RuntimeError) and "still in progress" in e.value.message
            assert not f.done()
        finally:
            private_pool.resume()
        assert f.wait(timeout_s=scaled(10)) == 1


LLAMA_8B_PAGED = dict(num_layers=32, num_kv_heads=8, head_dim=128, tokens_per_block=16, num_pages=4)


def test_gpu_layouts_give_block_sizes_and_namespaces(client):
    layout = kvpool.gpu.KvLayout("vllm-paged", **LLAMA_8B_PAGED)
    assert layout.block_bytes == 2 << 20  # 16 tokens of Llama-3-8B in bf16 (DESIGN.md)
    args = layout.namespace("gpu-layout-test", tp_rank=1, tp_size=2)
    assert args["layout"] == "vllm-paged" and args["block_bytes"] == 2 << 20
    ns = client.register_namespace(**args)
    assert client.block_bytes(ns) == 2 << 20
    hf = kvpool.gpu.KvLayout("hf-contiguous", num_layers=2, num_kv_heads=8, head_dim=128, max_seq=64, dtype="fp16")
    assert hf.block_bytes == 2 * 2 * 8 * 128 * 16 * 2
    with pytest.raises(kvpool.InvalidArgument):
        kvpool.gpu.KvLayout("vllm-paged", **dict(LLAMA_8B_PAGED, head_dim=0))
    with pytest.raises(kvpool.InvalidArgument) as e:
        kvpool.gpu.KvLayout("flash-mla", **LLAMA_8B_PAGED)
    assert "vllm-paged" in e.value.message


@pytest.mark.skipif(kvpool.gpu.gpu_available(), reason="a GPU is usable here: bench/gpu covers the GPU path")
def test_a_mover_without_a_gpu_is_refused_clearly(client):
    layout = kvpool.gpu.KvLayout("vllm-paged", **LLAMA_8B_PAGED)
    ns = client.register_namespace(**layout.namespace("gpu-mover-test"))
    fake = [0x1000 * (i + 1) for i in range(32)]  # never touched: refused before
    with pytest.raises((kvpool.FailedPrecondition, kvpool.Unimplemented)) as e:
        kvpool.gpu.KvMover(client, ns, layout, fake)
    assert isinstance(e.value, RuntimeError) and "gpu" in str(e.value)
    other = client.register_namespace(**namespace_args("gpu-mover-small"))
    with pytest.raises(kvpool.InvalidArgument):  # the namespace's block size is not the layout's
        kvpool.gpu.KvMover(client, other, layout, fake)
    with pytest.raises(kvpool.InvalidArgument):
        kvpool.gpu.KvMover(client, ns, layout, fake[:31])
    with pytest.raises(kvpool.InvalidArgument):
        kvpool.gpu.KvMover(client, ns, layout, fake, path="sideways")


def test_the_layer_wise_c_calls_refuse_null_handles():
    # Without a GPU no mover (so no transfer or save) exists to call them on;
    # what they do with NULL is what a caller's mistake gets. Needs a
    # libkvpool_c.so with the layer-wise calls (else the import fails).
    from kvpool import _capi
    lib, invalid = _capi.lib, _capi.INVALID_ARGUMENT
    t, s, found = C.c_void_p(), C.c_void_p(), C.c_size_t(7)
    assert lib.kvpool_gpu_load_layers(None, None, None, 0, None, C.byref(t), C.byref(found)) == invalid
    assert not t.value
    assert lib.kvpool_gpu_transfer_layers(None) == 0
    assert lib.kvpool_gpu_transfer_found(None) == 0
    assert lib.kvpool_gpu_transfer_layer_event(None, 0) is None
    assert lib.kvpool_gpu_transfer_wait_layer(None, 0, None) == invalid
    assert lib.kvpool_gpu_begin_save_layers(None, None, None, 0, C.byref(s)) == invalid
    assert not s.value
    assert lib.kvpool_gpu_save_layer(None, 0, None) == invalid
    assert lib.kvpool_gpu_save_finish(None, None) == invalid
    lib.kvpool_gpu_save_destroy(None)  # a no-op


def test_the_layer_wise_python_calls_check_their_arguments_before_the_library():
    mover = object.__new__(kvpool.gpu.KvMover)  # a closed mover: no GPU here to make one
    mover._handle, mover._transfers = None, weakref.WeakSet()
    keys = kvpool.prefix_keys(range(32), 1, 16)
    with pytest.raises(kvpool.InvalidArgument, match="2 keys and 1 pages"):
        mover.load_layers(keys, [0])
    with pytest.raises(kvpool.InvalidArgument, match="pages"):
        mover.begin_save_layers(keys, [0, -1])
    for call in (mover.load_layers, mover.begin_save_layers):
        with pytest.raises(kvpool.InvalidArgument, match="the mover is closed"):
            call(keys, [0, 1])
    transfer = object.__new__(kvpool.gpu.LayerTransfer)
    transfer._handle, transfer._outcome, transfer.layers = None, None, 4
    with pytest.raises(kvpool.InvalidArgument, match="layer 4 of a transfer of 4 layers"):
        transfer.wait_layer(4)
    with pytest.raises(kvpool.InvalidArgument, match="layer"):
        transfer.layer_event(-1)
    with pytest.raises(TypeError):
        transfer.wait_layer(1.0)
    for call in (lambda: transfer.wait_layer(3, 0x1234), lambda: transfer.layer_event(0), transfer.wait):
        with pytest.raises(kvpool.InvalidArgument, match="the transfer is closed"):
            call()
    save = object.__new__(kvpool.gpu.LayerSave)
    save._handle, save._outcome, save.layers = None, None, 4
    for call in (lambda: save.save_layer(0), save.finish):
        with pytest.raises(kvpool.InvalidArgument, match="the layer-wise save is closed"):
            call()
    save.close()  # closing twice is fine
    with save:
        pass
