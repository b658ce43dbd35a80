"""kvpool as vLLM v1's offloading manager (the scheduler side of KV offload).

Follows ``OffloadingManager`` in vllm-project/vllm
vllm/v1/kv_offload/abstract.py at commit
00d169bfa55967fc48d6f1b08cfc929c1cce3545 (main; later vLLM reworks this
interface: per-request contexts, per-key lookup results; this adapter follows
the commit named): ``lookup(block_hashes) -> int``
(the length of the longest offloaded prefix), ``prepare_load(block_hashes)
-> LoadStoreSpec`` (blocks protected from eviction until ``complete_load``),
``touch``, ``complete_load``, ``prepare_store(block_hashes) ->
PrepareStoreOutput | None``, ``complete_store(block_hashes, success)``,
``take_events``. Block hashes are ``BlockHash = NewType("BlockHash",
bytes)`` (vllm/v1/core/kv_cache_utils.py), SHA-256 digests of the chained
token blocks. The call order is that of the offloading connector's scheduler
(``OffloadingConnectorScheduler`` in
vllm/distributed/kv_transfer/kv_connector/v1/offloading_connector.py, of the
same era): ``touch`` then ``lookup`` in get_num_new_matched_tokens,
``prepare_load`` in update_state_after_alloc, ``prepare_store`` when blocks
fill, and ``complete_load`` / ``complete_store`` with the set of hashes of a
request whose transfers the workers report finished (or that was
preempted). The hashes come as iterators (``islice``) there, and are read
once here.

How the kvpool side keeps those promises:

- kvpool's client exposes no read lease (``Client::lookup`` takes none and
  the lease a get takes ends with the get; include/kvpool/client.h), so
  ``prepare_load`` copies the blocks out of the pool into slots of a
  registered host staging buffer: once it returns, eviction can no longer
  take them. Its ``LoadStoreSpec`` (``KvpoolStagingSpec``) names the slots
  and gives a writable view of each; the worker copies from there to the
  GPU; ``complete_load`` frees the slots. A block evicted between
  ``lookup`` and ``prepare_load`` raises ``kvpool.NotFound`` (no stale or
  partial data is ever handed out).
- ``prepare_store`` skips the leading blocks already in the pool, takes a
  staging slot for each of the rest (``None`` when too few slots are free:
  vLLM's "cannot store") and returns their views for the worker to fill;
  ``complete_store(success=True)`` puts them (kvpool deduplicates) and frees
  the slots; ``success=False`` only frees them. Nothing is evicted by a
  store here (the coordinator evicts), so ``block_hashes_evicted`` is empty.
- ``lookup`` answers 0 (a miss, logged) when the pool cannot be reached,
  and ``complete_store`` logs a store that failed: the scheduler goes on
  without the pool instead of failing the step.
- ``touch`` does nothing: the coordinator keeps its own recency and takes
  no hints from clients yet.

Keys: each BlockHash (bytes) maps to ``kvpool.engine_keys(ns, hash)``,
XXH3-128 seeded with the namespace id. The namespace is the caller's
descriptor (model, dtype, layers, heads, head_dim, tokens per block,
layout, TP rank/size), so workers of one model and TP rank share blocks.

Not here: the ``OffloadingSpec`` vLLM loads by module path
(``kv_connector_extra_config`` ``spec_name`` + ``spec_module_path``,
vllm/v1/kv_offload/factory.py at commit
07b13497a9b52274d334090a9a8e04d5ec9ca7e9), whose ``get_manager`` would return
this manager and whose ``get_handlers`` would copy between GPU blocks and the
staging slots on the workers. That handler's signature differs between the
commits read (``get_handlers(kv_caches, attn_backends)`` vs
``get_handlers(CanonicalKVCaches)`` in vllm/v1/kv_offload/spec.py at
0072b0b7443bdddf17824c78d4feae8e1fc12fb4), it needs the GPU, and the staging
buffer would have to be shared memory between the scheduler and worker
processes; none of that can be checked here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Iterable, List, Optional

import kvpool

from ._common import Staging, connect

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_utils import BlockHash
    from vllm.v1.kv_offload.abstract import OffloadingEvent, PrepareStoreOutput

MEDIUM = "kvpool"

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class KvpoolStagingSpec:
    """Where a prepared load or store lives: staging slots, one per block, and
    a writable byte view (numpy uint8) of each."""

    block_hashes: List[bytes]
    slots: List[int]
    buffers: list

    @staticmethod
    def medium() -> str:
        return MEDIUM


@dataclasses.dataclass
class _PrepareStoreOutput:
    """vLLM's PrepareStoreOutput when vLLM is not installed (same fields)."""

    block_hashes_to_store: list
    store_spec: KvpoolStagingSpec
    block_hashes_evicted: list


def _prepare_store_output(**fields):
    try:
        from vllm.v1.kv_offload.abstract import PrepareStoreOutput
    except ImportError:
        return _PrepareStoreOutput(**fields)
    return PrepareStoreOutput(**fields)


