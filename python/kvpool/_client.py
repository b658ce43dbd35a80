"""kvpool.Client, Future and PutResult over the C API (documented in
kvpool's docstring).

Rules this file keeps:
- Buffers are held (_buffers.HeldBuffer) for as long as the runtime may
  touch them: for the call, for an async operation's life, or while
  registered.
- The C client is destroyed only when no call is running on it: calls
  enter and leave a gate, and close() waits for the calls inside, so a
  close() from another thread never frees the client under a running call.
- Calls into the C library release the GIL (ctypes does it for a CDLL).
"""

import ctypes as C
import os
import threading
import weakref

from . import _capi
from ._buffers import HeldBuffer, Keys, is_buffer, is_int_like
from ._capi import check, lib
from .errors import FailedPrecondition, InvalidArgument, from_status

_OUTCOMES = ("written", "exists", "pending", "failed")


class PutResult:
    """What a put did: counts, and per key an outcome and an error."""

    __slots__ = ("written", "deduplicated", "pending", "failed", "outcomes", "errors")

    def __init__(self, c_result, outcomes, statuses):
        self.written = c_result.written  # keys written and committed by this call
        self.deduplicated = c_result.deduplicated  # already in the pool (nothing written)
        self.pending = c_result.pending  # another writer holds them (nothing written)
        self.failed = c_result.failed  # failed; see errors
        n = len(outcomes)
        self.outcomes = [_OUTCOMES[o] if 0 <= o < len(_OUTCOMES) else "failed" for o in outcomes]
        self.errors = [None if statuses[i] == _capi.OK else
                       from_status(_capi.code_name(statuses[i]), f"key {i} of the put failed") for i in range(n)]

    def __repr__(self):
        return (f"PutResult(written={self.written}, deduplicated={self.deduplicated}, pending={self.pending}, "
                f"failed={self.failed})")


def _put_result(n):
    r = _capi.PutResult()
    lib.kvpool_put_result_init(C.byref(r))
    outcomes = (C.c_int * max(n, 1))()
    statuses = (C.c_int * max(n, 1))()
    r.outcomes = outcomes
    r.key_status = statuses
    return r, outcomes, statuses


class _Batch:
    """The blocks (put) or destinations (get) of a batch, held: one buffer
    holding the n blocks back to back, or a sequence of n buffers."""

    def __init__(self, obj, n, block, for_get):
        what = "buffers" if for_get else "blocks"
        self.held = []
        self.pointers = (C.c_void_p * max(n, 1))()
        if is_buffer(obj):
            one = HeldBuffer(obj, for_get, what)
            self.held.append(one)
            if one.size != n * block:
                raise InvalidArgument(f"{what}: one buffer of {one.size} bytes for {n} blocks of {block} bytes")
            for i in range(n):
                self.pointers[i] = one.address + i * block
            return
        if isinstance(obj, str) or not hasattr(obj, "__len__"):
            raise TypeError(f"{what}: expected a buffer or a sequence of buffers")
        if len(obj) != n:
            raise InvalidArgument(f"{what}: {len(obj)} buffers for {n} keys")
        for i, item in enumerate(obj):
            h = HeldBuffer(item, for_get, f"{what}[{i}]")
            self.held.append(h)
            if (h.size < block) if for_get else (h.size != block):
                raise InvalidArgument(f"{what}[{i}]: {h.size} bytes; the block size is {block}"
                                      f"{' (at least that is needed)' if for_get else ''}")
            self.pointers[i] = h.address

    def release(self):
        for h in self.held:
            h.release()
        self.held = []


