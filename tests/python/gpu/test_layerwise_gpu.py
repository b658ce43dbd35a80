"""Layer-wise loads and saves (kvpool.gpu.KvMover.load_layers /
begin_save_layers; include/kvpool/gpu.h, LayerTransfer and LayerSave) on a
GPU, in vLLM's paged layout and transformers' contiguous one:

- a save layer by layer, each layer's pages written on a stream and saved
  from that stream's point, then a load layer by layer into other page ids
  while another stream waits for each layer and copies it out: bit-exact per
  layer, on the mapped path and (whole blocks behind the same waits) on the
  staged one;
- one byte of one layer's slice of one block flipped in the pool: wait()
  reports done = that block's index, stopped "data_loss", in the same step;
- a save with a layer never saved commits nothing (finish() raises
  FailedPrecondition, lookup finds 0), nor does one closed before finish().

Skipped without torch or without kvpool's GPU path. Run on the GPU machine
by bench/gpu/wheel_on_gpu.sh, or:

    cd tests/python && PYTHONPATH=$PWD KVPOOL_TEST_BIN_DIR=... python -m pytest gpu/test_layerwise_gpu.py

(the agent is started by tests/python/conftest.py's Pool)."""

import pytest

import kvpool

torch = pytest.importorskip("torch")
if not (torch.cuda.is_available() and kvpool.gpu.gpu_available()):
    pytest.skip("no CUDA device or a kvpool built without CUDA", allow_module_level=True)

from conftest import Pool, scaled  # noqa: E402
from engines.pool_memory import flip_byte_after  # noqa: E402

# 4 layers of 8 KV heads x 128 x bf16, 16-token pages: 32 KiB runs, 256 KiB
# blocks (4 granules of 64 KiB), so a block carries a checksum per layer
# slice (pool/slot_header.h, format version 2).
LAYERS, HEADS, HEAD_DIM, TPB = 4, 8, 128, 16
PAGES, ROWS = 64, 2  # hf-contiguous: 2 rows of 32 pages (512 tokens)
N = 12  # blocks per transfer
SRC_PAGES = [3 + 2 * i for i in range(N)]
DST_PAGES = [PAGES - 1 - i for i in range(N)]
KINDS = ["vllm-paged", "hf-contiguous"]


@pytest.fixture
def gpu_pool():
    p = Pool("256MiB")
    yield p
    p.stop()


@pytest.fixture
def gpu_client(gpu_pool):
    with kvpool.Client(gpu_pool.coordinator, timeout_s=scaled(30)) as c:
        yield c


def random_bf16(shape, g):
    return torch.randint(-(1 << 15), 1 << 15, shape, generator=g, device="cuda", dtype=torch.int32) \
        .to(torch.int16).view(torch.bfloat16)


