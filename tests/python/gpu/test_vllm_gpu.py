"""KvpoolConnector's worker side on a GPU with the real transfer layer
(kvpool.gpu.KvMover), in vLLM's KV layouts, layer by layer (the connector
loads with load_layers and saves with begin_save_layers): several requests
with shared prefixes saved, then loaded into other page ids, bit-exact; a
pool block corrupted in one layer's slice reported as an invalid block in
the same step, and nothing computed over it saved. Skipped without torch or
without kvpool's GPU path. Run on the GPU machine by
bench/gpu/wheel_on_gpu.sh, or:

    cd tests/python && PYTHONPATH=$PWD KVPOOL_TEST_BIN_DIR=... python -m pytest gpu/test_vllm_gpu.py

(the agent is started by tests/python/conftest.py's fixtures). The scheduler
and worker calls follow the same vLLM files as tests/python/test_vllm_connector.py,
whose helpers this reuses. Each step runs on a side stream (vLLM's current
stream, as the connector sees it), behind ~20 ms of queued GPU work so that
work not ordered after it shows, and a GpuModel stands in for the forward
pass on that stream: after wait_for_layer_load(layer) it copies that layer
of the loaded pages (poisoned before the step), before save_kv_layer(layer)
it writes that layer of the pages the step completes (poisoned until then).
A connector that waits for the wrong layer, waits on the host, or saves a
layer before it is written fails."""

import collections
import pickle

import pytest

import kvpool

torch = pytest.importorskip("torch")
if not (torch.cuda.is_available() and kvpool.gpu.gpu_available()):
    pytest.skip("no CUDA device or a kvpool built without CUDA", allow_module_level=True)

from engines import vllm_stubs as S  # noqa: E402
from engines.pool_memory import flip_byte_after  # noqa: E402
import test_vllm_connector as T  # noqa: E402

PAGES = 256
POISON = 0x5A5A


@pytest.fixture
def vllm():
    base = S.install()
    yield base
    S.uninstall()


@pytest.fixture
def gpu_pool():
    from conftest import Pool
    p = Pool("512MiB")
    yield p
    p.stop()