class Future:
    """An asynchronous put or get (Client.put_async / get_async)."""

    def __init__(self, handle, kind, n, batch):
        self._handle = handle  # kvpool_future_t* (the C future copied the keys)
        self._kind = kind
        self._n = n
        self._batch = batch  # held until the operation completes
        self._result = None  # ("ok", value) or ("error", exception), once complete
        self._lock = threading.Lock()  # one thread at a time uses the C future

    def done(self):
        """Whether the operation has completed. Never blocks: while another
        thread waits on this future, that thread will tell (False here)."""
        if not self._lock.acquire(blocking=False):
            return self._result is not None
        try:
            return self._result is not None or bool(self._handle and lib.kvpool_future_test(self._handle))
        finally:
            self._lock.release()

    def wait(self, timeout_s=None):
        """Waits (GIL released) and returns the result: a PutResult for a
        put, the number of blocks loaded for a get. Raises the operation's
        kvpool.Error; kvpool.DeadlineExceeded (a TimeoutError) with "still in
        progress" if it is still running after timeout_s (then done() is
        False and the future stays usable)."""
        with self._lock:
            if self._result is None:
                ms = -1 if timeout_s is None else int(max(0.0, float(timeout_s)) * 1000)
                code = lib.kvpool_future_wait(self._handle, ms)
                if code == _capi.DEADLINE_EXCEEDED and not lib.kvpool_future_test(self._handle):
                    raise _capi.error(code, "kvpool operation still in progress")
                self._result = self._take(code)
                self._batch.release()  # complete: the buffers may go
            kind, value = self._result
        if kind == "error":
            raise value
        return value

    result = wait

    def _take(self, code):
        if code != _capi.OK:
            return "error", _capi.error(code, lib.kvpool_last_error_message().decode(errors="replace"))
        try:
            if self._kind == "put":
                r, outcomes, statuses = _put_result(self._n)
                check(lib.kvpool_future_put_result(self._handle, C.byref(r)))
                return "ok", PutResult(r, outcomes[:self._n], statuses[:self._n])
            g = _capi.GetResult()
            lib.kvpool_get_result_init(C.byref(g))
            check(lib.kvpool_future_get_result(self._handle, C.byref(g)))
            return "ok", g.loaded
        except Exception as e:  # noqa: BLE001 - kept as the operation's outcome
            return "error", e

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            lib.kvpool_future_destroy(handle)  # waits for the operation (GIL released)
        batch = getattr(self, "_batch", None)
        if batch is not None:
            batch.release()


