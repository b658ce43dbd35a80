"""kvpool as a Huawei UCM (unified-cache-management) KV store.

Pinned: ModelEngine-Group/unified-cache-management main at
cdd4406794808e1f387e11a5f8893dc738247e61 (after v0.5.0rc1; every file
below read there, tests/python/engines/ucm_manifest.py lists them; the
test tests/python/test_ucm_store.py follows ucm_connector.py's
``UCMDirectConnector``). Follows ``UcmKVStoreBaseV1`` in
ucm/store/ucmstore_v1.py and the methods its pipeline store has in ucm/store/pipeline/connector.py at
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
row of tensors back to back, and a row's tensors are equal parts of it. One
block size for scheduler and worker: ``config["kvpool_block_bytes"]``, else
``config["block_size"]``, which UCM's connector
(ucm/integration/vllm/ucm_connector.py at cdd4406794808e1f387e11a5f8893dc738247e61,
``UCMDirectConnector._create_store``) sets in both roles: the scheduler from
the model config, the worker from its KV tensors. ``kvpool_layers`` (the
model's layer count, in the ``ucm_connector_config`` both roles share)
puts it in the namespace: each block then carries a checksum per layer
slice (slot format 2), and the layer-wise connector can be used.

Layer by layer (``UCMLayerWiseConnector``, ucm_connector.py at the commit
above: ``save_kv_layer`` dumps and ``_submit_request_load_tasks_for_layer``
loads one layer per call, ``shard_index`` = the layer, with that layer's
addresses only; the worker's ``shard_size`` is one layer's bytes and its
``block_size`` the whole block's): a kvpool block is still the whole UCM
block, so the scheduler's lookups, the direct connector and the layer-wise
one share blocks. A step's dumps of layers 0..L-1 go into one layer-wise
save (``RowMover.begin_save_layer_rows``), committed once every layer is
in: a block is in the pool whole or not at all. Each layer's task is done
once its copies are queued (after UCM's event), the last layer's once the
blocks are committed; UCM's ``wait_for_save`` waits for every task, so its
pages are free when it returns. A layer's load moves and verifies that
layer's slice only (``load_layer_rows``), from an agent on this host (the
layer-wise connector needs one; ``UCMDirectConnector`` loads from any).
Refused at construction: a worker whose shards divide its block but whose
``kvpool_layers`` is missing or disagrees (the message names the value to
set), and shards that do not divide the block (name ``kvpool_block_bytes``:
set it to the shard size to store each shard as its own block). Pipeline
parallelism with the layer-wise connector (a stage dumps only its own
layers, so no block would ever be whole) is not supported: a dump that
starts at a layer other than 0 fails with a message saying so, and the first
stage's saves, never complete, are dropped at the next step's layer 0 (a
warning; nothing committed). Layer-wise shards move from
device memory only. Ranks: UCM's block ids already
carry the TP rank (``RequestHasher`` seeds them with it) and MLA ranks share
rank 0's ids, so the namespace does not repeat it.

Device memory (UCM under vLLM: ``UCMDirectConnector`` builds the worker's
store with ``device_id`` = its local rank and passes, per block, the
device addresses of its K and V in every layer, ``extract_block_addrs``,
plus a CUDA event handle to ``dump_data``): moved by the GPU path,
``kvpool.gpu.RowMover`` (one per row width, on device ``device_id``),
never memmove'd on the host. ``dump_data`` makes the copies wait for the
event (UCM records it on the compute stream after the forward pass wrote
the KV; 0 when UCM synchronised instead) and returns at once; ``wait``
returns once the blocks are committed. ``load_data`` starts the copies;
``wait`` returns once the blocks are in device memory and verified, or
raises RuntimeError (DataLoss for a block that failed its checksum,
NotFound for one not in the pool), which UCMDirectConnector.start_load_kv
turns into invalid block ids, so vLLM recomputes them. ``load`` / ``dump``
with CUDA tensors take the same path (their ``data_ptr()``). Same host as
an agent: DMA between the pool and the GPU; other hosts: through pinned
staging buffers (gpu.h; ``kvpool_gpu_path``: "auto", "mapped" or "staged"
forces one). Without a usable GPU (or in a kvpool built
without CUDA) the task fails with that error and UCM recomputes.

Host memory (torch CPU tensors, numpy arrays, buffers; ``device_id`` < 0):
rows are gathered into / scattered from a registered staging buffer (one
copy each way: a row's tensors are separate allocations and a kvpool
block is one contiguous object). ``lookup`` and
``lookup_on_prefix`` look at shard ``config.get("kvpool_lookup_shard", 0)``.
Tasks run on two worker threads; kvpool calls release the GIL. A
``load``/``dump`` task holds the caller's tensors until it is done;
``load_data``/``dump_data`` take addresses whose memory the caller keeps.

Keys: the engine key ``block_id + shard_index`` (8 bytes, little-endian)
mapped with ``kvpool.engine_keys`` (XXH3-128 seeded with the namespace id);
the namespace is ``config["model"]`` (or "ucm") with layout "ucm-shard-v1"
and the block size. ``cc_store()`` answers 0 (no native UCM ``Store*`` behind this
store); its only caller is UCM's sparse mode (ucm/sparse/gsa/gsa.py hands it
to native prefetch code), which is refused: at construction when
``ucm.sparse.state.has_ucm_sparse()`` is true, and by ``cc_store()`` itself
(RuntimeError) if sparse mode started later. Every failure this store
surfaces is a RuntimeError (kvpool errors are), which UCM's connector
catches around each store call.

UCM loads stores by module path (ucm/store/factory_v1.py at commit
2b8c655512bf53c0ecce4e33fc9f0667c49eef5f: import, ``getattr``, ``assert
issubclass(cls, UcmKVStoreBaseV1)``, ``cls(config)``)::

    UcmConnectorFactoryV1.register_connector(
        "UcmKvpoolStore", "kvpool.integrations.ucm_store", "UcmKvpoolStore")
    store = UcmConnectorFactoryV1.create_connector(
        "UcmKvpoolStore", {"kvpool_coordinator": "10.0.0.1:7400", "shard_size": ...})

``UcmKvpoolStore`` is made on first access (module ``__getattr__``):
``KvpoolUcmStore`` with UCM's ``UcmKVStoreBaseV1`` as a second base;
importing this module imports no engine.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import threading
from typing import TYPE_CHECKING, Dict, List

import numpy as np

import kvpool

from ._common import Staging, address_and_size, connect

logger = logging.getLogger(__name__)

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
        if _ucm_sparse_active():
            raise kvpool.FailedPrecondition(
                "kvpool's UCM store does not support UCM's sparse mode (it needs a native UCM Store* from "
                "cc_store()): remove ucm_sparse_config from the UCM config")
        block = config.get("kvpool_block_bytes") or config.get("block_size")
        if not block:
            raise kvpool.InvalidArgument("config needs kvpool_block_bytes or block_size (bytes)")
        self.block_bytes = int(block)
        self.layers = int(config.get("kvpool_layers") or 0)
        self.layerwise = _layerwise(config.get("shard_size"), self.block_bytes, self.layers)
        self.device_id = int(config.get("device_id", -1) if config.get("device_id") is not None else -1)
        self.client = connect(config.get("kvpool_coordinator"), config.get("kvpool_secret_file"),
                              config.get("kvpool_timeout_s", 10.0), client)
        self._owns_client = client is None
        self.namespace = self.client.register_namespace(model_id=str(config.get("model", "ucm")), dtype="bytes",
                                                        num_layers=self.layers, num_kv_heads=0, head_dim=0,
                                                        tokens_per_block=0, layout="ucm-shard-v1",
                                                        block_bytes=self.block_bytes)
        self.lookup_shard = int(config.get("kvpool_lookup_shard", 0))
        self.staging = Staging(self.client, int(config.get("kvpool_staging_blocks", 16)), self.block_bytes)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="kvpool-ucm")
        self._row_movers = {}  # (row width, device) -> kvpool.gpu.RowMover (device memory)
        self._pending = None  # the step's layer-wise dump in progress (_PendingDump)
        self._pending_lock = threading.Lock()

    def cc_store(self) -> int:
        """0: no native UCM Store* (UCM's sparse mode, its only user, is refused)."""
        if _ucm_sparse_active():
            raise kvpool.FailedPrecondition("kvpool's UCM store has no native Store* for UCM's sparse mode: "
                                            "remove ucm_sparse_config from the UCM config")
        return 0

    # -- keys and lookups ----------------------------------------------------

    def _keys(self, block_ids, shard_index):
        if len(block_ids) != len(shard_index):
            raise kvpool.InvalidArgument(f"{len(block_ids)} block ids but {len(shard_index)} shard indexes")
        if self.layerwise:  # a layer is a slice of the whole block, stored under shard 0
            shard_index = [0] * len(block_ids)
        ids = [bytes(b) + int(s).to_bytes(8, "little") for b, s in zip(block_ids, shard_index)]
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
        if _on_device(dst_tensor):
            return self._device("load", block_ids, shard_index, lambda: _tensor_rows(dst_tensor, self._shard_bytes()),
                                keepalive=dst_tensor, device=_tensor_device(dst_tensor))
        rows = [[address_and_size(t) for t in row] for row in dst_tensor]
        return self._submit("load", block_ids, shard_index, rows, keepalive=dst_tensor)

    def dump(self, block_ids: List[bytes], shard_index: List[int], src_tensor: List[List["torch.Tensor"]]):
        if _on_device(src_tensor):
            return self._device("dump", block_ids, shard_index, lambda: _tensor_rows(src_tensor, self._shard_bytes()),
                                keepalive=src_tensor, device=_tensor_device(src_tensor))
        rows = [[address_and_size(t) for t in row] for row in src_tensor]
        return self._submit("dump", block_ids, shard_index, rows, keepalive=src_tensor)

    def load_data(self, block_ids: List[bytes], shard_index: List[int], dst_addr):
        if self.device_id >= 0:  # UCM's worker under vLLM: device pointers
            return self._device("load", block_ids, shard_index, lambda: _pointer_rows(dst_addr))
        return self._submit("load", block_ids, shard_index, self._address_rows(dst_addr))

    def dump_data(self, block_ids: List[bytes], shard_index: List[int], src_addr, prerequisite_handle: int = 0):
        if self.device_id >= 0:
            return self._device("dump", block_ids, shard_index, lambda: _pointer_rows(src_addr),
                                after=prerequisite_handle)
        if prerequisite_handle:  # an event on a device stream, but host addresses
            return _failed_task("dump", len(block_ids), kvpool.InvalidArgument(
                "kvpool's UCM store: an event handle with host addresses (device_id < 0)"))
        return self._submit("dump", block_ids, shard_index, self._address_rows(src_addr))

    # The v0 names of the same calls.
    fetch_data = load_data

    def wait(self, task: KvpoolTask) -> None:
        """Blocks until the task is done; raises its error (a RuntimeError)
        if it failed."""
        try:
            task.future.result()
        except RuntimeError:
            raise
        except Exception as e:  # anything else a task hit: UCM catches RuntimeError only
            raise kvpool.Internal(f"UCM {task.kind} task failed: {e!r}") from e

    def check(self, task: KvpoolTask) -> bool:
        """Whether the task is done (a failed task is done; wait raises)."""
        return task.future.done()

    def commit(self, block_ids: List[bytes], is_success: bool = True) -> None:
        """Dumps commit in kvpool as they complete: nothing left to do."""
        return None

    def close(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.drop()
        self._executor.shutdown(wait=True)
        for mover in self._row_movers.values():
            mover.close()
        self.staging.close()
        if self._owns_client:
            self.client.close()

    # -- device memory ----------------------------------------------------------

    def _shard_bytes(self):
        """The bytes one call moves per block: a layer's when layer-wise."""
        return self.block_bytes // self.layers if self.layerwise else self.block_bytes

    def _row_mover(self, width, device):
        """The RowMover for rows of ``width`` addresses (a layer's when
        layer-wise: the mover's blocks are then layers x width runs)."""
        mover = self._row_movers.get((width, device))
        if mover is None:
            from kvpool import gpu
            sizes = self.config.get("tensor_size_list")
            if sizes and len(set(int(x) for x in sizes)) > 1:
                raise kvpool.InvalidArgument(f"tensor_size_list {list(sizes)}: kvpool's GPU path moves rows of "
                                             f"equal parts only")
            layers = self.layers if self.layerwise else 1
            if self._shard_bytes() % width:
                raise kvpool.InvalidArgument(f"rows of {width} addresses do not split {self._shard_bytes()}-byte "
                                             f"{'layers' if self.layerwise else 'blocks'}")
            mover = gpu.RowMover(self.client, self.namespace, width * layers, layers=layers, device=device,
                                 path=str(self.config.get("kvpool_gpu_path", "auto")))
            self._row_movers[(width, device)] = mover
        return mover

    def _device(self, kind, block_ids, shard_index, make_rows, after=0, keepalive=None, device=None):
        """Starts the GPU path's transfer of the rows make_rows() gives now
        (a dump's copies wait for ``after``); the task waits for its
        outcome. Any kvpool error, a bad row included, fails the task.
        Layer-wise: one layer (the shard index) of every block."""
        n = len(block_ids)
        try:
            rows = make_rows()
            if len(rows) != n:
                raise kvpool.InvalidArgument(f"{n} blocks but {len(rows)} rows of addresses")
            keys = self._keys(block_ids, shard_index)
            mover = lambda: self._row_mover(len(rows[0]) if len(rows) else 1,  # noqa: E731
                                            self.device_id if device is None else device)
            if self.layerwise:
                layer = _one_layer(shard_index, self.layers)
                if kind == "dump":
                    return self._dump_layer(block_ids, keys, layer, rows, mover, after)
                transfer = mover().load_layer_rows(keys, layer, rows)
            elif kind == "load":
                transfer = mover().load_rows(keys, rows)
            else:
                transfer = mover().save_rows(keys, rows, after=after or None)
        except RuntimeError as e:  # kvpool's errors; UCM logs them and recomputes
            return _failed_task(kind, n, e)
        return KvpoolTask(self._executor.submit(_finish_device, kind, transfer, n), kind, n, keepalive)

    def _dump_layer(self, block_ids, keys, layer, rows, mover, after):
        """One layer of the step's layer-wise dump: layer 0 starts the save
        of these blocks, and the dump that brings the last layer in
        commits it (its task ends with the commit; the others once their
        copies are queued). mover() gives the RowMover."""
        n = len(keys)
        with self._pending_lock:
            pending = self._pending
            ids = tuple(bytes(b) for b in block_ids)
            if layer == 0:
                if pending is not None:
                    self._pending = None
                    pending.drop()  # the last step's dump never got all its layers
                pending = _PendingDump(ids, mover().begin_save_layer_rows(keys), self.layers)
                self._pending = pending
            elif pending is None or pending.ids != ids:
                raise kvpool.FailedPrecondition(
                    f"a layer-wise dump of layer {layer} of blocks whose dump did not start at layer 0 (or failed "
                    f"before): kvpool commits whole blocks, so UCM's layer-wise connector with pipeline parallelism "
                    f"(a stage dumps only its own layers) is not supported; use UCMDirectConnector or one stage")
            try:
                pending.save.save_layer_rows(layer, rows, after=after or None)
            except RuntimeError:
                pending.drop()
                self._pending = None
                raise
            pending.saved += 1
            if pending.saved < self.layers:
                future = concurrent.futures.Future()
                future.set_result(None)
                return KvpoolTask(future, "dump", n)
            self._pending = None
        return KvpoolTask(self._executor.submit(pending.commit, n), "dump", n)

    # -- helpers -------------------------------------------------------------

    def _address_rows(self, addrs):
        rows = np.asarray(addrs, dtype=np.uint64)
        if rows.ndim != 2:
            raise kvpool.InvalidArgument("addresses: one row of addresses per block")
        part = self.block_bytes // rows.shape[1]
        return [[(int(a), part) for a in row] for row in rows]

    def _submit(self, kind, block_ids, shard_index, rows, keepalive=None):
        if self.layerwise:
            raise kvpool.InvalidArgument("kvpool's UCM store moves layer-wise shards from device memory only "
                                         "(device_id >= 0, CUDA tensors)")
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


class _PendingDump:
    """A step's layer-wise dump: its blocks' ids, the kvpool save, the
    layers saved so far."""

    def __init__(self, ids, save, layers):
        self.ids = ids
        self.save = save
        self.layers = layers
        self.saved = 0

    def commit(self, n):
        try:
            r = self.save.finish()
        finally:
            self.save.close()
        if r.done != n:
            raise kvpool.Internal(f"UCM dump: {n - r.done} of {n} blocks were not saved")

    def drop(self):
        """Aborts the save (nothing of it is committed)."""
        if self.saved < self.layers:
            logger.warning("kvpool: a layer-wise dump of %d blocks got %d of %d layers; dropped (nothing committed)",
                           len(self.ids), self.saved, self.layers)
        self.save.close()


def _layerwise(shard, block_bytes, layers):
    """Whether a worker's dumps are one layer per call (UCM's layer-wise
    connector: its shard is a layer of the block); refuses what kvpool
    cannot store as whole blocks, naming the config key to set."""
    if not shard or int(shard) == block_bytes:
        return False
    shard = int(shard)
    if block_bytes % shard:
        raise kvpool.InvalidArgument(
            f"this worker's shards are {shard} bytes but the block size both roles derive is {block_bytes}: set "
            f"\"kvpool_block_bytes\": {shard} in ucm_connector_config")
    if layers != block_bytes // shard:
        raise kvpool.InvalidArgument(
            f"this worker dumps {shard}-byte layers of {block_bytes}-byte blocks (UCM's layer-wise connector): set "
            f"\"kvpool_layers\": {block_bytes // shard} in ucm_connector_config (both roles read it)"
            + (f", not {layers}" if layers else ""))
    return True


def _one_layer(shard_index, layers):
    """The layer a layer-wise call moves: its one shard index."""
    distinct = set(int(s) for s in shard_index)
    if len(distinct) != 1:
        raise kvpool.InvalidArgument(f"a layer-wise call moves one layer; shard indexes {sorted(distinct)}")
    layer = distinct.pop()
    if not 0 <= layer < layers:
        raise kvpool.InvalidArgument(f"shard index {layer}: the blocks have {layers} layers")
    return layer


def _finish_device(kind, transfer, n):
    """A device task's outcome: every block moved, or a RuntimeError."""
    try:
        r = transfer.wait()
    finally:
        transfer.close()
    if r.done == n:
        return
    if kind == "dump":
        raise kvpool.Internal(f"UCM dump: {n - r.done} of {n} blocks were not saved")
    if r.stopped == "data_loss":
        raise kvpool.DataLoss(f"UCM load: block {r.done} of {n} failed its checksum (blocks before it were loaded)")
    if r.stopped == "unimplemented":
        raise kvpool.Unimplemented(f"UCM load: block {r.done} of {n} is on an agent not on this host, and a layer "
                                   f"loads only from this host's agent (UCMDirectConnector loads from any)")
    raise kvpool.NotFound(f"UCM load: block {r.done} of {n} is not in the pool ({r.stopped}; blocks before it "
                          f"were loaded)")


def _pointer_rows(addrs):
    rows = np.ascontiguousarray(addrs, dtype=np.uint64)  # RowMover reads it in place
    if rows.ndim != 2:
        raise kvpool.InvalidArgument("addresses: one row of device addresses per block")
    return rows


def _tensor_rows(rows, block_bytes):
    """Device addresses of rows of CUDA tensors, each block_bytes / len(row)
    bytes (the GPU path's runs are equal)."""
    out = []
    for i, row in enumerate(rows):
        sizes = [t.numel() * t.element_size() for t in row]
        if not sizes or any(size * len(sizes) != block_bytes for size in sizes):
            raise kvpool.InvalidArgument(f"block {i}: its row's tensors are {sizes} bytes; the GPU path needs "
                                         f"equal parts of the {block_bytes}-byte block")
        out.append([t.data_ptr() for t in row])
    return out


def _tensor_device(rows):
    for row in rows:
        for t in row:
            index = getattr(getattr(t, "device", None), "index", None)
            if index is not None:
                return int(index)
    return -1


def _failed_task(kind, count, error):
    future = concurrent.futures.Future()
    future.set_exception(error)
    return KvpoolTask(future, kind, count)


def _on_device(rows):
    for row in rows:
        for t in row:
            device = getattr(t, "device", None)
            if device is not None and getattr(device, "type", "cpu") != "cpu":
                return True
    return False


def _ucm_sparse_active():
    """ucm.sparse.state.has_ucm_sparse() when UCM is loaded (its sparse mode on)."""
    try:
        from ucm.sparse.state import has_ucm_sparse
    except ImportError:
        return False
    return bool(has_ucm_sparse())


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
    # UCM's store factory asserts issubclass(cls, UcmKVStoreBaseV1): the class
    # is made when UCM asks for it, as a real subclass of UCM's ABC, so that
    # UCM's own abstract methods are checked at construction.
    if name != "UcmKvpoolStore":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ucm.store.ucmstore_v1 import UcmKVStoreBaseV1
    return type("UcmKvpoolStore", (KvpoolUcmStore, UcmKVStoreBaseV1), {"__module__": __name__})


__all__ = ["KvpoolUcmStore", "KvpoolTask"]
