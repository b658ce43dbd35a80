"""Stand-ins for LMCache built from lmcache_manifest.py, installed in
sys.modules: ConnectorAdapter and RemoteConnector are ABCs with exactly the
manifest's methods (abstract ones abstract, so an adapter that misses one
fails at construction), ConnectorContext, LMCacheEngineConfig and
LMCacheMetadata have the manifest's fields only. Plus LMCache's call
sequences, replayed step by step: the plugin loader (ConnectorManager) and
RemoteBackend. No kvpool is faked here: the connectors talk to a real pool."""

import asyncio
import dataclasses
import importlib
import inspect
import math
import threading

import numpy as np

from . import lmcache_manifest as M
from .abc_stub import build_abc, install_modules
from .abc_stub import uninstall as uninstall_modules

DTYPE_BYTES = {"torch.bfloat16": 2, "torch.float16": 2, "torch.uint8": 1}
KV_2LTD = 1  # an LMCache MemoryFormat value


class BFloat16:
    """torch.bfloat16 as the adapter sees it: an itemsize and a name."""

    itemsize = 2

    def __str__(self):
        return "torch.bfloat16"


@dataclasses.dataclass
class LMCacheMetadata:
    model_name: str
    world_size: int
    local_world_size: int
    worker_id: int
    local_worker_id: int
    kv_dtype: object
    kv_shape: tuple
    use_mla: bool = False
    role: object = None
    chunk_size: int = 256


assert [f.name for f in dataclasses.fields(LMCacheMetadata)] == [f.split("=")[0] for f in M.METADATA_FIELDS]


@dataclasses.dataclass
class LMCacheEngineConfig:
    """The manifest's config fields; an unknown key is an error (LMCache warns
    and drops it, which would hide a typo in the README's file)."""

    chunk_size: int = M.CONFIG_FIELDS["chunk_size"]
    local_cpu: bool = M.CONFIG_FIELDS["local_cpu"]
    max_local_cpu_size: float = M.CONFIG_FIELDS["max_local_cpu_size"]
    remote_url: object = M.CONFIG_FIELDS["remote_url"]
    remote_serde: object = M.CONFIG_FIELDS["remote_serde"]
    remote_storage_plugins: object = M.CONFIG_FIELDS["remote_storage_plugins"]
    extra_config: object = M.CONFIG_FIELDS["extra_config"]
    blocking_timeout_secs: int = M.CONFIG_FIELDS["blocking_timeout_secs"]
    use_layerwise: bool = M.CONFIG_FIELDS["use_layerwise"]

    @classmethod
    def from_dict(cls, values):
        unknown = set(values) - set(M.CONFIG_FIELDS)
        assert not unknown, f"not LMCache config keys: {sorted(unknown)}"
        return cls(**values)


assert [f.name for f in dataclasses.fields(LMCacheEngineConfig)] == list(M.CONFIG_FIELDS)


class FakeMemoryObj:
    """LMCache's MemoryObj as connectors and LMCache's wrapper use it."""

    def __init__(self, shape, dtype, fmt):
        self.shape, self.dtype, self.fmt = tuple(shape), dtype, fmt
        self.array = np.zeros(math.prod(shape) * DTYPE_BYTES[str(dtype)], dtype=np.uint8)
        self.ref_count = 1

    @property
    def byte_array(self):
        return memoryview(self.array)

    def get_shape(self):
        return self.shape

    def get_dtype(self):
        return self.dtype

    def get_memory_format(self):
        return self.fmt

    def get_size(self):
        return self.array.nbytes

    def ref_count_up(self):
        self.ref_count += 1

    def ref_count_down(self):
        self.ref_count -= 1


for _name in M.MEMORY_OBJ_ATTRIBUTES + M.MEMORY_OBJ_LMCACHE_CALLS:
    assert hasattr(FakeMemoryObj, _name), _name


class FakeLocalCPUBackend:
    """A worker's LocalCPUBackend: allocate(shape, dtype, fmt), None when full."""

    def __init__(self, capacity=100):
        self.allocated = 0
        self.capacity = capacity

    def allocate(self, shape, dtype, fmt):
        if self.allocated >= self.capacity:
            return None
        self.allocated += 1
        return FakeMemoryObj(shape, dtype, fmt)


