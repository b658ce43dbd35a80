"""KvpoolConnectorImpl: the methods of vLLM's KVConnectorBase_V1, over the
scheduler side (_scheduler) and the worker side (_worker); and the pool
link that turns an outage into cache misses."""

import logging
import threading
import time

import kvpool

from ._config import ConfigError, Shape
from ._scheduler import KvpoolConnectorMetadata, SchedulerSide
from ._worker import WorkerSide

log = logging.getLogger("kvpool.vllm")

# Errors after which the connection is dropped and retried later; others
# (DataLoss, NotFound, ...) concern one call only.
_OUTAGE = (kvpool.Unavailable, kvpool.DeadlineExceeded, kvpool.FailedPrecondition, kvpool.Cancelled,
           kvpool.Internal, kvpool.PermissionDenied)


class PoolLink:
    """The pool client of one vLLM process, or None while the pool is out:
    a failed connect or an outage-class error closes the client, and for
    kvpool_retry_s every call is a miss. ``generation`` counts clients, so
    a GPU mover over a closed client is made again."""

    def __init__(self, settings):
        self.settings = settings
        self.generation = 0
        self._client = None
        self._retry_at = 0.0
        self._lock = threading.Lock()  # guards _client, _retry_at, generation

    def client(self):
        with self._lock:
            if self._client is None and time.monotonic() >= self._retry_at:
                s = self.settings
                try:
                    self._client = kvpool.Client(s.coordinator, s.secret_file, timeout_s=s.timeout_s,
                                                 client_id="vllm")
                    self.generation += 1
                except kvpool.Error as e:
                    self._retry_at = time.monotonic() + s.retry_s
                    log.warning("kvpool: cannot reach the pool at %s (%s); serving cache misses for %.0f s",
                                s.coordinator, e, s.retry_s)
            return self._client

    def failed(self, error, what):
        if not isinstance(error, _OUTAGE):
            log.warning("kvpool: %s failed: %s", what, error)
            return
        with self._lock:
            client, self._client = self._client, None
            self._retry_at = time.monotonic() + self.settings.retry_s
        if client is not None:
            log.warning("kvpool: %s failed (%s); serving cache misses for %.0f s", what, error,
                        self.settings.retry_s)
            client.close()

    def close(self):
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


STAT_FIELDS = ("lookups", "lookup_hit_blocks", "lookup_errors", "lookup_ms", "loads", "blocks_loaded",
               "blocks_load_failed", "bytes_loaded", "load_ms", "saves", "blocks_saved", "blocks_save_failed",
               "bytes_saved", "save_ms")


class Counters:
    """Counters since the last take(); thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._data = {}

    def add(self, **values):
        with self._lock:
            for k, v in values.items():
                self._data[k] = self._data.get(k, 0) + v

    def take(self):
        with self._lock:
            data, self._data = self._data, {}
        return data


def _worker_ranks(shape):
    """(tensor rank, pipeline rank, decode-context-parallel rank) of this
    worker, from vLLM's process groups (vllm/distributed/parallel_state.py)."""
    tp = pp = dcp = 0
    if shape.tp_size > 1 or shape.pp_size > 1 or shape.dcp_size > 1:
        from vllm.distributed import parallel_state as ps
        tp = ps.get_tensor_model_parallel_rank()
        if shape.pp_size > 1:
            pp = ps.get_pp_group().rank_in_group
        if shape.dcp_size > 1:
            dcp = ps.get_dcp_group().rank_in_group
            if dcp != tp % shape.dcp_size:
                raise ConfigError(f"decode-context-parallel rank {dcp} of tensor rank {tp} is not tp % "
                                  f"{shape.dcp_size}: the scheduler's lookups would miss; change "
                                  "--decode-context-parallel-size")
    return tp, pp, dcp


class KvpoolConnectorImpl:
    """The connector's behaviour; kvpool.integrations.vllm.KvpoolConnector
    is this class with vLLM's KVConnectorBase_V1 as second base."""

    # The transfer layer; None: kvpool.gpu.KvMover. Only tests/python's CPU
    # test sets it (tests/python/engines/vllm_host_mover.py).
    mover_factory = None

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        self._shape = Shape(vllm_config, kv_cache_config)
        self._stats = Counters()
        self._pool = PoolLink(self._shape.settings)
        self._scheduler = self._worker = None
        if getattr(role, "name", str(role)).endswith("SCHEDULER"):
            self._scheduler = SchedulerSide(self._shape, self._pool, self._stats)
            self._pool.client()  # connect now; if the pool is out, misses until it is back
        else:
            self._worker = WorkerSide(self._shape, self._pool, self._stats, _worker_ranks(self._shape),
                                      type(self).mover_factory)

    # ------------------------------------------------------------ worker --

    def register_kv_caches(self, kv_caches):
        self._worker.register_kv_caches(kv_caches)

    def handle_preemptions(self, *args, **kwargs):
        """Nothing to do in practice: no transfer outlives the step that
        started it (wait_for_save finishes or aborts the saves and waits for
        the loads; get_block_ids_with_load_errors ends what a step without a
        forward pass left), so a preempted request's pages are never read or
        written after vLLM frees them. vLLM calls this before the step's
        start_load_kv; it ends anything an earlier step left (a call sequence
        that skipped both). Takes vLLM's argument of either form (a set of
        request ids, or the step's metadata in later releases)."""
        if self._worker is not None:
            self._worker.end_step()

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._connector_metadata if self.has_connector_metadata() else None
        self._worker.start_load_kv(meta)

    def wait_for_layer_load(self, layer_name):
        """vLLM's current stream waits for this layer of the step's loads
        (a stream wait: the host does not block)."""
        self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        """The step's saves take this layer from vLLM's current stream (the
        mover's stream waits for that point; the host does not block)."""
        self._worker.save_kv_layer(layer_name)

    def wait_for_save(self):
        """Waits for the step's loads, then commits the step's saves (or
        aborts those of requests that read a block that failed to load)."""
        self._worker.wait_for_save()

    def get_finished(self, finished_req_ids):
        return None, None  # loads and saves end with their step

    def get_block_ids_with_load_errors(self):
        return self._worker.take_invalid()

    def get_kv_connector_stats(self):
        data = self._stats.take()
        return type(self).build_kv_connector_stats(data) if data else None

    def shutdown(self):
        try:
            if self._worker is not None:
                self._worker.shutdown()
        finally:
            self._pool.close()

    # --------------------------------------------------------- scheduler --

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output):
        return self._scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output):
        self._scheduler.update_connector_output(connector_output)

    def request_finished(self, request, block_ids):
        return self._scheduler.request_finished(request, block_ids)

    # ----------------------------------------------------------- classes --

    @classmethod
    def get_required_kvcache_layout(cls, vllm_config):
        return "NHD"  # the GPU path addresses a page's tokens as one run

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config):
        # wait_for_layer_load and save_kv_layer enqueue waits on this step's
        # transfers' events: they must run eagerly, outside captured graphs.
        return True

    @classmethod
    def build_kv_connector_stats(cls, data=None):
        from . import KvpoolStats  # made over vLLM's KVConnectorStats on first use
        return KvpoolStats(data=dict(data or {}))


__all__ = ["KvpoolConnectorImpl", "KvpoolConnectorMetadata", "PoolLink", "Counters", "STAT_FIELDS"]
