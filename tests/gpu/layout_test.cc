// The GPU path's layout arithmetic: needs no GPU, runs everywhere.
#include <catch2/catch.hpp>

#include "kvpool/gpu.h"
#include "runtime/gpu/plan.h"

using namespace kvpool;
using namespace kvpool::gpu;

namespace {
KvLayout llama8b(KvLayoutKind kind) {
  KvLayout l;
  l.kind = kind;
  l.dtype = "bf16";
  l.num_layers = 32;
  l.num_kv_heads = 8;
  l.head_dim = 128;
  l.tokens_per_block = 16;
  l.num_pages = 100;
  l.max_seq = 4096;
  return l;
}
}  // namespace

TEST_CASE("a Llama-3-8B block is 2 MiB in every layout", "[gpu][layout]") {
  for (auto kind : {KvLayoutKind::kVllmPaged, KvLayoutKind::kVllmPagedSplit, KvLayoutKind::kHfContiguous}) {
    auto b = block_bytes(llama8b(kind));
    REQUIRE(b);
    CHECK(*b == 2u << 20);
  }
  auto l70 = llama8b(KvLayoutKind::kVllmPaged);
  l70.num_layers = 80;
  CHECK(*block_bytes(l70) == 5u << 20);
}

TEST_CASE("the layout is part of the namespace", "[gpu][layout]") {
  auto a = namespace_for(llama8b(KvLayoutKind::kVllmPaged), "m");
  auto b = namespace_for(llama8b(KvLayoutKind::kHfContiguous), "m");
  CHECK(a.layout == "vllm-paged");
  CHECK(b.layout == "hf-contiguous");
  CHECK(a.block_bytes == 2u << 20);
  CHECK(namespace_id(a) != namespace_id(b));
}

TEST_CASE("runs address the engine's tensors", "[gpu][layout]") {
  SECTION("vllm paged: one run per layer and K/V, page-strided") {
    auto p = make_plan(llama8b(KvLayoutKind::kVllmPaged));
    REQUIRE(p);
    CHECK(p->units == 64);
    CHECK(p->run_bytes == 16 * 8 * 128 * 2);
    CHECK(p->run_offset(7, 3) == 7 * p->run_bytes);
    CHECK(p->tensor_bytes == 100 * p->run_bytes);  // V starts after the K half
  }
  SECTION("hf contiguous: one run per head, rows of max_seq tokens") {
    auto l = llama8b(KvLayoutKind::kHfContiguous);
    l.batch = 2;
    auto p = make_plan(l);
    REQUIRE(p);
    CHECK(p->units == 2 * 32 * 8);
    CHECK(p->run_bytes == 16 * 128 * 2);
    CHECK(p->pages == 2 * 4096 / 16);
    const std::uint64_t seq_bytes = 4096 * 128 * 2;
    // page 256 + 5 is row 1, tokens 80..95; unit 3 is head 3.
    CHECK(p->run_offset(256 + 5, 3) == 1 * 8 * seq_bytes + 3 * seq_bytes + 5 * p->run_bytes);
  }
  SECTION("vllm paged tensors: K and V halves of one tensor") {
    auto l = llama8b(KvLayoutKind::kVllmPaged);
    auto p = make_plan(l);
    KvTensors t;
    for (std::uint32_t i = 0; i < l.num_layers; ++i) t.k.push_back(reinterpret_cast<void*>(0x100000ull * (i + 1)));
    auto bases = tensor_bases(l, *p, t);
    REQUIRE(bases);
    REQUIRE(bases->size() == 64);
    CHECK((*bases)[1] == (*bases)[0] + p->tensor_bytes);
  }
}

TEST_CASE("layouts kvpool cannot move are rejected", "[gpu][layout]") {
  auto l = llama8b(KvLayoutKind::kVllmPaged);
  l.dtype = "int3";
  CHECK(validate(l).code() == StatusCode::kInvalidArgument);
  l = llama8b(KvLayoutKind::kHfContiguous);
  l.max_seq = 4008;  // not a multiple of 16 tokens
  CHECK(validate(l).code() == StatusCode::kInvalidArgument);
  l = llama8b(KvLayoutKind::kHfContiguous);
  l.dtype = "fp8";
  l.head_dim = 1;
  l.tokens_per_block = 8;  // 8-byte runs
  CHECK(validate(l).code() == StatusCode::kInvalidArgument);
  l = llama8b(KvLayoutKind::kVllmPagedSplit);
  KvTensors t;
  t.k.assign(32, reinterpret_cast<void*>(0x1000));
  auto p = make_plan(l);
  CHECK(!tensor_bases(l, *p, t));  // no V tensors
}
