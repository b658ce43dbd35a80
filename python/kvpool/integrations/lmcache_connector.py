"""kvpool as an LMCache remote connector.

Status: two routes load this connector. Recommended: LMCache's remote
storage plugin framework (``remote_storage_plugins``), through
``kvpool.integrations.lmcache_plugin.KvpoolConnectorAdapter``, which builds
this class with the ``ConnectorContext``'s loop, local CPU backend, config
(the plugin's settings) and ``metadata`` (both roles get it, so both derive
one block size). Older: the ``external://`` ``remote_url`` below, which
LMCache's external_adapter.py (at the commit below) logs as "due for
deprecation in release v0.5.0" (and LMCache logs ``remote_url`` itself as
deprecated); its scheduler role passes no metadata.

Follows ``RemoteConnector`` in LMCache/LMCache
lmcache/v1/storage_backend/connector/base_connector.py at commit
01712fbd51d033060d6a8851c06de0ebf351f74e (main; release not checked): async
``exists``, ``get`` (a ``MemoryObj`` or None), ``put``, ``list``, ``close``;
``exists_sync``; the batched forms ``batched_get``, ``batched_put``,
``batched_async_contains`` (count of leading hits), ``batched_contains``
(an int, the count of leading hits, which ``RemoteBackend.batched_contains``
in lmcache/v1/storage_backend/remote_backend.py at commit
009eca101c71ae583489ed4bc616c589f2edcdf7 returns as its own ``-> int``),
``batched_get_non_blocking`` (the leading hits), each with its
``support_*`` flag; and ``remove_sync``. ``batched_get`` answers per key (a
MemoryObj or None for each, as ``RemoteBackend.batched_get_blocking`` takes
it): the keys after a missing one are still read. The connector is loaded by
lmcache/v1/storage_backend/connector/external_adapter.py from
``remote_url: "external://host:0/kvpool.integrations.lmcache_connector/?connector_name=KvpoolConnector"``
(external_adapter.py read at commit 0c4184dab7b7ff92a1b1aae12124ef357848f4c8),
which checks ``issubclass(cls, RemoteConnector)`` and calls
``cls(loop=..., local_cpu_backend=..., config=...)``; ``get`` allocates its
result with ``local_cpu_backend.allocate(shape, dtype, fmt)`` and fills
``memory_obj.byte_array`` as the built-in connectors (redis_connector.py,
mock_connector.py, read at commits 030c77181580e304e20810d709acec6f16f53bef
and 1af20e9375a423c49b8ef406e3a7dbf5c75327c7) do. ``put`` leaves the ref count to the caller, as
redis_connector.py's async ``RedisConnector`` does.

``KvpoolConnector`` is made on first access (module ``__getattr__``), when
LMCache's ``RemoteConnector`` gets it as a virtual subclass; importing this
module imports no engine. ``KvpoolRemoteConnector`` is the same class.

Configuration, from ``config.extra_config`` (else the environment):
``kvpool_coordinator`` ($KVPOOL_COORDINATOR), ``kvpool_secret_file``
($KVPOOL_SECRET_FILE), ``kvpool_block_bytes`` (the kvpool block: at least
one chunk's bytes plus 256, 64 KiB..256 MiB; default: the full chunk that
LMCache's metadata (``kv_shape``, ``kv_dtype``; passed as ``metadata`` or
found on ``local_cpu_backend.metadata``) implies, as
``RemoteConnector.init_chunk_meta`` computes it, plus the header; with
neither, construction fails: no role falls back to a size of its own),
``kvpool_timeout_s`` (every pool call, default 10), ``kvpool_model``
(default ``config.extra_config["model"]`` or "lmcache"). A block size or
timeout that is not a positive number is refused naming its key
(``kvpool.InvalidArgument``, a RuntimeError) before the pool is contacted.

Each LMCache chunk is one kvpool block: a 256-byte header (magic, payload
length, shape, dtype name, memory format) then the chunk's bytes, then
zeros to the block size, so partial last chunks fit. A chunk comes back
through a registered staging block and one copy into the MemoryObj that
``local_cpu_backend`` allocates (LMCache owns that memory).

Keys: ``CacheEngineKey.to_string()`` (it names model, world size, worker id
and the chunk hash) mapped with ``kvpool.engine_keys`` (XXH3-128 seeded with
the namespace id). ``list`` raises NotImplementedError: kvpool indexes keys
by hash and cannot give back the engine's strings.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import TYPE_CHECKING, List, Optional

import numpy as np

import kvpool

from ._common import Staging, as_byte_view, connect, setting

if TYPE_CHECKING:
    from lmcache.utils import CacheEngineKey
    from lmcache.v1.memory_management import MemoryObj

HEADER_BYTES = 256
_MAGIC = b"KVPLMC01"
STAGING_SLOTS = 8


def block_bytes_for(metadata):
    """The kvpool block for LMCache's full chunk: header plus
    prod(metadata.kv_shape) elements of metadata.kv_dtype, rounded up to
    4 KiB and at least 64 KiB; None without usable metadata."""
    shape = getattr(metadata, "kv_shape", None)
    dtype = getattr(metadata, "kv_dtype", None)
    if not shape or dtype is None:
        return None
    itemsize = getattr(dtype, "itemsize", None)
    if not itemsize:
        return None
    payload = 1
    for d in shape:
        payload *= int(d)
    payload *= int(itemsize)
    return max(64 << 10, -(-(HEADER_BYTES + payload) // 4096) * 4096)


def encode_header(length, shape, dtype, fmt):
    meta = json.dumps({"shape": [int(d) for d in shape], "dtype": str(dtype), "fmt": _fmt_value(fmt)}).encode()
    if 16 + len(meta) > HEADER_BYTES:
        raise kvpool.InvalidArgument("chunk metadata does not fit the header")
    return _MAGIC + struct.pack("<Q", length) + meta.ljust(HEADER_BYTES - 16, b" ")


def decode_header(block):
    head = bytes(block[:HEADER_BYTES])
    if head[:8] != _MAGIC:
        raise kvpool.DataLoss("not an LMCache chunk written by kvpool")
    (length,) = struct.unpack("<Q", head[8:16])
    meta = json.loads(head[16:].decode().strip())
    return length, meta["shape"], meta["dtype"], meta["fmt"]


def _number(value, kind, key):
    """value as a positive int or float, else InvalidArgument naming key."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or number <= 0:
        raise kvpool.InvalidArgument(f"kvpool: extra_config {key}={value!r} is not a positive number")
    return number


