"""Keys computed locally through the C API: prefix_keys, engine_keys, and
the conversions between a key's bytes and int forms (kvpool's docstring)."""

import ctypes as C

from . import _capi
from ._buffers import is_int_like, key_list, tokens_array
from ._capi import check, lib
from .errors import InvalidArgument


def prefix_keys(tokens, namespace_id, tokens_per_block):
    """Chained keys of a token sequence, one per full block (16-byte bytes)."""
    ns = _capi.uint(namespace_id, 64, "namespace_id")
    tpb = _capi.uint(tokens_per_block, 32, "tokens_per_block")
    if tpb == 0:
        raise InvalidArgument("tokens_per_block is 0")
    t = tokens_array(tokens)
    n = len(t) // tpb
    keys = (_capi.Key * max(n, 1))()
    got = C.c_size_t()
    buf = (C.c_uint32 * max(len(t), 1)).from_buffer(t) if len(t) else None
    check(lib.kvpool_prefix_keys(ns, buf, len(t), tpb, keys, n, C.byref(got)))
    return key_list(keys, got.value)


def _engine_key_bytes(key, index):
    """The typed byte string kvpool_engine_keys hashes (include/kvpool/kvpool.h)."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        return b"b" + bytes(key)
    if isinstance(key, str):
        return b"s" + key.encode("utf-8")
    if is_int_like(key):
        return b"i" + str(key.__index__()).encode()
    raise TypeError(f"engine key {index}: expected bytes, str or int, got {type(key).__name__}")


def engine_keys(namespace_id, keys):
    """kvpool keys for an engine's own block keys (bytes, str or int): one
    key, or a list for a sequence. XXH3-128 seeded with the namespace id over
    a type byte and the key's bytes; deterministic across processes and
    machines."""
    ns = _capi.uint(namespace_id, 64, "namespace_id")
    single = isinstance(keys, (bytes, bytearray, memoryview, str)) or is_int_like(keys)
    if not single and not hasattr(keys, "__iter__"):
        raise TypeError("keys: expected an engine key (bytes, str, int) or a sequence of them, got "
                        f"{type(keys).__name__}")
    parts = [_engine_key_bytes(k, i) for i, k in enumerate([keys] if single else keys)]
    n = len(parts)
    if n == 0:
        return []
    offsets = (C.c_size_t * (n + 1))()
    total = 0
    for i, p in enumerate(parts):
        offsets[i] = total
        total += len(p)
    offsets[n] = total
    data = b"".join(parts)
    out = (_capi.Key * n)()
    check(lib.kvpool_engine_keys(ns, data, offsets, n, out))
    result = key_list(out, n)
    return result[0] if single else result


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


def set_log_level(level):
    """Level of kvpool's log lines on stderr: trace, debug, info, warn, error
    or off (default: KVPOOL_LOG_LEVEL, else info)."""
    check(lib.kvpool_set_log_level(_capi.encode(level, "level")))
