"""What HiCacheKvpool relies on in SGLang, read from its source (no SGLang can
be installed here). abc_stub.py builds the stand-in HiCacheStorage from this.

Pinned: sgl-project/sglang main (no release tag resolved) at the commits below."""

VERSION = "main@001067fffe33427bee0ed2f007fb7551a1d76b44"
REPO = "sgl-project/sglang"
FILES = {
    "python/sglang/srt/mem_cache/hicache_storage.py": "001067fffe33427bee0ed2f007fb7551a1d76b44",
    "python/sglang/srt/mem_cache/storage/backend_factory.py": "001067fffe33427bee0ed2f007fb7551a1d76b44",
    "python/sglang/srt/mem_cache/pool_host/mha.py": "39baee9e09735ebb7916f64ceb00dbfe395ab52b",
}
# Read through the code index without a resolvable commit: server_args.py
# (hicache_mem_layout defaults to "layer_first"; only the mooncake backend is
# switched to page_first by SGLang itself).

BASE_MODULE = "sglang.srt.mem_cache.hicache_storage"
BASE_CLASS = "HiCacheStorage"

# HiCacheStorage at hicache_storage.py 001067f: name -> (parameters after self, abstract, base default)
METHODS = {
    "register_mem_pool_host": (["mem_pool_host"], False, None),
    "register_mem_host_pool_v2": (["host_pool", "host_pool_name"], False, None),
    "batch_exists_v2": (["keys", "pool_transfers=None", "extra_info=None"], False, None),
    "batch_get_v2": (["transfers", "extra_info=None"], False, None),
    "batch_set_v2": (["transfers", "extra_info=None"], False, None),
    "batch_get_v1": (["keys", "host_indices", "extra_info=None"], False, None),
    "batch_set_v1": (["keys", "host_indices", "extra_info=None"], False, None),
    "get": (["key", "target_location=None", "target_sizes=None"], True, None),
    "batch_get": (["keys", "target_locations=None", "target_sizes=None"], True, None),
    "set": (["key", "value=None", "target_location=None", "target_sizes=None"], True, None),
    "batch_set": (["keys", "values=None", "target_locations=None", "target_sizes=None"], True, None),
    "exists": (["key"], True, None),
    "batch_exists": (["keys", "extra_info=None"], False, 0),
    "clear": ([], False, None),
    "get_stats": ([], False, None),
}

# What issue 18 requires of the adapter (the zero-copy path, setup, clear).
REQUIRED = ("register_mem_pool_host", "register_mem_host_pool_v2", "batch_exists", "batch_get_v1", "batch_set_v1",
            "get", "batch_get", "set", "batch_set", "exists", "clear")

# HiCacheStorageConfig's fields (hicache_storage.py 001067f), in order.
STORAGE_CONFIG_FIELDS = ["tp_rank", "tp_size", "pp_rank", "pp_size", "attn_cp_rank", "attn_cp_size", "is_mla_model",
                         "enable_storage_metrics", "is_page_first_layout", "model_name", "dp_rank", "dp_size",
                         "tp_lcm_size", "should_split_heads", "extra_config"]

# Attributes the adapter reads from the host pool (pool_host/mha.py 39baee9).
HOST_POOL_ATTRIBUTES = ["layout", "page_size", "dtype", "layer_num", "head_num", "head_dim", "kv_buffer",
                        "get_page_buffer_meta"]
ASYMMETRIC_HOST_POOL_ATTRIBUTES = ["layout", "page_size", "dtype", "layer_num", "head_num", "head_dim", "v_head_dim",
                                   "kv_buffer", "k_buffer", "v_buffer", "get_page_buffer_meta"]

# backend_factory.py's dynamic backend: the extra_config keys it requires.
DYNAMIC_REQUIRED_KEYS = ("backend_name", "module_path", "class_name")