class Key:
    """LMCache's CacheEngineKey as connectors see it."""

    def __init__(self, chunk_hash, model="test-model", worker_id=0):
        self.chunk_hash, self.model, self.worker_id = chunk_hash, model, worker_id

    def to_string(self):
        return f"vllm@{self.model}@1@{self.worker_id}@{self.chunk_hash:x}"


def metadata(role, kv_shape=(2, 2, 256, 8, 128), model="test-model"):
    """LMCacheMetadata as vLLM's integration fills it in either role."""
    return LMCacheMetadata(model_name=model, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                           kv_dtype=BFloat16(), kv_shape=kv_shape, role=role)


def install():
    """Builds the stand-ins, installs them in sys.modules and returns the
    connector package (ConnectorAdapter, ConnectorContext, ...)."""
    remote_connector = build_abc("RemoteConnector", M.CONNECTOR_METHODS)
    adapter = build_abc("ConnectorAdapter", M.ADAPTER_METHODS)

    def adapter_init(self, schema=""):
        self.schema = schema

    def can_parse(self, url):
        return self.schema != "" and url.startswith(self.schema)

    adapter.__init__ = adapter_init  # LMCache's bodies (connector/__init__.py 0109660)
    adapter.can_parse = can_parse

    class LocalCPUBackend:
        pass

    class SafeLocalCPUBackend(LocalCPUBackend):
        def __init__(self, config):
            pass

        def allocate(self, *args, **kwargs):
            raise RuntimeError("SafeLocalCPUBackend.allocate() should never be called. This indicates a bug where "
                               "scheduler role is trying to allocate memory.")

    params = [p.split("=")[0] for p in M.CONTEXT_FIELDS]

    class ConnectorContext:
        def __init__(self, url, loop, local_cpu_backend, config, metadata, plugin_name=None):
            self.url = url
            self.loop = loop
            self.local_cpu_backend = (local_cpu_backend if local_cpu_backend is not None else
                                      SafeLocalCPUBackend(config))
            self.config = config
            self.metadata = metadata
            self.plugin_name = plugin_name

    assert list(inspect.signature(ConnectorContext.__init__).parameters)[1:] == params

    install_modules({
        M.CONNECTOR_MODULE: {"ConnectorAdapter": adapter, "ConnectorContext": ConnectorContext,
                             "SafeLocalCPUBackend": SafeLocalCPUBackend, "LocalCPUBackend": LocalCPUBackend},
        M.BASE_MODULE: {"RemoteConnector": remote_connector},
    })
    return importlib.import_module(M.CONNECTOR_MODULE)


def uninstall():
    uninstall_modules({"lmcache"})


def load_plugin_adapters(lmc, config):
    """ConnectorManager._remote_adapters_plugin_launcher, step by step (both
    versions read: the class must be a ConnectorAdapter subclass, then its
    instance, made with no arguments, an instance of one). Unlike LMCache,
    which logs and skips a plugin it cannot load, this raises."""
    adapters = []
    for name in set(config.remote_storage_plugins or ()):
        extra = config.extra_config
        module_path = extra.get(M.PLUGIN_KEYS[0].format(name=name)) if extra else None
        class_name = extra.get(M.PLUGIN_KEYS[1].format(name=name)) if extra else None
        assert module_path and class_name, f"remote connector {name} missing adapter module_path or class_name"
        module = importlib.import_module(module_path)
        loaded = getattr(module, class_name)
        assert inspect.isclass(loaded) and issubclass(loaded, lmc.ConnectorAdapter), loaded
        instance = loaded()
        assert isinstance(instance, lmc.ConnectorAdapter)
        adapters.append(instance)
    return adapters


