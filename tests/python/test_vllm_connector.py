"""KvpoolConnector driven the way vLLM drives it, against a real agent, with
stand-in vLLM modules built from engines/vllm_manifest.py.

Each step follows a vLLM file: the loader
(distributed/kv_transfer/kv_connector/factory.py,
_get_connector_class_with_compat / create_connector), the scheduler
(v1/core/sched/scheduler.py: schedule calls get_num_new_matched_tokens, then
update_state_after_alloc, then build_connector_meta; update_from_output
calls update_connector_output; _connector_finished calls request_finished),
the worker (v1/worker/kv_connector_model_runner_mixin.py,
_get_kv_connector_output; attention layers call wait_for_layer_load before
and save_kv_layer after their work). The scheduler's metadata reaches the
worker through a pickle round trip, as between vLLM's processes. The
transfer layer is the host-staged mover (engines/vllm_host_mover.py), with
the layer-wise semantics of kvpool.gpu.KvMover where a host can show them:
a loaded layer lands in the pages only when a stream waits for it, a saved
layer is the pages' bytes at save_kv_layer. A Model stands in for the
forward pass between those calls: it reads each layer of the loaded pages
and writes each layer of the pages the step completes, so a connector that
waits for the wrong layer, or saves a layer before it is written, fails.
vLLM uses kvpool.gpu.KvMover, tests/python/gpu/test_vllm_gpu.py runs that
one."""

import importlib
import inspect
import json
import pathlib
import pickle
import re

import numpy as np
import pytest

import kvpool
from conftest import scaled
from engines import vllm_manifest as M
from engines import vllm_stubs as S
from engines.pool_memory import flip_byte_after
from engines.vllm_host_mover import HostStagedMover

README = pathlib.Path(__file__).resolve().parents[2] / "python" / "README.md"
LAYERS, HEADS, HEAD_DIM, BLOCK, PAGES = 2, 4, 128, 16, 64  # a pool block of 2*2*16*4*128*2 = 64 KiB
NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]


def readme_kv_transfer_config():
    """The JSON of --kv-transfer-config in python/README.md's vLLM command."""
    text = README.read_text()
    block = text.split("<!-- vllm-command -->", 1)[1].split("```", 2)[1]
    m = re.search(r"--kv-transfer-config '([^']*)'", block)
    assert m, "python/README.md's vLLM command has no --kv-transfer-config '...'"
    return json.loads(m.group(1))


@pytest.fixture
def vllm():
    base = S.install()
    yield base
    S.uninstall()


def load_connector_class(kv_transfer):
    """vLLM's loader: import the module path, get the class by name."""
    module = importlib.import_module(kv_transfer["kv_connector_module_path"])
    try:
        return getattr(module, kv_transfer["kv_connector"])
    except AttributeError as e:
        raise AttributeError(f"Class {kv_transfer['kv_connector']} not found") from e


def make(pool, role, *, kv_role="kv_both", model="test/model", extra=None, backend=None, groups=1, use_mla=False,
         coordinator=None, mover_factory=HostStagedMover, heads=HEADS):
    """Constructs the connector as vLLM's factory does. mover_factory None:
    the real transfer layer (kvpool.gpu.KvMover, tests/python/gpu)."""
    kv = readme_kv_transfer_config()
    kv["kv_role"] = kv_role
    kv["kv_connector_extra_config"] = dict(kv["kv_connector_extra_config"],
                                           kvpool_coordinator=coordinator or pool.coordinator,
                                           kvpool_secret_file=None, kvpool_timeout_s=scaled(5), **(extra or {}))
    cls = load_connector_class(kv)
    cls.mover_factory = mover_factory
    names = list(NAMES)
    spec = S.FullAttentionSpec(BLOCK, heads, HEAD_DIM, "torch.bfloat16")
    cfg = S.vllm_config(kv, model=model, layers=LAYERS, backend=backend, use_mla=use_mla)
    role_enum = importlib.import_module(M.BASE_MODULE).KVConnectorRole
    return cls(cfg, getattr(role_enum, role), S.kv_cache_config(PAGES, names, spec, groups))


def kv_caches(flash=True, seed=0):
    rng = np.random.default_rng(seed)
    shape = (2, PAGES, BLOCK, HEADS, HEAD_DIM) if flash else (PAGES, 2, BLOCK, HEADS, HEAD_DIM)
    return {f"model.layers.{i}.self_attn.attn": rng.integers(0, 1 << 16, shape, dtype=np.uint16)
            for i in range(LAYERS)}


