"""kvpool.gpu: KV blocks between an engine's KV cache in GPU memory and the
pool (the C API's kvpool_gpu_*; semantics in include/kvpool/gpu.h).

No torch import: tensors are anything with ``data_ptr()`` (or plain ints,
device pointers), streams anything with ``cuda_stream`` (torch.cuda.Stream)
or an int handle (a cudaStream_t), None for the legacy default stream.
Documented with the rest of the API in kvpool's docstring ("GPU").
"""

import array
import ctypes as C
import weakref

from . import _capi
from ._buffers import Keys
from ._capi import check, lib
from .errors import InvalidArgument

LAYOUT_KINDS = {"vllm-paged": 0, "vllm-paged-split": 1, "hf-contiguous": 2}
PATHS = {"auto": 0, "mapped": 1, "staged": 2}
MOVERS = {"copy_engine": 0, "kernel": 1, "per_page": 2}


def gpu_available():
    """Whether a CUDA device is usable and this kvpool was built with CUDA."""
    return bool(lib.kvpool_gpu_available())


def _choice(table, value, what):
    if value not in table:
        raise InvalidArgument(f"{what}: {value!r} is not one of {', '.join(table)}")
    return table[value]


class KvLayout:
    """An engine's KV cache layout in GPU memory (include/kvpool/gpu.h,
    KvLayout): kind "vllm-paged" (per layer one tensor [2, num_pages,
    tokens_per_block, kv_heads, head_dim]), "vllm-paged-split" (per layer K
    and V [num_pages, tokens_per_block, kv_heads, head_dim]) or
    "hf-contiguous" (per layer K and V [batch, kv_heads, max_seq, head_dim])."""

    def __init__(self, kind, *, num_layers, num_kv_heads, head_dim, dtype="bf16", tokens_per_block=16, num_pages=0,
                 batch=1, max_seq=0):
        self.kind = kind
        c = _capi.GpuLayout()
        lib.kvpool_gpu_layout_init(C.byref(c))
        c.kind = _choice(LAYOUT_KINDS, kind, "kind")
        self._dtype = _capi.encode(dtype, "dtype")  # kept alive: c.dtype points into it
        c.dtype = self._dtype
        c.num_layers = _capi.uint(num_layers, 32, "num_layers")
        c.num_kv_heads = _capi.uint(num_kv_heads, 32, "num_kv_heads")
        c.head_dim = _capi.uint(head_dim, 32, "head_dim")
        c.tokens_per_block = _capi.uint(tokens_per_block, 32, "tokens_per_block")
        c.num_pages = _capi.uint(num_pages, 64, "num_pages")
        c.batch = _capi.uint(batch, 32, "batch")
        c.max_seq = _capi.uint(max_seq, 64, "max_seq")
        self._c = c
        out = C.c_uint64()
        check(lib.kvpool_gpu_layout_block_bytes(C.byref(c), C.byref(out)))  # validates the layout
        self.block_bytes = out.value
        self.dtype = dtype
        self.num_layers = num_layers

    def namespace(self, model_id, tp_rank=0, tp_size=1):
        """The keyword arguments of Client.register_namespace for this layout:
        the layout is part of the namespace, so two layouts never share blocks."""
        c = self._c
        return dict(model_id=model_id, dtype=self.dtype, num_layers=c.num_layers, num_kv_heads=c.num_kv_heads,
                    head_dim=c.head_dim, tokens_per_block=c.tokens_per_block, layout=self.kind, tp_rank=tp_rank,
                    tp_size=tp_size, block_bytes=self.block_bytes)


def _pointer(t, what):
    if hasattr(t, "data_ptr"):
        return _capi.uint(t.data_ptr(), 64, what)
    return _capi.uint(t, 64, what)


def _stream(stream):
    if stream is None:
        return None
    handle = getattr(stream, "cuda_stream", stream)
    return _capi.uint(handle, 64, "stream") or None


