"""The scheduler side of the vLLM connector, and the metadata it sends.

Follows vllm/v1/core/sched/scheduler.py (Scheduler.schedule,
update_from_output, _connector_finished): for a waiting request vLLM calls
get_num_new_matched_tokens (possibly several times), then, once blocks are
allocated, update_state_after_alloc; after scheduling, build_connector_meta;
after the workers ran, update_connector_output; once per finished request,
request_finished.

Loads are synchronous (load_kv_async False): a hit is loaded by the workers
in the step that schedules the request, layer by layer beside its forward
pass, and a block that fails to load is reported in that step (sync loading
in KVConnectorBase_V1.get_block_ids_with_load_errors). Saves run layer by
layer in the step that computes a block and end in its wait_for_save, so
request_finished never holds blocks.
"""

import logging
import time

import kvpool

from ._config import request_is_cacheable

log = logging.getLogger("kvpool.vllm")


class KvpoolConnectorMetadata:
    """What crosses from the scheduler to the workers in a step: per request,
    chain keys (16-byte bytes) and the page ids (vLLM block ids) they go to
    or come from; and per request that saves, ``reads``: the page ids of its
    blocks before the saved ones, whose KV the saved blocks were computed
    over (a worker saves nothing of a request that read a block that failed
    to load in the step, whichever request loaded it: vLLM's prefix cache
    shares pages). Nothing else. Picklable; registered as a virtual subclass
    of vLLM's KVConnectorMetadata when vLLM loads the connector."""

    def __init__(self, loads=None, saves=None, reads=None):
        self.loads = loads or []  # [(request id, [chain key], [page id])]
        self.saves = saves or []  # [(request id, [chain key], [page id])]
        self.reads = reads or {}  # request id -> [page id]

    def __repr__(self):
        return (f"KvpoolConnectorMetadata(loads={sum(len(p) for _, _, p in self.loads)} blocks, "
                f"saves={sum(len(p) for _, _, p in self.saves)} blocks)")


class _Tracked:
    """A request the scheduler side follows: its vLLM Request (read only),
    its block ids, how many leading blocks need no save, its chain keys."""

    __slots__ = ("request", "block_ids", "saved", "keys")

    def __init__(self, request, block_ids, saved):
        self.request = request
        self.block_ids = list(block_ids)
        self.saved = saved
        self.keys = []


