"""kvpool as SGLang HiCache's L3 storage backend (zero-copy, interface v1).

Pinned: sgl-project/sglang main at commit
001067fffe33427bee0ed2f007fb7551a1d76b44 (no release tag was resolved for it;
tests/python/engines/sglang_manifest.py lists every file and commit read):

- python/sglang/srt/mem_cache/hicache_storage.py (001067f): ``HiCacheStorage``
  (abstract ``get``, ``batch_get``, ``set``, ``batch_set``, ``exists``;
  ``batch_exists`` -> count of leading hits, ``batch_get_v1`` /
  ``batch_set_v1`` -> per-key bools, ``register_mem_pool_host``,
  ``register_mem_host_pool_v2``, ``clear`` (a no-op in the base class),
  ``get_stats``) and ``HiCacheStorageConfig`` (tp, pp, attn_cp and dp rank and
  size, ``is_mla_model``, ``is_page_first_layout``, ``should_split_heads``,
  ``model_name``, ``extra_config``);
- python/sglang/srt/mem_cache/storage/backend_factory.py (001067f),
  ``StorageBackendFactory._create_dynamic_backend``: extra_config must have
  ``backend_name``, ``module_path`` and ``class_name``; it imports
  ``module_path``, takes ``class_name`` (which must be a ``HiCacheStorage``
  subclass) and calls ``cls(storage_config, kwargs)``;
- python/sglang/srt/mem_cache/pool_host/mha.py (39baee9e09735ebb7916f64ceb00dbfe395ab52b):
  ``MHATokenToKVPoolHost.get_page_buffer_meta`` serves the ``page_first`` and
  ``page_first_direct`` layouts only (``layer_first`` and ``page_head`` raise
  ValueError there); ``AsymmetricMHATokenToKVPoolHost`` (K and V head dims
  differ) gives per page a K and a V pointer of different sizes;
- server_args.py: ``--hicache-mem-layout`` defaults to ``layer_first``, so
  the documented command sets ``page_first``;
- cache_controller.py: after construction ``register_mem_pool_host(host_pool)``;
  prefetch asks ``batch_exists`` in batches of 128 page keys, then
  ``batch_get_v1(keys, host_indices, extra_info)`` and counts leading Trues;
  backup calls ``all(batch_set_v1(keys, host_indices, extra_info))``.
  tests/python/test_sglang_hicache.py replays that sequence.

Run SGLang with (python/README.md has the tested text)::

    --enable-hierarchical-cache --hicache-mem-layout page_first
    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "kvpool",
        "module_path": "kvpool.integrations.sglang_hicache",
        "class_name": "HiCacheKvpool", "interface_v1": 1,
        "coordinator": "10.0.0.5:7400", "secret_file": "/etc/kvpool/secret"}'

``HiCacheKvpool`` is made on first access (module ``__getattr__``): that is
when SGLang is imported, and the class is ``KvpoolHiCacheStorage`` with
SGLang's ``HiCacheStorage`` as a second base (so SGLang's ABC checks every
abstract method at construction). Importing this module imports no engine.

Memory: the host pool's buffers (``kv_buffer``, or ``k_buffer`` and
``v_buffer`` of an asymmetric pool) are registered with kvpool once, in
``register_mem_pool_host``; gets write straight into host-pool pages and puts
read straight from them. ``get_page_buffer_meta(host_indices)`` gives, per
page, one pointer per page object; object j of every page is one kvpool
block in namespace j, whose block size is that object's size (64 KiB..256
MiB), so K and V objects of different sizes (asymmetric pools) each have
their own namespace.

Refused at construction: split-heads pools (``should_split_heads``: the
message says to run prefill and decode with the same --tp-size). Refused at
``register_mem_pool_host``: host pool layouts other than ``page_first`` /
``page_first_direct`` (the message names ``--hicache-mem-layout
page_first``), and pools that have no ``get_page_buffer_meta`` (hybrid or
grouped pools, which no flag changes).
Hybrid models (Mamba, SWA, DSA side pools, registered through
``register_mem_host_pool_v2`` under a name other than "kv") are refused
there: kvpool stores the KV pool only and has no ``batch_*_v2``.

Keys: SGLang's page key (a hex string) and the object's index j within its
page, as the engine key ``f"{key}#{j}"``, mapped with ``kvpool.engine_keys``
(XXH3-128 seeded with the namespace id). Every rank that shards KV is in the
namespace: TP rank/size in its tp fields (MLA: rank 0 of 1, every TP rank
holds the same latent KV and shares blocks, as SGLang's other backends do),
pipeline and attention-context-parallel rank/size in its layout
(``sglang-hicache|<layout>|part<j>|pp<r>of<n>|cp<r>of<n>``), so two ranks
never read each other's slices. Attention-DP ranks are replicas of the same
KV and share blocks. A page is a hit only when all its objects are.

``clear()`` removes from the pool every block this instance wrote (SGLang
calls it to flush L3 storage); it remembers the last ``clear_tracked_keys``
(extra_config, default 1048576) page keys it wrote, so older ones are left to
the coordinator's eviction.

extra_config keys read here: ``coordinator`` (else $KVPOOL_COORDINATOR),
``secret_file`` (else $KVPOOL_SECRET_FILE), ``timeout_s``,
``clear_tracked_keys``.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Any, List, Optional

import kvpool

from ._common import address_and_size, connect, raw_view, setting

if TYPE_CHECKING:  # engine types for readers and type checkers only
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig, HiCacheStorageExtraInfo

logger = logging.getLogger(__name__)

_LAYOUT = "sglang-hicache"
# Host pool layouts whose get_page_buffer_meta gives whole pages (pool_host/mha.py).
ZERO_COPY_LAYOUTS = ("page_first", "page_first_direct")
LAYOUT_FLAG = "--hicache-mem-layout page_first"
DEFAULT_CLEAR_TRACKED_KEYS = 1 << 20


class KvpoolHiCacheStorage:
    """SGLang ``HiCacheStorage`` over kvpool (see the module docstring)."""

    def __init__(self, storage_config: Optional["HiCacheStorageConfig"] = None, kwargs: Any = None, *, client=None):
        extra = setting(storage_config, "extra_config") or {}
        if setting(storage_config, "should_split_heads", False):
            raise kvpool.InvalidArgument(
                "kvpool: split-heads host pools (HiCacheStorageConfig.should_split_heads, prefill and decode "
                "with different TP sizes) are not supported: run both with the same --tp-size")
        self.storage_config = storage_config
        self.client = connect(extra.get("coordinator"), extra.get("secret_file"), extra.get("timeout_s", 10.0), client)
        self._owns_client = client is None
        self.model_name = setting(storage_config, "model_name") or "unknown"
        mla = bool(setting(storage_config, "is_mla_model", False))
        self.tp_rank = 0 if mla else int(setting(storage_config, "tp_rank", 0))
        self.tp_size = 1 if mla else int(setting(storage_config, "tp_size", 1))
        self.pp = (int(setting(storage_config, "pp_rank", 0)), int(setting(storage_config, "pp_size", 1)))
        self.cp = (int(setting(storage_config, "attn_cp_rank", 0) or 0),
                   int(setting(storage_config, "attn_cp_size", 1) or 1))
        self.mem_pool_host = None
        self.namespaces = []  # one per page object j
        self.object_sizes = []  # bytes of page object j
        self.parts_per_page = 0
        self._registered = []  # (address, bytes) of each host pool buffer registered
        self._written = collections.OrderedDict()  # page keys written, for clear()
        self._tracked = int(extra.get("clear_tracked_keys", DEFAULT_CLEAR_TRACKED_KEYS))
        self._lock = threading.Lock()

    # -- setup ---------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host) -> None:
        """Registers the host pool's buffers with kvpool once and the
        namespaces its page objects imply (refusals: module docstring)."""
        with self._lock:
            if self.mem_pool_host is not None:
                raise kvpool.FailedPrecondition("a host pool is already registered")
            layout = str(getattr(mem_pool_host, "layout", "unknown"))
            if layout not in ZERO_COPY_LAYOUTS:
                raise kvpool.InvalidArgument(
                    f"kvpool: the host pool layout '{layout}' has no whole-page buffers for zero-copy storage "
                    f"(SGLang's get_page_buffer_meta serves {', '.join(ZERO_COPY_LAYOUTS)}): start SGLang with "
                    f"{LAYOUT_FLAG} (or page_first_direct with --hicache-io-backend direct)")
            if not hasattr(mem_pool_host, "get_page_buffer_meta"):
                raise kvpool.InvalidArgument(
                    f"kvpool: the host pool {type(mem_pool_host).__name__} has no get_page_buffer_meta (a hybrid "
                    "or grouped pool): kvpool stores plain MHA/MLA KV host pools only")
            page_size = int(mem_pool_host.page_size)
            ptrs, sizes = mem_pool_host.get_page_buffer_meta(_page_indices(page_size))
            sizes = _sizes(sizes, len(ptrs))
            if not ptrs:
                raise kvpool.InvalidArgument("kvpool: get_page_buffer_meta gave no page objects")
            dtype = str(getattr(mem_pool_host, "dtype", "bytes")).replace("torch.", "")
            namespaces = []
            for j, size in enumerate(sizes):
                ns_layout = (f"{_LAYOUT}|{layout}|part{j}|pp{self.pp[0]}of{self.pp[1]}"
                             f"|cp{self.cp[0]}of{self.cp[1]}")
                namespaces.append(self.client.register_namespace(
                    model_id=self.model_name, dtype=dtype, num_layers=int(getattr(mem_pool_host, "layer_num", 0)),
                    num_kv_heads=int(getattr(mem_pool_host, "head_num", 0)),
                    head_dim=int(getattr(mem_pool_host, "head_dim", 0)), tokens_per_block=page_size,
                    layout=ns_layout, tp_rank=self.tp_rank, tp_size=self.tp_size, block_bytes=size))
            registered = []
            try:
                for buf in _host_buffers(mem_pool_host):
                    address, size = address_and_size(buf)
                    self.client.register_buffer_ptr(address, size)
                    registered.append((address, size))
            except BaseException:
                for address, _ in registered:
                    self.client.unregister_buffer(address)
                raise
            self._registered = registered
            self.namespaces = namespaces
            self.object_sizes = sizes
            self.mem_pool_host = mem_pool_host
            self.parts_per_page = len(ptrs)

    def register_mem_host_pool_v2(self, host_pool, host_pool_name) -> None:
        """The KV pool only (SGLang's PoolName.KV, "kv"); already registered
        through register_mem_pool_host is fine, as for SGLang's Mooncake
        backend. Other pools belong to hybrid models: refused."""
        if str(host_pool_name) != "kv":
            raise kvpool.Unimplemented(
                f"kvpool stores the KV host pool only, not the '{host_pool_name}' pool of a hybrid model "
                "(Mamba/SWA/DSA side pools need SGLang's batch_*_v2 storage interface, which kvpool does not "
                "implement): run this model without --hicache-storage-backend")
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
        self._check_registered()  # not registered: a caller's bug, raised
        try:
            hit = len(keys)
            for j, ns in enumerate(self.namespaces):
                hit = min(hit, self.client.lookup(ns, self._part_keys(keys[:hit], j)))
                if hit == 0:
                    break
        except kvpool.Error as e:
            logger.warning("kvpool: batch_exists of %d pages failed: %s", len(keys), e)
            return 0
        return hit

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # -- zero-copy data path ------------------------------------------------

    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Loads the longest present prefix of ``keys`` straight into the host
        pool pages at ``host_indices``; True for each page loaded."""
        if not keys:
            return []
        self._check_registered()  # not registered: a caller's bug, raised
        try:
            views = self._page_views(keys, host_indices)
            pages = len(keys)
            for j, ns in enumerate(self.namespaces):
                if pages == 0:
                    break
                pages = min(pages, self.client.get(ns, self._part_keys(keys[:pages], j), views[j][:pages]))
        except kvpool.Error as e:
            logger.warning("kvpool: batch_get_v1 of %d pages failed: %s", len(keys), e)
            return [False] * len(keys)
        return [i < pages for i in range(len(keys))]

    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Writes the host pool pages at ``host_indices`` under ``keys``; True
        for each page whose objects are all in the pool afterwards (written,
        already there, or being written by another writer of the same key)."""
        if not keys:
            return []
        self._check_registered()  # not registered: a caller's bug, raised
        out = [True] * len(keys)
        try:
            views = self._page_views(keys, host_indices)
            for j, ns in enumerate(self.namespaces):
                result = self.client.put(ns, self._part_keys(keys, j), views[j])
                for i, outcome in enumerate(result.outcomes):
                    if outcome == "failed":
                        out[i] = False
                for err in result.errors:
                    if err is not None:
                        logger.warning("kvpool: batch_set_v1: %s", err)
                        break
        except kvpool.Error as e:
            logger.warning("kvpool: batch_set_v1 of %d pages failed: %s", len(keys), e)
            return [False] * len(keys)
        with self._lock:
            for key in keys:
                self._written[key] = None
                self._written.move_to_end(key)
            while len(self._written) > self._tracked:
                self._written.popitem(last=False)
        return out

    # -- what kvpool does not do --------------------------------------------

    def get(self, key, target_location=None, target_sizes=None):
        raise kvpool.Unimplemented("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_get_v1)")

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        raise kvpool.Unimplemented("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_get_v1)")

    def set(self, key, value=None, target_location=None, target_sizes=None):
        raise kvpool.Unimplemented("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_set_v1)")

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None):
        raise kvpool.Unimplemented("kvpool moves pages zero-copy only: set \"interface_v1\": 1 (batch_set_v1)")

    def batch_exists_v2(self, keys, pool_transfers=None, extra_info=None):
        raise kvpool.Unimplemented("kvpool stores the KV pool only (no v2 multi-pool transfers: hybrid models)")

    def batch_get_v2(self, transfers, extra_info=None):
        raise kvpool.Unimplemented("kvpool stores the KV pool only (no v2 multi-pool transfers: hybrid models)")

    def batch_set_v2(self, transfers, extra_info=None):
        raise kvpool.Unimplemented("kvpool stores the KV pool only (no v2 multi-pool transfers: hybrid models)")

    def clear(self) -> None:
        """Removes every block this instance wrote (the last
        ``clear_tracked_keys`` page keys); an unreachable pool is logged."""
        with self._lock:
            keys = list(self._written)
            self._written.clear()
        if not keys or self.mem_pool_host is None:
            return
        try:
            for j, ns in enumerate(self.namespaces):
                for start in range(0, len(keys), 4096):
                    self.client.remove(ns, self._part_keys(keys[start:start + 4096], j))
        except kvpool.Error as e:
            logger.warning("kvpool: clear of %d pages failed: %s", len(keys), e)

    def get_stats(self):
        return None

    def close(self) -> None:
        with self._lock:
            if not self.client.closed:
                for address, _ in self._registered:
                    self.client.unregister_buffer(address)
            self._registered = []
            if self._owns_client:
                self.client.close()

    # -- helpers -------------------------------------------------------------

    def _check_registered(self):
        if self.mem_pool_host is None:
            raise kvpool.FailedPrecondition("register_mem_pool_host has not been called")

    def _part_keys(self, keys, j):
        return kvpool.engine_keys(self.namespaces[j], [f"{k}#{j}" for k in keys])

    def _page_views(self, keys, host_indices):
        """views[j][i]: page i's object j, checked against the registered buffers."""
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        sizes = _sizes(sizes, len(ptrs))
        n = self.parts_per_page
        if len(ptrs) != len(keys) * n:
            raise kvpool.InvalidArgument(f"{len(keys)} keys but {len(ptrs)} page objects ({n} per page)")
        views = [[] for _ in range(n)]
        for k, (p, s) in enumerate(zip(ptrs, sizes)):
            j = k % n
            p, s = int(p), int(s)
            if s != self.object_sizes[j] or not any(base <= p and p + s <= base + size
                                                    for base, size in self._registered):
                raise kvpool.InvalidArgument(f"page object at {p:#x} ({s} bytes) is outside the registered "
                                             "host pool or of another size")
            views[j].append(raw_view(p, s))
        return views


def _host_buffers(pool):
    """The host pool's memory: kv_buffer, or (asymmetric pools) the
    (k_buffer, v_buffer) pair init_kv_buffer returns."""
    buf = getattr(pool, "kv_buffer", None)
    if isinstance(buf, (tuple, list)):
        return list(buf)
    if buf is not None:
        return [buf]
    return [pool.k_buffer, pool.v_buffer]


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
    # SGLang's factory insists on a HiCacheStorage subclass: the class is made
    # when SGLang asks for it, not at import, as a real subclass of SGLang's
    # ABC so that SGLang's own abstract methods are checked at construction.
    if name != "HiCacheKvpool":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage
    return type("HiCacheKvpool", (KvpoolHiCacheStorage, HiCacheStorage), {"__module__": __name__})


# HiCacheKvpool stays out of __all__: a star import would import SGLang.
__all__ = ["KvpoolHiCacheStorage"]
