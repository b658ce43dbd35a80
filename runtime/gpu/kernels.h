#pragma once
// Launchers of the gather/scatter kernels (kernels.cu). Plain C++ types only,
// so the host code compiles without nvcc.

#include <cstdint>

#include <cuda_runtime_api.h>


namespace kvpool::gpu {

// Blocks per kernel launch: their page ids and block addresses travel as
// kernel parameters (no upload, nothing to keep alive after the launch).
inline constexpr std::uint32_t kMaxLaunchBlocks = 512;

// The address arithmetic of plan.h, as plain values.
struct MovePlan {
  std::uint64_t run_bytes;
  std::uint32_t segs;
  std::uint32_t units;
  std::uint64_t seg_stride;
  std::uint64_t pages_per_row;
  std::uint64_t row_stride;
  std::uint64_t page_stride;
  // Pointer rows (Engine::create_rows): a block's "page" is the address of
  // its row of `units` run addresses (mapped pinned host memory, which the
  // device reads directly), not arithmetic on tensor bases.
  std::uint32_t table = 0;
};

struct LaunchBlocks {
  std::uint32_t n = 0;
  std::uint64_t page[kMaxLaunchBlocks];
  std::uint64_t block[kMaxLaunchBlocks];  // device-accessible address of the block's bytes
};

// Pages per checksum launch (as kernel parameters, like LaunchBlocks).
inline constexpr std::uint32_t kMaxHashBlocks = 2048;
struct HashPages {
  std::uint32_t n = 0;
  std::uint64_t page[kMaxHashBlocks];
};

// XXH3-64 of each of the `slices` equal slices of each page's block (the
// slot header's slice table; for one slice what pool::payload_checksum
// gives for the assembled block), read through the layout, into
// out[i * slices + s] (device-accessible, e.g. mapped pinned host memory),
// for the slices s in [s_begin, s_end) only. Needs plan.run_bytes % 64 == 0
// and plan.units % slices == 0.
cudaError_t launch_hash(const MovePlan& plan, std::uint32_t slices, std::uint32_t s_begin, std::uint32_t s_end,
                        const std::uint64_t* bases, const HashPages& pages, std::uint64_t* out, cudaStream_t stream);

// gather: pages -> blocks; else scatter: blocks -> pages, the runs (units)
// [u_begin, u_end) of each block only (one layer: 2 x segs units), unit u
// of block b at blocks.block[b] + u * run_bytes. `bases` is a device array
// of the 2 x num_layers tensor addresses (unused for plan.table). `sms`
// sizes the grid.
cudaError_t launch_move(bool gather, const MovePlan& plan, const std::uint64_t* bases, const LaunchBlocks& blocks,
                        int sms, cudaStream_t stream, std::uint32_t u_begin = 0, std::uint32_t u_end = 0xffffffffu);

}  // namespace kvpool::gpu
