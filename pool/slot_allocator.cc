#include "pool/slot_allocator.h"

#include <iterator>
#include <string>

#include "runtime/common/logging.h"

namespace kvpool::pool {
namespace {

std::string describe(Slot slot) {
  return "[" + std::to_string(slot.offset) + ", +" + std::to_string(slot.length) + ")";
}

}  // namespace

Result<SlotAllocator> SlotAllocator::create(std::uint64_t payload_bytes, std::uint64_t granule) {
  if (granule == 0 || (granule & (granule - 1)) != 0) {
    return make_error(StatusCode::kInvalidArgument,
                      "granule " + std::to_string(granule) + " is not a power of two");
  }
  if (payload_bytes == 0 || payload_bytes % granule != 0) {
    return make_error(StatusCode::kInvalidArgument, "capacity " + std::to_string(payload_bytes) +
                                                        " is not a nonzero multiple of the granule " +
                                                        std::to_string(granule));
  }
  return SlotAllocator(payload_bytes, granule);
}

SlotAllocator::SlotAllocator(std::uint64_t capacity, std::uint64_t granule)
    : capacity_(capacity), granule_(granule) {
  insert_extent(0, capacity);
}

void SlotAllocator::insert_extent(std::uint64_t offset, std::uint64_t length) {
  by_offset_.emplace(offset, length);
  by_length_.emplace(length, offset);
  free_bytes_ += length;
}

void SlotAllocator::erase_extent(std::map<std::uint64_t, std::uint64_t>::iterator it) {
  by_length_.erase({it->second, it->first});
  free_bytes_ -= it->second;
  by_offset_.erase(it);
}

Status SlotAllocator::check_range(Slot slot, const char* op) const {
  if (slot.length == 0 || slot.offset % granule_ != 0 || slot.length % granule_ != 0) {
    return Status(StatusCode::kFailedPrecondition, std::string(op) + " of slot " + describe(slot) +
                                                       ": empty or not aligned to the granule " +
                                                       std::to_string(granule_));
  }
  // Written so that a huge offset or length cannot wrap around.
  if (slot.offset >= capacity_ || slot.length > capacity_ - slot.offset) {
    return Status(StatusCode::kFailedPrecondition, std::string(op) + " of slot " + describe(slot) +
                                                       ": past the capacity " + std::to_string(capacity_));
  }
  return Status::ok_status();
}

Result<Slot> SlotAllocator::allocate(std::uint64_t bytes) {
  if (bytes == 0 || bytes > capacity_) {
    return make_error(
        StatusCode::kInvalidArgument,
        "allocation of " + std::to_string(bytes) + " bytes (capacity " + std::to_string(capacity_) + ")");
  }
  // capacity_ is a multiple of granule_, so rounding bytes <= capacity_ up
  // can neither pass it nor overflow.
  const std::uint64_t length = (bytes + granule_ - 1) & ~(granule_ - 1);
  auto best = by_length_.lower_bound({length, 0});
  if (best == by_length_.end()) {
    const std::uint64_t largest = by_length_.empty() ? 0 : by_length_.rbegin()->first;
    return make_error(StatusCode::kResourceExhausted,
                      "no free extent of " + std::to_string(length) + " bytes (free " +
                          std::to_string(free_bytes_) + ", largest extent " + std::to_string(largest) + ")");
  }
  const auto [extent_length, offset] = *best;
  erase_extent(by_offset_.find(offset));
  if (extent_length > length) insert_extent(offset + length, extent_length - length);
  ++allocated_slots_;
  const Slot slot{offset, length};
  SPDLOG_LOGGER_TRACE(log::get("pool"), "allocated slot {} for {} bytes", describe(slot), bytes);
  return slot;
}

Status SlotAllocator::free(Slot slot) {
  if (Status st = check_range(slot, "free"); !st.ok()) return st;
  // The range must lie wholly in allocated space: it may neither start inside
  // the free extent before it nor reach into the one after it.
  auto next = by_offset_.lower_bound(slot.offset);
  auto prev = next == by_offset_.begin() ? by_offset_.end() : std::prev(next);
  const bool overlaps_prev = prev != by_offset_.end() && prev->first + prev->second > slot.offset;
  const bool overlaps_next = next != by_offset_.end() && next->first < slot.end();
  if (overlaps_prev || overlaps_next) {
    return Status(StatusCode::kFailedPrecondition,
                  "free of slot " + describe(slot) + ": overlaps free space (double free?)");
  }
  std::uint64_t offset = slot.offset;
  std::uint64_t length = slot.length;
  if (prev != by_offset_.end() && prev->first + prev->second == offset) {
    offset = prev->first;
    length += prev->second;
    erase_extent(prev);
  }
  if (next != by_offset_.end() && next->first == slot.end()) {
    length += next->second;
    erase_extent(next);
  }
  insert_extent(offset, length);
  // Saturating: a caller that frees part of a slot (undetectable here) makes
  // the count approximate, never wrap.
  if (allocated_slots_ > 0) --allocated_slots_;
  SPDLOG_LOGGER_TRACE(log::get("pool"), "freed slot {}", describe(slot));
  return Status::ok_status();
}

Status SlotAllocator::reserve(Slot slot) {
  if (Status st = check_range(slot, "reserve"); !st.ok()) return st;
  // The only extent that can hold the range is the last one starting at or
  // before its offset.
  auto it = by_offset_.upper_bound(slot.offset);
  if (it == by_offset_.begin() || std::prev(it)->first + std::prev(it)->second < slot.end()) {
    return Status(StatusCode::kFailedPrecondition,
                  "reserve of slot " + describe(slot) + ": part of the range is not free");
  }
  --it;
  const std::uint64_t extent_offset = it->first;
  const std::uint64_t extent_end = it->first + it->second;
  erase_extent(it);
  if (extent_offset < slot.offset) insert_extent(extent_offset, slot.offset - extent_offset);
  if (slot.end() < extent_end) insert_extent(slot.end(), extent_end - slot.end());
  ++allocated_slots_;
  return Status::ok_status();
}

AllocatorStats SlotAllocator::stats() const {
  AllocatorStats s;
  s.capacity = capacity_;
  s.free_bytes = free_bytes_;
  s.used_bytes = capacity_ - free_bytes_;
  s.largest_free = by_length_.empty() ? 0 : by_length_.rbegin()->first;
  s.free_extents = by_offset_.size();
  s.allocated_slots = allocated_slots_;
  s.fragmentation =
      free_bytes_ == 0 ? 0.0 : 1.0 - static_cast<double>(s.largest_free) / static_cast<double>(free_bytes_);
  s.utilization = static_cast<double>(s.used_bytes) / static_cast<double>(capacity_);
  return s;
}

std::vector<Slot> SlotAllocator::free_extents() const {
  std::vector<Slot> out;
  out.reserve(by_offset_.size());
  for (const auto& [offset, length] : by_offset_) out.push_back(Slot{offset, length});
  return out;
}

}  // namespace kvpool::pool