class SchedulerSide:
    """Pure bookkeeping plus one prefix lookup per rank namespace; the pool
    client comes from ``pool`` (a _PoolLink), so an outage is a miss."""

    def __init__(self, shape, pool, stats):
        self.shape = shape
        self.pool = pool
        self.stats = stats
        self.chain_ns = shape.chain_namespace()
        self.rank_namespaces = [kvpool.namespace_id(**d) for d in shape.all_rank_descriptors()]
        self._tracked = {}  # request id -> _Tracked
        self._matched = {}  # request id -> (num_computed_tokens, chain keys of the hit): the last answer
        self._loads = []  # loads for the next metadata

    # ---------------------------------------------------------------- keys --

    def _chain_keys(self, request, num_blocks):
        tokens = request.all_token_ids if getattr(request, "all_token_ids", None) is not None else \
            request.prompt_token_ids
        b = self.shape.hash_block
        return kvpool.prefix_keys(list(tokens[:num_blocks * b]), self.chain_ns, b)

    # -------------------------------------------------------------- vLLM --

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        """Blocks beyond the locally cached ones that every rank namespace
        holds, as tokens. At most num_tokens - 1 tokens are matched (vLLM
        must compute the last token). No state but the remembered answer."""
        if not request_is_cacheable(request):
            return 0, False
        self._matched[request.request_id] = (num_computed_tokens, [])
        if not self.shape.loads:
            return 0, False
        b = self.shape.hash_block
        start = num_computed_tokens // b
        usable = (int(request.num_tokens) - 1) // b
        if usable <= start:
            return 0, False
        client = self.pool.client()
        if client is None:
            return 0, False
        keys = self._chain_keys(request, usable)[start:]
        t0 = time.monotonic()
        try:
            hit = len(keys)
            for ns in self.rank_namespaces:
                hit = min(hit, client.lookup(ns, kvpool.engine_keys(ns, keys[:hit])) if hit else 0)
                if hit == 0:
                    break
        except kvpool.Error as e:
            self.pool.failed(e, "lookup")
            self.stats.add(lookup_errors=1)
            return 0, False
        self.stats.add(lookups=1, lookup_hit_blocks=hit, lookup_ms=(time.monotonic() - t0) * 1e3)
        self._matched[request.request_id] = (num_computed_tokens, keys[:hit])
        return hit * b, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        if not request_is_cacheable(request):
            return
        block_ids = list(blocks.get_block_ids()[0])
        b = self.shape.hash_block
        matched = self._matched.pop(request.request_id, None)
        num_computed = request.num_computed_tokens if matched is None else matched[0]
        start = num_computed // b
        n = num_external_tokens // b if matched is not None else 0
        if n:
            keys = matched[1][:n]
            pages = block_ids[start:start + len(keys)]
            if len(pages) == len(keys):
                self._loads.append((request.request_id, keys, pages))
        # Blocks already cached (locally or just loaded) need no save.
        self._tracked[request.request_id] = _Tracked(request, block_ids, start + n)

    def build_connector_meta(self, scheduler_output):
        """The step's loads, the blocks this step completes (saved during
        it) and the pages those were computed over. Reads scheduler_output,
        never changes it."""
        meta = KvpoolConnectorMetadata(loads=self._loads)
        self._loads = []
        progress = {}  # request id -> tokens computed once this step ran
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            t = self._tracked.get(new.req_id)
            if t is not None:
                t.block_ids = list(new.block_ids[0])
                progress[new.req_id] = new.num_computed_tokens + scheduled.get(new.req_id, 0)
        cached = scheduler_output.scheduled_cached_reqs
        resumed = _resumed(cached)
        for i, req_id in enumerate(cached.req_ids):
            t = self._tracked.get(req_id)
            if t is None:
                continue
            new_ids = cached.new_block_ids[i]
            if new_ids is not None:
                if req_id in resumed:
                    t.block_ids = list(new_ids[0])
                else:
                    t.block_ids.extend(new_ids[0])
            progress[req_id] = cached.num_computed_tokens[i] + scheduled.get(req_id, 0)
        if self.shape.saves:
            for req_id, done in progress.items():
                t = self._tracked[req_id]
                tokens = t.request.all_token_ids
                full = min(done, len(tokens), len(t.block_ids) * self.shape.hash_block) // self.shape.hash_block
                if full <= t.saved:
                    continue
                if len(t.keys) < full:
                    t.keys = self._chain_keys(t.request, full)
                meta.saves.append((req_id, t.keys[t.saved:full], t.block_ids[t.saved:full]))
                meta.reads[req_id] = t.block_ids[:t.saved]
                t.saved = full
        return meta

    def update_connector_output(self, connector_output):
        invalid = getattr(connector_output, "invalid_block_ids", None)
        if invalid:
            log.warning("kvpool: %d blocks failed to load; vLLM recomputes them", len(invalid))

    def request_finished(self, request, block_ids):
        self._tracked.pop(request.request_id, None)
        self._matched.pop(request.request_id, None)
        return False, None


def _resumed(cached):
    """Ids of requests resumed from preemption (their new_block_ids replace
    the old ones): resumed_req_ids in recent vLLM, a per-request flag list
    resumed_from_preemption before."""
    ids = getattr(cached, "resumed_req_ids", None)
    if ids is not None:
        return set(ids)
    flags = getattr(cached, "resumed_from_preemption", None) or []
    return {r for r, f in zip(cached.req_ids, flags) if f}
