"""The worker side of the vLLM connector: pages between vLLM's KV tensors and
the pool through kvpool's GPU path (kvpool.gpu.KvMover), layer by layer
(include/kvpool/gpu.h, LayerTransfer and LayerSave).

Follows vllm/v1/worker/kv_connector_model_runner_mixin.py
(_get_kv_connector_output): per step bind_connector_metadata,
start_load_kv(forward_context) before the forward pass, wait_for_layer_load
before and save_kv_layer after each attention layer, then wait_for_save,
get_finished, get_block_ids_with_load_errors, get_kv_connector_stats,
clear_connector_metadata. A step without a forward pass
(kv_connector_no_forward) calls start_load_kv and the getters only.

Layers. register_kv_caches orders vLLM's layer names by layer_order and gives
each distinct KV tensor the next index, the mover's layer index (a pool block
is layer-major in that order). A layer that shares another's KV
(kv_sharing_target_layer_name: vLLM registers the target's tensor under the
sharing layer's name too) maps to its target's index; vLLM requires the
target to come first, so a tensor's first name is the layer that writes it.

Loads:

- start_load_kv: one KvMover.load_layers per request (a prefix chain stops at
  its first missing block), ordered after the work already queued on vLLM's
  current CUDA stream (the pages are free from that point); the copies run
  on the mover's own streams.
- wait_for_layer_load(layer): vLLM's current stream waits for that layer of
  every load of the step (LayerTransfer.wait_layer, a cudaStreamWaitEvent:
  the host never waits), so layer l's copy overlaps the compute of the
  layers before it. A name that maps to no layer waits for every layer. The
  step's loads share the mover's load streams and each enqueues all its
  layers when it starts, so a request's layer 0 lands after every layer of
  the requests started before it: the overlap is the first request's.
- A CUDA event cannot refuse to fire: a layer slice that fails its checksum
  is in the pages when its layer runs. The step's loads are waited for on
  the host (LayerTransfer.wait) in wait_for_save, or in
  get_block_ids_with_load_errors in a step without a forward pass; every
  block past a load's ``done`` (a failed checksum: kDataLoss; a block gone
  since the lookup; the pool unreachable; a stream wait that failed) is
  reported by get_block_ids_with_load_errors in the same step, and vLLM
  (kv_load_failure_policy "recompute") discards what the step computed from
  it, for every request whose blocks include it, and recomputes it.

Saves are layer by layer, rather than one whole-block save after the forward
pass: the copies of layer l run beside the compute of the layers after it,
so wait_for_save, which blocks the host until the step's blocks are in the
pool, waits for one layer's copy and the commit instead of every layer's;
and a LayerSave commits or aborts per request, which a request that read a
failed block needs.

- start_load_kv: KvMover.begin_save_layers per request for the blocks the
  step completes (their slots are allocated; nothing is committed).
- save_kv_layer(layer): every save of the step saves that layer from vLLM's
  current stream (LayerSave.save_layer: the mover's stream waits for that
  point of vLLM's stream and copies; vLLM's stream never waits). A layer
  sharing another's KV saves nothing (its target did). The last layer the
  forward pass saves is held back.
- wait_for_save: waits for the step's loads, then per request: if it read a
  block that failed to load in this step (its own load's, or a page it
  shares with another request through vLLM's prefix cache:
  KvpoolConnectorMetadata.reads), its save is closed unfinished, aborted:
  its new KV was computed over bad bytes. Else it saves the held-back layer
  from the current stream (after the whole forward pass) and finish()
  commits its blocks, whole.
- Why one layer is held back: so that a save can be aborted until the
  step's loads are known, whatever the mover does at a last save_layer.
  The staged path's LayerSave used to put (and so commit) the whole blocks
  at its last save_layer; since runtime/gpu/layers.cc's WholeSaveAsLayers
  puts in finish() instead, neither path commits before finish(), and the
  hold-back is only a second guard (the CPU test's mover keeps the old
  behaviour as its "last_layer" mode). It costs the last layer's copy
  running after the forward pass instead of beside its tail; dropping it is
  a follow-up.
- When the forward pass does not save every layer exactly once (a layer
  saved twice, as a model run in micro-batches would; a layer never saved;
  a save_layer that failed), the step's layer-wise saves (or the failed one)
  are aborted and wait_for_save saves those blocks whole (KvMover.save,
  ordered after the forward pass on the current stream) and waits for them.
- No save outlives its step: each is finished or aborted in wait_for_save,
  and one a step without a forward pass left open is aborted in
  get_block_ids_with_load_errors. So vLLM may free or reuse a preempted
  request's pages at once (handle_preemptions only makes sure that nothing
  of an earlier step is left).
"""

