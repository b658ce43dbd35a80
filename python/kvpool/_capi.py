"""libkvpool_c.so through ctypes: finding and loading it, its structs and
signatures (include/kvpool/kvpool.h, the one source of truth), and turning
its status codes into kvpool.errors exceptions.

Why ctypes: the C API's ABI is stable (append-only structs with
``struct_size``, functions never change), so one pure-Python package loads it
from any CPython 3.10+ with no build per Python version. ctypes releases the
GIL around every call into a ``CDLL``, so calls that wait let other Python
threads run.

Where the library comes from, first match wins:
1. ``$KVPOOL_C_LIB``: a path to a libkvpool_c.so (another build of yours);
2. ``kvpool/_native/libkvpool_c.so.1``: the wheel's copy (with UCX, spdlog,
   fmt, OpenSSL, ... beside it, found through ``$ORIGIN`` run paths), or the
   build tree's (``cmake --build`` stages it there);
3. ``libkvpool_c.so.1`` on the loader's search path (``cmake --install``).
"""

import ctypes as C
import os
import pathlib

from . import errors

NATIVE_DIR = pathlib.Path(__file__).resolve().parent / "_native"
LIB_NAME = "libkvpool_c.so.1"


def _library_path():
    env = os.environ.get("KVPOOL_C_LIB")
    if env:
        return env
    bundled = NATIVE_DIR / LIB_NAME
    if bundled.exists():
        return str(bundled)
    return LIB_NAME


def _point_ucx_at_bundled_modules():
    """UCX loads its transport modules (cma, ib, rdmacm) from UCX_MODULE_DIR
    when libucs initializes, i.e. while libkvpool_c.so loads: set it first,
    to the wheel's modules, so UCX never mixes its libraries with a system
    UCX's modules. A value the user set wins."""
    modules = NATIVE_DIR / "ucx"
    if modules.is_dir() and "UCX_MODULE_DIR" not in os.environ:
        os.environ["UCX_MODULE_DIR"] = str(modules)


def _load():
    _point_ucx_at_bundled_modules()
    path = _library_path()
    try:
        return C.CDLL(path)
    except OSError as e:
        raise ImportError(f"kvpool: cannot load libkvpool_c.so from {path}: {e}. Install the kvpool wheel "
                          "(scripts/build_wheel.sh), or set KVPOOL_C_LIB to a libkvpool_c.so") from e


lib = _load()
LIBRARY_PATH = lib._name  # what was loaded (kvpool.library_path() reports the resolved file)

# ------------------------------------------------------------------ types --

P = C.c_void_p
Status = C.c_int  # kvpool_status_t: an int-sized enum
OK, INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED = 0, 1, 2, 7


class Key(C.Structure):
    # Two little-endian uint64 on x86-64: the same bytes as kvpool's 16-byte
    # key form (lo then hi), so an array of keys is a join of key bytes.
    _fields_ = [("lo", C.c_uint64), ("hi", C.c_uint64)]


class NamespaceDesc(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("model_id", C.c_char_p), ("dtype", C.c_char_p),
                ("num_layers", C.c_uint32), ("num_kv_heads", C.c_uint32), ("head_dim", C.c_uint32),
                ("tokens_per_block", C.c_uint32), ("layout", C.c_char_p), ("tp_rank", C.c_uint32),
                ("tp_size", C.c_uint32), ("block_bytes", C.c_uint64)]


class ClientOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("coordinator", C.c_char_p), ("client_id", C.c_char_p),
                ("timeout_ms", C.c_uint32), ("tls", C.c_char_p), ("secret_file", C.c_char_p)]


class PutResult(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("outcomes", C.POINTER(C.c_int)), ("key_status", C.POINTER(C.c_int)),
                ("written", C.c_size_t), ("deduplicated", C.c_size_t), ("pending", C.c_size_t),
                ("failed", C.c_size_t)]


class GetResult(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("loaded", C.c_size_t), ("stopped", C.c_int)]


class ClientStats(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("transports", C.c_char * 128), ("bytes_put", C.c_uint64),
                ("bytes_got", C.c_uint64), ("verify_failures", C.c_uint64)]


class GpuLayout(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("kind", C.c_int), ("dtype", C.c_char_p), ("num_layers", C.c_uint32),
                ("num_kv_heads", C.c_uint32), ("head_dim", C.c_uint32), ("tokens_per_block", C.c_uint32),
                ("num_pages", C.c_uint64), ("batch", C.c_uint32), ("max_seq", C.c_uint64)]


class GpuOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("path", C.c_uint32), ("mover", C.c_uint32),
                ("chunk_bytes", C.c_uint64), ("verify_loads", C.c_int32), ("hash_threads", C.c_uint32),
                ("device", C.c_int32), ("gpu_checksums", C.c_int32), ("staged_stream_order", C.c_int32)]


class GpuTransferResult(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("done", C.c_size_t), ("failed", C.c_size_t), ("stopped", C.c_int),
                ("path", C.c_char * 16), ("bytes", C.c_uint64), ("control_ms", C.c_double),
                ("enqueue_ms", C.c_double), ("copy_done_ms", C.c_double), ("hash_ms", C.c_double),
                ("hash_done_ms", C.c_double), ("commit_ms", C.c_double), ("total_ms", C.c_double)]


def _ptr(t):
    return C.POINTER(t)


_SIGNATURES = {
    "kvpool_status_name": (C.c_char_p, [Status]),
    "kvpool_last_error_code": (Status, []),
    "kvpool_last_error_message": (C.c_char_p, []),
    "kvpool_abi_version": (C.c_uint32, []),
    "kvpool_version_string": (C.c_char_p, []),
    "kvpool_set_log_level": (Status, [C.c_char_p]),
    "kvpool_namespace_desc_init": (None, [_ptr(NamespaceDesc)]),
    "kvpool_namespace_id": (Status, [_ptr(NamespaceDesc), _ptr(C.c_uint64)]),
    "kvpool_prefix_keys": (Status, [C.c_uint64, _ptr(C.c_uint32), C.c_size_t, C.c_uint32, P, C.c_size_t,
                                    _ptr(C.c_size_t)]),
    "kvpool_engine_keys": (Status, [C.c_uint64, P, _ptr(C.c_size_t), C.c_size_t, P]),
    "kvpool_client_options_init": (None, [_ptr(ClientOptions)]),
    "kvpool_client_create": (Status, [_ptr(ClientOptions), _ptr(P)]),
    "kvpool_client_destroy": (None, [P]),
    "kvpool_register_namespace": (Status, [P, _ptr(NamespaceDesc), _ptr(C.c_uint64)]),
    "kvpool_block_bytes": (Status, [P, C.c_uint64, _ptr(C.c_uint64)]),
    "kvpool_register_buffer": (Status, [P, P, C.c_size_t]),
    "kvpool_unregister_buffer": (Status, [P, P]),
    "kvpool_put_result_init": (None, [_ptr(PutResult)]),
    "kvpool_get_result_init": (None, [_ptr(GetResult)]),
    "kvpool_put": (Status, [P, C.c_uint64, P, P, C.c_size_t, C.c_size_t, _ptr(PutResult)]),
    "kvpool_get": (Status, [P, C.c_uint64, P, P, C.c_size_t, C.c_size_t, _ptr(GetResult)]),
    "kvpool_lookup": (Status, [P, C.c_uint64, P, C.c_size_t, _ptr(C.c_size_t)]),
    "kvpool_remove": (Status, [P, C.c_uint64, P, C.c_size_t, _ptr(C.c_int), _ptr(C.c_size_t)]),
    "kvpool_wait_for": (Status, [P, C.c_uint64, P, C.c_size_t, C.c_uint32, _ptr(C.c_uint8), _ptr(C.c_size_t)]),
    "kvpool_put_async": (Status, [P, C.c_uint64, P, P, C.c_size_t, C.c_size_t, _ptr(P)]),
    "kvpool_get_async": (Status, [P, C.c_uint64, P, P, C.c_size_t, C.c_size_t, _ptr(P)]),
    "kvpool_future_test": (C.c_int, [P]),
    "kvpool_future_wait": (Status, [P, C.c_int64]),
    "kvpool_future_put_result": (Status, [P, _ptr(PutResult)]),
    "kvpool_future_get_result": (Status, [P, _ptr(GetResult)]),
    "kvpool_future_destroy": (None, [P]),
    "kvpool_client_stats_init": (None, [_ptr(ClientStats)]),
    "kvpool_client_get_stats": (Status, [P, _ptr(ClientStats)]),
    "kvpool_gpu_layout_init": (None, [_ptr(GpuLayout)]),
    "kvpool_gpu_layout_block_bytes": (Status, [_ptr(GpuLayout), _ptr(C.c_uint64)]),
    "kvpool_gpu_layout_name": (C.c_char_p, [C.c_int]),
    "kvpool_gpu_options_init": (None, [_ptr(GpuOptions)]),
    "kvpool_gpu_mover_create": (Status, [P, C.c_uint64, _ptr(GpuLayout), _ptr(P), _ptr(P), _ptr(GpuOptions),
                                         _ptr(P)]),
    "kvpool_gpu_mover_destroy": (None, [P]),
    "kvpool_gpu_mover_set_options": (Status, [P, _ptr(GpuOptions)]),
    "kvpool_gpu_save": (Status, [P, P, _ptr(C.c_uint64), C.c_size_t, P, _ptr(P)]),
    "kvpool_gpu_load": (Status, [P, P, _ptr(C.c_uint64), C.c_size_t, P, _ptr(P)]),
    "kvpool_gpu_transfer_event": (P, [P]),
    "kvpool_gpu_transfer_result_init": (None, [_ptr(GpuTransferResult)]),
    "kvpool_gpu_transfer_wait": (Status, [P, _ptr(GpuTransferResult)]),
    "kvpool_gpu_transfer_destroy": (None, [P]),
    "kvpool_gpu_load_layers": (Status, [P, P, _ptr(C.c_uint64), C.c_size_t, P, _ptr(P), _ptr(C.c_size_t)]),
    "kvpool_gpu_transfer_found": (C.c_size_t, [P]),
    "kvpool_gpu_transfer_layers": (C.c_uint32, [P]),
    "kvpool_gpu_transfer_layer_event": (P, [P, C.c_uint32]),
    "kvpool_gpu_transfer_wait_layer": (Status, [P, C.c_uint32, P]),
    "kvpool_gpu_begin_save_layers": (Status, [P, P, _ptr(C.c_uint64), C.c_size_t, _ptr(P)]),
    "kvpool_gpu_save_layer": (Status, [P, C.c_uint32, P]),
    "kvpool_gpu_save_finish": (Status, [P, _ptr(GpuTransferResult)]),
    "kvpool_gpu_save_destroy": (None, [P]),
    "kvpool_gpu_available": (C.c_int, []),
    "kvpool_gpu_row_mover_create": (Status, [P, C.c_uint64, C.c_uint32, _ptr(GpuOptions), _ptr(P)]),
    "kvpool_gpu_save_rows": (Status, [P, P, _ptr(C.c_uint64), C.c_size_t, C.c_size_t, P, P, _ptr(P)]),
    "kvpool_gpu_load_rows": (Status, [P, P, _ptr(C.c_uint64), C.c_size_t, C.c_size_t, P, P, _ptr(P)]),
    "kvpool_gpu_layer_row_mover_create": (Status, [P, C.c_uint64, C.c_uint32, C.c_uint32, _ptr(GpuOptions), _ptr(P)]),
    "kvpool_gpu_load_layer_rows": (Status, [P, P, _ptr(C.c_uint64), C.c_size_t, C.c_size_t, C.c_uint32, P, P,
                                            _ptr(P)]),
    "kvpool_gpu_begin_save_layer_rows": (Status, [P, P, C.c_size_t, _ptr(P)]),
    "kvpool_gpu_save_layer_rows": (Status, [P, C.c_uint32, _ptr(C.c_uint64), C.c_size_t, P]),
}


