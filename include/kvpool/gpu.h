#pragma once
// kvpool::gpu: moves KV blocks between an inference engine's KV cache in GPU
// memory and the pool, at the speed of the PCIe link.
//
// A pool block holds the KV of tokens_per_block consecutive tokens for every
// layer (DESIGN.md, "Keys"). In GPU memory those bytes lie in the engine's
// own layout (KvLayout): 2 x layers runs of one page each (vLLM), or one run
// per KV head too (transformers). A KvMover gathers them into pool blocks
// (save) and scatters them back into other page ids (load).
//
// Two paths, chosen per call (GpuOptions::path):
//  - mapped (same host, the default placement): the agent's region is mapped
//    into this process (shared memory) and registered with CUDA once, and the
//    GPU writes (reads) the pool slots directly: one DMA, no host staging copy.
//  - staged (any agent): blocks are gathered into a pinned host buffer
//    registered with UCX, then put; chunks are pipelined, so the PCIe copy of
//    chunk i+1 overlaps the network transfer of chunk i. Load is the reverse.
// Debian's UCX has no CUDA support: GPU memory is never registered with UCX.
//
// Payload checksums (the slot header's XXH3-64, unchanged: a restarted
// coordinator's scan and every other reader verify GPU-written blocks like
// any other). On the mapped path they are computed on the GPU by default
// (GpuOptions::gpu_checksums): a save hashes the pages on a side stream while
// the copies run; a load hashes the pages after they landed, so what is
// verified is what the GPU holds. Hashing GiBs on the CPU instead (the
// fallback, hash_threads threads over the pool's memory, chunk by chunk)
// contends with the DMA for host memory bandwidth: measured on an H100 host,
// CPU verification cut a 2 GiB load from 51 to 36 GB/s, a save from 50 to
// 29. A block whose checksum fails is never reported as loaded (nor are the
// ones after it). The staged path uses Client::put/get, which hash on the
// CPU (there the network, not PCIe, is the bound).
//
// Asynchrony: save() and load() return once the work is enqueued. On the
// mapped path every copy is enqueued on the caller's stream, ordered after
// the work already there, and Transfer::event() is recorded after the last
// one: after it the pages of a save may be overwritten, and the bytes of a
// load are in place. Transfer::wait() returns the outcome: which keys were
// committed (save), how many leading blocks loaded and verified (load). A
// load's pages may be used once wait() says they loaded; stream work that
// runs after event() but before wait() returns may see bytes that then fail
// verification. On the staged path the copies run on the mover's own stream
// (the network is in between) and, by default, event() is null: wait() is
// the point after which pages are free (save) or filled (load). With
// GpuOptions::staged_stream_order the caller's stream instead waits for the
// whole transfer in a host function (cudaLaunchHostFunc) and event() is
// recorded after it, so work queued after save()/load() runs after the
// transfer; but that stream makes no progress for the network's time, the
// wait occupies CUDA's host-function thread, and a device-wide
// synchronization elsewhere in the process (cudaFree,
// cudaDeviceSynchronize) blocks until the transfer ends.
//
// Thread-safety: a KvMover may be used from several threads; transfers of
// one mover are serialized (they share its staging buffers).

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvpool/client.h"
#include "kvpool/status.h"
#include "kvpool/types.h"

struct CUstream_st;  // cudaStream_t
struct CUevent_st;   // cudaEvent_t

