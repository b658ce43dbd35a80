"""Adapters that let inference engines use kvpool through their own cache
interfaces, each loaded by the engine from its module path:

- ``kvpool.integrations.sglang_hicache``: SGLang HiCache L3 storage
  (``HiCacheKvpool``; zero-copy ``batch_get_v1`` / ``batch_set_v1``).
- ``kvpool.integrations.vllm_offload``: vLLM v1 offloading manager
  (``KvpoolOffloadingManager``; lookup, prepare/complete load and store).
- ``kvpool.integrations.lmcache_connector``: LMCache remote connector
  (``KvpoolConnector``; exists, get, put and the batched forms).
- ``kvpool.integrations.ucm_store``: Huawei UCM store (``UcmKvpoolStore``;
  lookup, lookup_on_prefix, load/dump tasks, wait, check).

No adapter imports its engine when imported: engine base classes are
registered (virtual subclass) only when the engine asks for the class by
name. Each module's docstring names the engine version and source files it
follows and how engine keys map to kvpool keys (``kvpool.engine_keys``).
"""
