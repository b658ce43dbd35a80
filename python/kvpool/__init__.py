"""kvpool: a cluster DRAM pool for LLM KV cache, from Python.

    import numpy as np, kvpool
    pool = kvpool.Client("127.0.0.1:7400")
    ns = pool.register_namespace(model_id="meta-llama/Meta-Llama-3-8B", dtype="bf16", num_layers=32,
                                 num_kv_heads=8, head_dim=128, tokens_per_block=16, layout="vllm-paged")
    keys = kvpool.prefix_keys(prompt_tokens, ns, 16)        # one key per full block of 16 tokens
    blocks = np.zeros((len(keys), pool.block_bytes(ns)), np.uint8)
    pool.register_buffer(blocks)                            # optional: zero-copy, no per-call registration
    pool.put(ns, keys, blocks)                              # one buffer of n blocks, or a list of n buffers
    hit = pool.lookup(ns, keys)                             # how many leading blocks are cached
    loaded = pool.get(ns, keys, blocks)                     # loads the longest present prefix

Keys are 16-byte ``bytes``: the 128-bit key's low 64 bits little-endian, then
its high 64 bits little-endian, i.e. the key as a 128-bit little-endian
integer (``key_to_int`` / ``key_from_int`` convert). Calls also accept keys
as ints in [0, 2**128). Every ``keys`` argument is one key or a sequence of
keys; with one key, ``remove`` and ``wait_for`` return a bool instead of a
list.

``Client`` (thread-safe; every call that waits releases the GIL):

- ``Client(coordinator, secret_file=None, *, timeout_s=10.0, client_id="", tls="")``:
  connects to the coordinator ("host:port"), authenticating with the cluster
  secret file ``secret_file`` (None: ``KVPOOL_SECRET_FILE``, else the default
  path; SECURITY.md); ``PermissionDenied`` when the secrets differ. ``tls`` selects
  UCX transports (UCX_TLS syntax). A context manager; ``close()`` releases it.
- ``register_namespace(*, model_id, dtype, num_layers, num_kv_heads, head_dim,
  tokens_per_block, layout, tp_rank=0, tp_size=1, block_bytes=0)`` -> the
  namespace id (int); idempotent; needed before put/get in it.
  ``block_bytes(ns)`` -> its block size.
- ``register_buffer(obj)``: registers any object exposing the writable buffer
  protocol (bytearray, numpy array, memoryview) for zero-copy transfers, and
  holds it (it cannot be freed or resized) until ``unregister_buffer(obj)``
  or ``close()``. ``register_buffer_ptr(ptr, length)``, or
  ``register_buffer((ptr, length))``, registers raw host memory the caller
  keeps alive; ``unregister_buffer(ptr)`` undoes it.
- ``put(ns, keys, blocks)`` -> ``PutResult`` (counts ``written``,
  ``deduplicated``, ``pending``, ``failed``; per key ``outcomes`` and
  ``errors``). ``blocks`` is a sequence of buffers of exactly the block size,
  or one buffer holding the blocks back to back.
- ``get(ns, keys, buffers)`` -> how many leading blocks were loaded (a miss
  is not an error). Each buffer holds at least the block size (one combined
  buffer: exactly n blocks).
- ``lookup(ns, keys)`` -> how many leading keys are in the pool.
- ``remove(ns, keys)`` -> per key whether it was removed.
- ``wait_for(ns, keys, timeout_s)`` -> per key whether it is committed, when
  all are or at the timeout.
- ``put_async`` / ``get_async`` (same arguments) -> ``Future`` with
  ``done()`` and ``wait(timeout_s=None)`` (returns the result, raises the
  operation's error, or ``TimeoutError`` if still running). The future holds
  the buffers until the operation completes.

Sizes and namespaces are checked before anything moves. Errors are
``kvpool.Error`` subclasses with ``.code`` and ``.message`` (see
``kvpool.errors``); a buffer of the wrong size is ``InvalidArgument``, which
is also a ``ValueError``. ``namespace_id(**descriptor)`` computes an id
locally; ``engine_keys(ns, keys)`` maps an engine's own block keys (bytes,
str or int) to kvpool keys (XXH3-128 seeded with the namespace id over a
type byte and the key's bytes: deterministic everywhere); ``set_log_level("warn")`` quiets the runtime's stderr. GPU memory
is not supported here (use host buffers).

Engine adapters live in ``kvpool.integrations`` (SGLang HiCache storage,
vLLM offloading manager, LMCache remote connector, UCM store); none imports
its engine until the engine loads it.
"""

from . import errors
from ._kvpool import Client, Future, PutResult, __version__, engine_keys, namespace_id, prefix_keys, set_log_level
from .errors import (AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, Error, FailedPrecondition, Internal,
                     InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable, Unimplemented)


def key_to_int(key):
    """A 16-byte key as the 128-bit int it encodes (little-endian)."""
    if len(key) != 16:
        raise InvalidArgument(f"a key is 16 bytes, not {len(key)}")
    return int.from_bytes(key, "little")


def key_from_int(value):
    """The 16-byte form of a 128-bit key given as an int."""
    if not 0 <= value < 1 << 128:
        raise InvalidArgument("a key is an int in [0, 2**128)")
    return value.to_bytes(16, "little")


__all__ = [
    "Client", "Future", "PutResult", "engine_keys", "namespace_id", "prefix_keys", "set_log_level", "key_to_int", "key_from_int",
    "errors", "Error", "InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition", "ResourceExhausted", "Unavailable",
    "DeadlineExceeded", "Cancelled", "DataLoss", "Unimplemented", "Internal", "PermissionDenied"
]