namespace kvpool::gpu {

enum class KvLayoutKind : std::uint32_t {
  // vLLM: per layer one tensor [2, num_pages, tokens_per_block, kv_heads, head_dim], K then V.
  kVllmPaged = 0,
  // vLLM's K/V-split variant: per layer K and V tensors [num_pages, tokens_per_block, kv_heads, head_dim].
  kVllmPagedSplit = 1,
  // Hugging Face transformers' cache: per layer K and V tensors [batch, kv_heads, max_seq, head_dim].
  // Page p is tokens [(p % pages_per_row) * tokens_per_block, +tokens_per_block) of row p / pages_per_row,
  // where pages_per_row = max_seq / tokens_per_block.
  kHfContiguous = 2,
};

struct KvLayout {
  KvLayoutKind kind = KvLayoutKind::kVllmPaged;
  std::string dtype = "bf16";  // "bf16", "fp16", "fp8"
  std::uint32_t num_layers = 0;
  std::uint32_t num_kv_heads = 0;
  std::uint32_t head_dim = 0;
  std::uint32_t tokens_per_block = 16;  // the page size
  std::uint64_t num_pages = 0;          // vLLM kinds: pages per tensor
  std::uint32_t batch = 1;              // kHfContiguous
  std::uint64_t max_seq = 0;            // kHfContiguous: tokens per row (a multiple of tokens_per_block)
};

// "vllm-paged", "vllm-paged-split", "hf-contiguous": the namespace's layout name.
std::string layout_name(KvLayoutKind kind);
// kInvalidArgument for zero sizes, an unknown dtype, runs that are not a
// multiple of 16 bytes, or max_seq not a multiple of tokens_per_block.
Status validate(const KvLayout& layout);
// Bytes of one pool block in this layout.
Result<std::uint64_t> block_bytes(const KvLayout& layout);
// Pages the tensors hold (num_pages, or batch * max_seq / tokens_per_block).
std::uint64_t page_count(const KvLayout& layout);
// The namespace descriptor of this layout: the layout is part of it, so two
// layouts never share blocks.
NamespaceDescriptor namespace_for(const KvLayout& layout, const std::string& model_id, std::uint32_t tp_rank = 0,
                                  std::uint32_t tp_size = 1);

// Device pointers of the engine's tensors, one per layer. kVllmPaged: k
// holds each layer's combined tensor and v is empty. Other kinds: K and V.
struct KvTensors {
  std::vector<void*> k;
  std::vector<void*> v;
};

enum class Path : std::uint32_t {
  kAuto = 0,    // mapped when every block's agent is mapped into this process, else staged (the whole batch)
  kMapped = 1,  // mapped only: keys placed on other agents fail (save) or stop the load
  kStaged = 2,  // always through pinned host staging buffers and UCX
};

enum class Mover : std::uint32_t {
  // Gather on the GPU into a device staging chunk, then the copy engines DMA
  // whole blocks (the large-copy limit).
  kCopyEngine = 0,
  // A kernel's loads and stores move the bytes over PCIe directly between
  // pages and pool slots (no device staging).
  kKernel = 1,
  // One cudaMemcpyAsync per page run: the naive baseline, for benchmarks.
  kPerPage = 2,
};

struct GpuOptions {
  Path path = Path::kAuto;
  Mover mover = Mover::kCopyEngine;
  std::uint64_t chunk_bytes = 64ull << 20;  // pipelining and staging unit
  bool verify_loads = true;  // false: header checks only on the mapped path (a documented trade-off)
  // Payload checksums computed on the GPU (from the pages: on save beside
  // the copies, on load over the pages as they landed) instead of by
  // hash_threads CPU threads over the pool's memory. Needs page runs of a
  // multiple of 64 bytes; other layouts hash on the CPU.
  bool gpu_checksums = true;
  unsigned hash_threads = 8;
  // Staged path: hold the caller's stream until the transfer ends and
  // record event() after it (see the header comment for the cost).
  bool staged_stream_order = false;
  int device = -1;  // CUDA device of the tensors; -1: the current one
};

// Where a transfer's time went, in milliseconds from the call.
struct TransferStats {
  std::string path;           // "mapped" or "staged"
  std::uint64_t bytes = 0;    // payload bytes moved
  double control_ms = 0;      // coordinator calls before the copies (allocate / lookup)
  double enqueue_ms = 0;      // call returned (copies enqueued)
  double copy_done_ms = 0;    // last copy complete on the GPU
  double hash_ms = 0;         // CPU time hashing (summed over threads)
  double hash_done_ms = 0;    // last checksum known
  double commit_ms = 0;       // headers + commit (save) / release (load)
  double total_ms = 0;        // outcome known
};

struct TransferResult {
  // save: keys now in the pool (written + already there); load: leading
  // blocks loaded into their pages and verified.
  std::size_t done = 0;
  PutResult put;    // save
  GetResult get;    // load
  TransferStats stats;
};

class Transfer {
 public:
  virtual ~Transfer() = default;  // waits for the transfer; destroy it before its KvMover
  // See the header comment (null on the staged path unless
  // staged_stream_order). Owned by the transfer.
  virtual CUevent_st* event() const = 0;
  // Blocks until the outcome is known; the second call returns it again.
  virtual Result<TransferResult> wait() = 0;
};

// Layer by layer. A pool block is layer-major (runtime/gpu/plan.h), so
// layer l's share of every block is one contiguous slice, and a block whose
// namespace has L layers carries a checksum per slice (slot format version
// 2, pool/slot_header.h) when L divides it and it spans two granules or more.
//
// A layer-wise load copies on the mover's own stream, layer after layer;
// layer_event(l) is recorded once layer l's slices of every found block are
// in their pages and have been checksummed on the GPU, and the model's stream
// waits for it before layer l (cudaStreamWaitEvent: no host
// synchronisation), so layer l's copy overlaps the compute of layers < l.
// A CUDA event cannot refuse to fire, so a layer whose slice fails its
// checksum is still in the pages when the model runs: wait(), in the same
// step, reports done = the leading blocks whose every layer verified, and
// the engine discards what it computed from the others (it recomputes
// them): the output equals a recompute either way. Blocks whose namespace
// has one slice are checked whole, after the last layer.
//
// The mover's layer-wise streams are non-blocking (they never wait on the
// legacy default stream), one pair for loads and another for saves, so a
// step may hold a LayerTransfer and a LayerSave of one mover at once, in
// either order (vLLM's start_load_kv, then save_kv_layer during the
// forward). wait_layer and save_layer only enqueue: neither waits on the
// host for copies. A layer-wise transfer's event() is recorded after its last
// layer and checksums; a layer that fails verification makes wait() report
// kDataLoss in get.stopped.
//
// Only the mapped path loads layer by layer. On the staged path (blocks on
// agents not mapped here) the blocks come whole over UCX first: every
// layer_event() is the one event recorded after the whole transfer (as with
// GpuOptions::staged_stream_order), so nothing overlaps.
class LayerTransfer : public Transfer {
 public:
  virtual std::uint32_t layers() const = 0;
  // Owned by the transfer; l < layers(). Blocks until the load has started
  // (see load_layers).
  virtual CUevent_st* layer_event(std::uint32_t layer) const = 0;
  // Makes `stream` wait until layer `layer` is in, for callers without a
  // CUDA runtime of their own; never blocks the host (a load started on
  // the caller's thread: cudaStreamWaitEvent on layer_event; on the mover's
  // thread, even before the load has started: a wait on a counter in device
  // memory the mover raises after the layer, cuStreamWaitValue32).
  // kInvalidArgument past the layers.
  virtual Status wait_layer(std::uint32_t layer, CUstream_st* stream) const = 0;
  // Leading keys found in the pool (blocks until the lookup answered):
  // their pages are being filled; the caller computes the rest.
  virtual std::size_t found() const = 0;
};

// A layer-wise save: save_layer(l, stream) once the work queued on `stream`
// writes layer l's KV into the pages (the model's stream, right after layer
// l); the mover's stream waits for that point and copies layer l's slices
// into the pool slots and checksums them, so `stream` itself never waits.
// finish() commits the blocks once every layer was saved: a block is in the
// pool whole or not at all.
class LayerSave {
 public:
  // Aborts an unfinished save once its copies ended; destroy before the mover.
  virtual ~LayerSave() = default;
  virtual std::uint32_t layers() const = 0;
  // kInvalidArgument for l >= layers() or a layer saved twice; mapped saves
  // enqueue here, staged ones (blocks placed on agents not mapped here) move
  // every layer whole in finish(), from the point the last save_layer
  // marked on its stream. Either way a save destroyed unfinished commits
  // nothing.
  virtual Status save_layer(std::uint32_t layer, CUstream_st* stream) = 0;
  // Waits for the copies and commits: the result as Transfer::wait()'s for
  // a save. kFailedPrecondition (nothing committed) when a layer was not
  // saved. A second call returns the first outcome.
  virtual Result<TransferResult> finish() = 0;
  // A save from KvMover::begin_save_layer_rows takes each layer's addresses
  // here instead of save_layer (which is kInvalidArgument on it): rows holds
  // units / layers addresses per key (read during the call only), and the
  // copies wait for `after` (may be null; e.g. an event recorded once the
  // model wrote the layer). kInvalidArgument on a layout's save.
  virtual Status save_layer_rows(std::uint32_t layer, std::span<const std::uint64_t> rows, CUevent_st* after) {
    (void)layer, (void)rows, (void)after;
    return Status(StatusCode::kInvalidArgument, "save_layer_rows: only a save from begin_save_layer_rows takes rows");
  }
};

class KvMover {
 public:
  // The client must outlive the mover, and have registered ns (whose block
  // size must equal block_bytes(layout)). kInvalidArgument for a bad layout
  // or tensor count; kUnimplemented when kvpool was built without CUDA;
  // kFailedPrecondition when no GPU is usable.
  static Result<std::unique_ptr<KvMover>> create(Client& client, NamespaceId ns, const KvLayout& layout,
                                                 const KvTensors& tensors, const GpuOptions& options = {});
  virtual ~KvMover() = default;

