"""KvpoolConnector driven the way vLLM drives it, against a real agent, with
stand-in vLLM modules built from engines/vllm_manifest.py.

Each step follows a vLLM file: the loader
(distributed/kv_transfer/kv_connector/factory.py,
_get_connector_class_with_compat / create_connector), the scheduler
(v1/core/sched/scheduler.py: schedule calls get_num_new_matched_tokens, then
update_state_after_alloc, then build_connector_meta; update_from_output
calls update_connector_output; _connector_finished calls request_finished),
the worker (v1/worker/kv_connector_model_runner_mixin.py,
_get_kv_connector_output; attention layers call wait_for_layer_load and
save_kv_layer). The scheduler's metadata reaches the worker through a pickle
round trip, as between vLLM's processes. The transfer layer is the
host-staged mover (engines/vllm_host_mover.py): vLLM uses kvpool.gpu.KvMover,
tests/python/gpu/test_vllm_gpu.py runs that one."""

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
from engines.vllm_host_mover import HostStagedMover

README = pathlib.Path(__file__).resolve().parents[2] / "python" / "README.md"
LAYERS, HEADS, HEAD_DIM, BLOCK, PAGES = 2, 4, 128, 16, 64  # a pool block of 2*2*16*4*128*2 = 64 KiB


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
         coordinator=None, mover_factory=HostStagedMover):
    """Constructs the connector as vLLM's factory does. mover_factory None:
    the real transfer layer (kvpool.gpu.KvMover, tests/python/gpu)."""
    kv = readme_kv_transfer_config()
    kv["kv_role"] = kv_role
    kv["kv_connector_extra_config"] = dict(kv["kv_connector_extra_config"],
                                           kvpool_coordinator=coordinator or pool.coordinator,
                                           kvpool_secret_file=None, kvpool_timeout_s=scaled(5), **(extra or {}))
    cls = load_connector_class(kv)
    cls.mover_factory = mover_factory
    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    spec = S.FullAttentionSpec(BLOCK, HEADS, HEAD_DIM, "torch.bfloat16")
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


def run_worker_step(worker, meta):
    """One forward step as the mixin runs it; returns the KVConnectorOutput fields."""
    meta = pickle.loads(pickle.dumps(meta))
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(object())  # the ForwardContext: unused by the adapter
    for i in range(LAYERS):
        name = f"model.layers.{i}.self_attn.attn"
        worker.wait_for_layer_load(name)
        worker.save_kv_layer(name, None, None)
    worker.wait_for_save()
    sending, recving = worker.get_finished(set())
    invalid = worker.get_block_ids_with_load_errors()
    stats = worker.get_kv_connector_stats()
    worker.clear_connector_metadata()
    return S.connector_output(invalid), stats, (sending, recving)


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
    out, stats, finished = run_worker_step(worker, meta)
    assert finished == (None, None) and out.invalid_block_ids == set()
    assert stats.data["blocks_saved"] == 5
    sched.update_connector_output(out)
    ext, meta = schedule_prefill(sched, b, [9, 10, 11, 12, 13])  # b's shared blocks are a's: 3 to load
    assert ext == 3 * BLOCK and [p for _, _, p in meta.loads] == [[9, 10, 11]]
    assert [p for _, _, p in meta.saves] == [[12]]  # only b's own full block
    out, stats, _ = run_worker_step(worker, meta)
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
    out, stats, _ = run_worker_step(worker2, meta)
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
    worker.register_kv_caches(kv_caches(seed=3))
    r = S.Request("r", list(range(BLOCK + BLOCK - 1)))  # 1 full block, 15 tokens of the next
    assert sched.get_num_new_matched_tokens(r, 0) == (0, False)  # a producer loads nothing
    ext, meta = schedule_prefill(sched, r, [1, 2])
    assert [p for _, _, p in meta.saves] == [[1]]
    run_worker_step(worker, meta)
    r.num_computed_tokens = r.num_tokens
    r.all_token_ids.append(99)  # the sampled token, computed in the next step: fills block 2
    out = S.scheduler_output(cached=S.cached_request_data(["r"], [None], [r.num_computed_tokens]),
                             num_scheduled_tokens={"r": 1})
    meta = sched.build_connector_meta(out)
    assert [p for _, _, p in meta.saves] == [[2]]
    run_worker_step(worker, meta)
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
    worker.register_kv_caches(kv_caches(seed=4))
    r = S.Request("r", list(range(4 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4, 5])
    run_worker_step(worker, meta)
    r2 = S.Request("r2", r.prompt_token_ids)
    ext, meta = schedule_prefill(sched, r2, [10, 11, 12, 13, 14])
    assert ext == 4 * BLOCK
    # Evicted between the lookup and the load: blocks 2 and 3 (pages 12, 13) are gone.
    ns = worker._worker.namespace
    keys = kvpool.engine_keys(ns, meta.loads[0][1])
    with kvpool.Client(pool.coordinator) as c:
        assert c.remove(ns, keys[2]) is True
    out, stats, _ = run_worker_step(worker, meta)
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
    from engines.pool_memory import flip_byte_after
    sched = make(private_pool, "SCHEDULER", model="corrupt/model")
    worker = make(private_pool, "WORKER", model="corrupt/model")
    caches = kv_caches(seed=6)
    worker.register_kv_caches(caches)
    r = S.Request("r", list(range(4 * BLOCK + 1)))
    _, meta = schedule_prefill(sched, r, [1, 2, 3, 4, 5])
    run_worker_step(worker, meta)
    flip_byte_after(private_pool.process.pid, page(caches, 0, 3)[0].tobytes()[:256])  # block 2 (page 3)
    r2 = S.Request("r2", r.prompt_token_ids)
    ext, meta = schedule_prefill(sched, r2, [10, 11, 12, 13, 14])
    assert ext == 4 * BLOCK
    out, stats, _ = run_worker_step(worker, meta)
    assert out.invalid_block_ids == {12, 13}  # the corrupted block and the ones after it
    assert stats.data["blocks_loaded"] == 2
    worker.shutdown()
    sched.shutdown()
