#include <cstring>

#include "kvpool/types.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvpool {

std::uint32_t dtype_bytes(const std::string& dtype) {
  if (dtype == "bf16" || dtype == "fp16" || dtype == "float16" || dtype == "bfloat16") return 2;
  if (dtype == "fp8" || dtype == "fp8_e4m3" || dtype == "fp8_e5m2" || dtype == "int8") return 1;
  if (dtype == "fp32" || dtype == "float32") return 4;
  return 0;
}

Result<std::uint64_t> block_bytes_of(const NamespaceDescriptor& d) {
  std::uint64_t bytes = d.block_bytes;
  if (bytes == 0) {
    std::uint32_t el = dtype_bytes(d.dtype);
    if (el == 0) return make_error(StatusCode::kInvalidArgument, "unknown dtype '" + d.dtype + "'");
    if (d.num_layers == 0 || d.num_kv_heads == 0 || d.head_dim == 0 || d.tokens_per_block == 0) {
      return make_error(StatusCode::kInvalidArgument, "namespace descriptor has a zero dimension");
    }
    bytes = 2ull * d.num_layers * d.num_kv_heads * d.head_dim * d.tokens_per_block * el;
  }
  constexpr std::uint64_t kMin = 64ull << 10, kMax = 256ull << 20;
  if (bytes < kMin || bytes > kMax) {
    return make_error(StatusCode::kInvalidArgument,
                      "block of " + std::to_string(bytes) + " bytes is outside 64 KiB..256 MiB");
  }
  return bytes;
}

std::string canonical_descriptor(const NamespaceDescriptor& d) {
  // Lengths before strings: no field value can forge a field boundary.
  auto str = [](const std::string& s) { return std::to_string(s.size()) + ":" + s; };
  std::string out = "kvpool-ns-v1";
  out += "|model_id=" + str(d.model_id);
  out += "|dtype=" + str(d.dtype);
  out += "|num_layers=" + std::to_string(d.num_layers);
  out += "|num_kv_heads=" + std::to_string(d.num_kv_heads);
  out += "|head_dim=" + std::to_string(d.head_dim);
  out += "|tokens_per_block=" + std::to_string(d.tokens_per_block);
  out += "|layout=" + str(d.layout);
  out += "|tp_rank=" + std::to_string(d.tp_rank);
  out += "|tp_size=" + std::to_string(d.tp_size);
  out += "|block_bytes=" + std::to_string(d.block_bytes);
  return out;
}

NamespaceId namespace_id(const NamespaceDescriptor& desc) {
  std::string c = canonical_descriptor(desc);
  return XXH3_64bits(c.data(), c.size());
}

std::vector<Key128> prefix_keys(NamespaceId ns, std::span<const std::uint32_t> tokens,
                                std::uint32_t tokens_per_block) {
  std::vector<Key128> keys;
  if (tokens_per_block == 0) return keys;
  const std::size_t blocks = tokens.size() / tokens_per_block;
  keys.reserve(blocks);
  // Each step hashes 16 bytes of chain state (the namespace id, zero-padded,
  // for block 0; the previous key after) followed by the block's tokens as
  // little-endian uint32.
  std::vector<unsigned char> buf(16 + 4ull * tokens_per_block);
  unsigned char state[16] = {};
  for (int i = 0; i < 8; ++i) state[i] = static_cast<unsigned char>(ns >> (8 * i));
  for (std::size_t b = 0; b < blocks; ++b) {
    std::memcpy(buf.data(), state, 16);
    for (std::uint32_t t = 0; t < tokens_per_block; ++t) {
      std::uint32_t v = tokens[b * tokens_per_block + t];
      unsigned char* p = buf.data() + 16 + 4 * t;
      p[0] = static_cast<unsigned char>(v);
      p[1] = static_cast<unsigned char>(v >> 8);
      p[2] = static_cast<unsigned char>(v >> 16);
      p[3] = static_cast<unsigned char>(v >> 24);
    }
    XXH128_hash_t h = XXH3_128bits(buf.data(), buf.size());
    keys.push_back(Key128{h.low64, h.high64});
    for (int i = 0; i < 8; ++i) {
      state[i] = static_cast<unsigned char>(h.low64 >> (8 * i));
      state[8 + i] = static_cast<unsigned char>(h.high64 >> (8 * i));
    }
  }
  return keys;
}

}  // namespace kvpool
