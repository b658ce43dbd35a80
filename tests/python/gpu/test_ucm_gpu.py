"""UCM's device-pointer path on a GPU: kvpool's UCM store
(kvpool.integrations.ucm_store) driven the way UCM's vLLM connector drives
its store, ucm/integration/vllm/ucm_connector.py at
cdd4406794808e1f387e11a5f8893dc738247e61 (tests/python/engines/ucm_manifest.py):

- ``KVCacheLayout._build_layout``: per layer a vLLM FlashAttention KV tensor
  [2, num_blocks, block_size, num_heads, head_dim]; base pointers
  ``kv_layer[0][0].data_ptr()`` and ``kv_layer[1][0].data_ptr()``, tensor
  sizes ``prod(shape[-3:]) * element_size``;
- ``UCMDirectConnector._create_store`` (worker): device_id = local rank,
  tensor_size_list, shard_size and block_size from those sizes;
- ``wait_for_save``: ``extract_block_addrs(vllm_block_ids)`` reshaped to
  (blocks, layers x 2), ``_get_dump_event_handle`` (CudaDevice.
  get_event_handle in ucm/integration/vllm/device.py: a torch.cuda.Event
  recorded on the current stream, passed as ``int(event.cuda_event)``),
  ``dump_data(ids, [0] * n, ptrs, handle)``, ``wait``;
- ``start_load_kv``: ``load_data(ids, [0] * n, ptrs)`` into other vLLM
  block ids, then ``wait``; a RuntimeError there makes UCM report the
  request's blocks through get_block_ids_with_load_errors (recompute);
- ``UCMLayerWiseConnector`` (use_layerwise): ``save_kv_layer`` dumps layer l
  with ``extract_block_addrs(ids, layer_first=True)[l]`` and shard index l,
  ``wait_for_save`` waits every task; ``start_load_kv`` loads layer 0 and
  each ``wait_for_layer_load(l)`` waits layer l, then loads layer l + 1.

Bit-exact round trips on the mapped and staged paths, the dump ordered
after the event (the KV is written after a GPU sleep), and a block
corrupted in the agent's memory failing the load's wait. Skipped without
torch or without kvpool's GPU path."""

import math

import numpy as np
import pytest

import kvpool

torch = pytest.importorskip("torch")
if not (torch.cuda.is_available() and kvpool.gpu.gpu_available()):
    pytest.skip("no CUDA device or a kvpool built without CUDA", allow_module_level=True)

from conftest import Pool, scaled  # noqa: E402,F401
from engines import abc_stub  # noqa: E402
from engines import ucm_manifest as M  # noqa: E402
from engines.pool_memory import flip_byte_after  # noqa: E402
from test_ucm_store import create_like_ucm  # noqa: E402

LAYERS, HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 4, 8, 128, 16, 64
N = 10
SRC = [2 + 3 * i for i in range(N)]
DST = [NUM_BLOCKS - 1 - i for i in range(N)]


@pytest.fixture
def ucm():
    base = abc_stub.build_abc(M.BASE_CLASS, M.METHODS,
                              {"__init__": lambda self, config: setattr(self, "config", config)})
    abc_stub.install_modules({M.BASE_MODULE: {"UcmKVStoreBaseV1": base},
                              "ucm.sparse.state": {"has_ucm_sparse": lambda: False}})
    yield
    abc_stub.uninstall({"ucm"})


@pytest.fixture
def gpu_pool():
    p = Pool("256MiB")
    yield p
    p.stop()


