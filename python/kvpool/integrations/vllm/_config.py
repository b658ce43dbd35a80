"""Settings, refusals, namespaces and keys of the vLLM connector: what the
scheduler process and every worker process must derive identically.

Nothing here imports vLLM; vLLM's objects are read by attribute (the
attributes are listed in tests/python/engines/vllm_manifest.py).

Keys. A request's tokens are cut into the scheduler's blocks of
``hash_block`` tokens (vLLM's block_size, times the decode-context-parallel
size, as vLLM's scheduler does) and chained with ``kvpool.prefix_keys`` in a
*chain namespace* that names the model, the KV dtype and hash_block only.
These chain keys are what the scheduler sends to the workers. Each worker
rank stores its own slice of a block in its *rank namespace* (layers of its
pipeline stage, KV heads of its tensor rank, its decode-context-parallel
rank) under ``kvpool.engine_keys(rank_ns, chain_key)``. vLLM's own block
hashes are not used: unless PYTHONHASHSEED is set they are seeded randomly
per process start (vllm/v1/core/kv_cache_utils.py, init_none_hash), so a
prefill and a decode instance would never agree on them.
"""

import os
import re

from .._common import ENV_COORDINATOR, ENV_SECRET_FILE, setting

# Attention backends whose per-layer KV tensor the GPU path can address, by
# vLLM's backend name (AttentionBackendEnum names). FLASH_ATTN keeps
# [2, num_blocks, block_size, kv_heads, head_dim] (kvpool's "vllm-paged");
# FLASHINFER and TRITON_ATTN keep [num_blocks, 2, block_size, kv_heads,
# head_dim], which the mover addresses as its "hf-contiguous" kind (see
# _worker.PagedLayout). Both store the same bytes per pool block, so the two
# layouts share blocks. Only the NHD order (the connector requires it through
# get_required_kvcache_layout).
SUPPORTED_BACKENDS = ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN")

# The KV dtype as a namespace names it, and as kvpool.gpu.KvLayout takes it.
_DTYPES = {
    "bfloat16": ("bf16", "bf16", 2),
    "float16": ("fp16", "fp16", 2),
    "half": ("fp16", "fp16", 2),
    "float8_e4m3fn": ("fp8_e4m3", "fp8", 1),
    "float8_e5m2": ("fp8_e5m2", "fp8", 1),
}


class ConfigError(ValueError):
    """A setting vLLM was started with that this connector cannot serve;
    the message names the flag to change."""


class Settings:
    """kv_connector_extra_config, with the environment as fallback:

    - ``kvpool_coordinator``: "host:port" ($KVPOOL_COORDINATOR, else 127.0.0.1:7400)
    - ``kvpool_secret_file``: the cluster secret ($KVPOOL_SECRET_FILE, else kvpool's default path)
    - ``kvpool_timeout_s``: deadline of every pool call (default 5)
    - ``kvpool_retry_s``: after a pool outage, how long to serve misses before connecting again (default 10)
    - ``kvpool_model_id``: the model's name in the namespace (default: vLLM's model)
    - ``kvpool_path``: the GPU path, "auto" | "mapped" | "staged" (default auto)
    """

    def __init__(self, extra, model):
        extra = extra or {}
        unknown = sorted(k for k in extra if k.startswith("kvpool_") and k not in _KEYS)
        if unknown:
            raise ConfigError(f"kv_connector_extra_config: unknown keys {unknown}; known: {sorted(_KEYS)}")
        self.coordinator = extra.get("kvpool_coordinator") or os.environ.get(ENV_COORDINATOR) or "127.0.0.1:7400"
        self.secret_file = extra.get("kvpool_secret_file") or os.environ.get(ENV_SECRET_FILE) or None
        self.timeout_s = _positive(extra, "kvpool_timeout_s", 5.0)
        self.retry_s = _positive(extra, "kvpool_retry_s", 10.0)
        self.model_id = str(extra.get("kvpool_model_id") or model)
        self.path = extra.get("kvpool_path", "auto")
        if self.path not in ("auto", "mapped", "staged"):
            raise ConfigError(f"kv_connector_extra_config.kvpool_path: {self.path!r} (auto, mapped or staged)")


_KEYS = ("kvpool_coordinator", "kvpool_secret_file", "kvpool_timeout_s", "kvpool_retry_s", "kvpool_model_id",
         "kvpool_path")