class KvpoolOffloadingManager:
    """vLLM ``OffloadingManager`` over kvpool (see the module docstring).

    ``namespace``: the keyword arguments of ``Client.register_namespace``.
    ``staging_blocks``: slots in the host staging buffer (blocks that may be
    prepared for loading or storing at once).
    """

    def __init__(self, namespace: dict, *, staging_blocks: int = 64, coordinator: Optional[str] = None,
                 secret_file: Optional[str] = None, timeout_s: float = 10.0, client=None):
        self.client = connect(coordinator, secret_file, timeout_s, client)
        self._owns_client = client is None
        self.namespace = self.client.register_namespace(**namespace)
        self.block_bytes = self.client.block_bytes(self.namespace)
        self.staging = Staging(self.client, staging_blocks, self.block_bytes)
        self._lock = threading.Lock()
        # Slots held per block hash: loads (a hash may be prepared by several
        # requests at once) and stores.
        self._loading = {}  # hash -> [slot, holders]
        self._storing = {}  # hash -> slot

    def _keys(self, block_hashes):
        return kvpool.engine_keys(self.namespace, list(block_hashes))

    # -- lookups -------------------------------------------------------------

    def lookup(self, block_hashes: Iterable["BlockHash"]) -> int:
        """The length of the longest prefix of block_hashes in the pool."""
        hashes = list(block_hashes)
        if not hashes:
            return 0
        try:
            return self.client.lookup(self.namespace, self._keys(hashes))
        except kvpool.Error as e:  # the scheduler asks every step: a pool it cannot reach is a miss
            logger.warning("kvpool: lookup of %d blocks failed: %s", len(hashes), e)
            return 0

    def touch(self, block_hashes: Iterable["BlockHash"]) -> None:
        """No recency hints in kvpool yet: nothing to do."""
        return None

    # -- loads ---------------------------------------------------------------

    def prepare_load(self, block_hashes: Iterable["BlockHash"]) -> KvpoolStagingSpec:
        """Copies the blocks into staging slots (protected from eviction from
        here on) and returns where they are."""
        hashes = list(block_hashes)
        with self._lock:
            fresh = [h for h in dict.fromkeys(hashes) if h not in self._loading]
            slots = self.staging.take(len(fresh))
            if slots is None:
                raise kvpool.ResourceExhausted(f"{len(fresh)} blocks to load, {self.staging.free_slots()} "
                                               "staging slots free: raise staging_blocks")
            for h, s in zip(fresh, slots):
                self._loading[h] = [s, 0]
            for h in hashes:
                self._loading[h][1] += 1
        try:
            if fresh:
                loaded = self.client.get(self.namespace, self._keys(fresh), [self.staging.view(s) for s in slots])
                if loaded < len(fresh):
                    raise kvpool.NotFound(f"block {loaded} of {len(fresh)} to load is no longer in the pool")
        except BaseException:
            self._release(hashes)
            raise
        with self._lock:
            used = [self._loading[h][0] for h in hashes]
        return KvpoolStagingSpec(hashes, used, [self.staging.view(s) for s in used])

    def complete_load(self, block_hashes: Iterable["BlockHash"]) -> None:
        """The worker has copied the blocks out: their slots may go."""
        self._release(list(block_hashes))

    def _release(self, hashes):
        freed = []
        with self._lock:
            for h in hashes:
                entry = self._loading.get(h)
                if entry is None:
                    continue
                entry[1] -= 1
                if entry[1] <= 0:
                    freed.append(entry[0])
                    del self._loading[h]
        self.staging.give(freed)

    # -- stores --------------------------------------------------------------

    def prepare_store(self, block_hashes: Iterable["BlockHash"]) -> Optional["PrepareStoreOutput"]:
        """Staging slots for the blocks not yet in the pool (the leading run
        already there is skipped), or None when too few slots are free."""
        hashes = list(block_hashes)
        present = self.lookup(hashes)
        with self._lock:
            to_store = [h for h in dict.fromkeys(hashes[present:]) if h not in self._storing]
            slots = self.staging.take(len(to_store))
            if slots is None:
                return None
            for h, s in zip(to_store, slots):
                self._storing[h] = s
        spec = KvpoolStagingSpec(to_store, slots, [self.staging.view(s) for s in slots])
        return _prepare_store_output(block_hashes_to_store=to_store, store_spec=spec, block_hashes_evicted=[])

    def complete_store(self, block_hashes: Iterable["BlockHash"], success: bool = True) -> None:
        """Puts the staged blocks (success) and frees their slots. A key
        another writer holds, or a put that failed, is simply not stored:
        a later lookup misses it."""
        with self._lock:
            staged = [(h, self._storing.pop(h)) for h in dict.fromkeys(block_hashes) if h in self._storing]
        if not staged:
            return
        try:
            if success:
                result = self.client.put(self.namespace, self._keys([h for h, _ in staged]),
                                         [self.staging.view(s) for _, s in staged])
                if result.failed:
                    logger.warning("kvpool: %d of %d blocks not stored: %s", result.failed, len(staged),
                                   next(e for e in result.errors if e is not None))
        except kvpool.Error as e:
            logger.warning("kvpool: storing %d blocks failed: %s", len(staged), e)
        finally:
            self.staging.give([s for _, s in staged])

    def take_events(self) -> Iterable["OffloadingEvent"]:
        return ()

    def close(self) -> None:
        self.staging.close()
        if self._owns_client:
            self.client.close()


__all__ = ["KvpoolOffloadingManager", "KvpoolStagingSpec", "MEDIUM"]