def page(caches, layer, p, flash=True):
    t = caches[f"model.layers.{layer}.self_attn.attn"]
    return (t[0, p], t[1, p]) if flash else (t[p, 0], t[p, 1])


def host_mover(worker):
    """The worker's host-staged mover (None with the real one, or none yet)."""
    m = worker._worker._mover
    return m if isinstance(m, HostStagedMover) else None


def run_worker_step(worker, meta, model=None, names=None, save_layers=True, forward=True):
    """One step as the mixin runs it (forward False: kv_connector_no_forward);
    returns the KVConnectorOutput fields. Per attention layer (names: in
    forward order, default NAMES) wait_for_layer_load, the model's work on
    that layer, save_kv_layer (unless save_layers is False)."""
    meta = pickle.loads(pickle.dumps(meta))
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(object())  # the ForwardContext: unused by the adapter
    if forward:
        for name in names or NAMES:
            worker.wait_for_layer_load(name)
            if model is not None:
                model.layer(name)
            if save_layers:
                worker.save_kv_layer(name, None, None)
        worker.wait_for_save()
    sending, recving = worker.get_finished(set())
    invalid = worker.get_block_ids_with_load_errors()
    stats = worker.get_kv_connector_stats()
    worker.clear_connector_metadata()
    m = host_mover(worker)
    assert m is None or not m.open, f"transfers outlived their step: {m.open}"
    out = S.connector_output(invalid)
    if model is not None:
        model.check(out)
    return out, stats, (sending, recving)


def runs(caches, name, p, flash=True):
    t = caches[name]
    return (t[0, p], t[1, p]) if flash else (t[p, 0], t[p, 1])


POISON = 0x5A5A


class Model:
    """Stands in for one step's forward pass (vllm/attention/layer.py: an
    attention layer calls wait_for_layer_load, reads its KV, writes the new
    tokens' KV, calls save_kv_layer). Made before the step: the pages whose
    blocks the step completes hold poison until their layer writes them
    (with what they held before). layer(name) checks that no load was waited
    for on the host, reads that layer of the loaded pages and writes that
    layer of the completed ones. check(out), after the step: every loaded
    page vLLM keeps (not in out.invalid_block_ids) was read, at every layer,
    as it ends the step (so its bytes had landed), and the step used the
    layer-wise transfers, not the whole-block ones."""

    def __init__(self, worker, caches, meta, flash=True, layerwise=True):
        self.caches, self.flash, self.layerwise = caches, flash, layerwise
        self.mover = host_mover(worker)
        self.calls = dict(self.mover.calls)
        self.loaded = [p for _, _, pages in meta.loads for p in pages]
        writers = {}
        for name in caches:  # the first name of a tensor writes it (kv_sharing_target_layer_name)
            writers.setdefault(id(caches[name]), name)
        computed = [p for _, _, pages in meta.saves for p in pages]
        self.computed = {name: {p: [r.copy() for r in runs(caches, name, p, flash)] for p in computed}
                         for name in writers.values()}
        for name, pages in self.computed.items():
            for p in pages:
                for r in runs(caches, name, p, flash):
                    r[...] = POISON
        self.seen = {}

    def layer(self, name):
        assert self.mover.calls["load_wait"] == self.calls.get("load_wait", 0), \
            f"a load was waited for on the host before layer {name} ran"
        self.seen[name] = {p: [r.copy() for r in runs(self.caches, name, p, self.flash)] for p in self.loaded}
        for p, kv in self.computed.get(name, {}).items():
            for r, v in zip(runs(self.caches, name, p, self.flash), kv):
                r[...] = v

    def check(self, out):
        for name, pages in self.seen.items():
            for p, read in pages.items():
                if p not in out.invalid_block_ids:
                    assert all(np.array_equal(x, y) for x, y in zip(read, runs(self.caches, name, p, self.flash))), \
                        f"{name} read page {p} before its bytes were loaded"
        if self.layerwise:
            for whole in ("save", "load"):
                assert self.mover.calls[whole] == self.calls.get(whole, 0), f"a whole-block {whole} ran"


