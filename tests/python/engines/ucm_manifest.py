"""What UcmKvpoolStore relies on in UCM, read from its source (no UCM can be
installed here). abc_stub.py builds the stand-in UcmKVStoreBaseV1 from this.

Pinned: ModelEngine-Group/unified-cache-management main at
cdd4406794808e1f387e11a5f8893dc738247e61 (after tag v0.5.0rc1 =
82467ce56d6a7ec87c4182d3ac22909d64a126d0); every file read at that commit."""

VERSION = "main@cdd4406794808e1f387e11a5f8893dc738247e61"
REPO = "ModelEngine-Group/unified-cache-management"
COMMIT = "cdd4406794808e1f387e11a5f8893dc738247e61"
FILES = {
    "ucm/store/ucmstore_v1.py": COMMIT,
    "ucm/store/factory_v1.py": COMMIT,
    "ucm/store/pipeline/connector.py": COMMIT,
    "ucm/integration/vllm/ucm_connector.py": COMMIT,
    "ucm/sparse/gsa/gsa.py": COMMIT,
    "ucm/sparse/state.py": COMMIT,
}

BASE_MODULE = "ucm.store.ucmstore_v1"
BASE_CLASS = "UcmKVStoreBaseV1"

# UcmKVStoreBaseV1 at ucmstore_v1.py: name -> (parameters after self, abstract, default)
METHODS = {
    "cc_store": ([], True, None),
    "lookup": (["block_ids"], True, None),
    "lookup_on_prefix": (["block_ids"], True, None),
    "prefetch": (["block_ids"], True, None),
    "load": (["block_ids", "shard_index", "dst_tensor"], True, None),
    "dump": (["block_ids", "shard_index", "src_tensor"], True, None),
    "load_data": (["block_ids", "shard_index", "dst_addr"], True, None),
    "dump_data": (["block_ids", "shard_index", "src_addr", "prerequisite_handle=0"], True, None),
    "wait": (["task"], True, None),
    "check": (["task"], True, None),
}
REQUIRED = tuple(METHODS)

# The config keys UCMDirectConnector._create_store sets (ucm_connector.py), per role,
# on top of a deep copy of ucm_connectors[0]["ucm_connector_config"].
SCHEDULER_CONFIG_KEYS = ["share_buffer_enable", "unique_id", "block_size", "posix_gc_enable"]
WORKER_CONFIG_KEYS = ["share_buffer_enable", "unique_id", "device_id", "tensor_size_list", "shard_size", "block_size",
                      "local_rank_size", "posix_gc_enable"]
# The launch config (kv_connector_extra_config) key naming stores.
CONNECTOR_KEYS = ("ucm_connectors", "ucm_connector_name", "ucm_connector_module_path", "ucm_connector_config")

# Functions the adapter calls.
FUNCTIONS = {"ucm.sparse.state": ["has_ucm_sparse"]}