import logging
import time

import kvpool

from ._config import ConfigError, layer_order

log = logging.getLogger("kvpool.vllm")


def _dims(t):
    return tuple(int(x) for x in t.shape)


def _contiguous(t):
    if hasattr(t, "is_contiguous"):
        return bool(t.is_contiguous())
    return bool(t.flags["C_CONTIGUOUS"])  # numpy, in the CPU test


def _elem_bytes(t):
    return int(t.element_size()) if hasattr(t, "element_size") else int(t.itemsize)


class PagedLayout:
    """vLLM's per-layer KV tensors as kvpool's GPU path addresses them.

    FLASH_ATTN: [2, num_blocks, block_size, kv_heads, head_dim]: kvpool's
    "vllm-paged" (K of page p at tensor[0, p], V at tensor[1, p]).
    FLASHINFER / TRITON_ATTN: [num_blocks, 2, block_size, kv_heads,
    head_dim]: K and V of page p are adjacent runs. kvpool.gpu.h's
    "hf-contiguous" kind addresses exactly that: K and V tensors of [batch =
    num_blocks, heads = 1, max_seq = 2 * block_size, head_dim = kv_heads *
    head_dim], the V tensor starting one run after K, page 2p being block
    p's K (and V) run. A pool block is the same bytes either way (layer,
    then K, V), so both share blocks. HND (non-contiguous) caches, MLA's 3-D
    caches and other shapes are refused."""

    def __init__(self, shape, tensors):
        first = tensors[0]
        dims = _dims(first)
        tail = (shape.page_tokens, shape.num_kv_heads, shape.head_dim)
        flash = len(dims) == 5 and dims[0] == 2 and dims[2:] == tail
        infer = len(dims) == 5 and dims[1] == 2 and dims[2:] == tail
        if flash and infer:  # [2, 2, ...]: two blocks only, tell by the pool size vLLM allotted
            flash, infer = False, False
        if not (flash or infer):
            raise ConfigError(f"KV cache tensor of shape {list(dims)} is not FlashAttention's [2, num_blocks, "
                              f"{tail[0]}, {tail[1]}, {tail[2]}] nor FlashInfer's [num_blocks, 2, ...]: use "
                              "--attention-backend FLASH_ATTN (or FLASHINFER, TRITON_ATTN)")
        for t in tensors:
            if _dims(t) != dims:
                raise ConfigError(f"KV cache tensors differ in shape ({list(_dims(t))} vs {list(dims)})")
            if not _contiguous(t):
                raise ConfigError("a KV cache tensor is not contiguous (an HND layout?): KvpoolConnector needs "
                                  "NHD; unset VLLM_KV_CACHE_LAYOUT=HND")
            if _elem_bytes(t) != shape.elem_bytes:
                raise ConfigError(f"KV cache elements of {_elem_bytes(t)} bytes, the spec says {shape.elem_bytes}")
        self.backend = "FLASH_ATTN" if flash else "FLASHINFER"
        self.num_layers = len(tensors)
        self.num_pages = dims[1] if flash else dims[0]
        self.shape = shape
        self.tensors = list(tensors)
        self.run_bytes = shape.page_tokens * shape.num_kv_heads * shape.head_dim * shape.elem_bytes
        self.block_bytes = 2 * self.num_layers * self.run_bytes

    def kv_layout(self):
        s = self.shape
        if self.backend == "FLASH_ATTN":
            return kvpool.gpu.KvLayout("vllm-paged", num_layers=self.num_layers, num_kv_heads=s.num_kv_heads,
                                       head_dim=s.head_dim, dtype=s.layout_dtype, tokens_per_block=s.page_tokens,
                                       num_pages=self.num_pages)
        return kvpool.gpu.KvLayout("hf-contiguous", num_layers=self.num_layers, num_kv_heads=1,
                                   head_dim=s.num_kv_heads * s.head_dim, dtype=s.layout_dtype,
                                   tokens_per_block=s.page_tokens, batch=self.num_pages, max_seq=2 * s.page_tokens)

    def mover_tensors(self):
        """(k, v) for KvMover: tensors (vllm-paged) or device pointers."""
        if self.backend == "FLASH_ATTN":
            return self.tensors, None
        k = [int(t.data_ptr()) for t in self.tensors]
        return k, [p + self.run_bytes for p in k]

    def mover_pages(self, pages):
        return list(pages) if self.backend == "FLASH_ATTN" else [2 * p for p in pages]

    def runs(self, tensor, page):
        """(K, V) of one page of one layer, as views of the tensor."""
        return (tensor[0, page], tensor[1, page]) if self.backend == "FLASH_ATTN" else \
            (tensor[page, 0], tensor[page, 1])


