"""The worker side of the vLLM connector: pages between vLLM's KV tensors and
the pool through kvpool's GPU path (kvpool.gpu.KvMover).

Follows vllm/v1/worker/kv_connector_model_runner_mixin.py
(_get_kv_connector_output): per step bind_connector_metadata,
start_load_kv(forward_context) before the forward pass, wait_for_layer_load /
save_kv_layer from each attention layer, then wait_for_save, get_finished,
get_block_ids_with_load_errors, get_kv_connector_stats,
clear_connector_metadata.

- Loads are whole-block (the GPU path's layer-wise loads are a later
  issue): start_load_kv starts one KvMover load per request (a prefix chain
  stops at its first missing block); the first wait_for_layer_load of the
  step waits for all of them, later ones return at once.
- A block that did not load and verify (the transfer loaded fewer blocks,
  e.g. a failed checksum: kDataLoss, or the pool is unreachable) is reported
  by get_block_ids_with_load_errors in the same step, so vLLM recomputes it
  (kv_load_failure_policy "recompute"); a request with such a block saves
  nothing in that step, since its new KV was computed over it.
- save_kv_layer does nothing: wait_for_save saves the step's completed
  blocks, all layers at once, as one KvMover save over every request
  (ordered after the forward pass on the current CUDA stream), and waits for
  it, so no save outlives its step and handle_preemptions has nothing to do.
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


class WorkerSide:
    """One worker rank's transfers. ``mover_factory(client, namespace_id,
    layout, path)`` is gpu_mover; only tests/python's CPU test passes
    another (host-staged numpy pages through Client.put/get, same block
    bytes)."""

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
        self._loads = []  # [(transfer, request id, pages, started)]
        self._invalid = set()  # block ids that failed to load, reported once
        self._failed_requests = set()  # requests of this step with a failed block

    def register_kv_caches(self, kv_caches):
        seen, tensors = set(), []
        for name in sorted(kv_caches, key=layer_order):
            t = kv_caches[name]
            ident = int(t.data_ptr()) if hasattr(t, "data_ptr") else id(t)
            if ident not in seen:  # layers sharing another layer's KV (kv_sharing_target_layer_name)
                seen.add(ident)
                tensors.append(t)
        if not tensors:
            raise ConfigError("register_kv_caches: no KV cache tensors")
        self.layout = PagedLayout(self.shape, tensors)
        expected = self.shape.stage_layers(self.pp_rank)
        if len(tensors) != expected:
            raise ConfigError(f"this worker holds {len(tensors)} KV cache layers, the scheduler counts {expected} "
                              f"for pipeline stage {self.pp_rank}: KvpoolConnector cannot key this model's pages")
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

    # ---------------------------------------------------------------- loads --

    def start_load_kv(self, meta):
        self._failed_requests = set()
        if meta is None or not meta.loads:
            return
        mover = self._ensure_mover()
        stream = _current_stream(self.layout.tensors[0])
        for req_id, keys, pages in meta.loads:
            if mover is None:
                self._fail(req_id, pages)
                continue
            try:
                t = mover.load(self._keys(keys), self.layout.mover_pages(pages), stream)
            except kvpool.Error as e:
                self.pool.failed(e, "load")
                self._fail(req_id, pages)
                continue
            self._loads.append((t, req_id, list(pages), time.monotonic()))

    def _fail(self, req_id, pages):
        if pages:
            self._invalid.update(pages)
            self._failed_requests.add(req_id)
            self.stats.add(blocks_load_failed=len(pages))

    def finish_loads(self):
        """Waits for the step's loads (once; later calls return at once)."""
        loads, self._loads = self._loads, []
        for t, req_id, pages, started in loads:
            try:
                r = t.wait()
                done, moved = min(int(r.done), len(pages)), int(r.bytes)
                if done < len(pages):
                    log.warning("kvpool: request %s loaded %d of %d blocks (%s); vLLM recomputes the rest", req_id,
                                done, len(pages), r.stopped)
            except kvpool.Error as e:
                self.pool.failed(e, "load")
                done, moved = 0, 0
            finally:
                t.close()
            self._fail(req_id, pages[done:])
            self.stats.add(loads=1, blocks_loaded=done, bytes_loaded=moved,
                           load_ms=(time.monotonic() - started) * 1e3)

    def take_invalid(self):
        self.finish_loads()
        out, self._invalid = self._invalid, set()
        return out

    # ---------------------------------------------------------------- saves --

    def save(self, meta):
        """Saves the step's completed blocks (one transfer) and waits."""
        self.finish_loads()
        if meta is None or not meta.saves:
            return
        keys, pages = [], []
        for req_id, k, p in meta.saves:
            if req_id not in self._failed_requests:  # its KV was computed over a block that failed to load
                keys.extend(k)
                pages.extend(p)
        if not keys:
            return
        mover = self._ensure_mover()
        if mover is None:
            self.stats.add(blocks_save_failed=len(keys))
            return
        started = time.monotonic()
        try:
            with mover.save(self._keys(keys), self.layout.mover_pages(pages),
                            _current_stream(self.layout.tensors[0])) as t:
                r = t.wait()
            self.stats.add(saves=1, blocks_saved=int(r.done), blocks_save_failed=int(r.failed),
                           bytes_saved=int(r.bytes), save_ms=(time.monotonic() - started) * 1e3)
        except kvpool.Error as e:
            self.pool.failed(e, "save")
            self.stats.add(blocks_save_failed=len(keys))

    def shutdown(self):
        try:
            self.finish_loads()
        finally:
            mover, self._mover = self._mover, None
            if mover is not None:
                mover.close()
