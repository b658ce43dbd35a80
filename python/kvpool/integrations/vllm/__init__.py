"""vLLM KV connector over kvpool: ``KvpoolConnector``, a KVConnectorBase_V1.

Enable it (python/README.md, "vLLM", has the command a test runs):

    vllm serve MODEL --kv-transfer-config '{"kv_connector":"KvpoolConnector",
      "kv_connector_module_path":"kvpool.integrations.vllm","kv_role":"kv_both",
      "kv_load_failure_policy":"recompute",
      "kv_connector_extra_config":{"kvpool_coordinator":"HOST:PORT","kvpool_secret_file":"/etc/kvpool/secret"}}'

Pinned interface: vLLM v0.15.0 (docs.vllm.ai/en/v0.15.0: its GPU model
runner calls ``handle_preemptions(scheduler_output.preempted_req_ids)``),
read from the vllm-project/vllm files at these commits (the tag's own
commit could not be resolved from the material available to us):
base.py 13f4ad0f55b08ca1d37d1459f50ce950feaeb547, factory.py
a4cd9d0d28bdb41db8dfe0acdafac2bf2f608630,
v1/worker/kv_connector_model_runner_mixin.py
23ec7c7fab7aa8edb1c14195c048113e210683fa, v1/metrics.py
578b601cd1f41074873532e99af8369bf75cb5a9 (all under
vllm/distributed/kv_transfer/kv_connector/ but the mixin).
tests/python/engines/vllm_manifest.py lists every method, parameter and
attribute used; the later base.py 003df2961dd8 (handle_preemptions takes the
metadata; kv_cache_config required) is served too.

How vLLM drives it, and which file each step follows:

- loader (distributed/kv_transfer/kv_connector/factory.py,
  KVConnectorFactory._get_connector_class_with_compat / create_connector):
  ``importlib.import_module(kv_connector_module_path)``, ``getattr(module,
  kv_connector)``, ``cls(vllm_config, role, kv_cache_config)``, once with
  role SCHEDULER in the engine core and once per worker with role WORKER.
  The factory itself refuses connectors without SupportsHMA while the
  hybrid KV cache manager is on.
- scheduler (v1/core/sched/scheduler.py, Scheduler.schedule /
  update_from_output / _connector_finished): get_num_new_matched_tokens
  (one prefix lookup per rank namespace; may be called again for the same
  request), update_state_after_alloc, build_connector_meta,
  update_connector_output, request_finished.
- worker (v1/worker/kv_connector_model_runner_mixin.py): register_kv_caches
  once; per step bind_connector_metadata, start_load_kv, per attention
  layer wait_for_layer_load / save_kv_layer, wait_for_save, get_finished,
  get_block_ids_with_load_errors, get_kv_connector_stats; shutdown.

Only chain keys and page ids cross from scheduler to workers
(KvpoolConnectorMetadata). Keys and namespaces: _config.py. Loads, saves and
failures: _worker.py. Metrics: ``get_kv_connector_stats`` returns a
``KvpoolStats`` (vLLM's KVConnectorStats; counters of lookups, blocks
loaded / failed / saved, bytes and milliseconds), logged by vLLM's
KVConnectorLogging.

Refused at construction, with the flag to change: MLA models, hybrid
models (more than one KV cache group; no SupportsHMA), attention backends
other than FLASH_ATTN, FLASHINFER and TRITON_ATTN, KV dtypes other than
bf16, fp16, fp8; at register_kv_caches: KV tensors of another shape, HND
(non-contiguous) caches, a process without kvpool's GPU path. A pool outage
is never a failed step: lookups answer 0, loads report their blocks as load
errors (recomputed), saves are skipped; the connection is retried after
kvpool_retry_s.

Importing this package imports no vLLM: ``KvpoolConnector`` and
``KvpoolStats`` are made on first access (module ``__getattr__``), over
vLLM's classes.
"""

from ._connector import STAT_FIELDS, KvpoolConnectorImpl
from ._scheduler import KvpoolConnectorMetadata


class _StatsMethods:
    """KVConnectorStats' abstract methods over ``data`` (a dict of counters)."""

    def reset(self):
        self.data = {}

    def aggregate(self, other):
        for k, v in (getattr(other, "data", None) or {}).items():
            self.data[k] = self.data.get(k, 0) + v
        return self

    def reduce(self):
        d = self.data
        out = {k: d.get(k, 0) for k in STAT_FIELDS}
        if d.get("lookups"):
            out["lookup_ms_avg"] = d.get("lookup_ms", 0) / d["lookups"]
        return out

    def is_empty(self):
        return not any(self.data.values())


def _make(name):
    if name == "KvpoolConnector":
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorMetadata
        KVConnectorMetadata.register(KvpoolConnectorMetadata)
        return type("KvpoolConnector", (KvpoolConnectorImpl, KVConnectorBase_V1),
                    {"__module__": __name__, "__qualname__": "KvpoolConnector", "__doc__": KvpoolConnectorImpl.__doc__})
    if name == "KvpoolStats":
        from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats
        return type("KvpoolStats", (_StatsMethods, KVConnectorStats),
                    {"__module__": __name__, "__qualname__": "KvpoolStats"})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __getattr__(name):
    cls = _make(name)
    globals()[name] = cls  # made once; pickle finds it by name
    return cls


__all__ = ["KvpoolConnectorMetadata"]  # KvpoolConnector, KvpoolStats: by name only (they import vLLM)
