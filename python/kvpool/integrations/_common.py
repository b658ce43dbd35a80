"""What the engine adapters share: connecting, engine keys, raw memory, staging.

Nothing here imports an engine. Engine objects are only duck-typed: a tensor
is anything with ``data_ptr()`` and ``numel()``/``element_size()`` (torch),
an ``__array_interface__`` (numpy) or the buffer protocol.
"""

import contextlib
import ctypes
import os
import threading

import numpy as np

import kvpool

# Environment variables every adapter reads when its engine config is silent.
ENV_COORDINATOR = "KVPOOL_COORDINATOR"
ENV_SECRET_FILE = "KVPOOL_SECRET_FILE"


def setting(config, name, default=None):
    """config[name] (a dict or an object with the attribute), else default."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def connect(coordinator=None, secret_file=None, timeout_s=10.0, client=None):
    """A kvpool.Client: ``client`` if given, else one connected to
    ``coordinator`` (default: $KVPOOL_COORDINATOR, else 127.0.0.1:7400)."""
    if client is not None:
        return client
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or "127.0.0.1:7400"
    secret_file = secret_file or os.environ.get(ENV_SECRET_FILE) or None
    return kvpool.Client(coordinator, secret_file, timeout_s=float(timeout_s))


def address_and_size(tensor):
    """(address, bytes) of a host tensor or buffer."""
    if hasattr(tensor, "data_ptr"):
        device = getattr(tensor, "device", None)
        if device is not None and getattr(device, "type", "cpu") != "cpu":
            raise kvpool.InvalidArgument(f"a tensor on {device}: kvpool's Python adapters move host memory only")
        if hasattr(tensor, "is_contiguous") and not tensor.is_contiguous():
            raise kvpool.InvalidArgument("a non-contiguous tensor")
        return int(tensor.data_ptr()), int(tensor.numel()) * int(tensor.element_size())
    iface = getattr(tensor, "__array_interface__", None)
    if iface is not None:
        if not (tensor.flags["C_CONTIGUOUS"] or tensor.flags["F_CONTIGUOUS"]):
            raise kvpool.InvalidArgument("a non-contiguous array")
        return int(iface["data"][0]), int(tensor.nbytes)
    view = memoryview(tensor)
    if not view.contiguous:
        raise kvpool.InvalidArgument("a non-contiguous buffer")
    arr = np.frombuffer(view, dtype=np.uint8) if view.nbytes else np.zeros(0, np.uint8)
    return int(arr.__array_interface__["data"][0]), int(view.nbytes)


def raw_view(address, size):
    """A writable memoryview of [address, address+size): no copy. The caller
    keeps the memory alive while the view is used."""
    if address == 0 or size <= 0:
        raise kvpool.InvalidArgument("a null pointer or an empty range")
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


def as_byte_view(tensor):
    """A writable byte memoryview over a host tensor's memory (no copy)."""
    address, size = address_and_size(tensor)
    return raw_view(address, size)


class Staging:
    """A registered host buffer of ``slots`` blocks of ``block_bytes``, handed
    out by slot number (thread-safe): ``take`` without waiting, ``hold`` as
    a context manager that waits for free slots."""

    def __init__(self, client, slots, block_bytes):
        if slots <= 0:
            raise kvpool.InvalidArgument("a staging buffer needs at least one slot")
        self.slots = slots
        self.block_bytes = block_bytes
        self.array = np.zeros((slots, block_bytes), dtype=np.uint8)
        self._client = client
        client.register_buffer(self.array)
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()  # guards _free
        self._permits = threading.Semaphore(slots)  # one per free slot
        self._taking = threading.Lock()  # one waiting taker gathers permits at a time

    def take(self, n):
        """n slot numbers, or None when fewer than n are free."""
        got = 0
        while got < n and self._permits.acquire(blocking=False):
            got += 1
        if got < n:
            for _ in range(got):
                self._permits.release()
            return None
        with self._lock:
            return [self._free.pop() for _ in range(n)]

    def give(self, slots):
        with self._lock:
            self._free.extend(slots)
        for _ in slots:
            self._permits.release()

    @contextlib.contextmanager
    def hold(self, n):
        """Waits for n slots (n <= slots) and gives them back on exit."""
        if n > self.slots:
            raise kvpool.InvalidArgument(f"{n} slots wanted of {self.slots}")
        # Two takers each holding part of what they need would wait on each
        # other: one gathers its permits at a time.
        with self._taking:
            for _ in range(n):
                self._permits.acquire()
        with self._lock:
            taken = [self._free.pop() for _ in range(n)]
        try:
            yield taken
        finally:
            self.give(taken)

    def free_slots(self):
        with self._lock:
            return len(self._free)

    def view(self, slot):
        return self.array[slot]

    def close(self):
        if not self._client.closed:
            self._client.unregister_buffer(self.array)
