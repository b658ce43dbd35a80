#pragma once
// Deterministic byte patterns for verifying transfers (tests, kvbench, demos): the bytes at region
// offset o under seed s are the same in every process, so one side writes
// and the other checks without shipping the data.

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kvpool {

inline std::uint64_t pattern_word(std::uint64_t seed, std::uint64_t word_index) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + word_index + 1;  // splitmix64
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Fills `len` bytes meant for region offset `offset` (both multiples of 8).
inline void fill_pattern(void* dst, std::uint64_t offset, std::size_t len, std::uint64_t seed) {
  auto* p = static_cast<unsigned char*>(dst);
  for (std::size_t i = 0; i < len; i += 8) {
    std::uint64_t w = pattern_word(seed, (offset + i) / 8);
    std::memcpy(p + i, &w, 8);
  }
}

// Counts bytes that differ from the pattern (0 means verified).
inline std::size_t pattern_mismatches(const void* src, std::uint64_t offset, std::size_t len, std::uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(src);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < len; i += 8) {
    std::uint64_t w = pattern_word(seed, (offset + i) / 8);
    if (std::memcmp(p + i, &w, 8) != 0) bad += 8;
  }
  return bad;
}

}  // namespace kvpool
