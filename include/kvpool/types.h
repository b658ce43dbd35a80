#pragma once
// The nouns every kvpool component shares: block keys and namespaces.
//
// A KV block is addressed by a 128-bit key inside a namespace. The namespace
// names the model and KV layout, so two models never share blocks; its
// 64-bit id is XXH3-64 of the canonical descriptor text, the same on every
// machine and across restarts (DESIGN.md, "Keys").

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvpool/status.h"

namespace kvpool {

struct Key128 {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  friend bool operator==(const Key128&, const Key128&) = default;
  friend auto operator<=>(const Key128&, const Key128&) = default;
};

// Spreads the key's bits for hash tables (keys are already hashes, but a
// caller may pass its own).
struct Key128Hash {
  std::size_t operator()(const Key128& k) const noexcept {
    return static_cast<std::size_t>(k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull));
  }
};

using NamespaceId = std::uint64_t;

struct NamespaceDescriptor {
  std::string model_id;          // e.g. "meta-llama/Meta-Llama-3-8B"
  std::string dtype;             // "bf16", "fp16", "fp8"
  std::uint32_t num_layers = 0;
  std::uint32_t num_kv_heads = 0;
  std::uint32_t head_dim = 0;
  std::uint32_t tokens_per_block = 0;
  std::string layout;            // engine layout name, e.g. "vllm-paged", "hf-contiguous"
  std::uint32_t tp_rank = 0;
  std::uint32_t tp_size = 1;
  // Bytes of one block. 0: derived as 2 (K and V) x layers x heads x
  // head_dim x tokens_per_block x dtype size.
  std::uint64_t block_bytes = 0;
};

// Bytes per element of a dtype name; 0 for an unknown one.
std::uint32_t dtype_bytes(const std::string& dtype);

// The block size the descriptor implies (its block_bytes when set).
// kInvalidArgument for an unknown dtype, a zero field, or a size outside
// 64 KiB..256 MiB (DESIGN.md's block range).
Result<std::uint64_t> block_bytes_of(const NamespaceDescriptor& desc);

// "kvpool-ns-v1|model_id=...|dtype=...|..." with every field in a fixed
// order; the id hashes this text.
std::string canonical_descriptor(const NamespaceDescriptor& desc);
NamespaceId namespace_id(const NamespaceDescriptor& desc);

// Chained prefix keys of a token sequence (DESIGN.md): key(0) = H(ns id,
// tokens of block 0), key(i) = H(key(i-1), tokens of block i), tokens as
// little-endian uint32, H = XXH3-128. Only full blocks are keyed: the result
// has tokens.size() / tokens_per_block keys. Thread-safe, allocation only for
// the result.
std::vector<Key128> prefix_keys(NamespaceId ns, std::span<const std::uint32_t> tokens,
                                std::uint32_t tokens_per_block);

}  // namespace kvpool