def _fmt_value(fmt):
    value = getattr(fmt, "value", fmt)
    return int(value) if isinstance(value, (int, np.integer)) else value


def _engine_dtype(name):
    """torch.bfloat16 from "torch.bfloat16" when torch is there (LMCache's
    process), else the name."""
    if name.startswith("torch."):
        try:
            import torch
            return getattr(torch, name[len("torch."):])
        except (ImportError, AttributeError):
            pass
    return name


def _engine_shape(dims):
    """torch.Size(dims) when torch is there (LMCache's allocators take one),
    else a tuple."""
    try:
        import torch
        return torch.Size(dims)
    except ImportError:
        return tuple(dims)


def _engine_fmt(value):
    try:
        from lmcache.v1.memory_management import MemoryFormat
        return MemoryFormat(value)
    except (ImportError, ValueError):
        return value


class KvpoolRemoteConnector:
    """LMCache ``RemoteConnector`` over kvpool (see the module docstring)."""

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None, local_cpu_backend=None, config=None, *,
                 metadata=None, client=None):
        extra = setting(config, "extra_config") or {}
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        # One rule in every role: the scheduler's local_cpu_backend is LMCache's
        # SafeLocalCPUBackend (no metadata), so a default there would give it
        # another block size, hence another namespace, than the workers.
        block = (extra.get("kvpool_block_bytes") or os.environ.get("KVPOOL_LMCACHE_BLOCK_BYTES") or
                 block_bytes_for(metadata) or block_bytes_for(getattr(local_cpu_backend, "metadata", None)))
        if not block:
            raise kvpool.InvalidArgument(
                "kvpool: no block size: LMCache passed no metadata with kv_shape/kv_dtype to this role (the "
                "scheduler of the external:// route gets none); set extra_config kvpool_block_bytes in every role")
        block = _number(block, int, "kvpool_block_bytes")
        timeout = _number(extra.get("kvpool_timeout_s", 10.0), float, "kvpool_timeout_s")
        self.client = connect(extra.get("kvpool_coordinator"), extra.get("kvpool_secret_file"), timeout, client)
        self._owns_client = client is None
        model = extra.get("kvpool_model") or extra.get("model") or "lmcache"
        self.namespace = self.client.register_namespace(model_id=str(model), dtype="bytes", num_layers=0,
                                                        num_kv_heads=0, head_dim=0, tokens_per_block=0,
                                                        layout="lmcache-chunk-v1", block_bytes=block)
        self.block_bytes = block
        self.staging = Staging(self.client, STAGING_SLOTS, block)

    # -- keys ----------------------------------------------------------------

    def _keys(self, keys):
        return kvpool.engine_keys(self.namespace, [k if isinstance(k, str) else k.to_string() for k in keys])

    async def _run(self, fn, *args):
        # Blocking kvpool calls release the GIL; run them off the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- contains ------------------------------------------------------------

    def exists_sync(self, key: "CacheEngineKey") -> bool:
        return self.client.lookup(self.namespace, self._keys([key])) == 1

    async def exists(self, key: "CacheEngineKey") -> bool:
        return await self._run(self.exists_sync, key)

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: List["CacheEngineKey"], stop_after_first_not_exits: bool = True) -> int:
        """How many leading keys are in the pool: RemoteBackend.batched_contains
        (remote_backend.py) returns this value as its own int."""
        if not keys:
            return 0
        return self.client.lookup(self.namespace, self._keys(keys))

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys: List["CacheEngineKey"], pin: bool = False) -> int:
        """How many leading keys are in the pool (``pin`` is not needed:
        kvpool verifies what it returns, a block evicted meanwhile is a miss)."""
        if not keys:
            return 0
        return await self._run(self.client.lookup, self.namespace, self._keys(keys))

    # -- get -------------------------------------------------------------------

    def _get_sync(self, keys) -> List["MemoryObj"]:
        """MemoryObjs for the longest present prefix of keys."""
        return self._get_prefix(keys)[0]

    def _get_prefix(self, keys):
        """(MemoryObjs for the longest present prefix of keys, whether it
        stopped because LMCache's allocator is full)."""
        out = []
        kv_keys = self._keys(keys)
        for start in range(0, len(kv_keys), STAGING_SLOTS):
            batch = kv_keys[start:start + STAGING_SLOTS]
            with self._slots_held(len(batch)) as slots:
                loaded = self.client.get(self.namespace, batch, [self.staging.view(s) for s in slots])
                for s in slots[:loaded]:
                    obj = self._to_memory_obj(self.staging.view(s))
                    if obj is None:
                        return out, True
                    out.append(obj)
            if loaded < len(batch):
                break
        return out, False

    def _get_each(self, keys) -> List[Optional["MemoryObj"]]:
        """One MemoryObj or None per key (batched_get's contract): the keys
        after a missing one are still read; once LMCache's allocator is
        full, the rest are None."""
        keys = list(keys)
        out = []
        while len(out) < len(keys):
            got, full = self._get_prefix(keys[len(out):])
            out += got
            if full or len(out) == len(keys):
                break
            out.append(None)  # keys[len(out)] is not in the pool
        return out + [None] * (len(keys) - len(out))

    def _to_memory_obj(self, block):
        length, shape, dtype, fmt = decode_header(block)
        memory_obj = self.local_cpu_backend.allocate(_engine_shape(shape), _engine_dtype(dtype), _engine_fmt(fmt))
        if memory_obj is None:
            return None  # LMCache's own allocator is full: a miss
        dst = memory_obj.byte_array
        dst = as_byte_view(dst) if not isinstance(dst, memoryview) else dst.cast("B")
        dst[:length] = block[HEADER_BYTES:HEADER_BYTES + length]
        return memory_obj

    async def get(self, key: "CacheEngineKey") -> Optional["MemoryObj"]:
        objs = await self._run(self._get_sync, [key])
        return objs[0] if objs else None

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: List["CacheEngineKey"]) -> List[Optional["MemoryObj"]]:
        return await self._run(self._get_each, list(keys))

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str, keys: List["CacheEngineKey"]) -> List["MemoryObj"]:
        return await self._run(self._get_sync, list(keys))

    # -- put -------------------------------------------------------------------

    def _put_sync(self, keys, memory_objs):
        kv_keys = self._keys(keys)
        for start in range(0, len(kv_keys), STAGING_SLOTS):
            batch = kv_keys[start:start + STAGING_SLOTS]
            objs = memory_objs[start:start + STAGING_SLOTS]
            with self._slots_held(len(batch)) as slots:
                for s, obj in zip(slots, objs):
                    self._fill(self.staging.view(s), obj)
                result = self.client.put(self.namespace, batch, [self.staging.view(s) for s in slots])
            for err in result.errors:
                if err is not None:
                    raise err

    def _fill(self, block, memory_obj):
        src = memory_obj.byte_array
        src = as_byte_view(src) if not isinstance(src, memoryview) else src.cast("B")
        n = len(src)
        if HEADER_BYTES + n > self.block_bytes:
            raise kvpool.InvalidArgument(f"a chunk of {n} bytes does not fit kvpool_block_bytes={self.block_bytes}")
        header = encode_header(n, memory_obj.get_shape(), memory_obj.get_dtype(), memory_obj.get_memory_format())
        block[:HEADER_BYTES] = np.frombuffer(header, np.uint8)
        block[HEADER_BYTES:HEADER_BYTES + n] = np.frombuffer(src, np.uint8)
        block[HEADER_BYTES + n:] = 0

    async def put(self, key: "CacheEngineKey", memory_obj: "MemoryObj"):
        await self._run(self._put_sync, [key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: List["CacheEngineKey"], memory_objs: List["MemoryObj"]):
        await self._run(self._put_sync, list(keys), list(memory_objs))

    # -- the rest --------------------------------------------------------------

    def remove_sync(self, key: "CacheEngineKey") -> bool:
        return self.client.remove(self.namespace, self._keys([key])[0])

    async def list(self) -> List[str]:
        raise NotImplementedError("kvpool indexes blocks by 128-bit hash and cannot list the engine's key strings")

    def support_ping(self) -> bool:
        return False

    def post_init(self):
        return None

    async def close(self):
        self.staging.close()
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"<KvpoolRemoteConnector {self.client.coordinator} ns={self.namespace:#x}>"

    def _slots_held(self, n):
        return self.staging.hold(n)


def __getattr__(name):
    # LMCache's external adapter insists on a RemoteConnector subclass:
    # register ours as a virtual one when LMCache asks for the class.
    # Registering is idempotent and lasts as long as the engine's module.
    if name != "KvpoolConnector":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector
    if not issubclass(KvpoolRemoteConnector, RemoteConnector):
        RemoteConnector.register(KvpoolRemoteConnector)
    return KvpoolRemoteConnector


__all__ = ["KvpoolRemoteConnector", "encode_header", "decode_header", "HEADER_BYTES"]