def schedule_prefill(sched, req, blocks, num_computed=0):
    """Scheduler.schedule for a waiting request; returns (external tokens, metadata)."""
    first = sched.get_num_new_matched_tokens(req, num_computed)
    again = sched.get_num_new_matched_tokens(req, num_computed)  # vLLM may ask again: same answer
    assert first == again
    ext, is_async = first
    assert is_async is False
    sched.update_state_after_alloc(req, S.KVCacheBlocks(blocks), ext)
    todo = req.num_tokens - num_computed - ext
    out = S.scheduler_output(new=[S.new_request_data(req.request_id, blocks, num_computed + ext)],
                             num_scheduled_tokens={req.request_id: todo})
    meta = sched.build_connector_meta(out)
    return ext, meta


def schedule_step(sched, entries):
    """Scheduler.schedule for several waiting requests in one step: entries of
    (request, block ids, tokens vLLM's own prefix cache holds); returns
    ([external tokens], metadata)."""
    exts, new, todo = [], [], {}
    for req, blocks, local in entries:
        ext, is_async = sched.get_num_new_matched_tokens(req, local)
        assert is_async is False
        sched.update_state_after_alloc(req, S.KVCacheBlocks(blocks), ext)
        exts.append(ext)
        new.append(S.new_request_data(req.request_id, blocks, local + ext))
        todo[req.request_id] = req.num_tokens - local - ext
    return exts, sched.build_connector_meta(S.scheduler_output(new=new, num_scheduled_tokens=todo))


def same_pages(caches, pairs, flash=True, names=NAMES):
    return all(np.array_equal(x, y) for p_from, p_to in pairs for name in names
               for x, y in zip(runs(caches, name, p_from, flash), runs(caches, name, p_to, flash)))


def in_pool(pool, worker, sched, tokens, blocks):
    """How many of the given blocks (indices) of a token sequence the worker's namespace holds."""
    ns = worker._worker.namespace
    keys = kvpool.engine_keys(ns, kvpool.prefix_keys(tokens, sched._scheduler.chain_ns, BLOCK))
    with kvpool.Client(pool.coordinator) as c:
        return sum(c.lookup(ns, [keys[i]]) for i in blocks)


# ------------------------------------------------------------------ tests --