@pytest.fixture
def calls(monkeypatch):
    """Counts the KvMover calls the connector makes: whole-block save/load,
    load_layers, begin_save_layers, and LayerTransfer.wait (on the host)."""
    counts = collections.Counter()

    def counted(cls, name, key):
        orig = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            counts[key] += 1
            return orig(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    for name in ("save", "load", "load_layers", "begin_save_layers"):
        counted(kvpool.gpu.KvMover, name, name)
    counted(kvpool.gpu.LayerTransfer, "wait", "layer_wait")
    return counts


def make(pool, role, **kw):
    return T.make(pool, role, mover_factory=None, **kw)  # the real transfer layer: kvpool.gpu.KvMover


def gpu_caches(flash, seed, heads=T.HEADS):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (2, PAGES, T.BLOCK, heads, T.HEAD_DIM) if flash else (PAGES, 2, T.BLOCK, heads, T.HEAD_DIM)
    return {name: torch.randint(-(1 << 15), 1 << 15, shape, generator=g, device="cuda", dtype=torch.int32)
            .to(torch.int16).view(torch.bfloat16) for name in T.NAMES}


def gpu_page(caches, layer, p, flash):
    return T.runs(caches, T.NAMES[layer], p, flash)


def same(a, b, pa, pb, fa, fb):
    return all(torch.equal(x.view(torch.int16), y.view(torch.int16))
               for layer in range(T.LAYERS)
               for x, y in zip(gpu_page(a, layer, pa, fa), gpu_page(b, layer, pb, fb)))


def sleep_on(stream):
    """~20 ms of GPU work queued on stream: what is not ordered after it shows."""
    if hasattr(torch.cuda, "_sleep"):
        with torch.cuda.stream(stream):
            torch.cuda._sleep(20_000_000)


class GpuModel:
    """test_vllm_connector.Model on CUDA tensors, its work queued on the
    current stream (the step's): made before the step, it poisons the pages
    the step loads and, keeping what they hold, the pages whose blocks the
    step completes; layer(name) checks that no load was waited for on the
    host yet, copies that layer of the loaded pages and writes that layer of
    the completed ones back; check(out) compares, for every loaded page vLLM
    keeps, what each layer read with what the page holds after the step, and
    checks that the step moved no whole blocks."""

    def __init__(self, caches, meta, flash, calls):
        self.caches, self.flash, self.calls = caches, flash, calls
        self.waits = calls["layer_wait"]
        self.whole = (calls["save"], calls["load"])
        self.loaded = [p for _, _, pages in meta.loads for p in pages]
        computed = [p for _, _, pages in meta.saves for p in pages]
        self.computed = {name: {p: [r.clone() for r in T.runs(caches, name, p, flash)] for p in computed}
                         for name in T.NAMES}
        for name in T.NAMES:
            for p in self.loaded + computed:
                for r in T.runs(caches, name, p, flash):
                    r.view(torch.int16).fill_(POISON)
        self.seen = {}

    def layer(self, name):
        assert self.calls["layer_wait"] == self.waits, f"a load was waited for on the host before {name} ran"
        self.seen[name] = {p: [r.clone() for r in T.runs(self.caches, name, p, self.flash)] for p in self.loaded}
        for p, kv in self.computed[name].items():
            for r, v in zip(T.runs(self.caches, name, p, self.flash), kv):
                r.copy_(v)

    def check(self, out):
        torch.cuda.synchronize()
        for name, pages in self.seen.items():
            for p, read in pages.items():
                if p not in out.invalid_block_ids:
                    assert all(torch.equal(x.view(torch.int16), y.view(torch.int16))
                               for x, y in zip(read, T.runs(self.caches, name, p, self.flash))), \
                        f"{name} read page {p} before its bytes were loaded"
        assert (self.calls["save"], self.calls["load"]) == self.whole, "a whole-block transfer ran"


def step(worker, meta, caches, flash, calls):
    """One step on a side stream, behind queued work, with a GpuModel."""
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    sleep_on(stream)
    with torch.cuda.stream(stream):
        model = GpuModel(caches, meta, flash, calls)
        out, stats, _ = T.run_worker_step(worker, pickle.loads(pickle.dumps(meta)), model)
    torch.cuda.synchronize()
    return out, stats


@pytest.mark.parametrize("save_flash,load_flash", [(True, True), (False, False), (True, False)])
def test_requests_with_shared_prefixes_load_bit_exact_into_other_pages(vllm, gpu_pool, calls, save_flash,
                                                                       load_flash):
    model = f"gpu/{save_flash}-{load_flash}"
    sched = make(gpu_pool, "SCHEDULER", model=model, kv_role="kv_producer")
    worker = make(gpu_pool, "WORKER", model=model, kv_role="kv_producer")
    src = gpu_caches(save_flash, 1)
    worker.register_kv_caches(src)
    shared = list(range(100, 100 + 4 * T.BLOCK))
    reqs = [S.Request(f"r{i}", shared + list(range(1000 * (i + 1), 1000 * (i + 1) + (i + 1) * T.BLOCK + 3)))
            for i in range(3)]
    placed = {}
    next_page = 0
    for r in reqs:
        n = r.num_tokens // T.BLOCK + 1
        pages = list(range(next_page, next_page + n))
        next_page += n
        if placed:
            # Equal tokens give equal KV: the shared prefix's pages hold what
            # the first request's do (the pool keeps the first writer's
            # block; later puts of the same key are deduplicated).
            for i in range(len(shared) // T.BLOCK):
                for layer in range(T.LAYERS):
                    for x, y in zip(gpu_page(src, layer, placed["r0"][i], save_flash),
                                    gpu_page(src, layer, pages[i], save_flash)):
                        y.copy_(x)
        _, meta = T.schedule_prefill(sched, r, pages)
        out, stats = step(worker, meta, src, save_flash, calls)
        assert out.invalid_block_ids == set()
        assert stats.data["blocks_saved"] == r.num_tokens // T.BLOCK  # written or already there
        placed[r.request_id] = pages
    assert calls["begin_save_layers"] == 3
    worker.shutdown()
    sched.shutdown()

    # A decode instance: the first request alone, then the three in one step
    # (three layer-wise loads in flight at once), the later two sharing the
    # first one's prefix pages through vLLM's prefix cache and loading their
    # own blocks; each into other page ids.
    sched2 = make(gpu_pool, "SCHEDULER", model=model, kv_role="kv_consumer")
    worker2 = make(gpu_pool, "WORKER", model=model, kv_role="kv_consumer")
    dst = gpu_caches(load_flash, 2)
    worker2.register_kv_caches(dst)
    full = [(r.num_tokens - 1) // T.BLOCK for r in reqs]  # the last token is always computed
    prefix = len(shared) // T.BLOCK
    alone = S.Request("r0-alone", reqs[0].prompt_token_ids)
    ext, meta = T.schedule_prefill(sched2, alone, list(range(100, 100 + full[0] + 1)))
    assert ext == full[0] * T.BLOCK
    out, stats = step(worker2, meta, dst, load_flash, calls)
    assert out.invalid_block_ids == set() and stats.data["blocks_loaded"] == full[0]
    assert all(same(src, dst, placed["r0"][i], 100 + i, save_flash, load_flash) for i in range(full[0]))
    again = [S.Request(r.request_id + "-again", r.prompt_token_ids) for r in reqs]
    first = list(range(128, 128 + full[0] + 1))
    pages = [first] + [first[:prefix] + list(range(160 + 20 * i, 160 + 20 * i + full[i] - prefix + 1))
                       for i in (1, 2)]
    exts, meta = T.schedule_step(sched2, [(again[0], pages[0], 0), (again[1], pages[1], prefix * T.BLOCK),
                                          (again[2], pages[2], prefix * T.BLOCK)])
    assert exts == [full[0] * T.BLOCK] + [(f - prefix) * T.BLOCK for f in full[1:]]
    assert len(meta.loads) == 3
    out, stats = step(worker2, meta, dst, load_flash, calls)
    assert out.invalid_block_ids == set() and stats.data["blocks_loaded"] == sum(exts) // T.BLOCK
    for r, pg, f in zip(reqs, pages, full):
        for i in range(f):
            assert same(src, dst, placed[r.request_id][i], pg[i], save_flash, load_flash), (r.request_id, i)
    assert calls["load_layers"] == 4
    worker2.shutdown()
    sched2.shutdown()


# 4 heads: 64 KiB blocks, one slice, checked whole after the last layer; 8
# heads: 128 KiB blocks (two granules), a checksum per layer slice
# (pool/slot_header.h, format version 2). Staged (kvpool_path): whole blocks
# behind every layer's wait, and a LayerSave that commits as soon as its last
# layer is saved (runtime/gpu/layers.cc, WholeSaveAsLayers): the connector's
# abort must still hold.
@pytest.mark.parametrize("heads,bad_layer,path", [(T.HEADS, 0, "auto"), (2 * T.HEADS, T.LAYERS - 1, "auto"),
                                                  (2 * T.HEADS, T.LAYERS - 1, "staged")])
def test_a_block_corrupted_in_one_layer_is_an_invalid_block_in_the_same_step(vllm, gpu_pool, calls, heads, bad_layer,
                                                                             path):
    model = f"gpu/corrupt-{heads}-{path}"
    extra = {"kvpool_path": path}
    sched = make(gpu_pool, "SCHEDULER", model=model, heads=heads, extra=extra)
    worker = make(gpu_pool, "WORKER", model=model, heads=heads, extra=extra)
    caches = gpu_caches(True, 3, heads)
    worker.register_kv_caches(caches)
    prefix = list(range(6 * T.BLOCK))
    _, meta = T.schedule_prefill(sched, S.Request("r", prefix + [1]), [1, 2, 3, 4, 5, 6, 7])
    out, _ = step(worker, meta, caches, True, calls)
    assert out.invalid_block_ids == set()
    # Block 3 (page 4): one byte flipped inside layer bad_layer's slice (the
    # pool block is layer-major; the slice starts with the layer's K run).
    assert 1000 < worker._worker.layout.block_bytes // T.LAYERS
    needle = gpu_page(caches, bad_layer, 4, True)[0].view(torch.int16).cpu().numpy().tobytes()[:256]
    flip_byte_after(gpu_pool.process.pid, needle, offset=1000)

    # One step: a loads the six blocks and computes two of its own; b shares
    # a's pages through vLLM's prefix cache and computes two of its own; c
    # is unrelated.
    a = S.Request("a", prefix + list(range(5000, 5000 + 2 * T.BLOCK + 1)))
    b = S.Request("b", prefix + list(range(7000, 7000 + 2 * T.BLOCK + 1)))
    c = S.Request("c", list(range(9000, 9000 + 2 * T.BLOCK + 1)))
    a_pages = [20, 21, 22, 23, 24, 25, 26, 27, 28]
    exts, meta = T.schedule_step(sched, [(a, a_pages, 0), (b, a_pages[:6] + [40, 41, 42], 6 * T.BLOCK),
                                         (c, [50, 51, 52], 0)])
    assert exts == [6 * T.BLOCK, 0, 0]
    out, stats = step(worker, meta, caches, True, calls)
    assert out.invalid_block_ids == {23, 24, 25}  # the corrupted block and the ones after it
    assert stats.data["blocks_loaded"] == 3
    for i in range(3):
        assert same(caches, caches, [1, 2, 3][i], [20, 21, 22][i], True, True)
    assert stats.data["blocks_saved"] == 2  # c's: a's and b's were computed over the bad block
    assert T.in_pool(gpu_pool, worker, sched, a.all_token_ids, [6, 7]) == 0
    assert T.in_pool(gpu_pool, worker, sched, b.all_token_ids, [6, 7]) == 0
    assert T.in_pool(gpu_pool, worker, sched, c.all_token_ids, [0, 1]) == 2
    worker.shutdown()
    sched.shutdown()
