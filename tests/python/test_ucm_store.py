"""The UCM store adapter against a real pool, driven the way UCM's connectors
use a UcmKVStoreBaseV1 store (see the adapter's docstring for the UCM commit):
the factory imports the class by module path (a UcmKVStoreBaseV1) and builds
it from a config dict; the worker dumps rows of tensors per block and waits
on the task; the scheduler asks lookup_on_prefix (index of the last hit);
the worker loads the hit blocks and waits, or polls with check."""

import copy
import gc
import hashlib
import importlib
import json
import pathlib
import re
import sys
import time
import types
import weakref

import numpy as np
import pytest

import kvpool
from conftest import scaled
from engines import abc_stub
from engines import ucm_manifest as M
from kvpool.integrations.ucm_store import KvpoolUcmStore

README = pathlib.Path(__file__).resolve().parents[2] / "python" / "README.md"

TENSOR = 32 << 10  # bytes of one tensor of a row
COLUMNS = 4  # tensors per block row (e.g. K and V of two layers): 128 KiB blocks


SPARSE = {"on": False}


@pytest.fixture
def fake_ucm():
    """ucm.store.ucmstore_v1 with UcmKVStoreBaseV1 built from engines/ucm_manifest.py."""
    base = abc_stub.build_abc(M.BASE_CLASS, M.METHODS,
                              {"__init__": lambda self, config: setattr(self, "config", config)})
    SPARSE["on"] = False
    abc_stub.install_modules({M.BASE_MODULE: {"UcmKVStoreBaseV1": base},
                              "ucm.sparse.state": {"has_ucm_sparse": lambda: SPARSE["on"]}})
    yield importlib.import_module(M.BASE_MODULE)
    abc_stub.uninstall({"ucm"})


def readme_ucm_config(marker="<!-- ucm-command -->"):
    """kv_connector_extra_config of python/README.md's UCM command (the one
    after `marker`)."""
    block = README.read_text().split(marker, 1)[1].split("```", 2)[1]
    m = re.search(r"--kv-transfer-config '([^']*)'", block)
    assert m, "python/README.md's UCM command has no --kv-transfer-config '...'"
    return json.loads(m.group(1))["kv_connector_extra_config"]


def create_like_ucm(pool, role, extra=None, marker="<!-- ucm-command -->", **role_keys):
    """UCMDirectConnector._create_store then UcmConnectorFactoryV1.create_connector."""
    connector = readme_ucm_config(marker)["ucm_connectors"][0]
    config = copy.deepcopy(connector["ucm_connector_config"])
    config.update(kvpool_coordinator=pool.coordinator, kvpool_secret_file=None, **(extra or {}))
    config.setdefault("share_buffer_enable", False)
    config["unique_id"] = "engine-0"
    config.update(role_keys)
    config["posix_gc_enable"] = role == "scheduler"
    module = importlib.import_module(connector["ucm_connector_module_path"])
    cls = getattr(module, connector["ucm_connector_name"])
    assert issubclass(cls, sys.modules[M.BASE_MODULE].UcmKVStoreBaseV1)
    return cls(config)


@pytest.fixture
def store(pool, fake_ucm, request):
    s = create_like_ucm(pool, "worker", {"model": request.node.name, "kvpool_staging_blocks": 4}, device_id=-1,
                        shard_size=COLUMNS * TENSOR, block_size=COLUMNS * TENSOR)
    yield s
    s.close()


def block_ids(n, tag=b""):
    return [hashlib.sha256(tag + i.to_bytes(4, "little")).digest() for i in range(n)]


def rows(n, seed=None):
    rng = np.random.default_rng(seed)
    if seed is None:
        return [[np.zeros(TENSOR, np.uint8) for _ in range(COLUMNS)] for _ in range(n)]
    return [[rng.integers(0, 256, TENSOR, dtype=np.uint8) for _ in range(COLUMNS)] for _ in range(n)]


def assert_rows_equal(got, want):
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            np.testing.assert_array_equal(g, w)


