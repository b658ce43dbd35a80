"""Adapters that let inference engines use kvpool through their own cache
interfaces, each loaded by the engine from its module path:

- ``kvpool.integrations.sglang_hicache``: SGLang HiCache L3 storage
  (``HiCacheKvpool``; zero-copy ``batch_get_v1`` / ``batch_set_v1``).
- ``kvpool.integrations.vllm``: vLLM KV connector (``KvpoolConnector``, a
  KVConnectorBase_V1 named in ``--kv-transfer-config``; pages between
  vLLM's GPU KV tensors and the pool through kvpool.gpu.KvMover).
- ``kvpool.integrations.lmcache_plugin``: LMCache remote storage plugin
  (``KvpoolConnectorAdapter``, named in LMCache's ``remote_storage_plugins``
  config; the recommended LMCache route), which builds
- ``kvpool.integrations.lmcache_connector``: LMCache remote connector
  (``KvpoolConnector``; exists, get, put and the batched forms; also loaded
  alone through LMCache's deprecated ``external://`` remote_url).
- ``kvpool.integrations.ucm_store``: Huawei UCM store (``UcmKvpoolStore``;
  lookup, lookup_on_prefix, load/dump tasks, wait, check).

No adapter imports its engine when imported: engine base classes are
registered (virtual subclass) only when the engine asks for the class by
name. Each module's docstring names the engine version and source files it
follows and how engine keys map to kvpool keys (``kvpool.engine_keys``).
"""
