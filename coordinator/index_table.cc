#include "coordinator/index_table.h"

#include <cassert>
#include <utility>

namespace kvpool::coordinator {
namespace {

constexpr std::size_t kInitialCapacity = 1024;

}  // namespace

IndexTable::IndexTable() : slots_(new Slot[kInitialCapacity]), capacity_(kInitialCapacity) {
  for (std::size_t i = 0; i < capacity_; ++i) slots_[i] = Slot{0, kNone};
}

void IndexTable::place(std::uint32_t tag, std::uint32_t value) {
  std::size_t i = home(tag);
  while (slots_[i].value != kNone) i = next(i);
  slots_[i] = Slot{tag, value};
}

void IndexTable::insert(std::uint64_t hash, std::uint32_t value) {
  assert(value != kNone);
  // Load at most 0.8: linear probing stays short (about 3 probes a miss).
  if ((size_ + 1) * 5 > capacity_ * 4) grow();
  place(tag_of(hash), value);
  ++size_;
}

bool IndexTable::erase(std::uint64_t hash, std::uint32_t value) {
  const std::uint32_t tag = tag_of(hash);
  std::size_t i = home(tag);
  for (;; i = next(i)) {
    if (slots_[i].value == kNone) return false;
    if (slots_[i].tag == tag && slots_[i].value == value) break;
  }
  // Backward-shift deletion: pull later members of the probe run into the
  // hole when their home is not between the hole and their slot.
  std::size_t hole = i;
  for (std::size_t j = next(hole);; j = next(j)) {
    const Slot s = slots_[j];
    if (s.value == kNone) break;
    const std::size_t h = home(s.tag);
    const bool movable = hole <= j ? (h <= hole || h > j) : (h <= hole && h > j);
    if (movable) {
      slots_[hole] = s;
      hole = j;
    }
  }
  slots_[hole] = Slot{0, kNone};
  --size_;
  return true;
}

void IndexTable::grow() {
  const std::size_t old_capacity = capacity_;
  std::unique_ptr<Slot[]> old = std::move(slots_);
  // Beyond 2^32 slots the multiply-shift home would lose bits; 2^32 slots
  // hold 3.4 * 10^9 entries, beyond the u32 slab index anyway.
  assert(old_capacity * 2 <= (std::size_t{1} << 32));
  capacity_ = old_capacity * 2;
  slots_.reset(new Slot[capacity_]);
  for (std::size_t i = 0; i < capacity_; ++i) slots_[i] = Slot{0, kNone};
  for (std::size_t i = 0; i < old_capacity; ++i) {
    if (old[i].value != kNone) place(old[i].tag, old[i].value);
  }
}

}  // namespace kvpool::coordinator