def _positive(extra, name, default):
    try:
        value = float(extra.get(name, default))
    except (TypeError, ValueError):
        raise ConfigError(f"kv_connector_extra_config.{name}: a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"kv_connector_extra_config.{name}: must be positive")
    return value


def dtype_names(dtype):
    """(namespace dtype, KvLayout dtype, bytes) of a torch dtype (or its name)."""
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ConfigError(f"KV cache dtype {name} is not supported by kvpool's GPU path (bf16, fp16, fp8): "
                          "change --dtype or --kv-cache-dtype, or drop --kv-transfer-config")
    return _DTYPES[name]


def _backend_name(vllm_config):
    """The attention backend the user forced, if any (None: vLLM chooses)."""
    backend = getattr(getattr(vllm_config, "attention_config", None), "backend", None)
    if backend is None:
        backend = os.environ.get("VLLM_ATTENTION_BACKEND") or None
    if backend is None:
        return None
    return getattr(backend, "name", None) or str(backend).rsplit(".", 1)[-1]


class Shape:
    """What every process derives from vLLM's configuration: the KV spec of
    one rank, the parallel sizes, the block sizes and the role."""

    def __init__(self, vllm_config, kv_cache_config):
        model = vllm_config.model_config
        if getattr(model, "use_mla", False):
            raise ConfigError("KvpoolConnector does not support MLA models (the pool's GPU layouts hold K and V "
                              "pages, not MLA's latent cache): remove --kv-transfer-config for this model")
        forced = _backend_name(vllm_config)
        if forced is not None and forced not in SUPPORTED_BACKENDS:
            raise ConfigError(f"attention backend {forced} is not supported by KvpoolConnector; supported: "
                              f"{', '.join(SUPPORTED_BACKENDS)}: change --attention-backend "
                              "(or VLLM_ATTENTION_BACKEND)")
        groups = list(getattr(kv_cache_config, "kv_cache_groups", None) or [])
        if kv_cache_config is None or len(groups) != 1:
            raise ConfigError(f"KvpoolConnector needs one KV cache group (got {len(groups)}): hybrid models "
                              "(sliding window + full attention, Mamba) need the hybrid KV cache manager, which "
                              "this connector does not support (no SupportsHMA); pass "
                              "--disable-hybrid-kv-cache-manager for a model that allows it, or drop "
                              "--kv-transfer-config")
        spec = groups[0].kv_cache_spec
        if type(spec).__name__ != "FullAttentionSpec" or getattr(spec, "sliding_window", None):
            raise ConfigError(f"KvpoolConnector supports full-attention KV caches only, not {type(spec).__name__}: "
                              "drop --kv-transfer-config for this model")
        self.model_id = str(getattr(model, "model", "model"))
        self.ns_dtype, self.layout_dtype, self.elem_bytes = dtype_names(spec.dtype)
        self.num_kv_heads = int(spec.num_kv_heads)
        self.head_dim = int(spec.head_size)
        self.page_tokens = int(spec.block_size)
        self.layer_names = list(groups[0].layer_names)
        self.num_blocks = int(getattr(kv_cache_config, "num_blocks", 0))
        par = vllm_config.parallel_config
        self.tp_size = int(getattr(par, "tensor_parallel_size", 1) or 1)
        self.pp_size = int(getattr(par, "pipeline_parallel_size", 1) or 1)
        self.dcp_size = int(getattr(par, "decode_context_parallel_size", 1) or 1)
        # vLLM's scheduler counts blocks of block_size * dcp tokens (each DCP
        # rank holds every dcp-th token of a block in a page of block_size).
        self.hash_block = self.page_tokens * self.dcp_size
        self._hidden_layers = getattr(getattr(model, "hf_text_config", None), "num_hidden_layers", None)
        kv = vllm_config.kv_transfer_config
        self.role = getattr(kv, "kv_role", "kv_both")
        self.loads = self.role in ("kv_consumer", "kv_both")
        self.saves = self.role in ("kv_producer", "kv_both")
        self.settings = Settings(setting(kv, "kv_connector_extra_config", None), self.model_id)

    def stage_layers(self, pp_rank):
        """Attention layers of pipeline stage pp_rank."""
        if self.pp_size == 1:
            return len(self.layer_names)
        from vllm.distributed.utils import get_pp_indices  # vLLM's own partition of layers to stages
        start, end = get_pp_indices(int(self._hidden_layers), pp_rank, self.pp_size)
        return end - start

    def block_bytes(self, num_layers):
        return 2 * num_layers * self.page_tokens * self.num_kv_heads * self.head_dim * self.elem_bytes

    def chain_namespace(self):
        """The seed of the chain keys: model, dtype and hash_block, the same in every process."""
        import kvpool
        return kvpool.namespace_id(model_id=self.settings.model_id, dtype=self.ns_dtype, num_layers=1,
                                   num_kv_heads=1, head_dim=1, tokens_per_block=self.hash_block,
                                   layout="vllm-token-chain", block_bytes=0)

    def rank_descriptor(self, tp_rank, pp_rank, dcp_rank, num_layers=None):
        """register_namespace's arguments for one worker rank. Tensor rank and
        size are descriptor fields; pipeline and decode-context-parallel rank
        and size are in the layout name: two ranks never share a block."""
        layers = self.stage_layers(pp_rank) if num_layers is None else num_layers
        return dict(model_id=self.settings.model_id, dtype=self.ns_dtype, num_layers=layers,
                    num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, tokens_per_block=self.page_tokens,
                    layout=f"vllm-paged;pp={pp_rank}/{self.pp_size};dcp={dcp_rank}/{self.dcp_size}",
                    tp_rank=tp_rank, tp_size=self.tp_size, block_bytes=self.block_bytes(layers))

    def all_rank_descriptors(self):
        """Every worker rank's descriptor, as the scheduler computes them (a
        DCP rank is the tensor rank modulo the DCP size, as vLLM groups them;
        the worker checks its own)."""
        return [self.rank_descriptor(tp, pp, tp % self.dcp_size) for pp in range(self.pp_size)
                for tp in range(self.tp_size)]


def request_is_cacheable(request):
    """Whether a request's KV is determined by its token ids alone. Requests
    with multimodal inputs, a LoRA adapter, a cache salt or prompt embeddings
    are neither looked up nor saved (their token ids do not name their KV)."""
    if getattr(request, "prompt_token_ids", None) is None:
        return False
    if getattr(request, "mm_features", None) or getattr(request, "mm_positions", None):
        return False
    return getattr(request, "lora_request", None) is None and getattr(request, "cache_salt", None) is None


_INT = re.compile(r"\d+")


def layer_order(name):
    """Sort key of a layer name: its first integer (the layer index), then the name."""
    m = _INT.search(name)
    return (int(m.group()) if m else -1, name)