class Client:
    """A connection to a kvpool coordinator (see kvpool's docstring)."""

    def __init__(self, coordinator, secret_file=None, *, timeout_s=10.0, client_id="", tls=""):
        self._handle = None
        self._lock = threading.Condition()  # guards _handle, _calls, _registered
        self._calls = 0  # calls running on the C client
        self._registered = {}  # address -> HeldBuffer (None: raw memory the caller keeps alive)
        self._dependents = weakref.WeakSet()  # kvpool.gpu.KvMovers over this client, closed first
        self._secret_file = None if secret_file is None else os.fspath(secret_file)
        if isinstance(self._secret_file, bytes):
            self._secret_file = self._secret_file.decode()
        try:
            timeout_s = float(timeout_s)
        except (TypeError, ValueError):
            raise TypeError(f"timeout_s: expected a number, got {type(timeout_s).__name__}") from None
        if not timeout_s > 0:
            raise InvalidArgument("timeout_s must be positive")
        o = _capi.ClientOptions()
        lib.kvpool_client_options_init(C.byref(o))
        o.coordinator = _capi.encode(coordinator, "coordinator")
        o.client_id = _capi.encode(client_id, "client_id")
        o.tls = _capi.encode(tls, "tls")
        if self._secret_file is not None:
            o.secret_file = _capi.encode(self._secret_file, "secret_file")
        # 0 would mean the default; the protocol carries 32-bit milliseconds.
        o.timeout_ms = min(max(1, int(timeout_s * 1000)), 0xFFFFFFFF)
        handle = C.c_void_p()
        check(lib.kvpool_client_create(C.byref(o), C.byref(handle)))
        self._handle = handle
        self._coordinator = str(coordinator)

    # -------------------------------------------------------- lifetime --

    def _enter(self):
        with self._lock:
            if self._handle is None:
                raise FailedPrecondition("the client is closed")
            self._calls += 1
            return self._handle

    def _leave(self):
        with self._lock:
            self._calls -= 1
            if self._calls == 0:
                self._lock.notify_all()

    def close(self):
        """Unregisters every buffer, waits for the calls and operations in
        flight, and closes the connection. Idempotent."""
        for d in list(self._dependents):
            d.close()
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            while self._calls:
                self._lock.wait()
            registered, self._registered = self._registered, {}
        for address in registered:
            lib.kvpool_unregister_buffer(handle, address)
        lib.kvpool_client_destroy(handle)  # waits for async operations in flight
        for held in registered.values():
            if held is not None:
                held.release()

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return self._handle is None

    @property
    def coordinator(self):
        return self._coordinator

    @property
    def secret_file(self):
        return self._secret_file

    def _call(self, fn, *args):
        """fn(handle, *args) with the client kept open during the call."""
        handle = self._enter()
        try:
            return fn(handle, *args)
        finally:
            self._leave()

    # ------------------------------------------------------ namespaces --

    def register_namespace(self, *, model_id, dtype, num_layers, num_kv_heads, head_dim, tokens_per_block, layout,
                           tp_rank=0, tp_size=1, block_bytes=0):
        d = _descriptor(model_id, dtype, num_layers, num_kv_heads, head_dim, tokens_per_block, layout, tp_rank,
                        tp_size, block_bytes)
        out = C.c_uint64()
        self._call(lambda h: check(lib.kvpool_register_namespace(h, C.byref(d), C.byref(out))))
        return out.value

    def block_bytes(self, namespace_id):
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        out = C.c_uint64()
        self._call(lambda h: check(lib.kvpool_block_bytes(h, ns, C.byref(out))))
        return out.value

    # --------------------------------------------------------- buffers --

    def register_buffer(self, buffer):
        if isinstance(buffer, tuple) and len(buffer) == 2 and all(is_int_like(x) for x in buffer):
            return self.register_buffer_ptr(buffer[0], buffer[1])
        held = HeldBuffer(buffer, True, "register_buffer")
        if held.size == 0:
            held.release()
            raise InvalidArgument("register_buffer: an empty buffer")
        try:
            self._call(lambda h: check(lib.kvpool_register_buffer(h, held.address, held.size)))
        except BaseException:
            held.release()
            raise
        self._remember(held.address, held)

    def register_buffer_ptr(self, ptr, length):
        ptr = _capi.uint(ptr, 64, "ptr")
        length = _capi.uint(length, 64, "length")
        if ptr == 0 or length == 0:
            raise InvalidArgument("register_buffer_ptr: a null pointer or an empty range")
        self._call(lambda h: check(lib.kvpool_register_buffer(h, ptr, length)))
        self._remember(ptr, None)

    def _remember(self, address, held):
        with self._lock:
            old = self._registered.get(address)
            self._registered[address] = held
        if old is not None:
            old.release()  # registered again at the same address: one export is enough

    def unregister_buffer(self, buffer):
        """By the object registered, or by the address (an int) of either form."""
        if is_int_like(buffer):
            address = _capi.uint(buffer, 64, "address")
        else:
            probe = HeldBuffer(buffer, False, "unregister_buffer")
            address = probe.address
            probe.release()
        self._call(lambda h: check(lib.kvpool_unregister_buffer(h, address)))
        with self._lock:
            held = self._registered.pop(address, None)
        if held is not None:
            held.release()

    # ------------------------------------------------------ data movement --

    def put(self, namespace_id, keys, blocks):
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        k = Keys(keys)

        def run(h):
            block = _block_bytes(h, ns)
            batch = _Batch(blocks, k.count, block, False)
            try:
                r, outcomes, statuses = _put_result(k.count)
                check(lib.kvpool_put(h, ns, k.array, batch.pointers, k.count, block, C.byref(r)))
                return PutResult(r, outcomes[:k.count], statuses[:k.count])
            finally:
                batch.release()

        return self._call(run)

    def get(self, namespace_id, keys, buffers):
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        k = Keys(keys)

        def run(h):
            block = _block_bytes(h, ns)
            batch = _Batch(buffers, k.count, block, True)
            try:
                g = _capi.GetResult()
                lib.kvpool_get_result_init(C.byref(g))
                check(lib.kvpool_get(h, ns, k.array, batch.pointers, k.count, block, C.byref(g)))
                return g.loaded
            finally:
                batch.release()

        return self._call(run)

    def lookup(self, namespace_id, keys):
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        k = Keys(keys)
        out = C.c_size_t()
        self._call(lambda h: check(lib.kvpool_lookup(h, ns, k.array, k.count, C.byref(out))))
        return out.value

    def remove(self, namespace_id, keys):
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        k = Keys(keys)
        statuses = (C.c_int * max(k.count, 1))()
        self._call(lambda h: check(lib.kvpool_remove(h, ns, k.array, k.count, statuses, None)))
        removed = []
        for i in range(k.count):
            if statuses[i] not in (_capi.OK, _capi.NOT_FOUND):
                raise _capi.error(statuses[i], f"remove: key {i} failed")
            removed.append(statuses[i] == _capi.OK)
        return removed[0] if k.single else removed

    def wait_for(self, namespace_id, keys, timeout_s):
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        k = Keys(keys)
        if not float(timeout_s) >= 0:
            raise InvalidArgument("timeout_s must not be negative")
        # The protocol carries the timeout in 32-bit milliseconds.
        ms = int(min(float(timeout_s), 4.0e6) * 1000)
        committed = (C.c_uint8 * max(k.count, 1))()
        self._call(lambda h: check(lib.kvpool_wait_for(h, ns, k.array, k.count, ms, committed, None)))
        flags = [bool(committed[i]) for i in range(k.count)]
        return flags[0] if k.single else flags

    def put_async(self, namespace_id, keys, blocks):
        return self._start("put", namespace_id, keys, blocks)

    def get_async(self, namespace_id, keys, buffers):
        return self._start("get", namespace_id, keys, buffers)

    def _start(self, kind, namespace_id, keys, buffers):
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        k = Keys(keys)

        def run(h):
            block = _block_bytes(h, ns)
            batch = _Batch(buffers, k.count, block, kind == "get")
            handle = C.c_void_p()
            start = lib.kvpool_get_async if kind == "get" else lib.kvpool_put_async
            try:
                check(start(h, ns, k.array, batch.pointers, k.count, block, C.byref(handle)))
            except BaseException:
                batch.release()
                raise
            return Future(handle, kind, k.count, batch)

        return self._call(run)

    def stats(self):
        s = _capi.ClientStats()
        lib.kvpool_client_stats_init(C.byref(s))
        self._call(lambda h: check(lib.kvpool_client_get_stats(h, C.byref(s))))
        return {"transports": s.transports.decode(errors="replace"), "bytes_put": s.bytes_put,
                "bytes_got": s.bytes_got, "verify_failures": s.verify_failures}

    @property
    def _c_handle(self):
        """The kvpool_client_t* (kvpool.gpu.KvMover uses it; keep the client open meanwhile)."""
        if self._handle is None:
            raise FailedPrecondition("the client is closed")
        return self._handle


