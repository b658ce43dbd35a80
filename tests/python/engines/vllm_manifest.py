"""What KvpoolConnector relies on in vLLM, read from its source (no vLLM can
be installed here). vllm_stubs.py builds stand-in modules from this, so a
method missing here or in the adapter fails the tests.

Pinned: vLLM v0.15.0 (docs.vllm.ai/en/v0.15.0, whose GPU model runner calls
handle_preemptions(scheduler_output.preempted_req_ids)); files read at the
commits below (the tag's own commit could not be resolved here)."""

VERSION = "v0.15.0"
REPO = "vllm-project/vllm"
FILES = {
    "vllm/distributed/kv_transfer/kv_connector/v1/base.py": "13f4ad0f55b08ca1d37d1459f50ce950feaeb547",
    "vllm/distributed/kv_transfer/kv_connector/factory.py": "a4cd9d0d28bdb41db8dfe0acdafac2bf2f608630",
    "vllm/v1/worker/kv_connector_model_runner_mixin.py": "23ec7c7fab7aa8edb1c14195c048113e210683fa",
    "vllm/distributed/kv_transfer/kv_connector/v1/metrics.py": "578b601cd1f41074873532e99af8369bf75cb5a9",
}
# Read for comparison: base.py at 003df2961dd8830c317a61f9745ccd557da9fa06 (later: handle_preemptions takes
# the step's metadata, kv_cache_config is required, requires_piecewise_for_cudagraph is a classmethod).

BASE_MODULE = "vllm.distributed.kv_transfer.kv_connector.v1.base"
BASE_CLASS = "KVConnectorBase_V1"

# KVConnectorBase_V1 at base.py 13f4ad0: name -> (kind, parameter names after self/cls, abstract)
METHODS = {
    "__init__": ("method", ["vllm_config", "role", "kv_cache_config"], False),
    "prefer_cross_layer_blocks": ("property", [], False),
    "role": ("property", [], False),
    "bind_connector_metadata": ("method", ["connector_metadata"], False),
    "clear_connector_metadata": ("method", [], False),
    "_get_connector_metadata": ("method", [], False),
    "has_connector_metadata": ("method", [], False),
    "register_kv_caches": ("method", ["kv_caches"], False),
    "register_cross_layers_kv_cache": ("method", ["kv_cache", "attn_backend"], False),
    "set_host_xfer_buffer_ops": ("method", ["copy_operation"], False),
    "handle_preemptions": ("method", ["preempted_req_ids"], False),
    "start_load_kv": ("method", ["forward_context", "**kwargs"], True),
    "wait_for_layer_load": ("method", ["layer_name"], True),
    "save_kv_layer": ("method", ["layer_name", "kv_layer", "attn_metadata", "**kwargs"], True),
    "wait_for_save": ("method", [], True),
    "get_finished": ("method", ["finished_req_ids"], False),
    "get_block_ids_with_load_errors": ("method", [], False),
    "shutdown": ("method", [], False),
    "get_kv_connector_stats": ("method", [], False),
    "get_kv_connector_kv_cache_events": ("method", [], False),
    "get_handshake_metadata": ("method", [], False),
    "get_num_new_matched_tokens": ("method", ["request", "num_computed_tokens"], True),
    "update_state_after_alloc": ("method", ["request", "blocks", "num_external_tokens"], True),
    "build_connector_meta": ("method", ["scheduler_output"], True),
    "update_connector_output": ("method", ["connector_output"], False),
    "request_finished": ("method", ["request", "block_ids"], False),
    "take_events": ("method", [], False),
    "get_required_kvcache_layout": ("classmethod", ["vllm_config"], False),
    "get_finished_count": ("method", [], False),
    "build_kv_connector_stats": ("classmethod", ["data"], False),
    "set_xfer_handshake_metadata": ("method", ["metadata"], False),
    "build_prom_metrics": ("classmethod", ["vllm_config", "metric_types", "labelnames", "per_engine_labelvalues"],
                           False),
    "reset_cache": ("method", [], False),
}

# The methods issue 18 requires the adapter to implement (abstract or not).
REQUIRED = ("get_num_new_matched_tokens", "update_state_after_alloc", "build_connector_meta",
            "update_connector_output", "request_finished", "register_kv_caches", "start_load_kv",
            "wait_for_layer_load", "save_kv_layer", "wait_for_save", "get_finished", "get_block_ids_with_load_errors",
            "handle_preemptions", "shutdown", "get_kv_connector_stats", "build_kv_connector_stats",
            "get_required_kvcache_layout")

# Attributes the adapter reads from vLLM's objects (file: class).
ATTRIBUTES = {
    "Request": ("vllm/v1/request.py", ["request_id", "prompt_token_ids", "all_token_ids", "num_tokens",
                                       "num_computed_tokens", "mm_features", "lora_request", "cache_salt"]),
    "KVCacheBlocks": ("vllm/v1/core/kv_cache_manager.py", ["get_block_ids"]),
    "SchedulerOutput": ("vllm/v1/core/sched/output.py", ["scheduled_new_reqs", "scheduled_cached_reqs",
                                                         "num_scheduled_tokens", "finished_req_ids",
                                                         "preempted_req_ids", "kv_connector_metadata"]),
    "NewRequestData": ("vllm/v1/core/sched/output.py", ["req_id", "block_ids", "num_computed_tokens"]),
    "CachedRequestData": ("vllm/v1/core/sched/output.py", ["req_ids", "resumed_req_ids", "new_block_ids",
                                                           "num_computed_tokens"]),
    "KVConnectorOutput": ("vllm/v1/outputs.py", ["finished_sending", "finished_recving", "kv_connector_stats",
                                                 "invalid_block_ids"]),
    "VllmConfig": ("vllm/config/vllm.py", ["model_config", "parallel_config", "kv_transfer_config",
                                           "attention_config"]),
    "ModelConfig": ("vllm/config/model.py", ["model", "use_mla", "hf_text_config"]),
    "ParallelConfig": ("vllm/config/parallel.py", ["tensor_parallel_size", "pipeline_parallel_size",
                                                   "decode_context_parallel_size"]),
    "KVTransferConfig": ("vllm/config/kv_transfer.py", ["kv_connector", "kv_connector_module_path", "kv_role",
                                                        "kv_load_failure_policy", "kv_connector_extra_config"]),
    "KVCacheConfig": ("vllm/v1/kv_cache_interface.py", ["num_blocks", "kv_cache_groups"]),
    "KVCacheGroupSpec": ("vllm/v1/kv_cache_interface.py", ["kv_cache_spec", "layer_names"]),
    "FullAttentionSpec": ("vllm/v1/kv_cache_interface.py", ["block_size", "num_kv_heads", "head_size", "dtype",
                                                            "sliding_window"]),
    "KVConnectorStats": ("vllm/distributed/kv_transfer/kv_connector/v1/metrics.py", ["data"]),
}

# vLLM functions the adapter calls (worker ranks; pipeline stages).
FUNCTIONS = {
    "vllm.distributed.parallel_state": ["get_tensor_model_parallel_rank", "get_pp_group", "get_dcp_group"],
    "vllm.distributed.utils": ["get_pp_indices"],
}

# The per-layer KV tensor of the attention backends the adapter supports (their get_kv_cache_shape).
KV_SHAPES = {
    "FLASH_ATTN": "(2, num_blocks, block_size, num_kv_heads, head_size)",
    "FLASHINFER": "(num_blocks, 2, block_size, num_kv_heads, head_size)",
    "TRITON_ATTN": "(num_blocks, 2, block_size, num_kv_heads, head_size)",
}
