// The GPU's XXH3 of a block read through the layout (runtime/gpu/xxh3_layout.h)
// against libxxhash over the assembled block: the same code runs in the
// kernel, so a block hashed on the GPU gets the checksum the pool expects.
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "pool/slot_header.h"
#include "runtime/gpu/plan.h"
#include "runtime/gpu/xxh3_layout.h"

using namespace kvpool;
using namespace kvpool::gpu;

namespace {

// The XXH3 of each of `slices` slices of page's block, walking the layout
// (slice s of the result), and in *gathered the slot header's table for the
// assembled block (pool::block_checksum's).
std::vector<std::uint64_t> layout_hash(const KvLayout& l, std::uint64_t page, std::uint32_t slices,
                                       std::vector<std::uint64_t>* gathered) {
  auto plan = make_plan(l);
  REQUIRE(plan);
  const bool combined = l.kind == KvLayoutKind::kVllmPaged;
  const std::uint64_t tensor = combined ? 2 * plan->tensor_bytes : plan->tensor_bytes;
  std::mt19937_64 rng(page * 31 + l.num_layers);
  std::vector<std::vector<std::uint64_t>> mem((combined ? 1 : 2) * l.num_layers,
                                              std::vector<std::uint64_t>(tensor / 8 + 2));
  KvTensors t;
  for (std::size_t i = 0; i < mem.size(); ++i) {
    for (auto& x : mem[i]) x = rng();
    void* p = mem[i].data();
    if (combined || i % 2 == 0) t.k.push_back(p);
    else t.v.push_back(p);
  }
  auto bases = tensor_bases(l, *plan, t);
  REQUIRE(bases);
  std::vector<std::byte> block(plan->block_bytes);
  for (std::uint32_t u = 0; u < plan->units; ++u) {
    std::memcpy(block.data() + u * plan->run_bytes,
                reinterpret_cast<const void*>((*bases)[u / plan->segs] + plan->run_offset(page, u)), plan->run_bytes);
  }
  gathered->assign(slices, 0);
  (void)pool::block_checksum(block, slices, gathered->data());
  const auto keys = xxh3::make_keys();
  xxh3::BlockMap m{plan->run_bytes,     plan->segs,       plan->units,      plan->seg_stride,
                   plan->pages_per_row, plan->row_stride, plan->page_stride};
  const std::uint32_t per = plan->units / slices;
  std::vector<std::uint64_t> out;
  for (std::uint32_t s = 0; s < slices; ++s) {
    std::uint64_t acc[8];
    for (int i = 0; i < 8; ++i) {
      acc[i] = xxh3::lane(
          xxh3::lane_keys(keys, i), m, bases->data(), page, i,
          [](std::uint64_t a, std::uint64_t& lo, std::uint64_t& hi) {
            std::memcpy(&lo, reinterpret_cast<const void*>(a), 8);
            std::memcpy(&hi, reinterpret_cast<const void*>(a + 8), 8);
          },
          s * per, (s + 1) * per);
    }
    out.push_back(xxh3::merge(keys, acc, static_cast<std::uint64_t>(per) * plan->run_bytes));
  }
  return out;
}

}  // namespace

TEST_CASE("the layout-walking XXH3 equals libxxhash over the assembled block", "[gpu][xxh3]") {
  struct Case {
    KvLayoutKind kind;
    std::uint32_t layers, heads, dim, tpb;
    const char* dtype;
  };
  for (Case c : {Case{KvLayoutKind::kVllmPaged, 2, 8, 128, 16, "bf16"},        // 32 KiB runs
                 Case{KvLayoutKind::kVllmPagedSplit, 3, 2, 64, 16, "fp16"},    // 4 KiB runs
                 Case{KvLayoutKind::kHfContiguous, 2, 4, 128, 16, "bf16"},     // 4 KiB runs, 4 heads
                 Case{KvLayoutKind::kHfContiguous, 5, 3, 6, 16, "fp16"},       // 192-byte runs (not 1 KiB)
                 Case{KvLayoutKind::kVllmPaged, 1, 1, 80, 16, "fp8"}}) {       // 1280-byte runs
    KvLayout l;
    l.kind = c.kind;
    l.num_layers = c.layers;
    l.num_kv_heads = c.heads;
    l.head_dim = c.dim;
    l.tokens_per_block = c.tpb;
    l.dtype = c.dtype;
    l.num_pages = 5;
    l.batch = 2;
    l.max_seq = 3 * c.tpb;
    for (std::uint64_t page : {0, 1, 4}) {
      // The whole block, and (format version 2) each layer slice: the
      // kernel hashes 2 x segs runs per layer.
      for (std::uint32_t slices : {1u, c.layers}) {
        std::vector<std::uint64_t> want;
        auto got = layout_hash(l, page, slices, &want);
        INFO(layout_name(c.kind) << " layers " << c.layers << " page " << page << " slices " << slices);
        CHECK(got == want);
      }
    }
  }
}
