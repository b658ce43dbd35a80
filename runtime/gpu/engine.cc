#include "runtime/gpu/engine.h"

#include <algorithm>
#include <memory>

#include "runtime/gpu/kernels.h"

namespace kvpool::gpu {

Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status();
  return Status(StatusCode::kInternal, std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                                           cudaGetErrorString(err) + ")");
}

bool gpu_available(std::string* why) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    if (why != nullptr) {
      *why = err != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err) : "no CUDA device";
    }
    return false;
  }
  return true;
}

namespace {
MovePlan move_plan(const Plan& p) {
  return MovePlan{p.run_bytes,  p.segs,       p.units,       p.seg_stride,
                  p.pages_per_row, p.row_stride, p.page_stride, p.table ? 1u : 0u};
}
}  // namespace

#define KVPOOL_CUDA(call, what)                                 \
  do {                                                          \
    if (Status st_ = cuda_status((call), what); !st_.ok()) return st_; \
  } while (0)
// The same in a function returning Result<T>.
#define KVPOOL_CUDA_R(call, what)                                                    \
  do {                                                                               \
    if (Status st_ = cuda_status((call), what); !st_.ok()) return tl::unexpected(st_); \
  } while (0)

Result<std::unique_ptr<Engine>> Engine::create(const KvLayout& layout, const KvTensors& tensors,
                                               std::uint64_t chunk_bytes, int device) {
  auto plan = make_plan(layout);
  if (!plan) return tl::unexpected(plan.error());
  auto bases = tensor_bases(layout, *plan, tensors);
  if (!bases) return tl::unexpected(bases.error());
  std::unique_ptr<Engine> e(new Engine());
  e->plan_ = *plan;
  e->host_bases_ = *bases;
  if (Status s = e->init(chunk_bytes, device); !s.ok()) return tl::unexpected(s);
  KVPOOL_CUDA_R(cudaMalloc(reinterpret_cast<void**>(&e->bases_), bases->size() * 8), "cudaMalloc");
  KVPOOL_CUDA_R(cudaMemcpy(e->bases_, bases->data(), bases->size() * 8, cudaMemcpyHostToDevice), "cudaMemcpy");
  return e;
}

Result<std::unique_ptr<Engine>> Engine::create_rows(std::uint64_t block_bytes, std::uint32_t units,
                                                    std::uint32_t layers, std::uint64_t chunk_bytes, int device) {
  if (units == 0 || block_bytes == 0 || block_bytes % units != 0 || (block_bytes / units) % 16 != 0) {
    return make_error(StatusCode::kInvalidArgument,
                      "gpu rows: " + std::to_string(units) + " runs per block of " + std::to_string(block_bytes) +
                          " bytes: the runs must be equal and a multiple of 16 bytes");
  }
  if (layers == 0 || units % layers != 0) {
    return make_error(StatusCode::kInvalidArgument, "gpu rows: " + std::to_string(units) + " runs per block are not " +
                                                        std::to_string(layers) + " equal layers");
  }
  std::unique_ptr<Engine> e(new Engine());
  Plan& p = e->plan_;
  p.table = true;
  p.run_bytes = block_bytes / units;
  p.units = units;
  p.layer_units = units / layers;
  p.block_bytes = block_bytes;
  p.pages = UINT64_MAX;  // row addresses: no range to check
  p.page_stride = p.run_bytes;
  if (Status s = e->init(chunk_bytes, device); !s.ok()) return tl::unexpected(s);
  return e;
}

Status Engine::init(std::uint64_t chunk_bytes, int device) {
  if (device < 0) KVPOOL_CUDA(cudaGetDevice(&device), "cudaGetDevice");
  device_ = device;
  KVPOOL_CUDA(cudaSetDevice(device), "cudaSetDevice");
  KVPOOL_CUDA(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  chunk_bytes_ = std::max<std::uint64_t>(chunk_bytes, plan_.block_bytes);
  staging_bytes_ = chunk_bytes_ / plan_.block_bytes * plan_.block_bytes;
  KVPOOL_CUDA(cudaMalloc(reinterpret_cast<void**>(&staging_), staging_bytes_), "cudaMalloc staging");
  KVPOOL_CUDA(cudaEventCreateWithFlags(&staging_free_, cudaEventDisableTiming), "cudaEventCreate");
  return Status();
}

Engine::~Engine() {
  if (staging_free_ != nullptr) {
    cudaEventSynchronize(staging_free_);
    cudaEventDestroy(staging_free_);
  }
  if (staging_ != nullptr) cudaFree(staging_);
  if (bases_ != nullptr) cudaFree(bases_);
}

std::uint32_t Engine::chunk_blocks(Mover mover) const {
  const std::uint64_t by_bytes = std::max<std::uint64_t>(1, chunk_bytes_ / plan_.block_bytes);
  (void)mover;
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(by_bytes, kMaxLaunchBlocks));
}