def _options(path, mover, chunk_bytes, verify_loads, hash_threads, device, gpu_checksums, staged_stream_order):
    o = _capi.GpuOptions()
    lib.kvpool_gpu_options_init(C.byref(o))
    o.path = _choice(PATHS, path, "path")
    o.mover = _choice(MOVERS, mover, "mover")
    o.chunk_bytes = _capi.uint(chunk_bytes, 64, "chunk_bytes")
    o.verify_loads = int(bool(verify_loads))
    o.hash_threads = _capi.uint(hash_threads, 32, "hash_threads")
    if not -1 <= int(device) < 1 << 31:
        raise InvalidArgument(f"device: {device} (-1: the current one)")
    o.device = int(device)
    o.gpu_checksums = int(bool(gpu_checksums))
    o.staged_stream_order = int(bool(staged_stream_order))
    return o


class TransferResult:
    """A transfer's outcome: ``done`` (save: keys now in the pool; load:
    leading blocks loaded and verified), ``failed`` (save), ``stopped`` (load:
    why it stopped early, a code name; "ok" when all loaded), ``path``
    ("mapped" or "staged"), ``bytes``, and where the time went in ms since the
    call (``control_ms``, ``enqueue_ms``, ``copy_done_ms``, ``hash_ms``,
    ``hash_done_ms``, ``commit_ms``, ``total_ms``)."""

    _TIMES = ("control_ms", "enqueue_ms", "copy_done_ms", "hash_ms", "hash_done_ms", "commit_ms", "total_ms")

    def __init__(self, c):
        self.done = c.done
        self.failed = c.failed
        self.stopped = _capi.code_name(c.stopped)
        self.path = c.path.decode()
        self.bytes = c.bytes
        for f in self._TIMES:
            setattr(self, f, getattr(c, f))

    def __repr__(self):
        return (f"TransferResult(done={self.done}, failed={self.failed}, stopped={self.stopped!r}, "
                f"path={self.path!r}, bytes={self.bytes}, total_ms={self.total_ms:.3f})")


class _Handle:
    """A C handle released by ``close()`` (which the subclass defines): a
    context manager, closed when collected."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None):
            self.close()


class _MoverOwned(_Handle):
    """A handle of the C API that belongs to a KvMover (a transfer, a
    layer-wise save): closed before its mover, released by ``_destroy``
    (kvpool.h), a context manager. ``_result(fn)`` runs the C call that fills
    a kvpool_gpu_transfer_result_t once and returns its TransferResult again
    on later calls."""

    _what = "transfer"
    _destroy = None  # the C function that releases the handle

    def __init__(self, handle, mover):
        self._handle = handle
        self._mover = mover  # destroyed before its mover
        mover._transfers.add(self)
        self._outcome = None

    def _live(self):
        if not self._handle:
            raise InvalidArgument(f"the {self._what} is closed")
        return self._handle

    def _result(self, fn):
        if self._outcome is None:
            handle = self._live()
            r = _capi.GpuTransferResult()
            lib.kvpool_gpu_transfer_result_init(C.byref(r))
            check(fn(handle, C.byref(r)))
            self._outcome = TransferResult(r)
        return self._outcome

    def close(self):
        handle, self._handle = self._handle, None
        if handle:
            type(self)._destroy(handle)


class Transfer(_MoverOwned):
    """A save or load in flight. ``event`` is the cudaEvent_t (an int) recorded
    on the caller's stream after the transfer's copies, or None (the staged
    path: gpu.h); ``wait()`` blocks (GIL released) until the outcome is known
    and returns a TransferResult (again on later calls). A context manager;
    ``close()`` waits and releases it."""

    _destroy = staticmethod(lambda h: lib.kvpool_gpu_transfer_destroy(h))  # waits for the transfer

    def __init__(self, handle, mover):
        super().__init__(handle, mover)
        self.event = lib.kvpool_gpu_transfer_event(handle) or None

    def wait(self):
        return self._result(lib.kvpool_gpu_transfer_wait)


def _event(after):
    """A cudaEvent_t from an int, or anything with ``cuda_event`` (e.g. torch.cuda.Event); None for none."""
    return None if after is None else (_capi.uint(getattr(after, "cuda_event", after), 64, "after") or None)


def _layer(layer):
    return _capi.uint(layer, 32, "layer")


class LayerTransfer(Transfer):
    """A layer-wise load in flight (``KvMover.load_layers``; gpu.h,
    LayerTransfer). ``found``: the leading keys found in the pool (their
    pages are being filled, the caller computes the rest); reading it waits
    for the lookup, which ``load_layers`` does not.
    ``layers``: the namespace's layers. ``wait_layer(l, stream=None)`` makes
    ``stream`` wait until layer l of every found block is in its pages and
    checksummed (a stream wait, cudaStreamWaitEvent: the host does not
    block), e.g. from a forward pre-hook of decoder layer l with
    ``torch.cuda.current_stream()``; ``layer_event(l)`` is that cudaEvent_t
    as an int, owned by the transfer. A CUDA event cannot refuse to fire: a
    layer that fails its checksum is still in the pages when the stream
    passes its wait, so ``wait()``, in the same step, gives ``done`` = the
    leading blocks whose every layer verified (``stopped`` "data_loss" at a
    failed one), and the engine discards what it computed from the rest. On
    the staged path (blocks on agents not mapped here) every layer's wait is
    the one for the whole transfer: nothing overlaps."""

    def __init__(self, handle, mover):
        super().__init__(handle, mover)
        self.layers = int(lib.kvpool_gpu_transfer_layers(handle))
        self._found = None

    @property
    def found(self):
        if self._found is None:
            self._found = int(lib.kvpool_gpu_transfer_found(self._live()))
        return self._found

    def close(self):
        if self._handle and self._found is None:  # still known once closed; closing waits for the load anyway
            self._found = int(lib.kvpool_gpu_transfer_found(self._handle))
        super().close()

    def _check_layer(self, layer):
        layer = _layer(layer)
        if layer >= self.layers:
            raise InvalidArgument(f"layer {layer} of a transfer of {self.layers} layers")
        return layer

    def layer_event(self, layer):
        """Layer ``layer``'s cudaEvent_t (an int), or None if the transfer has none."""
        layer = self._check_layer(layer)
        return lib.kvpool_gpu_transfer_layer_event(self._live(), layer) or None

    def wait_layer(self, layer, stream=None):
        """Makes ``stream`` (torch.cuda.Stream, a cudaStream_t int, None for
        the legacy default stream) wait for layer ``layer``; returns at once."""
        layer = self._check_layer(layer)
        check(lib.kvpool_gpu_transfer_wait_layer(self._live(), layer, _stream(stream)))