class Instrumented:
    """CreateConnector's InstrumentedRemoteConnector: delegates, and drops the
    caller's ref count after put / batched_put."""

    def __init__(self, connector):
        self._connector = connector
        self.name = repr(self)

    def __getattr__(self, name):
        return getattr(self._connector, name)

    async def put(self, key, memory_obj):
        memory_obj.get_size()
        try:
            await self._connector.put(key, memory_obj)
        finally:
            memory_obj.ref_count_down()

    async def batched_put(self, keys, memory_objs):
        try:
            await self._connector.batched_put(keys, memory_objs)
        finally:
            for obj in memory_objs:
                obj.ref_count_down()

    def __repr__(self):
        return f"InstrumentedRemoteConnector({self._connector})"


def create_connector(lmc, url, loop, local_cpu_backend, config, meta, plugin_name=None, extra_adapters=()):
    """CreateConnector: ConnectorManager (built-in adapters, then plugin
    ones) picks the first adapter whose can_parse takes the URL."""
    assert "://" in url, f"Invalid remote url {url}: missing scheme"
    context = lmc.ConnectorContext(url=url, loop=loop, local_cpu_backend=local_cpu_backend, config=config,
                                   metadata=meta, plugin_name=plugin_name)
    for adapter in list(extra_adapters) + load_plugin_adapters(lmc, config):
        if adapter.can_parse(context.url):
            return Instrumented(adapter.create_connector(context))
    raise ValueError(f"No adapter found for URL: {context.url}")


class RemoteBackend:
    """LMCache's RemoteBackend for one plugin name, as the index's
    remote_backend.py has it: the connection on an event loop of its own
    thread, each call through run_coroutine_threadsafe. A failed
    CreateConnector is kept in ``init_error`` (LMCache logs it and serves
    without the connection). The serializer is LMCache's naive one (no-op)."""

    def __init__(self, lmc, config, meta, local_cpu_backend, plugin_name, extra_adapters=()):
        self.config, self.metadata, self.local_cpu_backend = config, meta, local_cpu_backend
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.remote_url = M.PLUGIN_URL.format(name=plugin_name)
        self.connection = None
        self.init_error = None
        try:
            self.connection = create_connector(lmc, self.remote_url, self.loop, local_cpu_backend, config, meta,
                                               plugin_name=plugin_name, extra_adapters=extra_adapters)
        except Exception as e:  # noqa: BLE001 - LMCache's init_connection does the same
            self.init_error = e

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.config.blocking_timeout_secs)

    def contains(self, key):
        return self._run(self.connection.exists(key))

    def contains_sync(self, key):  # extra_config use_exists_sync
        return self.connection.exists_sync(key)

    def batched_contains(self, keys):
        assert self.connection.support_batched_contains()
        return self.connection.batched_contains(keys)

    def submit_put_task(self, key, memory_obj):
        memory_obj.ref_count_up()
        serialized = memory_obj
        memory_obj.ref_count_down()
        return asyncio.run_coroutine_threadsafe(self.connection.put(key, serialized), self.loop)

    def batched_submit_put_task(self, keys, memory_objs):
        """Returns the future LMCache never waits on (the test does)."""
        assert self.connection.support_batched_put()
        for obj in memory_objs:
            obj.ref_count_up()
        serialized = list(memory_objs)
        for obj in memory_objs:
            obj.ref_count_down()
        return asyncio.run_coroutine_threadsafe(self.connection.batched_put(keys, serialized), self.loop)

    def get_blocking(self, key):
        return self._run(self.connection.get(key))

    def batched_get_blocking(self, keys):
        assert self.connection.support_batched_get()
        objs = self._run(self.connection.batched_get(keys))
        assert len(objs) == len(keys)
        return objs

    def batched_async_contains(self, lookup_id, keys, pin=False):
        assert self.connection.support_batched_async_contains()
        return self._run(self.connection.batched_async_contains(lookup_id, keys, pin))

    def batched_get_non_blocking(self, lookup_id, keys):
        assert self.connection.support_batched_get_non_blocking()
        return self._run(self.connection.batched_get_non_blocking(lookup_id, keys))

    def remove(self, key):
        return self.connection.remove_sync(key)

    def close(self):
        if self.connection is not None:
            self._run(self.connection.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