def _bind():
    missing = [name for name in _SIGNATURES if not hasattr(lib, name)]
    if missing:
        raise ImportError(f"kvpool: {LIBRARY_PATH} lacks {', '.join(missing)}: a libkvpool_c.so older than this "
                          "package (rebuild it, or unset KVPOOL_C_LIB)")
    for name, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = argtypes


_bind()

# -------------------------------------------------------------- statuses --


def code_name(code):
    """The stable lower-case name of a status code ("not_found")."""
    return lib.kvpool_status_name(code).decode()


def error(code, message):
    """The kvpool.errors exception for a status code and message."""
    return errors.from_status(code_name(code), message)


def check(code):
    """Raises the calling thread's last error when ``code`` is not OK. Read
    at once: the message belongs to this thread's last kvpool call."""
    if code != OK:
        raise error(code, lib.kvpool_last_error_message().decode(errors="replace"))


def encode(text, what):
    """A str (or os.PathLike) as the NUL-terminated UTF-8 the C API reads."""
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if isinstance(text, bytes):
        text = text.decode()
    if not isinstance(text, str):
        raise TypeError(f"{what}: expected a str, got {type(text).__name__}")
    if "\0" in text:
        raise errors.InvalidArgument(f"{what}: a NUL character")
    return text.encode()


def uint(value, bits, what):
    """value as an unsigned int of `bits` bits: ctypes would silently wrap."""
    try:
        v = value.__index__()
    except AttributeError:
        raise TypeError(f"{what}: expected an int, got {type(value).__name__}") from None
    if not 0 <= v < 1 << bits:
        raise errors.InvalidArgument(f"{what}: {v} is outside [0, 2**{bits})")
    return v
