"""The ctypes bindings (kvpool/_capi.py's _SIGNATURES) against the C API's
one source of truth, include/kvpool/kvpool.h: every bound function is
declared there with the same number of parameters and matching types, so a
wrong argtype (which ctypes would pass silently, truncated or widened) fails
here rather than on a GPU."""

import ctypes as C
import pathlib
import re

import pytest

from kvpool import _capi

HEADER = pathlib.Path(__file__).resolve().parents[2] / "include" / "kvpool" / "kvpool.h"

SCALARS = {
    "kvpool_status_t": C.c_int,  # int-sized enums
    "kvpool_gpu_layout_kind_t": C.c_int,
    "int": C.c_int,
    "uint8_t": C.c_uint8,
    "uint32_t": C.c_uint32,
    "int32_t": C.c_int32,
    "uint64_t": C.c_uint64,
    "int64_t": C.c_int64,
    "size_t": C.c_size_t,
}
STRUCTS = {
    "kvpool_key_t": _capi.Key,
    "kvpool_namespace_desc_t": _capi.NamespaceDesc,
    "kvpool_client_options_t": _capi.ClientOptions,
    "kvpool_put_result_t": _capi.PutResult,
    "kvpool_get_result_t": _capi.GetResult,
    "kvpool_client_stats_t": _capi.ClientStats,
    "kvpool_gpu_layout_t": _capi.GpuLayout,
    "kvpool_gpu_options_t": _capi.GpuOptions,
    "kvpool_gpu_transfer_result_t": _capi.GpuTransferResult,
}
OPAQUE = {"kvpool_client_t", "kvpool_future_t", "kvpool_gpu_mover_t", "kvpool_gpu_transfer_t",
          "kvpool_gpu_layer_save_t", "void"}


def prototypes():
    text = re.sub(r"/\*.*?\*/", " ", HEADER.read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)
    out = {}
    for m in re.finditer(r"([A-Za-z_][\w\s\*]*?)\b(kvpool_\w+)\s*\(([^;{}]*?)\)\s*;", text):
        ret, name, params = " ".join(m.group(1).split()), m.group(2), " ".join(m.group(3).split())
        ret = ret.split(";")[-1].split("}")[-1].strip()
        args = [] if params in ("", "void") else [p.strip() for p in params.split(",")]
        out[name] = (ret, args)
    return out


def c_type(decl, is_return=False):
    """The type part of a parameter declaration (its name dropped)."""
    decl = decl.replace("*", " * ")
    words = decl.split()
    if not is_return and len(words) > 1 and words[-1] != "*":
        words = words[:-1]  # the parameter's name
    stars = words.count("*")
    base = [w for w in words if w not in ("*", "const")]
    assert len(base) == 1, decl
    return base[0], stars


def matches(ctype, decl, is_return=False):
    base, stars = c_type(decl, is_return)
    if stars == 0:
        if base == "void":
            return ctype is None
        return ctype is SCALARS[base]
    if base == "char" and stars == 1:
        return ctype is C.c_char_p
    if stars == 1 and base in OPAQUE:
        return ctype is C.c_void_p
    if ctype is C.c_void_p:  # an array passed as raw memory (keys, tokens, offsets)
        return True
    if not (isinstance(ctype, type) and issubclass(ctype, C._Pointer)):
        return False
    inner = ctype._type_
    if stars == 2:  # T** out, void* const*: a pointer to a handle
        return inner is C.c_void_p and (base in OPAQUE)
    if base in STRUCTS:
        return inner is STRUCTS[base]
    return inner is SCALARS.get(base)


@pytest.mark.parametrize("name", sorted(_capi._SIGNATURES))
def test_every_binding_matches_its_prototype_in_kvpool_h(name):
    protos = prototypes()
    assert name in protos, f"{name} is bound but not declared in {HEADER}"
    ret, params = protos[name]
    restype, argtypes = _capi._SIGNATURES[name]
    assert matches(restype, ret, is_return=True), f"{name}: returns {ret}, bound as {restype}"
    assert len(argtypes) == len(params), f"{name}: {len(params)} parameters, bound with {len(argtypes)}"
    for i, (t, p) in enumerate(zip(argtypes, params)):
        assert matches(t, p), f"{name} parameter {i} ({p}) bound as {t}"
    f = getattr(_capi.lib, name)
    assert f.restype is restype and list(f.argtypes) == list(argtypes)  # what _bind set


def test_the_layer_wise_gpu_calls_are_bound():
    layer_wise = {"kvpool_gpu_load_layers", "kvpool_gpu_transfer_layers", "kvpool_gpu_transfer_layer_event",
                  "kvpool_gpu_transfer_wait_layer", "kvpool_gpu_begin_save_layers", "kvpool_gpu_save_layer",
                  "kvpool_gpu_save_finish", "kvpool_gpu_save_destroy"}
    assert layer_wise <= set(_capi._SIGNATURES)
    assert layer_wise <= set(prototypes())


def test_every_function_kvpool_h_declares_is_bound():
    assert sorted(set(prototypes()) - set(_capi._SIGNATURES)) == []
