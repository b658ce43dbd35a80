"""Stand-ins for vLLM built from vllm_manifest.py, installed in sys.modules:
KVConnectorBase_V1 is an ABC with exactly the manifest's methods (abstract
ones abstract, the rest behaving as vLLM's defaults), so an adapter that
misses an abstract method fails at construction. Plus the data objects vLLM
passes, with the manifest's attributes only."""

import abc
import dataclasses
import enum
import sys
import types

from . import vllm_manifest as M
from .abc_stub import install_modules
from .abc_stub import uninstall as uninstall_modules

_DEFAULTS = {  # what vLLM's non-abstract methods return (base.py)
    "get_finished": (None, None), "get_block_ids_with_load_errors": set(), "request_finished": (False, None),
    "take_events": (), "has_connector_metadata": None,
}


def _method(name, kind, params, abstract):
    args = ", ".join(["cls" if kind == "classmethod" else "self"] + params)
    if name == "__init__":
        body = ("self._connector_metadata = None\n    self._vllm_config = vllm_config\n"
                "    self._kv_transfer_config = vllm_config.kv_transfer_config\n"
                "    self._kv_cache_config = kv_cache_config\n    self._role = role")
    elif name == "bind_connector_metadata":
        body = "self._connector_metadata = connector_metadata"
    elif name == "clear_connector_metadata":
        body = "self._connector_metadata = None"
    elif name == "_get_connector_metadata":
        body = "assert self._connector_metadata is not None\n    return self._connector_metadata"
    elif name == "has_connector_metadata":
        body = "return self._connector_metadata is not None"
    elif name == "role":
        body = "return self._role"
    elif name == "prefer_cross_layer_blocks":
        body = "return False"
    elif abstract:
        body = "raise NotImplementedError"
    else:
        body = f"return {_DEFAULTS.get(name)!r}"
    ns = {}
    exec(f"def {name}({args}):\n    {body}\n", ns)  # noqa: S102 - a stub from the manifest's own names
    fn = ns[name]
    if abstract:
        fn = abc.abstractmethod(fn)
    if kind == "classmethod":
        return classmethod(fn)
    if kind == "property":
        return property(fn)
    return fn


class KVConnectorRole(enum.Enum):
    SCHEDULER = 0
    WORKER = 1


def install(pp_rank=0, tp_rank=0, dcp_rank=0):
    """Puts the stub vLLM into sys.modules; returns the base module."""
    body = {n: _method(n, *spec) for n, spec in M.METHODS.items()}
    base_cls = abc.ABCMeta(M.BASE_CLASS, (abc.ABC,), body)

    class KVConnectorMetadata(abc.ABC):  # noqa: B024 - as in vLLM
        pass

    @dataclasses.dataclass
    class KVConnectorStats:
        data: dict = dataclasses.field(default_factory=dict)

    group = lambda rank: types.SimpleNamespace(rank_in_group=rank)  # noqa: E731
    mods = install_modules({
        M.BASE_MODULE: dict(KVConnectorBase_V1=base_cls, KVConnectorMetadata=KVConnectorMetadata,
                            KVConnectorRole=KVConnectorRole),
        "vllm.distributed.kv_transfer.kv_connector.v1.metrics": dict(KVConnectorStats=KVConnectorStats),
        "vllm.distributed.parallel_state": dict(get_tensor_model_parallel_rank=lambda: tp_rank,
                                                get_pp_group=lambda: group(pp_rank),
                                                get_dcp_group=lambda: group(dcp_rank)),
        "vllm.distributed.utils": dict(get_pp_indices=_pp_indices),
    })
    return mods[M.BASE_MODULE]


def _pp_indices(num_layers, rank, size):  # vLLM's even split, remainder to the last stages
    per, extra = divmod(num_layers, size)
    start = rank * per + max(0, rank - (size - extra))
    return start, start + per + (1 if rank >= size - extra else 0)


def uninstall():
    uninstall_modules(["vllm"])
    sys.modules.pop("kvpool.integrations.vllm", None)
    for n in [n for n in sys.modules if n.startswith("kvpool.integrations.vllm.")]:
        del sys.modules[n]


def _obj(kind, **values):
    """A vLLM object of the manifest's class `kind`, with its listed attributes only."""
    allowed = set(M.ATTRIBUTES[kind][1])
    extra = set(values) - allowed
    assert not extra, f"{kind} has no attributes {extra} in the manifest"
    o = types.SimpleNamespace(**{a: None for a in allowed})
    o.__dict__.update(values)
    return o


def vllm_config(kv_transfer, *, model="test/model", layers=2, tp=1, pp=1, dcp=1, use_mla=False, backend=None):
    return _obj("VllmConfig",
                model_config=_obj("ModelConfig", model=model, use_mla=use_mla,
                                  hf_text_config=types.SimpleNamespace(num_hidden_layers=layers)),
                parallel_config=_obj("ParallelConfig", tensor_parallel_size=tp, pipeline_parallel_size=pp,
                                     decode_context_parallel_size=dcp),
                kv_transfer_config=_obj("KVTransferConfig", **kv_transfer),
                attention_config=types.SimpleNamespace(backend=backend))


class FullAttentionSpec:
    def __init__(self, block_size, num_kv_heads, head_size, dtype):
        self.block_size, self.num_kv_heads, self.head_size, self.dtype = block_size, num_kv_heads, head_size, dtype
        self.sliding_window = None


def kv_cache_config(num_blocks, layer_names, spec, groups=1):
    g = [_obj("KVCacheGroupSpec", kv_cache_spec=spec, layer_names=list(layer_names)) for _ in range(groups)]
    return _obj("KVCacheConfig", num_blocks=num_blocks, kv_cache_groups=g)


class Request:
    """vllm/v1/request.py's Request, the attributes the adapter reads."""

    def __init__(self, request_id, prompt_token_ids):
        for a in M.ATTRIBUTES["Request"][1]:
            if a != "num_tokens":
                setattr(self, a, None)
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.all_token_ids = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.mm_features = []

    @property
    def num_tokens(self):
        return len(self.all_token_ids)


class KVCacheBlocks:
    def __init__(self, block_ids):
        self._ids = list(block_ids)

    def get_block_ids(self):
        return (list(self._ids),)


def new_request_data(req_id, block_ids, num_computed_tokens):
    return _obj("NewRequestData", req_id=req_id, block_ids=(list(block_ids),), num_computed_tokens=num_computed_tokens)


def cached_request_data(req_ids=(), new_block_ids=(), num_computed_tokens=()):
    return _obj("CachedRequestData", req_ids=list(req_ids), resumed_req_ids=set(),
                new_block_ids=[None if b is None else (list(b),) for b in new_block_ids],
                num_computed_tokens=list(num_computed_tokens))


def scheduler_output(new=(), cached=None, num_scheduled_tokens=None, finished=()):
    return _obj("SchedulerOutput", scheduled_new_reqs=list(new), scheduled_cached_reqs=cached or cached_request_data(),
                num_scheduled_tokens=dict(num_scheduled_tokens or {}), finished_req_ids=set(finished),
                preempted_req_ids=set(), kv_connector_metadata=None)


def connector_output(invalid=()):
    return _obj("KVConnectorOutput", finished_sending=None, finished_recving=None, kv_connector_stats=None,
                invalid_block_ids=set(invalid))