class LayerSave(_MoverOwned):
    """A layer-wise save (``KvMover.begin_save_layers``; gpu.h, LayerSave):
    its slots are allocated, and ``save_layer(l, stream=None)`` is called
    once the work queued on ``stream`` so far writes layer l's KV into the
    pages (e.g. from a forward hook of decoder layer l, with
    ``torch.cuda.current_stream()``): the mover's own stream waits for that
    point and copies layer l's slices into the pool, so ``stream`` never
    waits. InvalidArgument for a layer out of range or saved twice.
    ``finish()`` waits for the copies and commits the blocks once every
    layer was saved, returning a TransferResult (``done``: keys now in the
    pool; again on later calls); FailedPrecondition, with nothing committed,
    when a layer was not saved. Blocks are in the pool whole or not at all.
    The pages stay the source until ``finish()`` returns. ``close()``
    releases it; before ``finish()`` it aborts the save (nothing committed)
    once its copies ended. A context manager (exit closes: call ``finish()``
    inside). ``layers``: the namespace's layers."""

    _what = "layer-wise save"
    # Aborts an unfinished save once its copies ended.
    _destroy = staticmethod(lambda h: lib.kvpool_gpu_save_destroy(h))

    def __init__(self, handle, mover):
        super().__init__(handle, mover)
        self.layers = mover.layers

    def save_layer(self, layer, stream=None):
        check(lib.kvpool_gpu_save_layer(self._live(), _layer(layer), _stream(stream)))

    def finish(self):
        return self._result(lib.kvpool_gpu_save_finish)  # a second call gives the first outcome