class Cache:
    """One engine's KV cache: vLLM's paged layout (per layer one [2, pages,
    16, heads, dim] tensor) or transformers' (per layer K and V [rows,
    heads, max_seq, dim], page p = tokens [(p % 32) * 16, +16) of row
    p // 32)."""

    def __init__(self, kind, seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        self.kind = kind
        if kind == "vllm-paged":
            self.layout = kvpool.gpu.KvLayout(kind, num_layers=LAYERS, num_kv_heads=HEADS, head_dim=HEAD_DIM,
                                              tokens_per_block=TPB, num_pages=PAGES)
            self.k = [random_bf16((2, PAGES, TPB, HEADS, HEAD_DIM), g) for _ in range(LAYERS)]
            self.v = None
        else:
            self.ppr = PAGES // ROWS
            self.layout = kvpool.gpu.KvLayout(kind, num_layers=LAYERS, num_kv_heads=HEADS, head_dim=HEAD_DIM,
                                              tokens_per_block=TPB, batch=ROWS, max_seq=self.ppr * TPB)
            self.k = [random_bf16((ROWS, HEADS, self.ppr * TPB, HEAD_DIM), g) for _ in range(LAYERS)]
            self.v = [random_bf16((ROWS, HEADS, self.ppr * TPB, HEAD_DIM), g) for _ in range(LAYERS)]

    def runs(self, layer, page):
        """(K, V) of one page of one layer, as views."""
        if self.v is None:
            return self.k[layer][0, page], self.k[layer][1, page]
        row, col = divmod(page, self.ppr)
        tokens = slice(col * TPB, (col + 1) * TPB)
        return self.k[layer][row, :, tokens], self.v[layer][row, :, tokens]

    def layer_tensors(self, layer):
        return [self.k[layer]] if self.v is None else [self.k[layer], self.v[layer]]

    def first_bytes(self, layer, page, n=256):
        """The first n bytes of that page's layer slice as the pool block holds
        them (the block is layer, then K/V, then head: K's first run)."""
        k = self.runs(layer, page)[0]
        run = k if self.v is None else k[0]  # hf-contiguous: one run per KV head
        return run.contiguous().view(torch.int16).cpu().numpy().tobytes()[:n]

    def mover(self, client, ns, **options):
        return kvpool.gpu.KvMover(client, ns, self.layout, self.k, self.v, **options)


def bits(t):
    return t.view(torch.int16)


def same_layer(a, pa, b, pb, layer):
    return all(torch.equal(bits(x), bits(y)) for p, q in zip(pa, pb)
               for x, y in zip(a.runs(layer, p), b.runs(layer, q)))


def same(a, pa, b, pb):
    return all(same_layer(a, pa, b, pb, layer) for layer in range(LAYERS))


def sleep_on(stream):
    """Queues ~10+ ms of GPU work on stream: work ordered after it that is not
    really ordered shows."""
    if hasattr(torch.cuda, "_sleep"):
        with torch.cuda.stream(stream):
            torch.cuda._sleep(20_000_000)


def save_layer_by_layer(mover, keys, truth, src, stream, skip=None):
    """On `stream`, after a sleep: each layer of truth copied into src, then
    saved from that point (save_layer); returns the LayerSave, unfinished."""
    s = mover.begin_save_layers(keys, SRC_PAGES)
    assert s.layers == LAYERS
    sleep_on(stream)
    for layer in range(LAYERS):
        with torch.cuda.stream(stream):
            for dst, t in zip(src.layer_tensors(layer), truth.layer_tensors(layer)):
                dst.copy_(t)
        if layer != skip:
            s.save_layer(layer, stream)
    return s


def load_layer_by_layer(mover, keys, dst, stream):
    """On `stream`: a sleep, then the destination pages poisoned, then a
    layer-wise load ordered after that; the stream waits for each layer and
    copies its pages out. Returns (transfer, per-layer copies)."""
    sleep_on(stream)
    with torch.cuda.stream(stream):
        for layer in range(LAYERS):
            for p in DST_PAGES:
                for run in dst.runs(layer, p):
                    run.fill_(float("nan"))
    # Keys past N (never saved) get pages of their own, which stay untouched.
    pages = DST_PAGES + [PAGES - 1 - N - i for i in range(len(keys) - N)]
    t = mover.load_layers(keys, pages, stream)
    copies = []
    for layer in range(LAYERS):
        t.wait_layer(layer, stream)
        with torch.cuda.stream(stream):
            copies.append([[run.clone() for run in dst.runs(layer, p)] for p in DST_PAGES])
    return t, copies


def copies_equal(copies, truth, layer, count=N):
    return all(torch.equal(bits(c), bits(x))
               for runs, p in zip(copies[layer][:count], SRC_PAGES[:count])
               for c, x in zip(runs, truth.runs(layer, p)))


def namespace(client, cache, name):
    return client.register_namespace(**cache.layout.namespace(f"layerwise/{name}/{cache.kind}"))


@pytest.mark.parametrize("path", ["auto", "staged"])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_by_layer_round_trips_are_bit_exact(gpu_client, kind, path):
    truth, src, dst = Cache(kind, 1), Cache(kind, 2), Cache(kind, 3)
    ns = namespace(gpu_client, truth, f"round-trip-{path}")
    keys = kvpool.prefix_keys(range(N * TPB), ns, TPB)
    missing = kvpool.prefix_keys(range((N + 2) * TPB), ns, TPB)[N:]  # never saved
    saver, loader = src.mover(gpu_client, ns, path=path), dst.mover(gpu_client, ns, path=path)
    producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()

    with save_layer_by_layer(saver, keys, truth, src, producer) as s:
        r = s.finish()
        assert (r.done, r.failed) == (N, 0), r
        assert s.finish() is r  # the first outcome again
    assert gpu_client.lookup(ns, keys) == N
    assert r.path == ("staged" if path == "staged" else "mapped"), r

    t, copies = load_layer_by_layer(loader, keys + missing, dst, consumer)
    with t:
        assert (t.found, t.layers) == (N, LAYERS)
        events = [t.layer_event(layer) for layer in range(LAYERS)]
        assert all(events), events
        if path == "staged":  # whole blocks first: every layer's event is the one after the transfer
            assert len(set(events)) == 1, events
        with pytest.raises(kvpool.InvalidArgument):
            t.wait_layer(LAYERS, consumer)
        r = t.wait()
        assert (r.done, r.stopped) == (N, "not_found"), r  # the two keys never saved end the prefix
    torch.cuda.synchronize()
    for layer in range(LAYERS):
        assert copies_equal(copies, truth, layer), f"layer {layer}: the stream read pages before they were loaded"
        assert same_layer(truth, SRC_PAGES, dst, DST_PAGES, layer), f"layer {layer}"
    assert same(truth, SRC_PAGES, src, SRC_PAGES)  # the source pages were left alone
    saver.close()
    loader.close()


@pytest.mark.parametrize("kind,layer", [("vllm-paged", 1), ("hf-contiguous", LAYERS - 1)])
def test_a_block_corrupted_in_one_layer_is_reported_by_wait_in_the_same_step(gpu_pool, gpu_client, kind, layer):
    truth, src, dst = Cache(kind, 4), Cache(kind, 5), Cache(kind, 6)
    ns = namespace(gpu_client, truth, f"corrupt-{layer}")
    keys = kvpool.prefix_keys(range(N * TPB), ns, TPB)
    saver, loader = src.mover(gpu_client, ns), dst.mover(gpu_client, ns)
    producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    with save_layer_by_layer(saver, keys, truth, src, producer) as s:
        assert s.finish().done == N
    bad = 7
    flip_byte_after(gpu_pool.process.pid, truth.first_bytes(layer, SRC_PAGES[bad]))  # inside that layer's slice
    t, copies = load_layer_by_layer(loader, keys, dst, consumer)
    with t:
        assert t.found == N  # the block is there: only its checksum fails
        r = t.wait()
    torch.cuda.synchronize()
    assert (r.done, r.stopped) == (bad, "data_loss"), r
    for lay in range(LAYERS):
        assert copies_equal(copies, truth, lay, count=bad), f"layer {lay}"
        assert same_layer(truth, SRC_PAGES[:bad], dst, DST_PAGES[:bad], lay), f"layer {lay}"
    saver.close()
    loader.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_save_missing_a_layer_commits_nothing(gpu_client, kind):
    truth, src = Cache(kind, 7), Cache(kind, 8)
    ns = namespace(gpu_client, truth, "missing-layer")
    keys = kvpool.prefix_keys(range(N * TPB), ns, TPB)
    saver = src.mover(gpu_client, ns)
    producer = torch.cuda.Stream()
    torch.cuda.synchronize()
    with save_layer_by_layer(saver, keys, truth, src, producer, skip=2) as s:
        with pytest.raises(kvpool.InvalidArgument):
            s.save_layer(1, producer)  # saved already
        with pytest.raises(kvpool.InvalidArgument):
            s.save_layer(LAYERS, producer)
        with pytest.raises(kvpool.FailedPrecondition) as e:
            s.finish()
        assert isinstance(e.value, RuntimeError)
        with pytest.raises(kvpool.FailedPrecondition):
            s.finish()  # the first outcome again
    assert gpu_client.lookup(ns, keys) == 0

    # A save closed before finish() is aborted: nothing committed, and its
    # slots do not keep the keys from being saved again.
    s = save_layer_by_layer(saver, keys, truth, src, producer)
    s.close()
    assert gpu_client.lookup(ns, keys) == 0
    with save_layer_by_layer(saver, keys, truth, src, producer) as s:
        assert s.finish().done == N
    assert gpu_client.lookup(ns, keys) == N
    saver.close()
