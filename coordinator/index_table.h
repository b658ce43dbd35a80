#pragma once
// IndexTable: an open-addressing hash table from a 64-bit hash to a u32 value
// (a BlockSlab index), 8 bytes a slot.
//
// Why not std::unordered_map: its node (key, value, next pointer, cached
// hash) plus malloc overhead and the bucket array cost 50-70 bytes an entry,
// half of the coordinator's whole per-block budget (DESIGN.md: <= 128 bytes
// a block at 10^8 blocks). Here a slot holds the upper 32 bits of the hash
// (the "tag") and the value; the caller's equality callback is consulted only
// on a tag match, so a probe rarely touches the slab.
//
// Linear probing; the home slot is derived from the tag alone by
// multiply-shift range reduction, so growth and backward-shift deletion never
// need the keys (no slab access, no tombstones). The table grows by doubling
// at a load of 0.8 (10-20 bytes a live entry with the slack).
//
// Thread-compatible: no lock.

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kvpool/types.h"

namespace kvpool::coordinator {

class IndexTable {
 public:
  static constexpr std::uint32_t kNone = 0xFFFFFFFFu;

  IndexTable();
  IndexTable(IndexTable&&) noexcept = default;
  IndexTable& operator=(IndexTable&&) noexcept = default;
  IndexTable(const IndexTable&) = delete;
  IndexTable& operator=(const IndexTable&) = delete;

  // The value stored under hash for which eq(value) holds, or kNone.
  template <typename Eq>
  std::uint32_t find(std::uint64_t hash, Eq&& eq) const {
    const std::uint32_t tag = tag_of(hash);
    for (std::size_t i = home(tag);; i = next(i)) {
      const Slot& s = slots_[i];
      if (s.value == kNone) return kNone;
      if (s.tag == tag && eq(s.value)) return s.value;
    }
  }

  // Adds value under hash. The caller makes sure no equal entry is present.
  // value must not be kNone.
  void insert(std::uint64_t hash, std::uint32_t value);

  // Removes the entry (hash, value); false when there is none.
  bool erase(std::uint64_t hash, std::uint32_t value);

  std::size_t size() const { return size_; }
  std::size_t capacity() const { return capacity_; }
  std::size_t memory_bytes() const { return capacity_ * sizeof(Slot); }

 private:
  struct Slot {
    std::uint32_t tag;
    std::uint32_t value;  // kNone: empty
  };

  static std::uint32_t tag_of(std::uint64_t hash) { return static_cast<std::uint32_t>(hash >> 32); }
  std::size_t home(std::uint32_t tag) const {
    return static_cast<std::size_t>((static_cast<std::uint64_t>(tag) * capacity_) >> 32);
  }
  std::size_t next(std::size_t i) const { return i + 1 == capacity_ ? 0 : i + 1; }
  void place(std::uint32_t tag, std::uint32_t value);
  void grow();

  std::unique_ptr<Slot[]> slots_;
  std::size_t capacity_ = 0;  // a power of two, at most 2^32
  std::size_t size_ = 0;
};

// Mixes 64 bits (splitmix64's finalizer): keys may be chosen by callers, and
// the table's tag and home slot come from the high bits.
inline std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// The hash of a key of a namespace (by its index in the core): the key
// index's, and the waiters' and evictions' maps'.
inline std::uint64_t key_hash(std::uint32_t ns, const Key128& key) {
  return mix64(key.lo ^
               mix64(key.hi ^ (static_cast<std::uint64_t>(ns) * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull)));
}

}  // namespace kvpool::coordinator
