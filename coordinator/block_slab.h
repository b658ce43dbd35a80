#pragma once
// BlockSlab: every block the coordinator tracks, as compact 64-byte entries
// addressed by a u32 index.
//
// Per-block memory is the coordinator's scaling limit (DESIGN.md: 10^8
// blocks, <= 128 bytes each, all state included). An entry holds the key, the
// namespace and agent as small indices, the slot as granules, the payload
// length, the generation, the read-lease pin count, an LRU stamp and the two
// u32 links of the list it sits on (BlockLists). The two IndexTables (by key,
// by slot start) add 10-20 bytes each; the slot allocator keeps nothing per
// allocated slot.
//
// Entries live in chunks of 2^16 (4 MiB) that are never moved, so growth
// never copies the slab and an index stays valid until free(). Free entries
// form a list through `next`.
//
// Thread-compatible: no lock.

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kvpool/types.h"
#include "pool/slot_header.h"

namespace kvpool::coordinator {

inline constexpr std::uint32_t kNil = 0xFFFFFFFFu;

enum class BlockState : std::uint8_t {
  kFree,           // on the slab's free list
  kWriting,        // under a write lease; in the key index (so a second writer sees "pending")
  kCommitted,      // visible to lookups
  kRemovedLeased,  // removed or replaced while read leases still pin it; not in the key index
};

struct BlockEntry {
  Key128 key;
  std::uint64_t generation = 0;
  std::uint64_t stamp = 0;  // LRU order: larger is more recently used
  std::uint32_t prev = kNil;
  std::uint32_t next = kNil;
  std::uint32_t agent = 0;    // agent index (AgentId value)
  std::uint32_t granule = 0;  // slot start, in granules from the payload base
  std::uint32_t length = 0;   // payload bytes (<= 256 MiB), rounded up to granules for the slot
  std::uint32_t pins = 0;     // read leases holding it
  std::uint32_t ns = 0;       // namespace index
  BlockState state = BlockState::kFree;
  std::uint8_t list = 0;  // which BlockLists list holds it (BlockLists::kNone/kLru/kBusy)
};
static_assert(sizeof(BlockEntry) == 64, "keep the per-block entry at one cache line");

// Granules a slot of `length` payload bytes covers.
inline std::uint32_t slot_granules(std::uint64_t length) {
  return static_cast<std::uint32_t>((length + pool::kGranule - 1) / pool::kGranule);
}

class BlockSlab {
 public:
  static constexpr std::uint32_t kChunkBits = 16;
  static constexpr std::uint32_t kChunkSize = 1u << kChunkBits;

  BlockSlab() = default;
  BlockSlab(BlockSlab&&) noexcept = default;
  BlockSlab& operator=(BlockSlab&&) noexcept = default;
  BlockSlab(const BlockSlab&) = delete;
  BlockSlab& operator=(const BlockSlab&) = delete;

  BlockEntry& operator[](std::uint32_t i) {
    assert(i < size_);
    return chunks_[i >> kChunkBits][i & (kChunkSize - 1)];
  }
  const BlockEntry& operator[](std::uint32_t i) const {
    assert(i < size_);
    return chunks_[i >> kChunkBits][i & (kChunkSize - 1)];
  }

  // A fresh entry (state kFree, links kNil) for the caller to fill in; kNil
  // when 2^32 - 1 entries are in use.
  std::uint32_t allocate();
  // Returns the entry to the free list.
  void free(std::uint32_t i);

  std::size_t in_use() const { return in_use_; }
  // Every index ever handed out is below this (for full walks).
  std::uint32_t high_water() const { return size_; }
  std::size_t memory_bytes() const { return chunks_.size() * sizeof(BlockEntry) * kChunkSize; }

 private:
  std::vector<std::unique_ptr<BlockEntry[]>> chunks_;
  std::uint32_t size_ = 0;  // entries ever handed out (the slab's high water mark)
  std::uint32_t free_head_ = kNil;
  std::size_t in_use_ = 0;
};

}  // namespace kvpool::coordinator
