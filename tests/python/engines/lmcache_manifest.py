"""What the LMCache adapters (kvpool.integrations.lmcache_plugin and
lmcache_connector) rely on in LMCache, read from its source (no LMCache can
be installed here). lmcache_stubs.py builds the stand-in ConnectorAdapter,
RemoteConnector, ConnectorContext, config and metadata from this.

Pinned: LMCache/LMCache main (no release tag resolved), files read at the
commits below. The plugin framework's current form was read through the code
index, which gave no resolvable commit for it (INDEX_ONLY, with the index's
file ids); the stubs follow the strictest of the versions read."""

VERSION = "main (see FILES and INDEX_ONLY)"
REPO = "LMCache/LMCache"
FILES = {
    # ConnectorAdapter(schema=""), can_parse = schema != "" and url.startswith(schema); ConnectorContext with
    # plugin_name and SafeLocalCPUBackend; the plugin loader (isinstance(adapter_instance, ConnectorAdapter)).
    "lmcache/v1/storage_backend/connector/__init__.py": "0109660ce57fe9c046eb7953dfb56fb1e3c6d9fd",
    # RemoteConnector: abstract exists, exists_sync, get, put, list, close.
    "lmcache/v1/storage_backend/connector/base_connector.py": "01712fbd51d033060d6a8851c06de0ebf351f74e",
    # A built-in plugin-style adapter: can_parse takes plugin://hf3fs[.<instance>] (extract_plugin_type),
    # settings from remote_storage_plugin.<plugin_name>.<key> over the bare key.
    "lmcache/v1/storage_backend/connector/hf3fs_adapter.py": "5ad85869d4403c87b68e0322c4783f214b434e6b",
    "lmcache/v1/storage_backend/connector/fs_adapter.py": "0e65d2fc0ec3975c78c3ce33a48e81505f315a21",
    # The external:// route: "due for deprecation in release v0.5.0. Please use the Remote Storage Plugin
    # Framework instead."; issubclass(cls, RemoteConnector), cls(loop=, local_cpu_backend=, config=).
    "lmcache/v1/storage_backend/connector/external_adapter.py": "0c4184dab7b7ff92a1b1aae12124ef357848f4c8",
    # remote_storage_plugins: Optional[list[str]] (env: comma list); extra_config: dict (env: JSON);
    # LMCACHE_CONFIG_FILE names the YAML file; env LMCACHE_<KEY>.
    "lmcache/v1/config.py": "000620e37eb7e8e54bd6f0aa0809b7dbef8a11e8",
    # LMCacheMetadata: kv_dtype, kv_shape (num_layer, 2, chunk_size, num_kv_head, head_size), role, chunk_size.
    "lmcache/v1/metadata.py": "0ca52cb17ed482c6bd20c08555e03cd4aa9027b2",
    # RemoteBackend.batched_contains -> int (the connector's int passed through).
    "lmcache/v1/storage_backend/remote_backend.py": "009eca101c71ae583489ed4bc616c589f2edcdf7",
    # The user-facing plugin configuration (remote_storage_plugins, module_path, class_name).
    "docs/source/developer_guide/extending_lmcache/remote_storage_plugins.rst":
        "a15c553d138b606d325d49cfda7d92389d5f5823",
}
# Read through the code index (read_file by id): repository and commit not given there; layout and imports
# are LMCache/LMCache's (lmcache.v1.metadata.LMCacheMetadata, torch_device_type).
INDEX_ONLY = {
    # DynamicConnectorAdapter; the loader checks inspect.isclass(cls) and issubclass(cls, ConnectorAdapter),
    # then cls(); plugin_url "plugin://<name>"; built-in adapters are tried before plugin ones.
    "lmcache/v1/storage_backend/connector/__init__.py": "55286677913",
    # RemoteBackend(config, metadata, loop, local_cpu_backend, dst_device, plugin_name=None): with a plugin name
    # it connects to f"plugin://{plugin_name}" via CreateConnector(url, loop, local_cpu_backend, config,
    # metadata, plugin_name=...); init_connection logs and retries on Exception; contains via
    # run_coroutine_threadsafe(exists), batched_contains(keys) -> int, batched_get, batched_put,
    # batched_async_contains(lookup_id, keys, pin), batched_get_non_blocking(lookup_id, keys), remove_sync.
    "lmcache/v1/storage_backend/remote_backend.py": "57576816655",
    # CreateStorageBackends: a RemoteBackend per remote_storage_plugins entry (asserting a local CPU backend),
    # plus a second, deprecated one when remote_url is set.
    "lmcache/v1/storage_backend/__init__.py": "63775808610",
    # put and batched_put drop the caller's ref count after the connector returns; get_size on every object.
    "lmcache/v1/storage_backend/connector/instrumented_connector.py": "13175691436",
    # batched_contains(keys) -> int ("hit chunks by prefix match").
    "lmcache/v1/storage_backend/connector/base_connector.py": "66823109016",
}