  // Saves pages[i] under keys[i]. kInvalidArgument for a page id out of range.
  virtual Result<std::unique_ptr<Transfer>> save(std::span<const Key128> keys, std::span<const std::uint64_t> pages,
                                                 CUstream_st* stream) = 0;
  // Loads the longest present prefix of keys into pages[i].
  virtual Result<std::unique_ptr<Transfer>> load(std::span<const Key128> keys, std::span<const std::uint64_t> pages,
                                                 CUstream_st* stream) = 0;
  // Layer-wise forms (see LayerTransfer and LayerSave). load_layers orders
  // its copies after the work already queued on `stream` (the pages are
  // free from that point); the model's stream then waits per layer with
  // wait_layer(l). Where the load starts (KVPOOL_GPU_LAYER_START, read at
  // each call; unset: `caller`):
  //   caller  the lookup and the copies' enqueueing run in this call, which
  //           returns the lookup's errors;
  //   thread  the call returns before the lookup: the mover's own thread
  //           looks the keys up and queues the copies (loads in call order)
  //           while the caller queues its forward pass, whose launches are
  //           what a short suffix prefill waits for; a lookup or start that
  //           fails lets every wait pass and is wait()'s error. Needs the
  //           driver's stream memory operations (else as `caller`).
  virtual Result<std::unique_ptr<LayerTransfer>> load_layers(std::span<const Key128> keys,
                                                             std::span<const std::uint64_t> pages,
                                                             CUstream_st* stream) = 0;
  // Allocates the keys' slots now (as save() does); pages[i] stay the
  // source until finish() returns.
  virtual Result<std::unique_ptr<LayerSave>> begin_save_layers(std::span<const Key128> keys,
                                                               std::span<const std::uint64_t> pages) = 0;