def test_dump_lookup_load_round_trip(store):
    ids = block_ids(6)  # more blocks than staging slots: moved in turns
    src = rows(6, seed=1)
    task = store.dump(ids, [0] * 6, src)
    assert store.wait(task) is None and store.check(task)
    store.commit(ids)
    assert store.lookup_on_prefix(ids) == 5
    assert store.lookup(ids) == [True] * 6
    dst = rows(6)
    task = store.load(ids, [0] * 6, dst)
    while not store.check(task):
        time.sleep(0.001)
    store.wait(task)
    assert_rows_equal(dst, src)
    store.prefetch(ids)  # nothing to do, but callable


def test_a_gap_stops_lookup_on_prefix_and_load(store, client):
    ids = block_ids(5, b"gap")
    src = rows(5, seed=2)
    store.wait(store.dump(ids, [0] * 5, src))
    assert client.remove(store.namespace, store._keys([ids[2]], [0])[0])
    assert store.lookup_on_prefix(ids) == 1
    assert store.lookup(ids) == [True, True, False, True, True]
    assert store.lookup_on_prefix(block_ids(2, b"none")) == -1
    assert store.lookup_on_prefix([]) == -1 and store.lookup([]) == []
    dst = rows(5)
    task = store.load(ids, [0] * 5, dst)
    with pytest.raises(kvpool.NotFound):
        store.wait(task)
    assert store.check(task)
    assert_rows_equal(dst[:2], src[:2])  # the blocks before the gap arrived


def test_shards_are_separate_blocks_and_raw_addresses_work(store):
    ids = block_ids(2, b"shard")
    shard1 = rows(2, seed=3)
    addrs = [[t.__array_interface__["data"][0] for t in row] for row in shard1]
    store.wait(store.dump_data(ids, [1, 1], addrs))
    assert store.lookup_on_prefix(ids) == -1  # lookups look at shard 0
    dst = rows(2)
    store.wait(store.load_data(ids, [1, 1], np.array([[t.__array_interface__["data"][0] for t in r] for r in dst],
                                                      dtype=np.uint64)))
    assert_rows_equal(dst, shard1)