def test_the_adapter_matches_the_manifest(vllm):
    from kvpool.integrations.vllm import KvpoolConnector
    base = getattr(vllm, M.BASE_CLASS)
    assert issubclass(KvpoolConnector, base)
    assert not getattr(KvpoolConnector, "__abstractmethods__", None)
    for name in M.REQUIRED:
        assert name in KvpoolConnector.__dict__ or any(name in c.__dict__ for c in KvpoolConnector.__mro__[1:]
                                                        if c is not base and c is not object), name
        kind, params, _ = M.METHODS[name]
        ours = inspect.signature(getattr(KvpoolConnector, name))
        names = [p.name for p in ours.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if kind == "method":
            names = names[1:]
        want = [p for p in params if not p.startswith("**")]
        if name != "handle_preemptions":  # takes *args: a set of ids (v0.15) or the metadata (later)
            assert names == want, f"{name}{ours}: vLLM passes {params}"


def test_the_readme_command_loads_and_saves_then_another_instance_loads(vllm, pool):
    kv = readme_kv_transfer_config()
    assert kv["kv_connector"] == "KvpoolConnector" and kv["kv_load_failure_policy"] == "recompute"
    assert kv["kv_connector_module_path"] == "kvpool.integrations.vllm"

    # A prefill instance computes two requests with a shared prefix and saves them.
    sched = make(pool, "SCHEDULER", model="readme/model")
    worker = make(pool, "WORKER", model="readme/model")
    caches = kv_caches(seed=1)
    worker.register_kv_caches(caches)
    shared = list(range(1000, 1000 + 3 * BLOCK))
    a = S.Request("a", shared + list(range(5000, 5000 + 2 * BLOCK + 5)))  # 5 full blocks + 5 tokens
    b = S.Request("b", shared + list(range(7000, 7000 + BLOCK + 3)))  # 4 full blocks + 3 tokens
    ext, meta = schedule_prefill(sched, a, [3, 4, 5, 6, 7, 8])
    assert ext == 0 and not meta.loads and [len(k) for _, k, _ in meta.saves] == [5]
    out, stats, finished = run_worker_step(worker, meta, Model(worker, caches, meta))
    assert finished == (None, None) and out.invalid_block_ids == set()
    assert stats.data["blocks_saved"] == 5
    sched.update_connector_output(out)
    ext, meta = schedule_prefill(sched, b, [9, 10, 11, 12, 13])  # b's shared blocks are a's: 3 to load
    assert ext == 3 * BLOCK and [p for _, _, p in meta.loads] == [[9, 10, 11]]
    assert [p for _, _, p in meta.saves] == [[12]]  # only b's own full block
    out, stats, _ = run_worker_step(worker, meta, Model(worker, caches, meta))
    assert out.invalid_block_ids == set()
    for p_from, p_to in ((3, 9), (5, 11)):
        for layer in range(LAYERS):
            assert all(np.array_equal(x, y) for x, y in zip(page(caches, layer, p_from), page(caches, layer, p_to)))
    assert sched.request_finished(a, [3, 4, 5, 6, 7, 8]) == (False, None)
    assert sched.request_finished(b, [9, 10, 11, 12, 13]) == (False, None)
    worker.shutdown()
    sched.shutdown()

    # A decode instance (kv_consumer, FlashInfer's layout) loads a's five blocks into other pages, bit-exact.
    sched2 = make(pool, "SCHEDULER", kv_role="kv_consumer", model="readme/model")
    worker2 = make(pool, "WORKER", kv_role="kv_consumer", model="readme/model")
    caches2 = kv_caches(flash=False, seed=2)
    worker2.register_kv_caches(caches2)
    a2 = S.Request("a2", a.prompt_token_ids)
    ext, meta = schedule_prefill(sched2, a2, [40, 41, 42, 43, 44, 45])
    assert ext == 5 * BLOCK and not meta.saves
    out, stats, _ = run_worker_step(worker2, meta, Model(worker2, caches2, meta, flash=False))
    assert out.invalid_block_ids == set() and stats.data["blocks_loaded"] == 5
    for i, p_to in enumerate([40, 41, 42, 43, 44]):
        for layer in range(LAYERS):
            want = page(caches, layer, [3, 4, 5, 6, 7][i])
            got = page(caches2, layer, p_to, flash=False)
            assert all(np.array_equal(x, y) for x, y in zip(want, got))
    worker2.shutdown()
    sched2.shutdown()


def test_decode_steps_save_blocks_as_they_fill(vllm, pool):
    sched = make(pool, "SCHEDULER", kv_role="kv_producer", model="decode/model")
    worker = make(pool, "WORKER", kv_role="kv_producer", model="decode/model")
    caches = kv_caches(seed=3)
    worker.register_kv_caches(caches)
    r = S.Request("r", list(range(BLOCK + BLOCK - 1)))  # 1 full block, 15 tokens of the next
    assert sched.get_num_new_matched_tokens(r, 0) == (0, False)  # a producer loads nothing
    ext, meta = schedule_prefill(sched, r, [1, 2])
    assert [p for _, _, p in meta.saves] == [[1]]
    run_worker_step(worker, meta, Model(worker, caches, meta))
    r.num_computed_tokens = r.num_tokens
    r.all_token_ids.append(99)  # the sampled token, computed in the next step: fills block 2
    out = S.scheduler_output(cached=S.cached_request_data(["r"], [None], [r.num_computed_tokens]),
                             num_scheduled_tokens={"r": 1})
    meta = sched.build_connector_meta(out)
    assert [p for _, _, p in meta.saves] == [[2]]
    run_worker_step(worker, meta, Model(worker, caches, meta))
    # The pool has both blocks under the rank namespace's keys.
    chain = kvpool.prefix_keys(r.all_token_ids, sched._scheduler.chain_ns, BLOCK)
    ns = worker._worker.namespace
    with kvpool.Client(pool.coordinator) as c:
        assert c.lookup(ns, kvpool.engine_keys(ns, chain)) == 2
    worker.shutdown()
    sched.shutdown()


def test_a_block_missing_at_load_is_reported_in_the_same_step(vllm, pool):
    sched = make(pool, "SCHEDULER", model="missing/model")
    worker = make(pool, "WORKER", model="missing/model")
    caches = kv_caches(seed=4)
    worker.register_kv_caches(caches)
    r = S.Request("r", list(range(4 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4, 5])
    run_worker_step(worker, meta, Model(worker, caches, meta))
    r2 = S.Request("r2", r.prompt_token_ids)
    ext, meta = schedule_prefill(sched, r2, [10, 11, 12, 13, 14])
    assert ext == 4 * BLOCK
    # Evicted between the lookup and the load: blocks 2 and 3 (pages 12, 13) are gone.
    ns = worker._worker.namespace
    keys = kvpool.engine_keys(ns, meta.loads[0][1])
    with kvpool.Client(pool.coordinator) as c:
        assert c.remove(ns, keys[2]) is True
    out, stats, _ = run_worker_step(worker, meta, Model(worker, caches, meta))
    assert out.invalid_block_ids == {12, 13}
    assert stats.data["blocks_loaded"] == 2 and stats.data["blocks_load_failed"] == 2
    assert not stats.data.get("blocks_saved")  # r2's new block was computed over the failed ones: not saved
    worker.shutdown()
    sched.shutdown()


def test_a_pool_outage_is_a_miss_and_a_load_error_never_a_failed_step(vllm, private_pool):
    sched = make(private_pool, "SCHEDULER", model="outage/model", extra={"kvpool_retry_s": 0.2})
    worker = make(private_pool, "WORKER", model="outage/model", extra={"kvpool_retry_s": 0.2})
    worker.register_kv_caches(kv_caches(seed=5))
    r = S.Request("r", list(range(3 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4])
    run_worker_step(worker, meta)
    r2 = S.Request("r2", r.prompt_token_ids)
    ext, meta = schedule_prefill(sched, r2, [5, 6, 7, 8])
    assert ext == 3 * BLOCK
    private_pool.stop()
    out, stats, _ = run_worker_step(worker, meta)  # the load fails: its blocks are recomputed
    assert out.invalid_block_ids == {5, 6, 7}
    r3 = S.Request("r3", r.prompt_token_ids)
    assert sched.get_num_new_matched_tokens(r3, 0) == (0, False)  # the lookup fails: a miss
    # A scheduler and a worker started while the pool is out come up and miss.
    sched2 = make(private_pool, "SCHEDULER", model="outage/model")
    assert sched2.get_num_new_matched_tokens(r3, 0) == (0, False)
    worker.shutdown()
    sched.shutdown()
    sched2.shutdown()


def test_keys_and_namespaces_are_the_same_in_every_process_and_differ_per_rank(vllm, pool):
    sched = make(pool, "SCHEDULER", model="keys/model")
    shape = sched._shape
    assert shape.chain_namespace() == make(pool, "SCHEDULER", model="keys/model")._shape.chain_namespace()
    ids = set()
    for pp in range(2):
        for tp in range(4):
            for dcp in range(2):
                ids.add(kvpool.namespace_id(**shape.rank_descriptor(tp, pp, dcp, LAYERS)))
    assert len(ids) == 16  # two ranks never share a namespace, hence never a block


@pytest.mark.parametrize("kwargs,flag", [
    (dict(use_mla=True), "--kv-transfer-config"),
    (dict(groups=2), "--disable-hybrid-kv-cache-manager"),
    (dict(backend="FLEX_ATTENTION"), "--attention-backend"),
    (dict(extra={"kvpool_bogus": 1}), "kvpool_bogus"),
])
def test_unsupported_setups_are_refused_naming_the_flag(vllm, pool, kwargs, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        make(pool, "SCHEDULER", **kwargs)


def test_hnd_and_unknown_kv_tensors_are_refused(vllm, pool):
    worker = make(pool, "WORKER", model="refuse/model")
    hnd = {k: np.asfortranarray(v) for k, v in kv_caches().items()}
    with pytest.raises(ValueError, match="NHD"):
        worker.register_kv_caches(hnd)
    mla = {k: np.zeros((PAGES, BLOCK, 576), np.uint16) for k in kv_caches()}
    with pytest.raises(ValueError, match="FLASH_ATTN"):
        worker.register_kv_caches(mla)
    worker.shutdown()


def test_the_metadata_and_the_stats_survive_pickling(vllm):
    from kvpool.integrations.vllm import KvpoolConnector, KvpoolConnectorMetadata
    base = importlib.import_module(M.BASE_MODULE)
    meta = KvpoolConnectorMetadata(loads=[("r", [b"k" * 16], [3])], saves=[])
    assert isinstance(meta, base.KVConnectorMetadata)
    back = pickle.loads(pickle.dumps(meta))
    assert back.loads == meta.loads and back.saves == []
    stats = KvpoolConnector.build_kv_connector_stats({"blocks_loaded": 2})
    stats.aggregate(KvpoolConnector.build_kv_connector_stats({"blocks_loaded": 3, "lookups": 1}))
    assert stats.reduce()["blocks_loaded"] == 5 and not stats.is_empty()
    assert pickle.loads(pickle.dumps(stats)).data == stats.data


def test_a_corrupted_pool_block_is_reported_as_invalid_in_the_same_step(vllm, private_pool):
    sched = make(private_pool, "SCHEDULER", model="corrupt/model")
    worker = make(private_pool, "WORKER", model="corrupt/model")
    caches = kv_caches(seed=6)
    worker.register_kv_caches(caches)
    r = S.Request("r", list(range(4 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4, 5])
    run_worker_step(worker, meta, Model(worker, caches, meta))
    flip_byte_after(private_pool.process.pid, page(caches, 0, 3)[0].tobytes()[:256])  # block 2 (page 3)
    r2 = S.Request("r2", r.prompt_token_ids)
    ext, meta = schedule_prefill(sched, r2, [10, 11, 12, 13, 14])
    assert ext == 4 * BLOCK
    out, stats, _ = run_worker_step(worker, meta, Model(worker, caches, meta))
    assert out.invalid_block_ids == {12, 13}  # the corrupted block and the ones after it
    assert stats.data["blocks_loaded"] == 2
    worker.shutdown()
    sched.shutdown()


@pytest.mark.parametrize("commits", ["finish", "last_layer"])
@pytest.mark.parametrize("bad_layer", [0, LAYERS - 1])
def test_a_block_corrupted_in_one_layer_is_reported_in_the_same_step_and_nothing_computed_over_it_is_saved(
        vllm, private_pool, monkeypatch, bad_layer, commits):
    # When the mover's layer-wise save commits: at finish() (the mapped path)
    # or once its last layer is saved (the staged path): an abort must hold
    # for both.
    monkeypatch.setattr(HostStagedMover, "layer_save_commits", commits)
    model = f"layer-corrupt/{bad_layer}-{commits}"
    sched = make(private_pool, "SCHEDULER", model=model)
    worker = make(private_pool, "WORKER", model=model)
    caches = kv_caches(seed=7)
    worker.register_kv_caches(caches)
    prefix = list(range(4 * BLOCK))
    _, meta = schedule_prefill(sched, S.Request("r", prefix + [1]), [1, 2, 3, 4, 5])
    run_worker_step(worker, meta, Model(worker, caches, meta))
    # One byte of block 2 (page 3) flipped inside layer bad_layer's slice: the
    # pool block is layer-major, layer l's slice is bytes [l, l + 1) *
    # block_bytes / LAYERS, and starts with the layer's K run.
    slice_bytes = worker._worker.layout.block_bytes // LAYERS
    assert 1000 < slice_bytes
    flip_byte_after(private_pool.process.pid, page(caches, bad_layer, 3)[0].tobytes()[:256], offset=1000)

    # One step: a loads the four blocks and computes two of its own; b shares
    # a's pages through vLLM's prefix cache (cached when a's were allocated)
    # and computes two of its own; c is unrelated.
    a = S.Request("a", prefix + list(range(5000, 5000 + 2 * BLOCK + 1)))
    b = S.Request("b", prefix + list(range(7000, 7000 + 2 * BLOCK + 1)))
    c = S.Request("c", list(range(9000, 9000 + 2 * BLOCK + 1)))
    exts, meta = schedule_step(sched, [(a, [10, 11, 12, 13, 14, 15, 16], 0),
                                       (b, [10, 11, 12, 13, 20, 21, 22], 4 * BLOCK),
                                       (c, [30, 31, 32], 0)])
    assert exts == [4 * BLOCK, 0, 0]
    assert [p for _, _, p in meta.loads] == [[10, 11, 12, 13]]
    assert [p for _, _, p in meta.saves] == [[14, 15], [20, 21], [30, 31]]
    m = host_mover(worker)
    aborted = m.calls["save_abort"]
    out, stats, _ = run_worker_step(worker, meta, Model(worker, caches, meta))
    assert out.invalid_block_ids == {12, 13}  # in the same step: vLLM recomputes them (for a and b)
    assert stats.data["blocks_loaded"] == 2 and stats.data["blocks_load_failed"] == 2
    assert m.calls["save_abort"] == aborted + 2  # a's and b's: computed over the bad block
    assert stats.data["blocks_saved"] == 2  # c's
    assert in_pool(private_pool, worker, sched, a.all_token_ids, [4, 5]) == 0
    assert in_pool(private_pool, worker, sched, b.all_token_ids, [4, 5]) == 0
    assert in_pool(private_pool, worker, sched, c.all_token_ids, [0, 1]) == 2
    worker.shutdown()
    sched.shutdown()


def test_a_layer_sharing_another_layers_kv_waits_for_its_target_and_saves_nothing(vllm, pool):
    # kv_sharing_target_layer_name: vLLM registers the target's tensor under
    # the sharing layer's name too, and its attention layer calls
    # wait_for_layer_load and save_kv_layer like any other.
    sched = make(pool, "SCHEDULER", model="sharing/model")
    worker = make(pool, "WORKER", model="sharing/model")
    caches = kv_caches(seed=8)
    sharing = f"model.layers.{LAYERS}.self_attn.attn"
    caches[sharing] = caches[NAMES[0]]
    worker.register_kv_caches(caches)
    names = NAMES + [sharing]
    r = S.Request("r", list(range(3 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4])
    run_worker_step(worker, meta, Model(worker, caches, meta), names=names)
    r2 = S.Request("r2", r.prompt_token_ids + list(range(100, 100 + BLOCK)))
    ext, meta = schedule_prefill(sched, r2, [10, 11, 12, 13, 14])
    assert ext == 3 * BLOCK and [p for _, _, p in meta.saves] == [[13]]
    out, stats, _ = run_worker_step(worker, meta, Model(worker, caches, meta), names=names)
    assert out.invalid_block_ids == set()
    assert stats.data["blocks_loaded"] == 3 and stats.data["blocks_saved"] == 1
    assert same_pages(caches, [(1, 10), (2, 11), (3, 12)])
    worker.shutdown()
    sched.shutdown()


@pytest.mark.parametrize("how", ["twice", "never"])
def test_a_forward_pass_that_does_not_save_each_layer_once_saves_whole_blocks_after_it(vllm, pool, how):
    # twice: micro-batches, each running every attention layer; never: a
    # model runner that does not call save_kv_layer.
    sched = make(pool, "SCHEDULER", model=f"fallback/{how}")
    worker = make(pool, "WORKER", model=f"fallback/{how}")
    caches = kv_caches(seed=9)
    worker.register_kv_caches(caches)
    r = S.Request("r", list(range(3 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4])
    m = host_mover(worker)
    before = dict(m.calls)
    kw = dict(names=NAMES * 2) if how == "twice" else dict(save_layers=False)
    out, stats, _ = run_worker_step(worker, meta, Model(worker, caches, meta, layerwise=False), **kw)
    assert stats.data["blocks_saved"] == 3
    assert m.calls["save"] == before.get("save", 0) + 1  # one whole-block save
    assert m.calls["save_abort"] == before.get("save_abort", 0) + 1  # the layer-wise one
    # Loaded into other pages: the bytes the forward pass wrote.
    ext, meta = schedule_prefill(sched, S.Request("r2", r.prompt_token_ids), [10, 11, 12, 13])
    assert ext == 3 * BLOCK
    out, stats, _ = run_worker_step(worker, meta, Model(worker, caches, meta))
    assert out.invalid_block_ids == set() and stats.data["blocks_loaded"] == 3
    assert same_pages(caches, [(1, 10), (2, 11), (3, 12)])
    worker.shutdown()
    sched.shutdown()


def test_a_step_without_a_forward_pass_leaves_no_transfer_in_flight(vllm, pool):
    # kv_connector_no_forward: start_load_kv and the getters only. The loads
    # end in get_block_ids_with_load_errors, which reports their failures;
    # the saves are aborted (nothing wrote their pages).
    sched = make(pool, "SCHEDULER", model="noforward/model")
    worker = make(pool, "WORKER", model="noforward/model")
    caches = kv_caches(seed=10)
    worker.register_kv_caches(caches)
    r = S.Request("r", list(range(3 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4])
    run_worker_step(worker, meta, Model(worker, caches, meta))
    r2 = S.Request("r2", r.prompt_token_ids + list(range(100, 100 + BLOCK)))
    ext, meta = schedule_prefill(sched, r2, [10, 11, 12, 13, 14])
    assert ext == 3 * BLOCK and [p for _, _, p in meta.saves] == [[13]]
    ns = worker._worker.namespace
    with kvpool.Client(pool.coordinator) as c:
        assert c.remove(ns, kvpool.engine_keys(ns, meta.loads[0][1])[2]) is True
    m = host_mover(worker)
    aborted = m.calls["save_abort"]
    out, stats, _ = run_worker_step(worker, meta, forward=False)  # asserts that nothing is left open
    assert out.invalid_block_ids == {12}
    assert stats.data["blocks_loaded"] == 2 and not stats.data.get("blocks_saved")
    assert m.calls["save_abort"] == aborted + 1
    assert in_pool(pool, worker, sched, r2.all_token_ids, [3]) == 0

    # A step cut short after start_load_kv: handle_preemptions (vLLM calls it
    # before the next step's start_load_kv, with ids or the metadata) ends it;
    # the failures are reported by the next get_block_ids_with_load_errors.
    worker.bind_connector_metadata(pickle.loads(pickle.dumps(meta)))
    worker.start_load_kv(object())
    assert m.open
    worker.handle_preemptions({"r2"})
    assert not m.open
    assert worker.get_block_ids_with_load_errors() == {12}
    worker.clear_connector_metadata()
    worker.shutdown()
    sched.shutdown()


def test_the_host_mover_keeps_the_layer_wise_contract_of_kvmover(vllm, pool):
    # What the tests above rely on in engines/vllm_host_mover.py, as
    # include/kvpool/gpu.h states it for KvMover's LayerSave and LayerTransfer.
    worker = make(pool, "WORKER", model="contract/model")
    caches = kv_caches(seed=11)
    worker.register_kv_caches(caches)
    m = host_mover(worker)
    ns = worker._worker.namespace
    keys = kvpool.engine_keys(ns, kvpool.prefix_keys(range(4 * BLOCK), ns, BLOCK))
    saved, missing = keys[:3], keys[3:]

    with kvpool.Client(pool.coordinator) as c:
        s = m.begin_save_layers(saved, [1, 2, 3])
        assert s.layers == LAYERS
        s.save_layer(0)
        with pytest.raises(kvpool.InvalidArgument):
            s.save_layer(0)  # saved twice
        with pytest.raises(kvpool.InvalidArgument):
            s.save_layer(LAYERS)
        with pytest.raises(kvpool.FailedPrecondition):
            s.finish()  # a layer not saved: nothing committed
        with pytest.raises(kvpool.FailedPrecondition):
            s.finish()  # the first outcome again
        s.close()
        assert c.lookup(ns, saved) == 0
        s = m.begin_save_layers(saved, [1, 2, 3])
        for layer in range(LAYERS):
            s.save_layer(layer)
        s.close()  # unfinished: aborted
        assert c.lookup(ns, saved) == 0
        with m.begin_save_layers(saved, [1, 2, 3]) as s:
            for layer in range(LAYERS):
                s.save_layer(layer)
            r = s.finish()
            assert r.done == 3 and s.finish() is r
        assert c.lookup(ns, saved) == 3

    t = m.load_layers(saved + missing, [10, 11, 12, 13], None)
    assert (t.found, t.layers) == (3, LAYERS)
    for bad in (LAYERS, -1):
        with pytest.raises(kvpool.InvalidArgument):
            t.wait_layer(bad)
        with pytest.raises(kvpool.InvalidArgument):
            t.layer_event(bad)
    t.wait_layer(0)  # layer 0 has landed, layer 1 not yet
    assert same_pages(caches, [(1, 10), (2, 11), (3, 12)], names=NAMES[:1])
    assert not same_pages(caches, [(1, 10)], names=NAMES[1:])
    r = t.wait()
    assert (r.done, r.stopped) == (3, "not_found")
    assert same_pages(caches, [(1, 10), (2, 11), (3, 12)])
    t.close()
    with pytest.raises(kvpool.InvalidArgument):
        t.wait_layer(0)
    assert not m.open
    worker.shutdown()