  // Pointer rows: blocks whose bytes lie at device addresses each call
  // gives, not in tensors known in advance (what UCM's store interface
  // passes: per block one address per layer and K/V). A mover made by
  // create_rows(client, ns, units) moves only these (the calls above are
  // kInvalidArgument on it, and these on a layout's mover): block i of a
  // call is the `units` runs at rows[i * units + u], u = 0..units-1, each
  // block_bytes / units bytes (16-byte aligned), back to back in the pool
  // block. Same paths, transfers and outcomes as save() and load(), but the
  // checksums are always computed on the CPU (over the pool's bytes), and:
  // `after` (may be null) is an event the copies wait for
  // (cudaStreamWaitEvent), e.g. recorded on the compute stream once it wrote
  // the KV (UCM's dump prerequisite); `stream` null means the mover's own
  // non-blocking stream, not the legacy default one, so a caller with no
  // stream of its own is ordered only by `after` and wait(). The rows are
  // read during the call only. `layers`: a block's runs are that many equal
  // groups, layer-major (layer l is runs [l * units / layers, (l + 1) *
  // units / layers)), what the layer-wise row calls below move one at a
  // time; kInvalidArgument unless it divides units.
  static Result<std::unique_ptr<KvMover>> create_rows(Client& client, NamespaceId ns, std::uint32_t units,
                                                      const GpuOptions& options = {}, std::uint32_t layers = 1);
  virtual Result<std::unique_ptr<Transfer>> save_rows(std::span<const Key128> keys,
                                                      std::span<const std::uint64_t> rows, CUstream_st* stream,
                                                      CUevent_st* after = nullptr) = 0;
  // Loads the longest present prefix of keys into their rows.
  virtual Result<std::unique_ptr<Transfer>> load_rows(std::span<const Key128> keys,
                                                      std::span<const std::uint64_t> rows, CUstream_st* stream,
                                                      CUevent_st* after = nullptr) = 0;

  // Pointer rows layer by layer (UCM's layer-wise connector: one load and
  // one dump per layer, each given that layer's addresses only; rows holds
  // units / layers addresses per key). load_layer_rows moves layer `layer`
  // of the longest present prefix of keys: done = leading blocks whose
  // layer arrived and verified, against that layer's slice checksum (slot
  // format 2; the whole block's when its namespace gives it one slice).
  // Mapped path only: a block on an agent not mapped here stops the load
  // there with kUnimplemented in get.stopped (load_rows moves whole blocks
  // from any agent). begin_save_layer_rows allocates the keys' slots; then
  // LayerSave::save_layer_rows once per layer, and finish() commits the
  // blocks once every layer is in (whole or not at all; on the staged path
  // every layer moves in finish(), as for begin_save_layers).
  virtual Result<std::unique_ptr<Transfer>> load_layer_rows(std::span<const Key128> keys, std::uint32_t layer,
                                                            std::span<const std::uint64_t> rows, CUstream_st* stream,
                                                            CUevent_st* after = nullptr) = 0;
  virtual Result<std::unique_ptr<LayerSave>> begin_save_layer_rows(std::span<const Key128> keys) = 0;

  virtual const GpuOptions& options() const = 0;
  virtual void set_options(const GpuOptions& options) = 0;  // between transfers
};

// Whether a CUDA device is usable here (false in builds without CUDA, and
// where cudaGetDeviceCount fails or finds none); `why` says why not.
bool gpu_available(std::string* why = nullptr);

}  // namespace kvpool::gpu