class KvCaches:
    """vLLM's per-layer KV tensors and UCM's KVCacheLayout over them."""

    def __init__(self, seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        shape = (2, NUM_BLOCKS, BLOCK_SIZE, HEADS, HEAD_DIM)
        self.kv = [torch.randint(-(1 << 15), 1 << 15, shape, generator=g, device="cuda", dtype=torch.int32)
                   .to(torch.int16).view(torch.bfloat16) for _ in range(LAYERS)]
        ptrs, sizes = [], []
        for layer in self.kv:  # KVCacheLayout._build_layout, 5-dim case
            row_p, row_s = [], []
            for t in (layer[0], layer[1]):
                row_p.append(t[0].data_ptr())
                row_s.append(math.prod(t.shape[-3:]) * t.element_size())
            ptrs.append(row_p)
            sizes.append(row_s)
        self.base_ptrs = np.asarray(ptrs, dtype=np.uint64)
        self.tensor_size_lists = np.asarray(sizes, dtype=np.uint64)

    def extract_block_addrs(self, vllm_block_ids):
        ids = np.array(vllm_block_ids, np.uint64)
        addrs = ids[:, None, None] * self.tensor_size_lists[None, :, :] + self.base_ptrs[None, :, :]
        return addrs.reshape(addrs.shape[0], -1)  # as start_load_kv / wait_for_save reshape it

    def worker_config(self):
        return dict(device_id=torch.cuda.current_device(), tensor_size_list=self.tensor_size_lists.reshape(-1).tolist(),
                    shard_size=int(self.tensor_size_lists.sum()), block_size=int(self.tensor_size_lists.sum()),
                    local_rank_size=1)

    def extract_layer_first(self, vllm_block_ids):
        """extract_block_addrs(..., layer_first=True): (layers, blocks, K/V)."""
        ids = np.array(vllm_block_ids, np.uint64)
        return self.tensor_size_lists[:, None, :] * ids[None, :, None] + self.base_ptrs[:, None, :]

    def layerwise_worker_config(self):
        """_create_store with use_layerwise: a shard is one layer."""
        return dict(device_id=torch.cuda.current_device(), tensor_size_list=self.tensor_size_lists[0].tolist(),
                    shard_size=int(self.tensor_size_lists[0].sum()), block_size=int(self.tensor_size_lists.sum()),
                    local_rank_size=1)

    def first_bytes(self, block, n=256, layer=0):
        return self.kv[layer][0, block].contiguous().view(torch.int16).cpu().numpy().tobytes()[:n]


def same_blocks(a, pa, b, pb):
    return all(torch.equal(x[:, p].view(torch.int16), y[:, q].view(torch.int16))
               for x, y in zip(a.kv, b.kv) for p, q in zip(pa, pb))


def event_handle():
    """CudaDevice.get_event_handle: an event recorded on the current stream."""
    event = torch.cuda.Event(enable_timing=False)
    event.record(torch.cuda.current_stream())
    return event, int(event.cuda_event)


def dump_like_ucm(store, truth, src, ids):
    """wait_for_save, after the forward pass wrote the KV: here a GPU sleep
    then the copy of truth into src's blocks, all on the current stream, so
    a dump that did not wait for the event would copy the old bytes."""
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(50_000_000)
    for s, t in zip(src.kv, truth.kv):
        s[:, SRC] = t[:, SRC]
    event, handle = event_handle()
    task = store.dump_data(ids, [0] * len(ids), src.extract_block_addrs(SRC), handle)
    store.wait(task)
    return event


@pytest.mark.parametrize("path", ["auto", "staged"])
def test_dump_then_load_into_other_blocks_is_bit_exact(gpu_pool, ucm, request, path):
    truth, src, dst = KvCaches(1), KvCaches(2), KvCaches(3)
    store = create_like_ucm(gpu_pool, "worker", {"model": request.node.name, "kvpool_gpu_path": path},
                            **truth.worker_config())
    ids = [bytes([i]) * 16 for i in range(N)]
    torch.cuda.synchronize()
    dump_like_ucm(store, truth, src, ids)
    assert store.lookup_on_prefix(ids) == N - 1
    assert store.lookup(ids) == [True] * N
    task = store.load_data(ids, [0] * N, dst.extract_block_addrs(DST))
    store.wait(task)
    torch.cuda.synchronize()
    assert same_blocks(truth, SRC, dst, DST)
    # The pool block is the KV in vLLM's block order (layer, K/V): the bytes
    # any other reader of this namespace gets.
    block = bytearray(store.block_bytes)
    assert store.client.get(store.namespace, store._keys(ids[:1], [0]), [block]) == 1
    assert bytes(block[:256]) == truth.first_bytes(SRC[0])
    store.close()


def test_a_corrupted_block_fails_the_load_so_ucm_recomputes(gpu_pool, ucm, request):
    truth, src, dst = KvCaches(4), KvCaches(5), KvCaches(6)
    store = create_like_ucm(gpu_pool, "worker", {"model": request.node.name}, **truth.worker_config())
    ids = [bytes([0x40 + i]) * 16 for i in range(N)]
    torch.cuda.synchronize()
    dump_like_ucm(store, truth, src, ids)
    bad = 6
    flip_byte_after(gpu_pool.process.pid, truth.first_bytes(SRC[bad]))
    task = store.load_data(ids, [0] * N, dst.extract_block_addrs(DST))
    with pytest.raises(RuntimeError) as e:  # what start_load_kv catches
        store.wait(task)
    assert isinstance(e.value, kvpool.DataLoss), e.value
    assert f"block {bad} of {N}" in str(e.value)
    torch.cuda.synchronize()
    assert same_blocks(truth, SRC[:bad], dst, DST[:bad])  # the ones before it did load
    store.close()


def test_load_and_dump_take_cuda_tensors_too(gpu_pool, ucm, request):
    """UcmKVStoreBaseV1.load / dump with rows of tensors (views of the KV)."""
    truth, dst = KvCaches(7), KvCaches(8)
    store = create_like_ucm(gpu_pool, "worker", {"model": request.node.name}, **truth.worker_config())
    ids = [bytes([0x80 + i]) * 16 for i in range(N)]
    rows = [[layer[kv, b] for layer in truth.kv for kv in (0, 1)] for b in SRC]
    store.wait(store.dump(ids, [0] * N, rows))
    store.wait(store.load(ids, [0] * N, [[layer[kv, b] for layer in dst.kv for kv in (0, 1)] for b in DST]))
    torch.cuda.synchronize()
    assert same_blocks(truth, SRC, dst, DST)
    store.close()


def dump_layers_like_ucm(store, scheduler, truth, src, ids):
    """UCMLayerWiseConnector.save_kv_layer for each layer as the forward
    pass writes it (layer 0 after a GPU sleep), then wait_for_save: layer
    l's addresses (extract_block_addrs(..., layer_first=True)[l], made
    contiguous), shard index l, the event of that point."""
    total = src.extract_layer_first(SRC)
    tasks, events = [], []
    for layer in range(LAYERS):
        if layer == 0 and hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(50_000_000)
        src.kv[layer][:, SRC] = truth.kv[layer][:, SRC]
        event, handle = event_handle()
        events.append(event)
        tasks.append(store.dump_data(ids, [layer] * len(ids), np.ascontiguousarray(total[layer]), handle))
        if layer < LAYERS - 1:
            assert scheduler.lookup_on_prefix(ids) == -1  # no block before every layer is in
    for task in tasks:  # wait_for_save
        store.wait(task)


def load_layers_like_ucm(store, dst, ids):
    """start_load_kv submits layer 0; each wait_for_layer_load(l) waits for
    layer l's task, then submits layer l + 1. Returns the layers loaded and
    the error of the first that failed (UCM then stops loading the request
    and reports its blocks through get_block_ids_with_load_errors)."""
    total = dst.extract_layer_first(DST)
    task = store.load_data(ids, [0] * len(ids), total[0])
    for layer in range(LAYERS):
        try:
            store.wait(task)
        except RuntimeError as e:
            return layer, e
        if layer + 1 < LAYERS:
            task = store.load_data(ids, [layer + 1] * len(ids), total[layer + 1])
    return LAYERS, None


def test_layer_wise_connector_dumps_and_loads_layer_by_layer(gpu_pool, ucm, request):
    """UCMLayerWiseConnector (use_layerwise): one dump and one load per layer.
    The blocks commit once every layer is in, load bit-exact layer by layer
    into other vLLM blocks, and are the same blocks the scheduler looks up
    and the direct connector's store (same kvpool_layers) loads whole."""
    truth, src, dst, whole = KvCaches(9), KvCaches(10), KvCaches(11), KvCaches(12)
    extra = {"model": request.node.name, "kvpool_layers": LAYERS}
    store = create_like_ucm(gpu_pool, "worker", extra, **truth.layerwise_worker_config())
    scheduler = create_like_ucm(gpu_pool, "scheduler", extra, block_size=int(truth.tensor_size_lists.sum()))
    assert store.layerwise
    ids = [bytes([0xa0 + i]) * 16 for i in range(N)]
    torch.cuda.synchronize()
    dump_layers_like_ucm(store, scheduler, truth, src, ids)
    assert scheduler.lookup_on_prefix(ids) == N - 1
    assert load_layers_like_ucm(store, dst, ids) == (LAYERS, None)
    torch.cuda.synchronize()
    assert same_blocks(truth, SRC, dst, DST)
    direct = create_like_ucm(gpu_pool, "worker", extra, **truth.worker_config())
    assert not direct.layerwise and direct.namespace == store.namespace
    direct.wait(direct.load_data(ids, [0] * N, whole.extract_block_addrs(DST)))
    torch.cuda.synchronize()
    assert same_blocks(truth, SRC, whole, DST)
    for s in (store, scheduler, direct):
        s.close()


def test_layer_wise_load_fails_the_layer_whose_slice_is_corrupted(gpu_pool, ucm, request):
    """A byte flipped in layer 2 of one block: layers 0 and 1 load (their
    slices verify), layer 2's wait raises DataLoss naming the block, which
    wait_for_layer_load turns into invalid block ids (recompute)."""
    truth, src, dst = KvCaches(13), KvCaches(14), KvCaches(15)
    extra = {"model": request.node.name, "kvpool_layers": LAYERS}
    store = create_like_ucm(gpu_pool, "worker", extra, **truth.layerwise_worker_config())
    ids = [bytes([0xc0 + i]) * 16 for i in range(N)]
    torch.cuda.synchronize()
    dump_layers_like_ucm(store, store, truth, src, ids)
    bad = 4
    flip_byte_after(gpu_pool.process.pid, truth.first_bytes(SRC[bad], layer=2))
    layer, error = load_layers_like_ucm(store, dst, ids)
    assert layer == 2 and isinstance(error, kvpool.DataLoss), (layer, error)
    assert f"block {bad} of {N}" in str(error)
    torch.cuda.synchronize()
    for lay in (0, 1):
        assert torch.equal(truth.kv[lay][:, SRC].view(torch.int16), dst.kv[lay][:, DST].view(torch.int16))
    store.close()