def test_error_paths(store):
    ids = block_ids(2, b"err")
    with pytest.raises(kvpool.InvalidArgument):  # rows that do not fill a block
        store.dump(ids, [0, 0], [[np.zeros(TENSOR, np.uint8)]] * 2)
    with pytest.raises(kvpool.InvalidArgument):  # lengths disagree
        store.dump(ids, [0], rows(2, seed=4))

    class CudaTensor:
        device = types.SimpleNamespace(type="cuda", index=0)

        def __init__(self, size=TENSOR):
            self.size = size

        def data_ptr(self):
            return 1 << 40

        def numel(self):
            return self.size

        def element_size(self):
            return 1

    # Device tensors of unequal sizes: the GPU path moves equal parts only.
    task = store.load(ids[:1], [0], [[CudaTensor(TENSOR // 2), CudaTensor(TENSOR * 3 // 2)] +
                                     [CudaTensor()] * (COLUMNS - 2)])
    with pytest.raises(kvpool.InvalidArgument, match="equal parts"):
        store.wait(task)
    if not kvpool.gpu.gpu_available():  # device memory with no GPU here: a failed task, nothing touched
        task = store.load(ids[:1], [0], [[CudaTensor()] * COLUMNS])
        assert store.check(task)
        with pytest.raises(RuntimeError, match="gpu"):
            store.wait(task)

    class StridedTensor:  # a CPU tensor view with gaps: its bytes are not [ptr, ptr + size)
        device = types.SimpleNamespace(type="cpu")

        def data_ptr(self):
            return 1 << 40

        def is_contiguous(self):
            return False

    with pytest.raises(kvpool.InvalidArgument):
        store.dump(ids[:1], [0], [[StridedTensor()] * COLUMNS])
    with pytest.raises(kvpool.InvalidArgument):
        store.dump(ids[:1], [0], [[np.zeros((TENSOR, 2), np.uint8)[:, 0]] * COLUMNS])  # numpy, strided
    assert store.cc_store() == 0  # no native Store*
    with pytest.raises(kvpool.InvalidArgument):
        KvpoolUcmStore({"kvpool_coordinator": store.client.coordinator})  # no block size


def test_load_returns_a_task_at_once_and_check_polls_it(private_pool, fake_ucm, request):
    s = KvpoolUcmStore({"kvpool_coordinator": private_pool.coordinator, "block_size": COLUMNS * TENSOR,
                        "model": request.node.name})
    ids = block_ids(2, b"async")
    src = rows(2, seed=6)
    s.wait(s.dump(ids, [0, 0], src))
    dst = rows(2)
    private_pool.pause()
    try:
        start = time.monotonic()
        task = s.load(ids, [0, 0], dst)
        assert time.monotonic() - start < scaled(0.2)  # the load runs on the store's threads
        time.sleep(0.3)
        assert not s.check(task)  # the pool is paused: still in flight
    finally:
        private_pool.resume()
    s.wait(task)
    assert s.check(task)
    assert_rows_equal(dst, src)

    # The task holds the caller's tensors until it is done: dropping them
    # while it waits on the pool frees nothing it writes to.
    private_pool.pause()
    try:
        task = s.load(ids, [0, 0], rows(2))
        ref = weakref.ref(task._keepalive[0][0])
        gc.collect()
        assert ref() is not None
    finally:
        private_pool.resume()
    s.wait(task)
    gc.collect()
    assert ref() is None
    s.close()


def test_scheduler_and_worker_derive_one_namespace_and_the_worker_call_sequence(pool, fake_ucm, request):
    """ucm_connector.py's UCMDirectConnector: the scheduler's store (block_size
    from the model config) answers lookup_on_prefix for what the worker's
    store (shard_size and block_size from its KV tensors) dumped with
    dump_data and loads with load_data, shard index 0, rows of addresses."""
    size = COLUMNS * TENSOR
    extra = {"model": request.node.name}
    worker = create_like_ucm(pool, "worker", extra, device_id=-1, tensor_size_list=[TENSOR] * COLUMNS,
                             shard_size=size, block_size=size, local_rank_size=1)
    scheduler = create_like_ucm(pool, "scheduler", extra, block_size=size)
    assert worker.namespace == scheduler.namespace
    ids = block_ids(3, b"seq")
    src = rows(3, seed=11)
    addrs = np.array([[t.__array_interface__["data"][0] for t in row] for row in src], dtype=np.uint64)
    worker.wait(worker.dump_data(ids, [0] * 3, addrs, 0))  # wait_for_save
    assert scheduler.lookup_on_prefix(ids) + 1 == 3  # get_num_new_matched_tokens
    dst = rows(3)
    daddrs = np.array([[t.__array_interface__["data"][0] for t in row] for row in dst], dtype=np.uint64)
    worker.wait(worker.load_data(ids, [0] * 3, daddrs))  # start_load_kv
    assert_rows_equal(dst, src)
    worker.close()
    scheduler.close()


def test_a_worker_whose_shards_differ_from_the_block_is_refused_naming_the_key(pool, fake_ucm, request):
    """UCMLayerWiseConnector's worker: shard_size is one layer's bytes (of 4
    here), block_size the whole block's (KVCacheLayout.shard_size and
    block_size with use_layerwise). Without kvpool_layers, or with a wrong
    one, the message names the value to set; shards that do not divide the
    block name kvpool_block_bytes (each shard its own block)."""
    with pytest.raises(RuntimeError, match='"kvpool_layers": 4'):
        create_like_ucm(pool, "worker", {"model": request.node.name}, device_id=-1, shard_size=TENSOR,
                        block_size=COLUMNS * TENSOR)
    with pytest.raises(RuntimeError, match='"kvpool_layers": 4 .*not 2'):
        create_like_ucm(pool, "worker", {"model": request.node.name, "kvpool_layers": 2}, device_id=-1,
                        shard_size=TENSOR, block_size=COLUMNS * TENSOR)
    with pytest.raises(RuntimeError, match="kvpool_block_bytes"):
        create_like_ucm(pool, "worker", {"model": request.node.name}, device_id=-1, shard_size=TENSOR * 3,
                        block_size=COLUMNS * TENSOR)
    s = create_like_ucm(pool, "worker", {"model": request.node.name, "kvpool_block_bytes": TENSOR * 2}, device_id=-1,
                        shard_size=TENSOR * 2, block_size=COLUMNS * TENSOR)
    assert s.block_bytes == TENSOR * 2 and not s.layerwise
    s.close()


def test_the_documented_layer_wise_command_builds_a_layer_wise_worker(pool, fake_ucm, request):
    """python/README.md's layer-wise command: UCMConnector picks
    UCMLayerWiseConnector on use_layerwise (ucm_connector.py,
    UCMConnector.__init__), whose worker gets shard_size = one layer; the
    documented kvpool_layers makes that a layer-wise store in the
    scheduler's namespace."""
    marker = "<!-- ucm-layerwise-command -->"
    assert readme_ucm_config(marker)["use_layerwise"] is True
    layers = readme_ucm_config(marker)["ucm_connectors"][0]["ucm_connector_config"]["kvpool_layers"]
    layer = 2 * 16 * 8 * 128 * 2  # K and V of 16 tokens, 8 heads of 128, bf16
    extra = {"model": request.node.name}
    worker = create_like_ucm(pool, "worker", extra, marker, device_id=0, tensor_size_list=[layer // 2] * 2,
                             shard_size=layer, block_size=layer * layers)
    scheduler = create_like_ucm(pool, "scheduler", extra, marker, block_size=layer * layers)
    assert worker.layerwise and worker.layers == layers
    assert worker.namespace == scheduler.namespace
    worker.close()
    scheduler.close()


def test_layer_wise_worker_shares_the_scheduler_namespace_and_refuses_what_it_cannot_commit(pool, fake_ucm, request):
    """UCMLayerWiseConnector (ucm_connector.py at the adapter's commit):
    the scheduler's store gets only block_size, the worker's shard_size = a
    layer; with kvpool_layers in the shared config both register one
    namespace (a checksum per layer slice), and a layer-wise dump stores
    slices of the whole block (shard 0), so the scheduler's lookup sees it.
    A dump that starts past layer 0 (a pipeline stage's) fails its task
    with a message saying why; host memory is refused (device only)."""
    extra = {"model": request.node.name, "kvpool_layers": COLUMNS}
    worker = create_like_ucm(pool, "worker", extra, device_id=0, tensor_size_list=[TENSOR // 2] * 2,
                             shard_size=TENSOR, block_size=COLUMNS * TENSOR)
    scheduler = create_like_ucm(pool, "scheduler", extra, block_size=COLUMNS * TENSOR)
    assert worker.layerwise and not scheduler.layerwise
    assert worker.namespace == scheduler.namespace
    ids = block_ids(2, b"lw")
    ptrs = np.full((2, 2), 1 << 44, dtype=np.uint64)  # a layer's K and V per block; never dereferenced
    task = worker.dump_data(ids, [2, 2], ptrs, 0)  # layer 2 with no layer 0 before it
    with pytest.raises(RuntimeError, match="pipeline parallelism"):
        worker.wait(task)
    task = worker.load_data(ids, [0, 1], ptrs)  # one layer per call
    with pytest.raises(RuntimeError, match="one layer"):
        worker.wait(task)
    task = worker.load_data(ids, [4, 4], ptrs)
    with pytest.raises(RuntimeError, match="4 layers"):
        worker.wait(task)
    if not kvpool.gpu.gpu_available():  # on a GPU, tests/python/gpu/test_ucm_gpu.py moves real layers
        for task in (worker.dump_data(ids, [0, 0], ptrs, 0), worker.load_data(ids, [0, 0], ptrs)):
            with pytest.raises(RuntimeError, match="gpu: "):
                worker.wait(task)
    assert scheduler.lookup_on_prefix(ids) == -1  # nothing was committed
    host = create_like_ucm(pool, "worker", extra, device_id=-1, shard_size=TENSOR, block_size=COLUMNS * TENSOR)
    with pytest.raises(RuntimeError, match="device memory only"):
        host.dump_data(ids, [0, 0], np.zeros((2, 2), dtype=np.uint64))
    for s in (worker, scheduler, host):
        s.close()


def test_device_pointers_without_a_gpu_fail_the_task_with_a_runtime_error(pool, fake_ucm, request):
    """Under vLLM UCM's worker store has device_id >= 0 and passes device
    pointers (and an event to dump_data): they go to the GPU path
    (tests/python/gpu/test_ucm_gpu.py); with no usable GPU the task fails
    with a RuntimeError saying why (UCM recomputes), never a host memmove."""
    if kvpool.gpu.gpu_available():
        pytest.skip("a GPU is usable here: tests/python/gpu/test_ucm_gpu.py covers device pointers")
    s = create_like_ucm(pool, "worker", {"model": request.node.name}, device_id=0, shard_size=COLUMNS * TENSOR,
                        block_size=COLUMNS * TENSOR)
    ids = block_ids(2, b"dev")
    fake_device_ptrs = np.full((2, COLUMNS), 1 << 44, dtype=np.uint64)  # never dereferenced
    for task in (s.load_data(ids, [0, 0], fake_device_ptrs), s.dump_data(ids, [0, 0], fake_device_ptrs, 1234)):
        assert s.check(task)
        with pytest.raises(RuntimeError, match="gpu: "):
            s.wait(task)
    assert s.lookup_on_prefix(ids) == -1  # nothing was written
    s.close()


def test_device_rows_of_unequal_tensors_are_refused(pool, fake_ucm, request):
    """UCM's worker config lists each row's tensor sizes (tensor_size_list);
    the GPU path moves equal parts only, so unequal ones fail the task with a
    RuntimeError naming the key (no GPU needed: refused before any copy)."""
    s = create_like_ucm(pool, "worker", {"model": request.node.name}, device_id=0, shard_size=COLUMNS * TENSOR,
                        block_size=COLUMNS * TENSOR, tensor_size_list=[TENSOR // 2, TENSOR * 3 // 2] +
                        [TENSOR] * (COLUMNS - 2))
    task = s.load_data(block_ids(1, b"uneq"), [0], np.full((1, COLUMNS), 1 << 44, dtype=np.uint64))
    with pytest.raises(RuntimeError, match="tensor_size_list"):
        s.wait(task)
    s.close()


def test_sparse_mode_is_refused(pool, fake_ucm, request):
    SPARSE["on"] = True
    with pytest.raises(RuntimeError, match="sparse"):
        create_like_ucm(pool, "scheduler", {"model": request.node.name}, block_size=COLUMNS * TENSOR)
    SPARSE["on"] = False
    s = create_like_ucm(pool, "scheduler", {"model": request.node.name}, block_size=COLUMNS * TENSOR)
    SPARSE["on"] = True  # sparse mode started after the store was made
    with pytest.raises(RuntimeError, match="sparse"):
        s.cc_store()
    SPARSE["on"] = False
    s.close()


def test_a_missing_abstract_method_fails_at_construction(pool, fake_ucm, request, monkeypatch):
    monkeypatch.delattr(KvpoolUcmStore, "cc_store")
    with pytest.raises(TypeError, match="abstract"):
        create_like_ucm(pool, "scheduler", {"model": request.node.name}, block_size=COLUMNS * TENSOR)


def test_row_tables_read_arrays_in_place_and_convert_lists_alike():
    """kvpool.gpu.RowMover._rows (no GPU needed: the table a call passes to C):
    UCM's (blocks, units) uint64 array is read in place, a list of rows is
    converted, both give the same addresses; a wrong width or count is
    refused."""
    import ctypes
    mover = object.__new__(kvpool.gpu.RowMover)
    mover.units = 4
    keys = [i + 1 for i in range(3)]
    arr = (np.arange(12, dtype=np.uint64) + 1) << np.uint64(12)
    arr = arr.reshape(3, 4)
    _, table, n, keep = mover._rows(keys, arr)
    assert n == 12 and keep is arr
    assert ctypes.cast(table, ctypes.c_void_p).value == arr.__array_interface__["data"][0]
    _, table2, n2, _ = mover._rows(keys, arr.tolist())
    assert n2 == 12 and list(table2) == arr.reshape(-1).tolist() == [table[i] for i in range(12)]
    with pytest.raises(kvpool.InvalidArgument):
        mover._rows(keys, arr[:, :3].copy())
    with pytest.raises(kvpool.InvalidArgument):
        mover._rows(keys[:2], arr)
    with pytest.raises(kvpool.InvalidArgument):
        mover._rows(keys, [[1, 2, 3]] * 3)