def gpu_mover(client, namespace_id, layout, path):
    """The transfer layer vLLM runs with: kvpool.gpu.KvMover."""
    if not kvpool.gpu.gpu_available():
        raise ConfigError("kvpool's GPU path is not usable in this process (kvpool built without CUDA, or no "
                          "usable GPU): install the CUDA build of the kvpool wheel")
    k, v = layout.mover_tensors()
    return kvpool.gpu.KvMover(client, namespace_id, layout.kv_layout(), k, v, path=path)


def _current_stream(tensor):
    device = getattr(tensor, "device", None)
    if getattr(device, "type", None) != "cuda":
        return None
    import torch
    return torch.cuda.current_stream(device)


class _Load:
    """A request's layer-wise load in this step."""

    __slots__ = ("transfer", "req_id", "pages", "started", "broken")

    def __init__(self, transfer, req_id, pages):
        self.transfer = transfer
        self.req_id = req_id
        self.pages = list(pages)  # vLLM block ids
        self.started = time.monotonic()
        self.broken = False  # a stream wait failed: the model may have read its pages before they landed


class _Save:
    """A request's layer-wise save in this step."""

    __slots__ = ("save", "req_id", "keys", "pages", "started", "broken")

    def __init__(self, save, req_id, keys, pages):
        self.save = save
        self.req_id = req_id
        self.keys = keys  # engine keys
        self.pages = pages  # the mover's page ids
        self.started = time.monotonic()
        self.broken = False  # a save_layer failed: saved whole at wait_for_save


