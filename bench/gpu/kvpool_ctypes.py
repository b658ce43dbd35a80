"""kvpool's C API (include/kvpool/kvpool.h) through ctypes, GPU calls included.

Why ctypes and not the pybind11 module: the device's Python is 3.12 (with
torch), the module built here is for Debian's 3.11, and libkvpool_c.so has a
stable C ABI that any Python can load. Tensors are passed by data_ptr(),
streams by torch.cuda.Stream.cuda_stream.

    lib = load("/path/to/libkvpool_c.so")
    client = Client(lib, "127.0.0.1:7400")
    ns = client.register_namespace(model_id="m", layout=layout, ...)
"""
import ctypes as C
import os

KVPOOL_OK = 0
GPU_VLLM_PAGED, GPU_VLLM_PAGED_SPLIT, GPU_HF_CONTIGUOUS = 0, 1, 2
PATH_AUTO, PATH_MAPPED, PATH_STAGED = 0, 1, 2
MOVER_COPY_ENGINE, MOVER_KERNEL, MOVER_PER_PAGE = 0, 1, 2


class Key(C.Structure):
    _fields_ = [("lo", C.c_uint64), ("hi", C.c_uint64)]


class ClientOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("coordinator", C.c_char_p), ("client_id", C.c_char_p),
                ("timeout_ms", C.c_uint32), ("tls", C.c_char_p), ("secret_file", C.c_char_p)]


class NamespaceDesc(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("model_id", C.c_char_p), ("dtype", C.c_char_p),
                ("num_layers", C.c_uint32), ("num_kv_heads", C.c_uint32), ("head_dim", C.c_uint32),
                ("tokens_per_block", C.c_uint32), ("layout", C.c_char_p), ("tp_rank", C.c_uint32),
                ("tp_size", C.c_uint32), ("block_bytes", C.c_uint64)]


class GpuLayout(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("kind", C.c_int), ("dtype", C.c_char_p),
                ("num_layers", C.c_uint32), ("num_kv_heads", C.c_uint32), ("head_dim", C.c_uint32),
                ("tokens_per_block", C.c_uint32), ("num_pages", C.c_uint64), ("batch", C.c_uint32),
                ("max_seq", C.c_uint64)]


class GpuOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("path", C.c_uint32), ("mover", C.c_uint32),
                ("chunk_bytes", C.c_uint64), ("verify_loads", C.c_int32), ("hash_threads", C.c_uint32),
                ("device", C.c_int32), ("gpu_checksums", C.c_int32),
                ("staged_stream_order", C.c_int32)]


class TransferResult(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("done", C.c_size_t), ("failed", C.c_size_t), ("stopped", C.c_int),
                ("path", C.c_char * 16), ("bytes", C.c_uint64), ("control_ms", C.c_double),
                ("enqueue_ms", C.c_double), ("copy_done_ms", C.c_double), ("hash_ms", C.c_double),
                ("hash_done_ms", C.c_double), ("commit_ms", C.c_double), ("total_ms", C.c_double)]


class KvpoolError(RuntimeError):
    def __init__(self, lib, what, code):
        msg = lib.kvpool_last_error_message().decode()
        super().__init__(f"{what}: {lib.kvpool_status_name(code).decode()}: {msg}")
        self.code = code


