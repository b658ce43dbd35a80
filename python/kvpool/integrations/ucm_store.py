"""kvpool as a Huawei UCM (unified-cache-management) KV store.

Follows ``UcmKVStoreBaseV1`` in ModelEngine-Group/unified-cache-management
ucm/store/ucmstore_v1.py at commit c10fa52482f49bb28a21ef955f3ce31d8470a131
and the methods its pipeline store has in ucm/store/pipeline/connector.py at
commit 6d07bc8b1bef8363a6c3a238e13661868bff25d3 (``lookup_on_prefix``,
``load_data``, ``dump_data``; a later version adds ``dump_data(...,
prerequisite_handle=0)``, accepted and ignored here): ``lookup(block_ids) -> List[bool]``,
``lookup_on_prefix(block_ids) -> int``, ``prefetch``, ``load`` / ``dump``
(``block_ids``, ``shard_index``, a row of tensors per block) and
``load_data`` / ``dump_data`` (a row of addresses per block) returning a
``Task``; ``wait(task)`` blocks (and raises the task's error),
``check(task) -> bool`` polls. Block ids are raw bytes (vLLM block hashes).

``lookup_on_prefix`` returns UCM's index form: the index of the last block
of the longest present prefix, -1 when the first block is missing (the
pipeline store's ``LookupOnPrefix``; UCM's connectors count
``lookup_on_prefix(ids) + 1`` hit blocks).

Storage: one kvpool block per (block id, shard index) holding that shard's
row of tensors back to back; the kvpool block size is
``config["kvpool_block_bytes"]``, else ``config["shard_size"]``, else
``config["block_size"]`` (bytes), and a row's tensors are equal parts of
it. Tensors are host memory (torch CPU tensors, numpy arrays, buffers;
GPU tensors are refused). Rows are gathered into / scattered from a
registered staging buffer (one copy each way: a row's tensors are separate
allocations and a kvpool block is one contiguous object). ``lookup`` and
``lookup_on_prefix`` look at shard ``config.get("kvpool_lookup_shard", 0)``.
Tasks run on two worker threads; kvpool calls release the GIL. A
``load``/``dump`` task holds the caller's tensors until it is done;
``load_data``/``dump_data`` take addresses whose memory the caller keeps.

Keys: the engine key ``block_id + shard_index`` (8 bytes, little-endian)
mapped with ``kvpool.engine_keys`` (XXH3-128 seeded with the namespace id);
the namespace is ``config["model"]`` (or "ucm") with layout "ucm-shard-v1"
and the block size. ``cc_store`` raises NotImplementedError: there is no
UCM C++ store object behind this one.

UCM loads stores by module path (ucm/store/factory_v1.py at commit
2b8c655512bf53c0ecce4e33fc9f0667c49eef5f: import, ``getattr``, ``assert
issubclass(cls, UcmKVStoreBaseV1)``, ``cls(config)``)::

    UcmConnectorFactoryV1.register_connector(
        "UcmKvpoolStore", "kvpool.integrations.ucm_store", "UcmKvpoolStore")
    store = UcmConnectorFactoryV1.create_connector(
        "UcmKvpoolStore", {"kvpool_coordinator": "10.0.0.1:7400", "shard_size": ...})

``UcmKvpoolStore`` is made on first access (module ``__getattr__``), when
UCM's ``UcmKVStoreBaseV1`` gets it as a virtual subclass; importing this
module imports no engine. ``KvpoolUcmStore`` is the same class.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
from typing import TYPE_CHECKING, Dict, List

import numpy as np

import kvpool

from ._common import Staging, address_and_size, connect

if TYPE_CHECKING:
    import torch


class KvpoolTask:
    """A load or dump in flight (UCM's ``Task``)."""

    def __init__(self, future, kind, count, keepalive=None):
        self.future = future
        self.kind = kind
        self.count = count
        # The caller's tensors, held while the task may still touch them
        # (load/dump; load_data/dump_data take addresses the caller keeps).
        self._keepalive = keepalive
        future.add_done_callback(self._release)

    def _release(self, _future):
        self._keepalive = None

    def __repr__(self):
        return f"<KvpoolTask {self.kind} of {self.count} blocks{' done' if self.future.done() else ''}>"


class KvpoolUcmStore:
    """UCM ``UcmKVStoreBaseV1`` over kvpool (see the module docstring)."""

    def __init__(self, config: Dict[str, object], *, client=None):
        self.config = config
        block = config.get("kvpool_block_bytes") or config.get("shard_size") or config.get("block_size")
        if not block:
            raise kvpool.InvalidArgument("config needs kvpool_block_bytes, shard_size or block_size (bytes)")
        self.block_bytes = int(block)
        self.client = connect(config.get("kvpool_coordinator"), config.get("kvpool_secret_file"),
                              config.get("kvpool_timeout_s", 10.0), client)
        self._owns_client = client is None
        self.namespace = self.client.register_namespace(model_id=str(config.get("model", "ucm")), dtype="bytes",
                                                        num_layers=0, num_kv_heads=0, head_dim=0,
                                                        tokens_per_block=0, layout="ucm-shard-v1",
                                                        block_bytes=self.block_bytes)
        self.lookup_shard = int(config.get("kvpool_lookup_shard", 0))
        self.staging = Staging(self.client, int(config.get("kvpool_staging_blocks", 16)), self.block_bytes)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="kvpool-ucm")

    def cc_store(self) -> int:
        raise NotImplementedError("kvpool has no UCM C++ Store object; use this Python store")

    # -- keys and lookups ----------------------------------------------------

    def _keys(self, block_ids, shard_index):
        ids = [bytes(b) + int(s).to_bytes(8, "little") for b, s in zip(block_ids, shard_index, strict=True)]
        return kvpool.engine_keys(self.namespace, ids)

    def _lookup_keys(self, block_ids):
        return self._keys(block_ids, [self.lookup_shard] * len(block_ids))

    def lookup(self, block_ids: List[bytes]) -> List[bool]:
        """Per block: in the pool or not."""
        if not block_ids:
            return []
        keys = self._lookup_keys(block_ids)
        hit = self.client.lookup(self.namespace, keys)
        if hit == len(keys):
            return [True] * hit
        # The leading run took one call; each block after the first miss
        # takes its own (kvpool's lookup answers prefixes).
        rest = [self.client.lookup(self.namespace, k) == 1 for k in keys[hit + 1:]]
        return [True] * hit + [False] + rest

    def lookup_on_prefix(self, block_ids: List[bytes]) -> int:
        """The index of the last block of the longest present prefix; -1 when
        the first block is missing."""
        if not block_ids:
            return -1
        return self.client.lookup(self.namespace, self._lookup_keys(block_ids)) - 1

    def prefetch(self, block_ids: List[bytes]) -> None:
        """Nothing to do: kvpool's DRAM is already the fast tier."""
        return None

    # -- transfers -------------------------------------------------------------

    def load(self, block_ids: List[bytes], shard_index: List[int], dst_tensor: List[List["torch.Tensor"]]):
        rows = [[address_and_size(t) for t in row] for row in dst_tensor]
        return self._submit("load", block_ids, shard_index, rows, keepalive=dst_tensor)

    def dump(self, block_ids: List[bytes], shard_index: List[int], src_tensor: List[List["torch.Tensor"]]):
        rows = [[address_and_size(t) for t in row] for row in src_tensor]
        return self._submit("dump", block_ids, shard_index, rows, keepalive=src_tensor)

    def load_data(self, block_ids: List[bytes], shard_index: List[int], dst_addr):
        return self._submit("load", block_ids, shard_index, self._address_rows(dst_addr))

    def dump_data(self, block_ids: List[bytes], shard_index: List[int], src_addr, prerequisite_handle: int = 0):
        return self._submit("dump", block_ids, shard_index, self._address_rows(src_addr))

    # The v0 names of the same calls.
    fetch_data = load_data

    def wait(self, task: KvpoolTask) -> None:
        """Blocks until the task is done; raises its kvpool.Error if it failed."""
        task.future.result()

    def check(self, task: KvpoolTask) -> bool:
        """Whether the task is done (a failed task is done; wait raises)."""
        return task.future.done()

    def commit(self, block_ids: List[bytes], is_success: bool = True) -> None:
        """Dumps commit in kvpool as they complete: nothing left to do."""
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.staging.close()
        if self._owns_client:
            self.client.close()

    # -- helpers -------------------------------------------------------------

    def _address_rows(self, addrs):
        rows = np.asarray(addrs, dtype=np.uint64)
        if rows.ndim != 2:
            raise kvpool.InvalidArgument("addresses: one row of addresses per block")
        part = self.block_bytes // rows.shape[1]
        return [[(int(a), part) for a in row] for row in rows]

    def _submit(self, kind, block_ids, shard_index, rows, keepalive=None):
        if not (len(block_ids) == len(shard_index) == len(rows)):
            raise kvpool.InvalidArgument(f"{len(block_ids)} blocks, {len(shard_index)} shard indexes, "
                                         f"{len(rows)} rows")
        for i, row in enumerate(rows):
            total = sum(size for _, size in row)
            if total != self.block_bytes:
                raise kvpool.InvalidArgument(f"block {i}: its row holds {total} bytes, the block is "
                                             f"{self.block_bytes}")
        keys = self._keys(block_ids, shard_index)
        work = self._load if kind == "load" else self._dump
        return KvpoolTask(self._executor.submit(work, keys, rows), kind, len(keys), keepalive)

    def _load(self, keys, rows):
        step = self.staging.slots
        for start in range(0, len(keys), step):
            batch, batch_rows = keys[start:start + step], rows[start:start + step]
            with self.staging.hold(len(batch)) as slots:
                loaded = self.client.get(self.namespace, batch, [self.staging.view(s) for s in slots])
                for s, row in zip(slots[:loaded], batch_rows):
                    _scatter(self.staging.view(s), row)
            if loaded < len(batch):
                raise kvpool.NotFound(f"block {start + loaded} of {len(keys)} is not in the pool "
                                      f"(blocks before it were loaded)")

    def _dump(self, keys, rows):
        step = self.staging.slots
        for start in range(0, len(keys), step):
            batch, batch_rows = keys[start:start + step], rows[start:start + step]
            with self.staging.hold(len(batch)) as slots:
                for s, row in zip(slots, batch_rows):
                    _gather(self.staging.view(s), row)
                result = self.client.put(self.namespace, batch, [self.staging.view(s) for s in slots])
            for err in result.errors:
                if err is not None:
                    raise err


def _scatter(block, row):
    base = block.__array_interface__["data"][0]
    offset = 0
    for address, size in row:
        ctypes.memmove(address, base + offset, size)
        offset += size


def _gather(block, row):
    base = block.__array_interface__["data"][0]
    offset = 0
    for address, size in row:
        ctypes.memmove(base + offset, address, size)
        offset += size


def __getattr__(name):
    # UCM's store factory expects a UcmKVStoreBaseV1: register ours as a
    # virtual subclass when UCM asks for the class.
    # Registering is idempotent and lasts as long as the engine's module.
    if name != "UcmKvpoolStore":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ucm.store.ucmstore_v1 import UcmKVStoreBaseV1
    if not issubclass(KvpoolUcmStore, UcmKVStoreBaseV1):
        UcmKVStoreBaseV1.register(KvpoolUcmStore)
    return KvpoolUcmStore


__all__ = ["KvpoolUcmStore", "KvpoolTask"]