class WorkerSide:
    """One worker rank's transfers. ``mover_factory(client, namespace_id,
    layout, path)`` is gpu_mover; only tests/python's CPU test passes
    another (host-staged numpy pages through Client.put/get, same block
    bytes, same layer-wise semantics)."""

    def __init__(self, shape, pool, stats, ranks, mover_factory=None):
        self.shape = shape
        self.pool = pool
        self.stats = stats
        self.tp_rank, self.pp_rank, self.dcp_rank = ranks
        self.mover_factory = mover_factory or gpu_mover
        self.layout = None
        self.namespace = None
        self._descriptor = None
        self._mover = None
        self._mover_generation = -1
        self._index = {}  # vLLM layer name -> the mover's layer index
        self._writer = {}  # the same, for the first name of each KV tensor only (the layer that writes it)
        self._warned = set()
        self._loads = []  # [_Load] of this step
        self._saves = []  # [_Save] of this step
        self._reads = {}  # request id -> block ids its saved blocks were computed over (the metadata's reads)
        self._invalid = set()  # block ids that failed to load, until get_block_ids_with_load_errors reports them
        self._step_invalid = set()  # those of this step
        self._failed_requests = set()  # requests of this step with a block that failed to load
        self._saved = set()  # layers saved this step by every save (save_layer called)
        self._held = None  # the layer held back until wait_for_save
        self._layerwise = True  # no layer was saved twice this step

    def register_kv_caches(self, kv_caches):
        seen, tensors, index, writer = {}, [], {}, {}
        for name in sorted(kv_caches, key=layer_order):
            t = kv_caches[name]
            ident = int(t.data_ptr()) if hasattr(t, "data_ptr") else id(t)
            if ident not in seen:  # else a layer sharing another layer's KV (kv_sharing_target_layer_name)
                seen[ident] = len(tensors)
                tensors.append(t)
                writer[name] = seen[ident]
            index[name] = seen[ident]
        if not tensors:
            raise ConfigError("register_kv_caches: no KV cache tensors")
        self.layout = PagedLayout(self.shape, tensors)
        expected = self.shape.stage_layers(self.pp_rank)
        if len(tensors) != expected:
            raise ConfigError(f"this worker holds {len(tensors)} KV cache layers, the scheduler counts {expected} "
                              f"for pipeline stage {self.pp_rank}: KvpoolConnector cannot key this model's pages")
        self._index, self._writer = index, writer
        self._descriptor = self.shape.rank_descriptor(self.tp_rank, self.pp_rank, self.dcp_rank, len(tensors))
        self.namespace = kvpool.namespace_id(**self._descriptor)
        self._ensure_mover()  # a configuration error shows now; an outage only delays it

    def _ensure_mover(self):
        client = self.pool.client()
        if client is None:
            return None
        if self._mover is None or self._mover_generation != self.pool.generation:
            try:
                client.register_namespace(**self._descriptor)
                self._mover = self.mover_factory(client, self.namespace, self.layout, self.shape.settings.path)
                self._mover_generation = self.pool.generation
            except kvpool.Error as e:
                if isinstance(e, (kvpool.InvalidArgument, kvpool.Unimplemented)):
                    raise ConfigError(f"kvpool's GPU path refused vLLM's KV cache: {e}") from e
                self.pool.failed(e, "connect the GPU path")
                return None
        return self._mover

    def _keys(self, chain_keys):
        return kvpool.engine_keys(self.namespace, chain_keys)

    def _stream(self):
        return _current_stream(self.layout.tensors[0])

    def _warn_once(self, what, message, *args):
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    # ----------------------------------------------------------- the step --

    def start_load_kv(self, meta):
        """Starts the step's loads and layer-wise saves."""
        self.end_step()  # nothing is left unless vLLM skipped wait_for_save and get_block_ids_with_load_errors
        self._failed_requests, self._step_invalid, self._reads = set(), set(), {}
        self._saved, self._held, self._layerwise = set(), None, True
        if meta is None or not (meta.loads or meta.saves):
            return
        mover = self._ensure_mover()
        stream = self._stream()
        for req_id, keys, pages in meta.loads:
            if mover is None:
                self._fail(req_id, pages)
                continue
            try:
                t = mover.load_layers(self._keys(keys), self.layout.mover_pages(pages), stream)
            except kvpool.Error as e:
                self.pool.failed(e, "load")
                self._fail(req_id, pages)
                continue
            self._loads.append(_Load(t, req_id, pages))
        self._reads = dict(getattr(meta, "reads", None) or {})
        for req_id, keys, pages in meta.saves:
            if req_id in self._failed_requests:
                continue  # its load failed already: its new KV is computed over blocks that are not there
            if mover is None:
                self.stats.add(blocks_save_failed=len(keys))
                continue
            engine_keys, mover_pages = self._keys(keys), self.layout.mover_pages(pages)
            try:
                s = mover.begin_save_layers(engine_keys, mover_pages)
            except kvpool.Error as e:
                self.pool.failed(e, "save")
                self.stats.add(blocks_save_failed=len(keys))
                continue
            self._saves.append(_Save(s, req_id, engine_keys, mover_pages))

    def wait_for_layer_load(self, layer_name):
        """The current stream waits for this layer of the step's loads (no host wait)."""
        if not self._loads:
            return
        layer = self._index.get(layer_name)
        if layer is None:
            self._warn_once(("layer", layer_name), "kvpool: wait_for_layer_load(%r): not a layer registered by "
                            "register_kv_caches; waiting for every layer", layer_name)
            layers = range(self.layout.num_layers)
        else:
            layers = (layer,)
        stream = self._stream()
        for ld in self._loads:
            if ld.broken:
                continue
            try:
                for lay in layers:
                    ld.transfer.wait_layer(lay, stream)
            except kvpool.Error as e:
                ld.broken = True
                log.warning("kvpool: request %s: waiting for layer %s failed (%s); vLLM recomputes its blocks",
                            ld.req_id, layer_name, e)

    def save_kv_layer(self, layer_name):
        """Saves this layer of the step's blocks from the current stream (no host wait)."""
        if not self._saves or not self._layerwise:
            return
        layer = self._writer.get(layer_name)
        if layer is None:
            if layer_name not in self._index:
                self._warn_once(("layer", layer_name), "kvpool: save_kv_layer(%r): not a layer registered by "
                                "register_kv_caches", layer_name)
            return  # else a layer sharing another's KV: its target saved it
        if layer in self._saved or layer == self._held:
            self._warn_once("twice", "kvpool: save_kv_layer(%r) called twice in a step (micro-batches?): the "
                            "step's blocks are saved whole after the forward pass", layer_name)
            self._layerwise = False
            return
        if len(self._saved) == self.layout.num_layers - 1:
            self._held = layer  # saved in wait_for_save, once the loads are known
            return
        self._saved.add(layer)
        stream = self._stream()
        for sv in self._saves:
            if sv.broken:
                continue
            try:
                sv.save.save_layer(layer, stream)
            except kvpool.Error as e:
                sv.broken = True
                log.warning("kvpool: request %s: saving layer %s failed (%s); its blocks are saved whole",
                            sv.req_id, layer_name, e)

    def wait_for_save(self):
        """Waits for the step's loads, then finishes (or aborts) its saves."""
        self.finish_loads()
        saves, self._saves = self._saves, []
        if not saves:
            return
        complete = self._layerwise and self._held is not None and len(self._saved) == self.layout.num_layers - 1
        if not complete and self._layerwise:
            self._warn_once("incomplete", "kvpool: save_kv_layer was not called for every layer in a step: its "
                            "blocks are saved whole after the forward pass")
        stream = self._stream()
        whole = []
        for sv in saves:
            if self._read_failed(sv.req_id):
                sv.save.close()  # aborted: computed over a block that failed to load
                continue
            if not complete or sv.broken:
                sv.save.close()
                whole.append(sv)
                continue
            try:
                sv.save.save_layer(self._held, stream)
            except kvpool.Error as e:
                log.warning("kvpool: request %s: saving its last layer failed (%s); its blocks are saved whole",
                            sv.req_id, e)
                sv.save.close()
                whole.append(sv)
                continue
            try:
                r = sv.save.finish()
                self.stats.add(saves=1, blocks_saved=int(r.done), blocks_save_failed=int(r.failed),
                               bytes_saved=int(r.bytes), save_ms=(time.monotonic() - sv.started) * 1e3)
            except kvpool.Error as e:
                self.pool.failed(e, "save")
                self.stats.add(blocks_save_failed=len(sv.keys))
            finally:
                sv.save.close()
        if whole:
            self._save_whole(whole, stream)

    def _read_failed(self, req_id):
        return req_id in self._failed_requests or not self._step_invalid.isdisjoint(self._reads.get(req_id, ()))

    def _save_whole(self, saves, stream):
        """One KvMover.save of these requests' blocks after the forward pass, waited for."""
        keys = [k for sv in saves for k in sv.keys]
        pages = [p for sv in saves for p in sv.pages]
        mover = self._ensure_mover()
        if mover is None:
            self.stats.add(blocks_save_failed=len(keys))
            return
        started = min(sv.started for sv in saves)
        try:
            with mover.save(keys, pages, stream) as t:
                r = t.wait()
            self.stats.add(saves=1, blocks_saved=int(r.done), blocks_save_failed=int(r.failed),
                           bytes_saved=int(r.bytes), save_ms=(time.monotonic() - started) * 1e3)
        except kvpool.Error as e:
            self.pool.failed(e, "save")
            self.stats.add(blocks_save_failed=len(keys))

    def _fail(self, req_id, pages):
        if pages:
            self._invalid.update(pages)
            self._step_invalid.update(pages)
            self._failed_requests.add(req_id)
            self.stats.add(blocks_load_failed=len(pages))

    def finish_loads(self):
        """Waits for the step's loads (once; later calls return at once)."""
        loads, self._loads = self._loads, []
        for ld in loads:
            r = None
            try:
                r = ld.transfer.wait()
                done, moved = min(int(r.done), len(ld.pages)), int(r.bytes)
                if ld.broken:
                    done, moved = 0, 0
            except kvpool.Error as e:
                self.pool.failed(e, "load")
                done, moved = 0, 0
            finally:
                ld.transfer.close()
            if done < len(ld.pages):
                log.warning("kvpool: request %s loaded %d of %d blocks (%s); vLLM recomputes the rest", ld.req_id,
                            done, len(ld.pages), "a stream wait failed" if ld.broken else r.stopped if r else "error")
            self._fail(ld.req_id, ld.pages[done:])
            self.stats.add(loads=1, blocks_loaded=done, bytes_loaded=moved,
                           load_ms=(time.monotonic() - ld.started) * 1e3)

    def end_step(self):
        """Ends whatever the step left in flight: waits for its loads (their
        failures stay to be reported) and aborts its saves."""
        self.finish_loads()
        saves, self._saves = self._saves, []
        for sv in saves:
            sv.save.close()

    def take_invalid(self):
        self.end_step()
        out, self._invalid = self._invalid, set()
        return out

    def shutdown(self):
        try:
            self.end_step()
        finally:
            mover, self._mover = self._mover, None
            if mover is not None:
                mover.close()
