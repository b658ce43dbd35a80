"""Python objects as the C API's arguments: buffers (by the buffer protocol,
held while the runtime may touch them), keys and tokens.

Buffers are taken with CPython's own PyObject_GetBuffer (through
``ctypes.pythonapi``, which holds the GIL): the only way without a compiled
extension to get the address of any buffer, read-only ones included
(``bytes``, read-only numpy arrays), and the export it makes is what pins the
memory: a bytearray with an export cannot be resized, and the exporter stays
alive until the export is released.
"""

import array
import ctypes as C

from . import _capi
from .errors import InvalidArgument

# Flags of PyObject_GetBuffer (Include/pybuffer.h; stable since Python 3.3).
_PyBUF_WRITABLE = 0x0001
_PyBUF_FORMAT = 0x0004
_PyBUF_ND = 0x0008
_PyBUF_STRIDES = 0x0010 | _PyBUF_ND
_PyBUF_ANY_CONTIGUOUS = 0x0080 | _PyBUF_STRIDES


class _PyBuffer(C.Structure):
    # Py_buffer, part of the stable ABI since 3.11 and unchanged since 3.3.
    _fields_ = [("buf", C.c_void_p), ("obj", C.py_object), ("len", C.c_ssize_t), ("itemsize", C.c_ssize_t),
                ("readonly", C.c_int), ("ndim", C.c_int), ("format", C.c_char_p),
                ("shape", C.POINTER(C.c_ssize_t)), ("strides", C.POINTER(C.c_ssize_t)),
                ("suboffsets", C.POINTER(C.c_ssize_t)), ("internal", C.c_void_p)]


_get_buffer = C.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [C.py_object, C.POINTER(_PyBuffer), C.c_int]
_get_buffer.restype = C.c_int
_release_buffer = C.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [C.POINTER(_PyBuffer)]
_release_buffer.restype = None


class HeldBuffer:
    """One contiguous buffer export of an object, held until ``release()``
    (or until this object goes): its memory stays put and alive that long."""

    __slots__ = ("_view", "address", "size")

    def __init__(self, obj, writable, what):
        view = _PyBuffer()
        flags = _PyBUF_ANY_CONTIGUOUS | (_PyBUF_WRITABLE if writable else 0)
        try:
            _get_buffer(obj, C.byref(view), flags)  # raises the exporter's error
        except (BufferError, TypeError, ValueError) as e:
            raise InvalidArgument(f"{what}: a {type(obj).__name__} is not a contiguous"
                                  f"{' writable' if writable else ''} buffer ({e})") from None
        self._view = view
        self.address = view.buf or 0
        self.size = view.len

    def release(self):
        view, self._view = self._view, None
        if view is not None:
            _release_buffer(C.byref(view))

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown: ctypes may be half gone
            pass


def is_buffer(obj):
    """Whether obj exposes the buffer protocol."""
    try:
        memoryview(obj).release()
        return True
    except TypeError:
        return False


# ------------------------------------------------------------------ keys --

_BYTES_LIKE = (bytes, bytearray, memoryview)


def is_int_like(obj):
    """An int or an integer scalar (numpy), not an array (numpy arrays have
    __index__ too, for their one-element case)."""
    t = type(obj)
    return hasattr(t, "__index__") and not hasattr(t, "__len__")


def is_single_key(obj):
    return isinstance(obj, _BYTES_LIKE) or is_int_like(obj)


def key_bytes(obj, index):
    """One key (16 bytes, or an int in [0, 2**128)) as its 16 bytes."""
    if isinstance(obj, _BYTES_LIKE):
        b = bytes(obj)
        if len(b) != 16:
            raise InvalidArgument(f"key {index}: {len(b)} bytes, not 16")
        return b
    if is_int_like(obj):
        v = obj.__index__()
        if not 0 <= v < 1 << 128:
            raise InvalidArgument(f"key {index}: an int outside [0, 2**128)")
        return v.to_bytes(16, "little")
    raise TypeError(f"key {index}: expected 16 bytes or an int, got {type(obj).__name__}")


class Keys:
    """A ``keys`` argument: one key or a sequence of keys, as a C array."""

    __slots__ = ("array", "count", "single")

    def __init__(self, obj):
        self.single = is_single_key(obj)
        if self.single:
            items = [obj]
        else:
            if isinstance(obj, str) or not hasattr(obj, "__iter__"):
                raise TypeError("keys: expected a key (16 bytes or an int) or a sequence of keys, got "
                                f"{type(obj).__name__}")
            items = obj
        joined = b"".join(key_bytes(k, i) for i, k in enumerate(items))
        self.count = len(joined) // 16
        # _capi.Key's layout is the bytes form (see there).
        self.array = (_capi.Key * max(self.count, 1)).from_buffer_copy(joined.ljust(16, b"\0"))


def key_list(array, n):
    """The first n keys of a C key array as 16-byte bytes."""
    raw = C.string_at(array, 16 * n)
    return [raw[16 * i:16 * (i + 1)] for i in range(n)]


# ---------------------------------------------------------------- tokens --


def tokens_array(obj):
    """Tokens for prefix_keys as a uint32 array: a C-contiguous buffer of
    4-byte unsigned ints (numpy.uint32, array('I')) is taken as is; anything
    else is a sequence of ints in [0, 2**32)."""
    if not isinstance(obj, _BYTES_LIKE) and is_buffer(obj):
        with memoryview(obj) as m:
            fmt = m.format.lstrip("<=@")
            if m.itemsize == 4 and fmt in ("I", "L") and m.c_contiguous:
                return array.array("I", m.cast("B").tobytes())
    if isinstance(obj, str) or not hasattr(obj, "__iter__"):
        raise TypeError(f"tokens: expected a sequence of ints, got {type(obj).__name__}")
    try:
        return array.array("I", obj)
    except OverflowError:
        raise InvalidArgument("tokens: a token outside [0, 2**32)") from None
    except TypeError:
        # numpy integer scalars and other __index__ types: one at a time.
        out = array.array("I")
        for t in obj:
            if not is_int_like(t):
                raise TypeError(f"tokens: expected ints, got {type(t).__name__}") from None
            v = t.__index__()
            if not 0 <= v < 1 << 32:
                raise InvalidArgument("tokens: a token outside [0, 2**32)") from None
            out.append(v)
        return out
