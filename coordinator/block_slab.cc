#include "coordinator/block_slab.h"

namespace kvpool::coordinator {

std::uint32_t BlockSlab::allocate() {
  std::uint32_t i;
  if (free_head_ != kNil) {
    i = free_head_;
    free_head_ = (*this)[i].next;
  } else {
    if (size_ == kNil) return kNil;
    if ((size_ >> kChunkBits) == chunks_.size()) chunks_.push_back(std::make_unique<BlockEntry[]>(kChunkSize));
    i = size_++;
  }
  (*this)[i] = BlockEntry{};
  ++in_use_;
  return i;
}

void BlockSlab::free(std::uint32_t i) {
  BlockEntry& e = (*this)[i];
  assert(e.state != BlockState::kFree);
  e = BlockEntry{};
  e.next = free_head_;
  free_head_ = i;
  --in_use_;
}

}  // namespace kvpool::coordinator
