#include "runtime/gpu/kernels.h"
#include "runtime/gpu/xxh3_layout.h"

#include <algorithm>

namespace kvpool::gpu {
namespace {

struct KernelPlan {
  std::uint64_t run_vecs;  // 16-byte vectors per run
  std::uint32_t segs;
  std::uint32_t units;
  std::uint64_t seg_stride;
  std::uint64_t pages_per_row;
  std::uint64_t row_stride;
  std::uint64_t page_stride;
  std::uint64_t run_bytes;
  std::uint32_t table;
};

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

// One CTA moves one run (a page's bytes of one layer, K or V, one segment)
// at a time; its threads issue kUnroll independent 16-byte loads before the
// stores, so enough bytes are in flight to cover PCIe latency when either
// side is host memory.
template <bool kGather>
__global__ void __launch_bounds__(kThreads) move_kernel(KernelPlan p, std::uint32_t u_begin, std::uint32_t u_count,
                                                        const std::uint64_t* __restrict__ bases,
                                                        const __grid_constant__ LaunchBlocks t) {
  const std::uint64_t total = static_cast<std::uint64_t>(t.n) * u_count;
  for (std::uint64_t run = blockIdx.x; run < total; run += gridDim.x) {
    const std::uint32_t b = static_cast<std::uint32_t>(run / u_count);
    const std::uint32_t u = u_begin + static_cast<std::uint32_t>(run % u_count);
    const std::uint64_t page = t.page[b];
    std::uint64_t addr;
    if (p.table) {
      addr = reinterpret_cast<const std::uint64_t*>(page)[u];
    } else {
      addr = bases[u / p.segs] + (page / p.pages_per_row) * p.row_stride + (page % p.pages_per_row) * p.page_stride +
             static_cast<std::uint64_t>(u % p.segs) * p.seg_stride;
    }
    uint4* gpu = reinterpret_cast<uint4*>(addr);
    uint4* blk = reinterpret_cast<uint4*>(t.block[b] + static_cast<std::uint64_t>(u) * p.run_bytes);
    const uint4* src = kGather ? gpu : blk;
    uint4* dst = kGather ? blk : gpu;
    std::uint64_t v = threadIdx.x;
    for (; v + (kUnroll - 1) * kThreads < p.run_vecs; v += kUnroll * kThreads) {
      uint4 r[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) r[k] = src[v + k * kThreads];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) dst[v + k * kThreads] = r[k];
    }
    for (; v < p.run_vecs; v += kThreads) dst[v] = src[v];
  }
}

// Eight threads per (page, slice), one per XXH3 accumulator lane; lane 0
// merges. Slices [s_begin, s_begin + s_count) of each page; out[b * slices
// + s] is slice s of page b's block.
__global__ void __launch_bounds__(256) hash_kernel(const xxh3::Keys keys, xxh3::BlockMap m, std::uint32_t slices,
                                                   std::uint32_t s_begin, std::uint32_t s_count,
                                                   const std::uint64_t* __restrict__ bases,
                                                   const __grid_constant__ HashPages p, std::uint64_t* out) {
  const std::uint32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  const std::uint32_t item = t / 8;  // (page, slice of the range)
  const std::uint32_t b = item / s_count;
  const std::uint32_t sl = s_begin + item % s_count;
  const int i = static_cast<int>(t % 8);
  const unsigned mask = __ballot_sync(0xffffffffu, b < p.n);
  if (b >= p.n) return;
  const std::uint32_t per = m.units / slices;
  const xxh3::LaneKeys lk = xxh3::lane_keys(keys, i);
  const std::uint64_t acc = xxh3::lane(
      lk, m, bases, p.page[b], i,
      [](std::uint64_t a, std::uint64_t& lo, std::uint64_t& hi) {
        const uint4 v = *reinterpret_cast<const uint4*>(a);
        lo = v.x | (static_cast<std::uint64_t>(v.y) << 32);
        hi = v.z | (static_cast<std::uint64_t>(v.w) << 32);
      },
      sl * per, (sl + 1) * per);
  std::uint64_t all[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) all[j] = __shfl_sync(mask, acc, j, 8);
  if (i == 0) out[static_cast<std::uint64_t>(b) * slices + sl] = xxh3::merge(keys, all, static_cast<std::uint64_t>(per) * m.run_bytes);
}

}  // namespace

cudaError_t launch_hash(const MovePlan& plan, std::uint32_t slices, std::uint32_t s_begin, std::uint32_t s_end,
                        const std::uint64_t* bases, const HashPages& pages, std::uint64_t* out, cudaStream_t stream) {
  if (s_end > slices) s_end = slices;
  if (s_begin >= s_end) return cudaSuccess;
  if (pages.n == 0) return cudaSuccess;
  static const xxh3::Keys keys = xxh3::make_keys();
  xxh3::BlockMap m{plan.run_bytes,     plan.segs,       plan.units,      plan.seg_stride,
                   plan.pages_per_row, plan.row_stride, plan.page_stride};
  const unsigned threads = 256;
  const std::uint32_t count = s_end - s_begin;
  const unsigned grid = (pages.n * count * 8 + threads - 1) / threads;
  hash_kernel<<<grid, threads, 0, stream>>>(keys, m, slices, s_begin, count, bases, pages, out);
  return cudaGetLastError();
}

cudaError_t launch_move(bool gather, const MovePlan& plan, const std::uint64_t* bases, const LaunchBlocks& blocks,
                        int sms, cudaStream_t stream, std::uint32_t u_begin, std::uint32_t u_end) {
  if (u_end > plan.units) u_end = plan.units;
  if (blocks.n == 0 || u_begin >= u_end) return cudaSuccess;
  const std::uint32_t count = u_end - u_begin;
  KernelPlan p{plan.run_bytes / 16,  plan.segs,       plan.units,       plan.seg_stride,
               plan.pages_per_row, plan.row_stride, plan.page_stride, plan.run_bytes, plan.table};
  const std::uint64_t runs = static_cast<std::uint64_t>(blocks.n) * count;
  const unsigned grid = static_cast<unsigned>(std::min<std::uint64_t>(runs, static_cast<std::uint64_t>(sms) * 8));
  if (gather) {
    move_kernel<true><<<grid, kThreads, 0, stream>>>(p, u_begin, count, bases, blocks);
  } else {
    move_kernel<false><<<grid, kThreads, 0, stream>>>(p, u_begin, count, bases, blocks);
  }
  return cudaGetLastError();
}

}  // namespace kvpool::gpu
