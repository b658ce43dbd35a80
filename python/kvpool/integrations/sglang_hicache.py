"""kvpool as SGLang HiCache's L3 storage backend (zero-copy, interface v1).

Follows the interface of SGLang's ``HiCacheStorage`` in sgl-project/sglang at
commit 001067fffe33427bee0ed2f007fb7551a1d76b44 (main; every file below was
read at that commit; which release first has exactly this shape was not
checked):

- python/sglang/srt/mem_cache/hicache_storage.py: ``HiCacheStorage``
  (``batch_exists`` -> count of leading hits, ``batch_get_v1`` /
  ``batch_set_v1`` -> per-key bools, ``exists``, ``register_mem_pool_host``);
- python/sglang/srt/mem_cache/storage/backend_factory.py: the "dynamic"
  backend imports ``module_path``, takes ``class_name`` (which must be a
  ``HiCacheStorage`` subclass) and calls ``cls(storage_config, kwargs)``;
- python/sglang/srt/managers/cache_controller.py: after construction
  ``register_mem_pool_host(host_pool)``; prefetch asks ``batch_exists`` in
  batches of 128 page keys and stops at the first short batch, then
  ``batch_get_v1(keys, host_indices, extra_info)`` and counts leading
  Trues; backup calls ``all(batch_set_v1(keys, host_indices, extra_info))``.
  Zero copy is chosen for a dynamic backend when extra_config has
  ``"interface_v1": 1``.

Run SGLang with::

    --enable-hierarchical-cache --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "kvpool",
        "module_path": "kvpool.integrations.sglang_hicache",
        "class_name": "HiCacheKvpool", "interface_v1": 1,
        "coordinator": "10.0.0.1:7400"}'

``HiCacheKvpool`` is made on first access (module ``__getattr__``): that is
when SGLang is imported and the class registered as a virtual subclass of
``HiCacheStorage``. Importing this module imports no engine.
``KvpoolHiCacheStorage`` is the same class without touching SGLang.

Memory: the host pool's ``kv_buffer`` is registered with kvpool once, in
``register_mem_pool_host``; gets write straight into host-pool pages and puts
read straight from them. ``get_page_buffer_meta(host_indices)`` gives, per
page, one pointer per page object (K and V for MHA, one for MLA, in the
page_first layouts); each object is one kvpool block, so every object must
be the same size, 64 KiB..256 MiB (the layer_first layout's per-layer
objects are too small and are refused at registration).

Keys: SGLang's page key (a hex string) and the object's index j within its
page, as the engine key ``f"{key}#{j}"``, mapped with
``kvpool.engine_keys`` (XXH3-128 seeded with the namespace id). The
namespace names the model (``storage_config.model_name``), the host pool's
dtype and layout, the object size and the TP rank/size (MLA: rank 0 of 1,
so every rank shares the same blocks, as SGLang's other backends do); a
page is a hit only when all its objects are.

extra_config keys read here: ``coordinator`` (else $KVPOOL_COORDINATOR),
``secret_file`` (else $KVPOOL_SECRET_FILE), ``timeout_s``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, List, Optional

import kvpool

from ._common import address_and_size, connect, raw_view, setting

if TYPE_CHECKING:  # engine types for readers and type checkers only
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig, HiCacheStorageExtraInfo

logger = logging.getLogger(__name__)

_LAYOUT = "sglang-hicache"


class KvpoolHiCacheStorage:
    """SGLang ``HiCacheStorage`` over kvpool (see the module docstring)."""

    def __init__(self, storage_config: Optional["HiCacheStorageConfig"] = None, kwargs: Any = None, *, client=None):
        extra = setting(storage_config, "extra_config") or {}
        self.storage_config = storage_config
        self.client = connect(extra.get("coordinator"), extra.get("secret_file"), extra.get("timeout_s", 10.0), client)
        self._owns_client = client is None
        self.model_name = setting(storage_config, "model_name") or "unknown"
        mla = bool(setting(storage_config, "is_mla_model", False))
        self.tp_rank = 0 if mla else int(setting(storage_config, "tp_rank", 0))
        self.tp_size = 1 if mla else int(setting(storage_config, "tp_size", 1))
        self.pp = (int(setting(storage_config, "pp_rank", 0)), int(setting(storage_config, "pp_size", 1)))
        self.mem_pool_host = None
        self.namespace = None
        self.parts_per_page = 0
        self.object_bytes = 0
        self._registered = None  # (address, bytes) of the host pool's buffer
        self._lock = threading.Lock()

    # -- setup ---------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host) -> None:
        """Registers the host pool's buffer with kvpool once and the namespace
        its page objects imply."""
        with self._lock:
            if self._registered is not None:
                raise kvpool.FailedPrecondition("a host pool is already registered")
            page_size = int(mem_pool_host.page_size)
            ptrs, sizes = mem_pool_host.get_page_buffer_meta(_page_indices(page_size))
            sizes = _sizes(sizes, len(ptrs))
            if not ptrs or len(set(sizes)) != 1:
                raise kvpool.InvalidArgument(f"page objects of sizes {sorted(set(sizes))}: kvpool needs one size")
            dtype = str(getattr(mem_pool_host, "dtype", "bytes")).replace("torch.", "")
            layout = f"{_LAYOUT}|{getattr(mem_pool_host, 'layout', 'unknown')}|pp{self.pp[0]}of{self.pp[1]}"
            self.namespace = self.client.register_namespace(
                model_id=self.model_name, dtype=dtype, num_layers=int(getattr(mem_pool_host, "layer_num", 0)),
                num_kv_heads=int(getattr(mem_pool_host, "head_num", 0)),
                head_dim=int(getattr(mem_pool_host, "head_dim", 0)), tokens_per_block=page_size, layout=layout,
                tp_rank=self.tp_rank, tp_size=self.tp_size, block_bytes=sizes[0])
            address, size = address_and_size(mem_pool_host.kv_buffer)
            self.client.register_buffer_ptr(address, size)
            self._registered = (address, size)
            self.mem_pool_host = mem_pool_host
            self.parts_per_page = len(ptrs)
            self.object_bytes = sizes[0]

    def register_mem_host_pool_v2(self, host_pool, host_pool_name) -> None:
        """The KV pool only (SGLang's PoolName.KV, "kv"); already registered
        through register_mem_pool_host is fine, as for SGLang's Mooncake
        backend."""
        if str(host_pool_name) != "kv":
            raise NotImplementedError(f"kvpool stores the KV pool only, not pool '{host_pool_name}'")
        if self.mem_pool_host is host_pool:
            return
        self.register_mem_pool_host(host_pool)

    # -- queries -------------------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info: Optional["HiCacheStorageExtraInfo"] = None) -> int:
        """How many leading pages of ``keys`` are in the pool (all objects).
        A pool that cannot be reached is a miss (logged): SGLang calls this
        on its prefetch thread, which an exception would end for good."""
        if not keys:
            return 0
        object_keys = self._object_keys(keys)  # not registered: a caller's bug, raised
        try:
            hit = self.client.lookup(self._ns(), object_keys)
        except kvpool.Error as e:
            logger.warning("kvpool: batch_exists of %d pages failed: %s", len(keys), e)
            return 0
        return hit // self.parts_per_page

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # -- zero-copy data path ------------------------------------------------

    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Loads the longest present prefix of ``keys`` straight into the host
        pool pages at ``host_indices``; True for each page loaded."""
        if not keys:
            return []
        ns = self._ns()  # not registered: a caller's bug, raised
        try:
            views = self._page_views(keys, host_indices)
            loaded = self.client.get(ns, self._object_keys(keys), views)
        except kvpool.Error as e:
            logger.warning("kvpool: batch_get_v1 of %d pages failed: %s", len(keys), e)
            return [False] * len(keys)
        pages = loaded // self.parts_per_page
        return [i < pages for i in range(len(keys))]

    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Writes the host pool pages at ``host_indices`` under ``keys``; True
        for each page whose objects are all in the pool afterwards (written,
        already there, or being written by another writer of the same key)."""
        if not keys:
            return []
        ns = self._ns()  # not registered: a caller's bug, raised
        try:
            views = self._page_views(keys, host_indices)
            result = self.client.put(ns, self._object_keys(keys), views)
        except kvpool.Error as e:
            logger.warning("kvpool: batch_set_v1 of %d pages failed: %s", len(keys), e)
            return [False] * len(keys)
        n = self.parts_per_page
        out = []
        for i in range(len(keys)):
            outcomes = result.outcomes[i * n:(i + 1) * n]
            out.append(all(o != "failed" for o in outcomes))
        for err in result.errors:
            if err is not None:
                logger.warning("kvpool: batch_set_v1: %s", err)
                break
        return out

    # -- what kvpool does not do --------------------------------------------

    def get(self, key, target_location=None, target_sizes=None):
        raise NotImplementedError("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_get_v1)")

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        raise NotImplementedError("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_get_v1)")

    def set(self, key, value=None, target_location=None, target_sizes=None):
        raise NotImplementedError("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_set_v1)")

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None):
        raise NotImplementedError("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_set_v1)")

    def batch_exists_v2(self, keys, pool_transfers=None, extra_info=None):
        raise NotImplementedError("kvpool stores the KV pool only (no v2 multi-pool transfers)")

    def batch_get_v2(self, transfers, extra_info=None):
        raise NotImplementedError("kvpool stores the KV pool only (no v2 multi-pool transfers)")

    def batch_set_v2(self, transfers, extra_info=None):
        raise NotImplementedError("kvpool stores the KV pool only (no v2 multi-pool transfers)")

    def clear(self) -> None:
        raise NotImplementedError("kvpool cannot enumerate a namespace's keys to clear them; "
                                  "the coordinator evicts under pressure")

    def get_stats(self):
        return None

    def close(self) -> None:
        with self._lock:
            if self._registered is not None and not self.client.closed:
                self.client.unregister_buffer(self._registered[0])
            self._registered = None
            if self._owns_client:
                self.client.close()

    # -- helpers -------------------------------------------------------------

    def _ns(self):
        if self.namespace is None:
            raise kvpool.FailedPrecondition("register_mem_pool_host has not been called")
        return self.namespace

    def _object_keys(self, keys):
        n = self.parts_per_page
        return kvpool.engine_keys(self._ns(), [f"{k}#{j}" for k in keys for j in range(n)])

    def _page_views(self, keys, host_indices):
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        sizes = _sizes(sizes, len(ptrs))
        if len(ptrs) != len(keys) * self.parts_per_page:
            raise kvpool.InvalidArgument(f"{len(keys)} keys but {len(ptrs)} page objects "
                                         f"({self.parts_per_page} per page)")
        base, size = self._registered
        for p, s in zip(ptrs, sizes):
            if s != self.object_bytes or not base <= p or p + s > base + size:
                raise kvpool.InvalidArgument(f"page object at {p:#x} ({s} bytes) is outside the registered "
                                             "host pool or of another size")
        return [raw_view(int(p), int(s)) for p, s in zip(ptrs, sizes)]


def _sizes(sizes, n):
    """get_page_buffer_meta gives sizes as a list or (some pools) one int."""
    if isinstance(sizes, int):
        return [sizes] * n
    return [int(s) for s in sizes]


def _page_indices(page_size):
    """Host indices of the first page, in the engine's own tensor type when
    it is installed (its pools index with tensors), else numpy."""
    try:
        import torch  # lazily: only for the engine's own pools
        return torch.arange(page_size, dtype=torch.int64)
    except ImportError:
        import numpy as np
        return np.arange(page_size, dtype=np.int64)


def __getattr__(name):
    # SGLang's factory insists on a HiCacheStorage subclass: register ours as
    # a virtual one when SGLang asks for the class, not at import.
    # Registering is idempotent and lasts as long as the engine's module.
    if name != "HiCacheKvpool":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage
    if not issubclass(KvpoolHiCacheStorage, HiCacheStorage):
        HiCacheStorage.register(KvpoolHiCacheStorage)
    return KvpoolHiCacheStorage


# HiCacheKvpool stays out of __all__: a star import would import SGLang.
__all__ = ["KvpoolHiCacheStorage"]
