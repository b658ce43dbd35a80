"""KvpoolConnector's worker side on a GPU with the real transfer layer
(kvpool.gpu.KvMover), in vLLM's KV layouts: several requests with shared
prefixes saved, then loaded into other page ids, bit-exact; a corrupted pool
block reported as an invalid block in the same step. Skipped without torch
or without kvpool's GPU path. Run on the GPU machine:

    PYTHONPATH=$PWD/python KVPOOL_TEST_BIN_DIR=build/bin python -m pytest tests/python/gpu/test_vllm_gpu.py

(the agent is started by tests/python/conftest.py's fixtures). The scheduler
and worker calls follow the same vLLM files as tests/python/test_vllm_connector.py,
whose helpers this reuses."""

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


def make(pool, role, **kw):
    return T.make(pool, role, mover_factory=None, **kw)  # the real transfer layer: kvpool.gpu.KvMover


def gpu_caches(flash, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (2, PAGES, T.BLOCK, T.HEADS, T.HEAD_DIM) if flash else (PAGES, 2, T.BLOCK, T.HEADS, T.HEAD_DIM)
    return {f"model.layers.{i}.self_attn.attn":
            torch.randint(-(1 << 15), 1 << 15, shape, generator=g, device="cuda", dtype=torch.int32)
            .to(torch.int16).view(torch.bfloat16) for i in range(T.LAYERS)}


def gpu_page(caches, layer, p, flash):
    t = caches[f"model.layers.{layer}.self_attn.attn"]
    return (t[0, p], t[1, p]) if flash else (t[p, 0], t[p, 1])


def same(a, b, pa, pb, fa, fb):
    return all(torch.equal(x.view(torch.int16), y.view(torch.int16))
               for layer in range(T.LAYERS)
               for x, y in zip(gpu_page(a, layer, pa, fa), gpu_page(b, layer, pb, fb)))


def step(worker, meta):
    out, stats, _ = T.run_worker_step(worker, pickle.loads(pickle.dumps(meta)))
    torch.cuda.synchronize()
    return out, stats


@pytest.mark.parametrize("save_flash,load_flash", [(True, True), (False, False), (True, False)])
def test_requests_with_shared_prefixes_load_bit_exact_into_other_pages(vllm, gpu_pool, save_flash, load_flash):
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
        out, stats = step(worker, meta)
        assert out.invalid_block_ids == set()
        placed[r.request_id] = pages
    worker.shutdown()
    sched.shutdown()

    sched2 = make(gpu_pool, "SCHEDULER", model=model, kv_role="kv_consumer")
    worker2 = make(gpu_pool, "WORKER", model=model, kv_role="kv_consumer")
    dst = gpu_caches(load_flash, 2)
    worker2.register_kv_caches(dst)
    next_page = 128
    for r in reqs:
        r2 = S.Request(r.request_id + "-again", r.prompt_token_ids)
        n = r2.num_tokens // T.BLOCK + 1
        pages = list(range(next_page, next_page + n))
        next_page += n
        ext, meta = T.schedule_prefill(sched2, r2, pages)
        full = (r2.num_tokens - 1) // T.BLOCK
        assert ext == full * T.BLOCK
        out, stats = step(worker2, meta)
        assert out.invalid_block_ids == set() and stats.data["blocks_loaded"] == full
        for i in range(full):
            assert same(src, dst, placed[r.request_id][i], pages[i], save_flash, load_flash)
    worker2.shutdown()
    sched2.shutdown()


def test_a_corrupted_pool_block_is_an_invalid_block_in_the_same_step(vllm, gpu_pool):
    sched = make(gpu_pool, "SCHEDULER", model="gpu/corrupt")
    worker = make(gpu_pool, "WORKER", model="gpu/corrupt")
    caches = gpu_caches(True, 3)
    worker.register_kv_caches(caches)
    r = S.Request("r", list(range(6 * T.BLOCK + 1)))
    _, meta = T.schedule_prefill(sched, r, [1, 2, 3, 4, 5, 6, 7])
    out, _ = step(worker, meta)
    assert out.invalid_block_ids == set()
    needle = gpu_page(caches, 0, 4, True)[0].view(torch.int16).cpu().numpy().tobytes()[:256]
    flip_byte_after(gpu_pool.process.pid, needle)  # block 3 (page 4)
    r2 = S.Request("r2", r.prompt_token_ids)
    ext, meta = T.schedule_prefill(sched, r2, [20, 21, 22, 23, 24, 25, 26])
    assert ext == 6 * T.BLOCK
    out, stats = step(worker, meta)
    assert out.invalid_block_ids == {23, 24, 25}  # the corrupted block and the ones after it
    assert stats.data["blocks_loaded"] == 3
    for i in range(3):
        assert same(caches, caches, [1, 2, 3][i], [20, 21, 22][i], True, True)
    worker.shutdown()
    sched.shutdown()
