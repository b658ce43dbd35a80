#pragma once
// The CUDA side of the GPU path, below KvMover: moving blocks between the
// engine's pages and host memory the GPU can address (pinned or registered),
// in chunks on a stream. Internal: the mover, the benchmarks and the tests
// use it.

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include <cuda_runtime_api.h>

#include "kvpool/gpu.h"
#include "runtime/gpu/plan.h"

namespace kvpool::gpu {

// One foreign error space, mapped in one place (STYLE.md).
Status cuda_status(cudaError_t err, const char* what);

class Engine {
 public:
  // Copies the tensor bases to the device; allocates a device staging chunk
  // for Mover::kCopyEngine of max(chunk_bytes, one block).
  static Result<std::unique_ptr<Engine>> create(const KvLayout& layout, const KvTensors& tensors,
                                                std::uint64_t chunk_bytes, int device);
  // An engine for pointer rows (KvMover::create_rows): blocks of
  // block_bytes made of `units` runs of block_bytes / units bytes each, at
  // addresses each call gives. Its "pages" are addresses of rows of `units`
  // run addresses in mapped pinned host memory (the kernels read them from
  // there; the per-page mover on the host), so no page is out of range, and
  // checksums are the CPU's (can_hash() is false). The runs are `layers`
  // equal groups, layer-major (the layer-wise row calls move one group).
  static Result<std::unique_ptr<Engine>> create_rows(std::uint64_t block_bytes, std::uint32_t units,
                                                     std::uint32_t layers, std::uint64_t chunk_bytes, int device);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Plan& plan() const { return plan_; }
  int device() const { return device_; }
  // Blocks per chunk for `mover`.
  std::uint32_t chunk_blocks(Mover mover) const;

  // Enqueues on `stream` the move of pages[i] to (save) or from (load)
  // host_blocks[i], chunk by chunk; records one event per chunk into
  // chunk_events (created here, owned by the caller: cudaEventDestroy), the
  // c-th covering blocks [c * chunk_blocks, ...). host_blocks must be
  // device-accessible host memory (cudaHostAlloc, or registered with
  // cudaHostRegister). kInvalidArgument for a page out of range.
  Status enqueue(bool save, std::span<const std::uint64_t> pages, std::span<std::byte* const> host_blocks,
                 Mover mover, cudaStream_t stream, std::vector<cudaEvent_t>& chunk_events);

  // Whether the GPU can checksum this layout's blocks (runs of 64-byte
  // multiples), and the enqueue of those checksums: out[i * slices + s] =
  // XXH3-64 of slice s of page pages[i]'s block (the slot header's slice
  // table; slices must divide the block's runs), out device-accessible
  // (mapped pinned memory).
  bool can_hash() const { return !plan_.table && plan_.run_bytes % 64 == 0; }
  // Only slices [slice_begin, slice_end) when given (one layer's).
  Status enqueue_hash(std::span<const std::uint64_t> pages, std::uint32_t slices, std::uint64_t* out,
                      cudaStream_t stream, std::uint32_t slice_begin = 0, std::uint32_t slice_end = 0xffffffffu);

  // The runs [first_unit, end_unit) of each page's block (one layer is
  // 2 x segs runs) to (save) or from (load) device-accessible memory where
  // run u of block i lies at blocks[i] + u * run_bytes: a kernel on
  // `stream`, no staging.
  Status enqueue_units(bool save, std::span<const std::uint64_t> pages, std::span<const std::uint64_t> blocks,
                       std::uint32_t first_unit, std::uint32_t end_unit, cudaStream_t stream);

  // Device <-> device-staging gather/scatter for the staged path: pages to
  // (from) `count` consecutive blocks at device address dev.
  Status enqueue_device(bool save, std::span<const std::uint64_t> pages, std::byte* dev, cudaStream_t stream);

 private:
  Engine() = default;
  // What create and create_rows share once plan_ is set: the device, the
  // staging chunk and its event.
  Status init(std::uint64_t chunk_bytes, int device);
  Plan plan_;
  int device_ = 0;
  int sms_ = 132;
  std::uint64_t chunk_bytes_ = 0;
  std::uint64_t* bases_ = nullptr;  // device array, 2 x layers
  std::vector<std::uint64_t> host_bases_;
  std::byte* staging_ = nullptr;     // device staging chunk (kCopyEngine)
  std::uint64_t staging_bytes_ = 0;
  // Orders uses of staging_ across streams: each transfer waits for the
  // previous one's last use.
  cudaEvent_t staging_free_ = nullptr;
};

}  // namespace kvpool::gpu