Status Engine::enqueue(bool save, std::span<const std::uint64_t> pages, std::span<std::byte* const> host_blocks,
                       Mover mover, cudaStream_t stream, std::vector<cudaEvent_t>& chunk_events) {
  if (pages.size() != host_blocks.size()) return Status(StatusCode::kInvalidArgument, "pages and blocks differ in number");
  for (auto p : pages) {
    if (p >= plan_.pages) {
      return Status(StatusCode::kInvalidArgument,
                    "page " + std::to_string(p) + " out of range (" + std::to_string(plan_.pages) + " pages)");
    }
  }
  KVPOOL_CUDA(cudaSetDevice(device_), "cudaSetDevice");
  const std::uint64_t bb = plan_.block_bytes;
  const std::uint32_t per_chunk = chunk_blocks(mover);
  if (mover == Mover::kCopyEngine) KVPOOL_CUDA(cudaStreamWaitEvent(stream, staging_free_, 0), "cudaStreamWaitEvent");
  for (std::size_t first = 0; first < pages.size(); first += per_chunk) {
    const std::size_t n = std::min<std::size_t>(per_chunk, pages.size() - first);
    LaunchBlocks lb;
    lb.n = static_cast<std::uint32_t>(n);
    for (std::size_t j = 0; j < n; ++j) lb.page[j] = pages[first + j];
    switch (mover) {
      case Mover::kKernel:
        for (std::size_t j = 0; j < n; ++j) lb.block[j] = reinterpret_cast<std::uint64_t>(host_blocks[first + j]);
        KVPOOL_CUDA(launch_move(save, move_plan(plan_), bases_, lb, sms_, stream), "gather/scatter kernel");
        break;
      case Mover::kCopyEngine: {
        for (std::size_t j = 0; j < n; ++j) lb.block[j] = reinterpret_cast<std::uint64_t>(staging_ + j * bb);
        if (save) KVPOOL_CUDA(launch_move(true, move_plan(plan_), bases_, lb, sms_, stream), "gather kernel");
        // One copy per run of blocks adjacent in the pool (a fresh pool
        // places a batch contiguously): the fewer, larger copies, the nearer
        // the link's limit.
        for (std::size_t j = 0; j < n;) {
          std::size_t k = j + 1;
          while (k < n && host_blocks[first + k] == host_blocks[first + k - 1] + bb) ++k;
          std::byte* host = host_blocks[first + j];
          std::byte* dev = staging_ + j * bb;
          if (save) {
            KVPOOL_CUDA(cudaMemcpyAsync(host, dev, (k - j) * bb, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
          } else {
            KVPOOL_CUDA(cudaMemcpyAsync(dev, host, (k - j) * bb, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
          }
          j = k;
        }
        if (!save) KVPOOL_CUDA(launch_move(false, move_plan(plan_), bases_, lb, sms_, stream), "scatter kernel");
        break;
      }
      case Mover::kPerPage:
        for (std::size_t j = 0; j < n; ++j) {
          for (std::uint32_t u = 0; u < plan_.units; ++u) {
            auto* gpu = reinterpret_cast<std::byte*>(
                plan_.table ? reinterpret_cast<const std::uint64_t*>(lb.page[j])[u]
                            : host_bases_[u / plan_.segs] + plan_.run_offset(lb.page[j], u));
            std::byte* host = host_blocks[first + j] + static_cast<std::uint64_t>(u) * plan_.run_bytes;
            KVPOOL_CUDA(cudaMemcpyAsync(save ? static_cast<void*>(host) : gpu, save ? static_cast<void*>(gpu) : host,
                                        plan_.run_bytes, save ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice,
                                        stream),
                        "cudaMemcpyAsync");
          }
        }
        break;
    }
    cudaEvent_t ev = nullptr;
    KVPOOL_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
    chunk_events.push_back(ev);
    KVPOOL_CUDA(cudaEventRecord(ev, stream), "cudaEventRecord");
  }
  if (mover == Mover::kCopyEngine) KVPOOL_CUDA(cudaEventRecord(staging_free_, stream), "cudaEventRecord");
  return Status();
}

Status Engine::enqueue_units(bool save, std::span<const std::uint64_t> pages, std::span<const std::uint64_t> blocks,
                             std::uint32_t first_unit, std::uint32_t end_unit, cudaStream_t stream) {
  if (pages.size() != blocks.size()) return Status(StatusCode::kInvalidArgument, "pages and blocks differ in number");
  if (first_unit >= end_unit || end_unit > plan_.units) return Status(StatusCode::kInvalidArgument, "bad unit range");
  KVPOOL_CUDA(cudaSetDevice(device_), "cudaSetDevice");
  for (std::size_t first = 0; first < pages.size(); first += kMaxLaunchBlocks) {
    const std::size_t n = std::min<std::size_t>(kMaxLaunchBlocks, pages.size() - first);
    auto lb = std::make_unique<LaunchBlocks>();
    lb->n = static_cast<std::uint32_t>(n);
    for (std::size_t j = 0; j < n; ++j) {
      if (pages[first + j] >= plan_.pages) return Status(StatusCode::kInvalidArgument, "page out of range");
      lb->page[j] = pages[first + j];
      lb->block[j] = blocks[first + j];
    }
    KVPOOL_CUDA(launch_move(save, move_plan(plan_), bases_, *lb, sms_, stream, first_unit, end_unit),
                "layer gather/scatter kernel");
  }
  return Status();
}

Status Engine::enqueue_hash(std::span<const std::uint64_t> pages, std::uint32_t slices, std::uint64_t* out,
                            cudaStream_t stream, std::uint32_t slice_begin, std::uint32_t slice_end) {
  if (!can_hash()) return Status(StatusCode::kUnimplemented, "gpu checksums need runs of a multiple of 64 bytes");
  if (slices == 0 || plan_.units % slices != 0) {
    return Status(StatusCode::kInvalidArgument, std::to_string(slices) + " slices do not divide the block's " +
                                                    std::to_string(plan_.units) + " runs");
  }
  KVPOOL_CUDA(cudaSetDevice(device_), "cudaSetDevice");
  for (std::size_t first = 0; first < pages.size(); first += kMaxHashBlocks) {
    const std::size_t n = std::min<std::size_t>(kMaxHashBlocks, pages.size() - first);
    auto hp = std::make_unique<HashPages>();
    hp->n = static_cast<std::uint32_t>(n);
    for (std::size_t j = 0; j < n; ++j) {
      if (pages[first + j] >= plan_.pages) return Status(StatusCode::kInvalidArgument, "page out of range");
      hp->page[j] = pages[first + j];
    }
    KVPOOL_CUDA(launch_hash(move_plan(plan_), slices, slice_begin, slice_end, bases_, *hp, out + first * slices, stream),
                "checksum kernel");
  }
  return Status();
}

Status Engine::enqueue_device(bool save, std::span<const std::uint64_t> pages, std::byte* dev, cudaStream_t stream) {
  for (auto p : pages) {
    if (p >= plan_.pages) return Status(StatusCode::kInvalidArgument, "page " + std::to_string(p) + " out of range");
  }
  KVPOOL_CUDA(cudaSetDevice(device_), "cudaSetDevice");
  for (std::size_t first = 0; first < pages.size(); first += kMaxLaunchBlocks) {
    const std::size_t n = std::min<std::size_t>(kMaxLaunchBlocks, pages.size() - first);
    LaunchBlocks lb;
    lb.n = static_cast<std::uint32_t>(n);
    for (std::size_t j = 0; j < n; ++j) {
      lb.page[j] = pages[first + j];
      lb.block[j] = reinterpret_cast<std::uint64_t>(dev + (first + j) * plan_.block_bytes);
    }
    KVPOOL_CUDA(launch_move(save, move_plan(plan_), bases_, lb, sms_, stream), "gather/scatter kernel");
  }
  return Status();
}

}  // namespace kvpool::gpu