def _block_bytes(handle, ns):
    out = C.c_uint64()
    check(lib.kvpool_block_bytes(handle, ns, C.byref(out)))
    return out.value


def _descriptor(model_id, dtype, num_layers, num_kv_heads, head_dim, tokens_per_block, layout, tp_rank, tp_size,
                block_bytes):
    d = _capi.NamespaceDesc()
    lib.kvpool_namespace_desc_init(C.byref(d))
    d.model_id = _capi.encode(model_id, "model_id")
    d.dtype = _capi.encode(dtype, "dtype")
    d.layout = _capi.encode(layout, "layout")
    d.num_layers = _capi.uint(num_layers, 32, "num_layers")
    d.num_kv_heads = _capi.uint(num_kv_heads, 32, "num_kv_heads")
    d.head_dim = _capi.uint(head_dim, 32, "head_dim")
    d.tokens_per_block = _capi.uint(tokens_per_block, 32, "tokens_per_block")
    d.tp_rank = _capi.uint(tp_rank, 32, "tp_rank")
    d.tp_size = _capi.uint(tp_size, 32, "tp_size")
    d.block_bytes = _capi.uint(block_bytes, 64, "block_bytes")
    return d


def namespace_id(*, model_id, dtype, num_layers, num_kv_heads, head_dim, tokens_per_block, layout, tp_rank=0,
                 tp_size=1, block_bytes=0):
    d = _descriptor(model_id, dtype, num_layers, num_kv_heads, head_dim, tokens_per_block, layout, tp_rank, tp_size,
                    block_bytes)
    out = C.c_uint64()
    check(lib.kvpool_namespace_id(C.byref(d), C.byref(out)))
    return out.value
