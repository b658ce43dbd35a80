#pragma once
// How a pool block maps onto an engine's KV tensors: the address arithmetic
// the gather/scatter kernels and the per-page baseline share.
//
// A block is 2 x num_layers x segs runs of run_bytes each, in that order
// (layer, then K/V, then segment). Run u of page p lies at
//   tensor[u / segs] + (p / pages_per_row) * row_stride + (p % pages_per_row) * page_stride
//                    + (u % segs) * seg_stride
// where tensor[2l] is layer l's K and tensor[2l+1] its V.

#include <cstdint>
#include <vector>

#include "kvpool/gpu.h"

namespace kvpool::gpu {

struct Plan {
  std::uint64_t run_bytes = 0;
  std::uint32_t segs = 1;
  std::uint64_t seg_stride = 0;
  std::uint64_t pages_per_row = 1;
  std::uint64_t row_stride = 0;
  std::uint64_t page_stride = 0;
  std::uint32_t units = 0;  // runs per block: 2 * num_layers * segs
  // Runs of one layer's slice (2 * segs; a rows plan: units / its layers),
  // what the layer-wise transfers move at a time.
  std::uint32_t layer_units = 0;
  std::uint64_t block_bytes = 0;
  std::uint64_t pages = 0;
  std::uint64_t tensor_bytes = 0;  // bytes each of K/V tensor spans (vLLM combined: the half)
  // Pointer rows (Engine::create_rows): no tensors; a "page" is the address
  // of a row of `units` run addresses, which replaces the arithmetic below.
  bool table = false;

  // Not for table plans.
  std::uint64_t run_offset(std::uint64_t page, std::uint32_t unit) const {
    return (page / pages_per_row) * row_stride + (page % pages_per_row) * page_stride + (unit % segs) * seg_stride;
  }
};

Result<Plan> make_plan(const KvLayout& layout);

// kInvalidArgument unless a namespace of ns_block_bytes holds this layout's
// blocks (KvMover::create's check, in the CUDA build and the stub alike).
Status check_block_bytes(std::uint64_t ns_block_bytes, const KvLayout& layout);

// The 2 x num_layers tensor base addresses (K0, V0, K1, V1, ...).
Result<std::vector<std::uint64_t>> tensor_bases(const KvLayout& layout, const Plan& plan, const KvTensors& tensors);

}  // namespace kvpool::gpu