CONNECTOR_MODULE = "lmcache.v1.storage_backend.connector"
BASE_MODULE = "lmcache.v1.storage_backend.connector.base_connector"

# RemoteConnector at base_connector.py 01712fbd: name -> (parameters after self, abstract, default, async)
CONNECTOR_METHODS = {
    "post_init": ([], False, None, False),
    "exists": (["key"], True, None, True),
    "exists_sync": (["key"], True, None, False),
    "get": (["key"], True, None, True),
    "put": (["key", "memory_obj"], True, None, True),
    "list": ([], True, None, True),
    "close": ([], True, None, True),
    "support_ping": ([], False, False, False),
    "ping": ([], False, None, True),
    "support_batched_get": ([], False, False, False),
    "batched_get": (["keys"], False, None, True),
    "support_batched_put": ([], False, False, False),
    "batched_put": (["keys", "memory_objs"], False, None, True),
    "support_batched_async_contains": ([], False, False, False),
    "batched_async_contains": (["lookup_id", "keys", "pin=False"], False, None, True),
    "support_batched_get_non_blocking": ([], False, False, False),
    "batched_get_non_blocking": (["lookup_id", "keys"], False, None, True),
    "remove_sync": (["key"], False, None, False),
    "batched_contains": (["keys"], False, None, False),
    "support_batched_contains": ([], False, False, False),
}

# ConnectorAdapter at connector/__init__.py 0109660: __init__ and can_parse have bodies (lmcache_stubs.py
# gives them LMCache's), create_connector is abstract.
ADAPTER_METHODS = {
    "__init__": (["schema=''"], False, None),
    "can_parse": (["url"], False, False),
    "create_connector": (["context"], True, None),
}

# ConnectorContext.__init__ parameters (connector/__init__.py 0109660), in order; all are read by the adapter.
CONTEXT_FIELDS = ["url", "loop", "local_cpu_backend", "config", "metadata", "plugin_name=None"]

# The plugin loader's keys in extra_config and the URL RemoteBackend builds for a plugin name.
PLUGIN_KEYS = ("remote_storage_plugin.{name}.module_path", "remote_storage_plugin.{name}.class_name")
PLUGIN_URL = "plugin://{name}"

# LMCacheEngineConfig fields (config.py 000620e3) the loader, RemoteBackend and the adapter read, with defaults.
CONFIG_FIELDS = {
    "chunk_size": 256,
    "local_cpu": True,
    "max_local_cpu_size": 5.0,
    "remote_url": None,
    "remote_serde": "naive",
    "remote_storage_plugins": None,
    "extra_config": None,
    "blocking_timeout_secs": 10,
    "use_layerwise": False,
}

# LMCacheMetadata fields (metadata.py 0ca52cb), in order; the adapter reads kv_shape and kv_dtype.
METADATA_FIELDS = ["model_name", "world_size", "local_world_size", "worker_id", "local_worker_id", "kv_dtype",
                   "kv_shape", "use_mla=False", "role=None", "chunk_size=256"]
METADATA_READ = ("kv_shape", "kv_dtype")

# What the connector reads of LMCache's objects (redis_connector.py 030c77181580e304e20810d709acec6f16f53bef
# does the same), and what LMCache's wrapper (instrumented_connector.py) calls on them.
MEMORY_OBJ_ATTRIBUTES = ["byte_array", "get_shape", "get_dtype", "get_memory_format"]
MEMORY_OBJ_LMCACHE_CALLS = ["get_size", "ref_count_up", "ref_count_down"]
LOCAL_CPU_BACKEND_CALLS = {"allocate": ["shape", "dtype", "fmt"]}  # None when full
KEY_CALLS = ["to_string"]

# What RemoteBackend expects back from the connector (remote_backend.py, both versions read).
RETURNS = {
    "exists": bool, "exists_sync": bool, "batched_contains": int, "batched_async_contains": int,
    "get": "MemoryObj or None", "batched_get": "list, one MemoryObj or None per key",
    "batched_get_non_blocking": "list of MemoryObj, the leading hits", "put": None, "batched_put": None,
    "remove_sync": bool,
}
