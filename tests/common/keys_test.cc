// Test vectors for namespace ids and chained prefix keys. Other languages
// (the Python module, adapters) must reproduce these exact values.

#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "kvpool/types.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

using namespace kvpool;

namespace {
NamespaceDescriptor llama8b() {
  return NamespaceDescriptor{"meta-llama/Meta-Llama-3-8B", "bf16", 32, 8, 128, 16, "vllm-paged", 0, 1, 0};
}
}  // namespace

TEST_CASE("a namespace id is the XXH3-64 of the canonical descriptor", "[keys]") {
  auto d = llama8b();
  CHECK(canonical_descriptor(d) ==
        "kvpool-ns-v1|model_id=26:meta-llama/Meta-Llama-3-8B|dtype=4:bf16|num_layers=32|num_kv_heads=8"
        "|head_dim=128|tokens_per_block=16|layout=10:vllm-paged|tp_rank=0|tp_size=1|block_bytes=0");
  CHECK(namespace_id(d) == 0x5f01ad67c1242feeull);
  auto other = d;
  other.tp_rank = 1;
  CHECK(namespace_id(other) != namespace_id(d));
}

TEST_CASE("16 tokens of Llama-3-8B in bf16 make a 2 MiB block", "[keys]") {
  auto bytes = block_bytes_of(llama8b());
  REQUIRE(bytes);
  CHECK(*bytes == 2u << 20);
  auto bad = llama8b();
  bad.dtype = "fp7";
  CHECK(block_bytes_of(bad).error().code() == StatusCode::kInvalidArgument);
  bad = llama8b();
  bad.num_layers = 0;
  CHECK_FALSE(block_bytes_of(bad));
  bad = llama8b();
  bad.block_bytes = 1024;  // below 64 KiB
  CHECK_FALSE(block_bytes_of(bad));
}

TEST_CASE("prefix keys match the published test vectors", "[keys]") {
  std::vector<std::uint32_t> tokens(40);
  for (std::uint32_t i = 0; i < 40; ++i) tokens[i] = i * 1000 + 7;
  auto keys = prefix_keys(0x5f01ad67c1242feeull, tokens, 16);
  REQUIRE(keys.size() == 2);  // 40 tokens: two full blocks, the last 8 tokens are not keyed
  CHECK(keys[0] == Key128{0xb230d67248536de7ull, 0xc53e13d5e8b5ff5aull});
  CHECK(keys[1] == Key128{0x840661979fad7c56ull, 0x66778081e9b895ffull});

  auto small = prefix_keys(0x0123456789abcdefull, std::vector<std::uint32_t>{1, 2, 3, 4}, 2);
  REQUIRE(small.size() == 2);
  CHECK(small[0] == Key128{0x2192ed86ef61cd9dull, 0x3e10bb7f49220d40ull});
  CHECK(small[1] == Key128{0x63bbc33f62def66aull, 0x1d7a01f3b3bdc3e5ull});
}

TEST_CASE("key 0 hashes the namespace id and the block's little-endian tokens", "[keys]") {
  // The construction spelled out, independent of prefix_keys' loop.
  unsigned char buf[16 + 8] = {};
  const std::uint64_t ns = 0x0123456789abcdefull;
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<unsigned char>(ns >> (8 * i));
  const std::uint32_t toks[2] = {1, 2};
  for (int t = 0; t < 2; ++t) {
    for (int b = 0; b < 4; ++b) buf[16 + 4 * t + b] = static_cast<unsigned char>(toks[t] >> (8 * b));
  }
  XXH128_hash_t h = XXH3_128bits(buf, sizeof(buf));
  auto keys = prefix_keys(ns, std::vector<std::uint32_t>{1, 2, 3, 4}, 2);
  CHECK(keys[0] == Key128{h.low64, h.high64});
}

TEST_CASE("equal prefixes give equal keys and a changed token changes every later key", "[keys]") {
  std::vector<std::uint32_t> a(64), b(64);
  for (std::uint32_t i = 0; i < 64; ++i) a[i] = b[i] = i;
  b[20] = 999;  // inside block 1 (tokens 16..31)
  auto ka = prefix_keys(7, a, 16), kb = prefix_keys(7, b, 16);
  REQUIRE(ka.size() == 4);
  CHECK(ka[0] == kb[0]);
  for (int i = 1; i < 4; ++i) CHECK_FALSE(ka[i] == kb[i]);
  CHECK(prefix_keys(8, a, 16)[0] != ka[0]);  // another namespace, other keys
}