def load(path=None):
    path = path or os.environ.get("KVPOOL_C_LIB", "libkvpool_c.so.1")
    lib = C.CDLL(path)
    P = C.c_void_p
    sig = {
        "kvpool_status_name": (C.c_char_p, [C.c_int]),
        "kvpool_last_error_message": (C.c_char_p, []),
        "kvpool_client_options_init": (None, [C.POINTER(ClientOptions)]),
        "kvpool_client_create": (C.c_int, [C.POINTER(ClientOptions), C.POINTER(P)]),
        "kvpool_client_destroy": (None, [P]),
        "kvpool_namespace_desc_init": (None, [C.POINTER(NamespaceDesc)]),
        "kvpool_register_namespace": (C.c_int, [P, C.POINTER(NamespaceDesc), C.POINTER(C.c_uint64)]),
        "kvpool_prefix_keys": (C.c_int, [C.c_uint64, C.POINTER(C.c_uint32), C.c_size_t, C.c_uint32,
                                         C.POINTER(Key), C.c_size_t, C.POINTER(C.c_size_t)]),
        "kvpool_remove": (C.c_int, [P, C.c_uint64, C.POINTER(Key), C.c_size_t, P, C.POINTER(C.c_size_t)]),
        "kvpool_gpu_layout_init": (None, [C.POINTER(GpuLayout)]),
        "kvpool_gpu_layout_block_bytes": (C.c_int, [C.POINTER(GpuLayout), C.POINTER(C.c_uint64)]),
        "kvpool_gpu_layout_name": (C.c_char_p, [C.c_int]),
        "kvpool_gpu_options_init": (None, [C.POINTER(GpuOptions)]),
        "kvpool_gpu_mover_create": (C.c_int, [P, C.c_uint64, C.POINTER(GpuLayout), C.POINTER(P), C.POINTER(P),
                                              C.POINTER(GpuOptions), C.POINTER(P)]),
        "kvpool_gpu_mover_destroy": (None, [P]),
        "kvpool_gpu_save": (C.c_int, [P, C.POINTER(Key), C.POINTER(C.c_uint64), C.c_size_t, P, C.POINTER(P)]),
        "kvpool_gpu_load": (C.c_int, [P, C.POINTER(Key), C.POINTER(C.c_uint64), C.c_size_t, P, C.POINTER(P)]),
        "kvpool_gpu_transfer_event": (P, [P]),
        "kvpool_gpu_transfer_result_init": (None, [C.POINTER(TransferResult)]),
        "kvpool_gpu_transfer_wait": (C.c_int, [P, C.POINTER(TransferResult)]),
        "kvpool_gpu_transfer_destroy": (None, [P]),
        "kvpool_gpu_available": (C.c_int, []),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


def check(lib, what, code):
    if code != KVPOOL_OK:
        raise KvpoolError(lib, what, code)


class Client:
    def __init__(self, lib, coordinator, tls=None, timeout_ms=60000):
        self.lib = lib
        o = ClientOptions()
        lib.kvpool_client_options_init(C.byref(o))
        o.coordinator = coordinator.encode()
        o.timeout_ms = timeout_ms
        if tls:
            o.tls = tls.encode()
        self.h = C.c_void_p()
        check(lib, "kvpool_client_create", lib.kvpool_client_create(C.byref(o), C.byref(self.h)))

    def close(self):
        if self.h:
            self.lib.kvpool_client_destroy(self.h)
            self.h = C.c_void_p()

    def register_namespace(self, model_id, layout):
        d = NamespaceDesc()
        self.lib.kvpool_namespace_desc_init(C.byref(d))
        d.model_id = model_id.encode()
        d.dtype = layout.dtype
        d.num_layers, d.num_kv_heads, d.head_dim = layout.num_layers, layout.num_kv_heads, layout.head_dim
        d.tokens_per_block = layout.tokens_per_block
        d.layout = self.lib.kvpool_gpu_layout_name(layout.kind)
        bb = C.c_uint64()
        check(self.lib, "block bytes", self.lib.kvpool_gpu_layout_block_bytes(C.byref(layout), C.byref(bb)))
        d.block_bytes = bb.value
        ns = C.c_uint64()
        check(self.lib, "kvpool_register_namespace",
              self.lib.kvpool_register_namespace(self.h, C.byref(d), C.byref(ns)))
        return ns.value

    def prefix_keys(self, ns, tokens, tokens_per_block):
        arr = (C.c_uint32 * len(tokens))(*tokens)
        n = len(tokens) // tokens_per_block
        keys = (Key * max(n, 1))()
        got = C.c_size_t()
        check(self.lib, "kvpool_prefix_keys",
              self.lib.kvpool_prefix_keys(ns, arr, len(tokens), tokens_per_block, keys, n, C.byref(got)))
        return keys, got.value

    def remove(self, ns, keys, n):
        removed = C.c_size_t()
        check(self.lib, "kvpool_remove", self.lib.kvpool_remove(self.h, ns, keys, n, None, C.byref(removed)))
        return removed.value


def hf_layout(num_layers, num_kv_heads, head_dim, max_seq, batch=1, dtype="bf16", tokens_per_block=16):
    l = GpuLayout()
    l.struct_size = C.sizeof(GpuLayout)
    l.kind = GPU_HF_CONTIGUOUS
    l.dtype = dtype.encode()
    l.num_layers, l.num_kv_heads, l.head_dim = num_layers, num_kv_heads, head_dim
    l.tokens_per_block, l.batch, l.max_seq = tokens_per_block, batch, max_seq
    return l


class Mover:
    """A kvpool_gpu_mover over per-layer K and V tensors (their data_ptr()s)."""

    def __init__(self, client, ns, layout, k_ptrs, v_ptrs, path=PATH_AUTO, mover=MOVER_COPY_ENGINE,
                 verify_loads=True, hash_threads=8, gpu_checksums=True):
        self.lib = client.lib
        o = GpuOptions()
        self.lib.kvpool_gpu_options_init(C.byref(o))
        o.path, o.mover, o.verify_loads, o.hash_threads = path, mover, int(verify_loads), hash_threads
        o.gpu_checksums = int(gpu_checksums)
        k = (C.c_void_p * len(k_ptrs))(*k_ptrs)
        v = (C.c_void_p * len(v_ptrs))(*v_ptrs)
        self.layout = layout
        self.h = C.c_void_p()
        check(self.lib, "kvpool_gpu_mover_create",
              self.lib.kvpool_gpu_mover_create(client.h, ns, C.byref(layout), k, v, C.byref(o), C.byref(self.h)))

    def close(self):
        if self.h:
            self.lib.kvpool_gpu_mover_destroy(self.h)
            self.h = C.c_void_p()

    def _run(self, fn, name, keys, pages, stream):
        pg = (C.c_uint64 * len(pages))(*pages)
        t = C.c_void_p()
        check(self.lib, name, fn(self.h, keys, pg, len(pages), C.c_void_p(stream), C.byref(t)))
        try:
            r = TransferResult()
            self.lib.kvpool_gpu_transfer_result_init(C.byref(r))
            check(self.lib, "kvpool_gpu_transfer_wait", self.lib.kvpool_gpu_transfer_wait(t, C.byref(r)))
            return r
        finally:
            self.lib.kvpool_gpu_transfer_destroy(t)

    def save(self, keys, pages, stream=0):
        """Blocks until committed; returns the TransferResult."""
        return self._run(self.lib.kvpool_gpu_save, "kvpool_gpu_save", keys, pages, stream)

    def load(self, keys, pages, stream=0):
        """Blocks until loaded and verified; returns the TransferResult."""
        return self._run(self.lib.kvpool_gpu_load, "kvpool_gpu_load", keys, pages, stream)
