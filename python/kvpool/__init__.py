"""kvpool: a cluster DRAM pool for LLM KV cache, from Python.

This docstring is the reference of the Python API: names, arguments, errors.
python/README.md says how to build and install the package.

    import kvpool
    pool = kvpool.Client("127.0.0.1:7400")
    ns = pool.register_namespace(model_id="meta-llama/Meta-Llama-3-8B", dtype="bf16", num_layers=32,
                                 num_kv_heads=8, head_dim=128, tokens_per_block=16, layout="vllm-paged")
    keys = kvpool.prefix_keys(prompt_tokens, ns, 16)        # one key per full block of 16 tokens
    blocks = bytearray(len(keys) * pool.block_bytes(ns))    # or a numpy array, a torch CPU tensor's buffer
    pool.register_buffer(blocks)                            # optional: zero-copy, no per-call registration
    pool.put(ns, keys, blocks)                              # one buffer of n blocks, or a list of n buffers
    hit = pool.lookup(ns, keys)                             # how many leading blocks are cached
    loaded = pool.get(ns, keys, blocks)                     # loads the longest present prefix

The package is pure Python over libkvpool_c.so's stable C ABI
(include/kvpool/kvpool.h) through ctypes, so one wheel serves CPython 3.10
and later. It needs nothing but the standard library (numpy is optional; the
engine adapters in ``kvpool.integrations`` use it). ``kvpool.library_path()``
says which libkvpool_c.so was loaded: the wheel's own copy, unless
``$KVPOOL_C_LIB`` names another. Loading it sets ``UCX_MODULE_DIR`` to the
wheel's bundled UCX modules when the environment does not set it.

Keys are 16-byte ``bytes``: the 128-bit key's low 64 bits little-endian, then
its high 64 bits little-endian, i.e. the key as a 128-bit little-endian
integer (``key_to_int`` / ``key_from_int`` convert). Calls also accept keys
as ints in [0, 2**128). Every ``keys`` argument is one key or a sequence of
keys; with one key, ``remove`` and ``wait_for`` return a bool instead of a
list.

Buffers are any object exposing the buffer protocol, C- or
Fortran-contiguous (bytearray, memoryview, array.array, numpy arrays,
``bytes`` where only read); a destination must be writable. A call holds
its buffers' exports while the runtime may touch them: for the call, until
an async operation completes, or while registered.

``Client`` (thread-safe; every call that waits releases the GIL):

- ``Client(coordinator, secret_file=None, *, timeout_s=10.0, client_id="", tls="")``:
  connects to the coordinator ("host:port"), authenticating with the cluster
  secret file ``secret_file`` (a str or PathLike; None: ``KVPOOL_SECRET_FILE``,
  else the default path; SECURITY.md); ``PermissionDenied`` when the secrets
  differ. ``tls`` selects UCX transports (UCX_TLS syntax). Properties
  ``coordinator``, ``secret_file`` (None when not given), ``closed``. A
  context manager; ``close()`` waits for calls and operations in flight,
  closes the GPU movers made over it and releases it.
- ``register_namespace(*, model_id, dtype, num_layers, num_kv_heads, head_dim,
  tokens_per_block, layout, tp_rank=0, tp_size=1, block_bytes=0)`` -> the
  namespace id (int); idempotent; needed before put/get in it.
  ``block_bytes(ns)`` -> its block size.
- ``register_buffer(obj)``: registers a writable buffer for zero-copy
  transfers, and holds it (it cannot be freed or resized) until
  ``unregister_buffer(obj)`` or ``close()``. ``register_buffer_ptr(ptr,
  length)``, or ``register_buffer((ptr, length))``, registers raw host memory
  the caller keeps alive; ``unregister_buffer(ptr)`` undoes it.
- ``put(ns, keys, blocks)`` -> ``PutResult`` (counts ``written``,
  ``deduplicated``, ``pending``, ``failed``; per key ``outcomes``, each
  "written", "exists", "pending" or "failed", and ``errors``, a kvpool.Error
  for a failed key else None). ``blocks`` is a sequence of buffers of exactly
  the block size, or one buffer holding the blocks back to back.
- ``get(ns, keys, buffers)`` -> how many leading blocks were loaded (a miss
  is not an error). Each buffer holds at least the block size (one combined
  buffer: exactly n blocks).
- ``lookup(ns, keys)`` -> how many leading keys are in the pool.
- ``remove(ns, keys)`` -> per key whether it was removed.
- ``wait_for(ns, keys, timeout_s)`` -> per key whether it is committed, when
  all are or at the timeout.
- ``put_async`` / ``get_async`` (same arguments) -> ``Future`` with
  ``done()`` and ``wait(timeout_s=None)`` (also ``result``): returns the
  result, raises the operation's error, or ``DeadlineExceeded`` (a
  TimeoutError) "still in progress" while ``done()`` is False. The future
  holds the buffers until the operation completes; dropping it waits.
- ``stats()`` -> dict of ``transports``, ``bytes_put``, ``bytes_got``,
  ``verify_failures``.

Functions: ``namespace_id(**descriptor)`` computes a namespace id locally
(same arguments as ``register_namespace``); ``prefix_keys(tokens, ns,
tokens_per_block)`` the chained keys of a token sequence (a list, range,
array('I') or numpy integer array; one key per full block);
``engine_keys(ns, keys)`` maps an engine's own block keys (bytes, str or
int; one or a sequence) to kvpool keys (XXH3-128 seeded with the namespace
id over a type byte and the key's bytes: deterministic everywhere);
``set_log_level("warn")`` sets the runtime's stderr level (trace, debug,
info, warn, error, off); ``library_path()``; ``__version__`` (the library's).
``python -m kvpool doctor`` checks an install against a pool (python/README.md).

Errors. Sizes and namespaces are checked before anything moves. Every error
the package raises is a ``kvpool.Error``, and every ``kvpool.Error`` is a
``RuntimeError`` (engines such as UCM catch only that), with ``code`` (the
runtime's stable lower-case code name, as in the C API's
``kvpool_status_name`` and ``--json`` output) and ``message``;
``str(e)`` is "code: message". One class per code, some also a built-in
exception so ordinary Python code catches them too:

    InvalidArgument     invalid_argument     ValueError
    NotFound            not_found            LookupError
    AlreadyExists       already_exists
    FailedPrecondition  failed_precondition  (e.g. a closed client, a namespace not registered)
    ResourceExhausted   resource_exhausted   (the pool is full: evict or back off)
    Unavailable         unavailable          ConnectionError (retry the call)
    DeadlineExceeded    deadline_exceeded    TimeoutError
    Cancelled           cancelled
    DataLoss            data_loss            (a block failed verification)
    Unimplemented       unimplemented        NotImplementedError
    Internal            internal
    PermissionDenied    permission_denied    PermissionError (no shared cluster secret)

A wrong Python type (a float for a key) is a plain ``TypeError``.

GPU (``kvpool.gpu``): ``KvLayout(kind, *, num_layers, num_kv_heads,
head_dim, dtype="bf16", tokens_per_block=16, num_pages=0, batch=1,
max_seq=0)`` with kind "vllm-paged", "vllm-paged-split" or "hf-contiguous",
``.block_bytes`` and ``.namespace(model_id, tp_rank=0, tp_size=1)`` (the
arguments of ``register_namespace``); ``KvMover(client, ns, layout, k,
v=None, **options)`` over per-layer tensors (``data_ptr()``) or device
pointers, with ``save(keys, pages, stream=None)`` and ``load(...)``
returning a ``Transfer`` (``event``, ``wait()`` -> ``TransferResult``,
``close()``); layer by layer, ``load_layers(keys, pages, stream=None)`` ->
``LayerTransfer`` (a Transfer with ``found``, ``layers``,
``wait_layer(l, stream=None)``: the stream waits for layer l, the host does
not; ``layer_event(l)``) and ``begin_save_layers(keys, pages)`` ->
``LayerSave`` (``layers``, ``save_layer(l, stream=None)`` once the stream
wrote layer l, ``finish()`` -> ``TransferResult``, commits whole blocks
only, ``close()``); ``RowMover(client, ns, units, **options)`` for blocks
given per call as rows of ``units`` device addresses (UCM's lists), with
``save_rows(keys, rows, stream=None, after=None)`` and ``load_rows(...)``
returning a ``Transfer`` (``after``: an event the copies wait for; stream
None: the mover's own); streams are ``torch.cuda.Stream`` objects or
cudaStream_t ints. ``gpu_available()``. Semantics: include/kvpool/gpu.h.

Engine adapters live in ``kvpool.integrations`` (SGLang HiCache storage,
vLLM offloading manager, LMCache remote storage plugin and remote
connector, UCM store); none imports its engine until the engine loads it.
"""

from . import errors, gpu
from ._capi import lib as _lib
from ._client import Client, Future, PutResult, namespace_id
from ._keys import engine_keys, key_from_int, key_to_int, prefix_keys, set_log_level
from .errors import (AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, Error, FailedPrecondition, Internal,
                     InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable, Unimplemented)

__version__ = _lib.kvpool_version_string().decode()


def library_path():
    """The file of the libkvpool_c.so this process loaded (from the loader's
    own map, so it is the file actually in use)."""
    from . import _capi
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1]
                if "libkvpool_c.so" in path.rsplit("/", 1)[-1]:
                    return path
    except OSError:
        pass
    return _capi.LIBRARY_PATH


__all__ = [
    "Client", "Future", "PutResult", "engine_keys", "namespace_id", "prefix_keys", "set_log_level", "key_to_int",
    "key_from_int", "library_path", "errors", "Error", "InvalidArgument", "NotFound", "AlreadyExists",
    "FailedPrecondition", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "Cancelled", "DataLoss",
    "Unimplemented", "Internal", "PermissionDenied"
]