class RowLayerSave(LayerSave):
    """A layer-wise save of pointer rows (``RowMover.begin_save_layer_rows``;
    gpu.h, LayerSave::save_layer_rows): ``save_layer_rows(l, rows,
    after=None)`` gives layer l's addresses (units / layers per key, as
    ``RowMover`` takes rows) and an event its copies wait for; ``finish()``
    and ``close()`` as for LayerSave. ``save_layer`` is InvalidArgument on
    it."""

    _what = "layer-wise save of rows"

    def save_layer_rows(self, layer, rows, after=None):
        k, table, n, _keep = self._mover._rows(self._count, rows, self._mover.units // self.layers)
        check(lib.kvpool_gpu_save_layer_rows(self._live(), _layer(layer), table, n, _event(after)))


class _Mover(_Handle):
    """What both movers share: the C handle, options, closing (transfers
    first; Client.close() closes its movers first), a context manager."""

    _DEFAULTS = dict(path="auto", mover="copy_engine", chunk_bytes=0, verify_loads=True, hash_threads=0, device=-1,
                     gpu_checksums=True, staged_stream_order=False)

    def _open(self, client, create):
        self._handle = None
        self._transfers = weakref.WeakSet()  # closed before the mover
        self._client = client  # the C mover uses the client: keep it referenced
        handle = C.c_void_p()
        check(create(C.byref(handle)))
        self._handle = handle
        client._dependents.add(self)  # closed before the client

    def set_options(self, **options):
        """Replaces the options (between transfers); keywords as in the constructor."""
        unknown = set(options) - set(self._DEFAULTS)
        if unknown:
            raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
        o = _options(**{**self._DEFAULTS, **options})
        check(lib.kvpool_gpu_mover_set_options(self._live(), C.byref(o)))

    def _live(self):
        if not self._handle:
            raise InvalidArgument("the mover is closed")
        return self._handle

    def close(self):
        """Waits for its transfers (a layer-wise save not finished is
        aborted), then releases the mover."""
        for t in list(self._transfers):
            t.close()
        handle, self._handle = self._handle, None
        if handle:
            lib.kvpool_gpu_mover_destroy(handle)
        self._tensors = None  # the engine's memory may go now


class KvMover(_Mover):
    """Moves KV pages between GPU tensors and the pool: ``save(keys, pages,
    stream)`` puts pages[i] under keys[i], ``load(keys, pages, stream)`` loads
    the longest present prefix of keys into pages[i]; both return a Transfer.
    Layer by layer: ``load_layers(keys, pages, stream)`` -> LayerTransfer
    (the model's stream waits per layer, so layer l's copy overlaps the
    compute of the layers before it), ``begin_save_layers(keys, pages)`` ->
    LayerSave (each layer saved once the model wrote it).

    k: per layer the combined tensor (vllm-paged; v None) or the K tensors,
    v: the V tensors; tensors (data_ptr()) or device pointers. The client must
    have registered namespace_id with this layout's block size
    (``client.register_namespace(**layout.namespace(model_id))``) and stay
    open while the mover lives. Options as in gpu.h's GpuOptions: path
    "auto" | "mapped" | "staged", mover "copy_engine" | "kernel" |
    "per_page", chunk_bytes (0: 64 MiB), verify_loads, hash_threads (0: 8),
    device (-1: current), gpu_checksums, staged_stream_order.
    FailedPrecondition when no GPU is usable, Unimplemented in a kvpool built
    without CUDA."""

    def __init__(self, client, namespace_id, layout, k, v=None, *, path="auto", mover="copy_engine", chunk_bytes=0,
                 verify_loads=True, hash_threads=0, device=-1, gpu_checksums=True, staged_stream_order=False):
        self._handle = None
        if not isinstance(layout, KvLayout):
            raise TypeError(f"layout: expected a kvpool.gpu.KvLayout, got {type(layout).__name__}")
        n = layout.num_layers
        k = list(k)
        v = None if v is None else list(v)
        if len(k) != n or (v is not None and len(v) != n):
            raise InvalidArgument(f"{len(k)} K and {0 if v is None else len(v)} V tensors for {n} layers")
        if v is None and layout.kind != "vllm-paged":
            raise InvalidArgument(f"layout {layout.kind} needs V tensors")
        k_ptrs = (C.c_void_p * max(n, 1))(*[_pointer(t, f"k[{i}]") for i, t in enumerate(k)])
        v_ptrs = None if v is None else (C.c_void_p * max(n, 1))(*[_pointer(t, f"v[{i}]") for i, t in enumerate(v)])
        o = _options(path, mover, chunk_bytes, verify_loads, hash_threads, device, gpu_checksums, staged_stream_order)
        self._layout = layout
        self.layers = layout.num_layers
        self._tensors = (k, v)  # keep the engine's tensors referenced while the mover may write them
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        self._open(client, lambda out: lib.kvpool_gpu_mover_create(client._c_handle, ns, C.byref(layout._c), k_ptrs,
                                                                   v_ptrs, C.byref(o), out))

    @staticmethod
    def _keys_pages(keys, pages):
        k = Keys(keys)
        try:  # array('Q') refuses what is not an int in [0, 2**64), at C speed (a call's marshalling is on the
            pg = array.array("Q", pages)  # host path a forward pass waits for)
        except (TypeError, OverflowError, ValueError):
            pg = array.array("Q", [_capi.uint(p, 64, f"pages[{i}]") for i, p in enumerate(pages)])  # the error
        if len(pg) != k.count:
            raise InvalidArgument(f"{k.count} keys and {len(pg)} pages")
        if not pg:
            pg.append(0)
        return k, (C.c_uint64 * len(pg)).from_buffer(pg)

    def _run(self, fn, keys, pages, stream):
        k, pg = self._keys_pages(keys, pages)
        t = C.c_void_p()
        check(fn(self._live(), k.array, pg, k.count, _stream(stream), C.byref(t)))
        return Transfer(t, self)

    def save(self, keys, pages, stream=None):
        return self._run(lib.kvpool_gpu_save, keys, pages, stream)

    def load(self, keys, pages, stream=None):
        return self._run(lib.kvpool_gpu_load, keys, pages, stream)

    def load_layers(self, keys, pages, stream=None):
        """Loads the longest present prefix of keys into pages[i] layer by
        layer, the copies ordered after the work already queued on
        ``stream`` (the pages are free from that point) and run on the
        mover's own stream. Returns a LayerTransfer: a stream waits per
        layer with ``wait_layer(l, stream)``. With
        ``KVPOOL_GPU_LAYER_START=thread`` in the environment it returns
        before the lookup (the mover's thread looks the keys up and queues
        the copies while the caller queues its forward pass), and a lookup
        that fails is ``wait()``'s error (gpu.h, KvMover::load_layers)."""
        k, pg = self._keys_pages(keys, pages)
        t = C.c_void_p()
        check(lib.kvpool_gpu_load_layers(self._live(), k.array, pg, k.count, _stream(stream), C.byref(t), None))
        return LayerTransfer(t, self)

    def begin_save_layers(self, keys, pages):
        """Starts a layer-wise save of pages[i] under keys[i] (their slots
        are allocated now); returns a LayerSave to call ``save_layer(l,
        stream)`` on for every layer, then ``finish()``."""
        k, pg = self._keys_pages(keys, pages)
        s = C.c_void_p()
        check(lib.kvpool_gpu_begin_save_layers(self._live(), k.array, pg, k.count, C.byref(s)))
        return LayerSave(s, self)



class RowMover(_Mover):
    """Moves blocks given as rows of device pointers (gpu.h,
    KvMover::create_rows; what UCM's store interface passes): block i of a
    call is the ``units`` runs at ``rows[i][0..units)``, each block_bytes /
    units bytes (16-byte aligned), back to back in the pool block.
    ``save_rows(keys, rows, stream=None, after=None)`` and
    ``load_rows(keys, rows, stream=None, after=None)`` return a Transfer
    (load: the longest present prefix; a block failing its checksum ends
    it, ``stopped`` "data_loss"). ``after``: a cudaEvent_t (an int, or
    anything with ``cuda_event``, e.g. torch.cuda.Event) the copies wait
    for; ``stream`` None: the mover's own stream (not the legacy default
    one), so a caller with no stream is ordered by ``after`` and
    ``wait()`` alone. rows: a sequence of rows of device addresses, or a
    C-contiguous 2-D uint64 array (read in place); read during the call
    only. Checksums are the CPU's. Options
    as for KvMover.

    Layer by layer (UCM's layer-wise connector; gpu.h, KvMover::load_layer_rows):
    with ``layers`` L, a block's runs are L equal groups, layer-major, and a
    layer's rows hold units / L addresses per key.
    ``load_layer_rows(keys, layer, rows, stream=None, after=None)`` moves
    that layer of the longest present prefix (verified against its slice
    checksum; only from an agent mapped here, else ``stopped``
    "unimplemented"); ``begin_save_layer_rows(keys)`` returns a
    RowLayerSave, which commits once every layer was saved."""

    def __init__(self, client, namespace_id, units, *, layers=1, path="auto", mover="copy_engine", chunk_bytes=0,
                 verify_loads=True, hash_threads=0, device=-1, gpu_checksums=True, staged_stream_order=False):
        self._handle = None
        self.units = _capi.uint(units, 32, "units")
        self.layers = _capi.uint(layers, 32, "layers")
        o = _options(path, mover, chunk_bytes, verify_loads, hash_threads, device, gpu_checksums, staged_stream_order)
        ns = _capi.uint(namespace_id, 64, "namespace_id")
        self._open(client, lambda out: lib.kvpool_gpu_layer_row_mover_create(client._c_handle, ns, self.units,
                                                                             self.layers, C.byref(o), out))

    def _rows(self, keys, rows, width=None):
        """(keys, a uint64 table of the rows, its length, what keeps it
        alive); rows of ``width`` addresses (the mover's units by default).
        keys may be a count (the rows of a save whose keys were given)."""
        width = self.units if width is None else width
        k = _Count(keys) if isinstance(keys, int) else Keys(keys)
        ai = getattr(rows, "__array_interface__", None)
        if ai is not None and ai.get("typestr") == "<u8" and len(ai["shape"]) == 2 and ai.get("strides") is None:
            # A C-contiguous 2-D uint64 array (UCM's extract_block_addrs):
            # read in place, no per-address conversion.
            count, got = ai["shape"]
            if got != width:
                raise InvalidArgument(f"rows of {got} addresses, the mover's rows here have {width}")
            if count != k.count:
                raise InvalidArgument(f"{k.count} keys and {count} rows")
            return k, C.cast(C.c_void_p(ai["data"][0]), C.POINTER(C.c_uint64)), count * width, rows
        flat = []
        for i, row in enumerate(rows):
            row = [int(a) for a in row]
            if len(row) != width:
                raise InvalidArgument(f"rows[{i}]: {len(row)} addresses, the mover's rows here have {width}")
            flat.extend(row)
        if len(flat) != k.count * width:
            raise InvalidArgument(f"{k.count} keys and {len(flat) // max(width, 1)} rows")
        table = (C.c_uint64 * max(len(flat), 1))(*[_capi.uint(a, 64, "address") for a in flat])
        return k, table, len(flat), table

    def _run(self, fn, keys, rows, stream, after):
        k, table, n, _keep = self._rows(keys, rows)
        t = C.c_void_p()
        check(fn(self._live(), k.array, table, n, k.count, _stream(stream), _event(after), C.byref(t)))
        return Transfer(t, self)

    def save_rows(self, keys, rows, stream=None, after=None):
        return self._run(lib.kvpool_gpu_save_rows, keys, rows, stream, after)

    def load_rows(self, keys, rows, stream=None, after=None):
        return self._run(lib.kvpool_gpu_load_rows, keys, rows, stream, after)

    def load_layer_rows(self, keys, layer, rows, stream=None, after=None):
        k, table, n, _keep = self._rows(keys, rows, self.units // self.layers)
        t = C.c_void_p()
        check(lib.kvpool_gpu_load_layer_rows(self._live(), k.array, table, n, k.count, _layer(layer), _stream(stream),
                                             _event(after), C.byref(t)))
        return Transfer(t, self)

    def begin_save_layer_rows(self, keys):
        k = Keys(keys)
        s = C.c_void_p()
        check(lib.kvpool_gpu_begin_save_layer_rows(self._live(), k.array, k.count, C.byref(s)))
        save = RowLayerSave(s, self)
        save._count = k.count
        return save


class _Count:
    """The key count of rows given without their keys."""

    def __init__(self, count):
        self.count = count


__all__ = ["KvLayout", "KvMover", "LayerSave", "LayerTransfer", "RowLayerSave", "RowMover", "Transfer",
           "TransferResult", "gpu_available"]
