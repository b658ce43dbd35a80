#include "coordinator/reclaim_queue.h"

#include <cassert>

namespace kvpool::coordinator {

void ReclaimQueue::add(std::uint32_t granule, const Item& item) {
  [[maybe_unused]] const bool inserted = items_.emplace(granule, item).second;
  assert(inserted);
  granules_total_ += item.granules;
}

void ReclaimQueue::add_quarantined(std::uint32_t granule, std::uint32_t granules, Generation generation,
                                   Clock::time_point until) {
  add(granule, Item{granules, Stage::kQuarantined, until, generation});
}

void ReclaimQueue::add_ready(std::uint32_t granule, std::uint32_t granules, Generation generation) {
  add(granule, Item{granules, Stage::kReady, Clock::time_point{}, generation});
  ready_.push_back(granule);
}

void ReclaimQueue::collect_due(Clock::time_point now, std::chrono::nanoseconds retry, std::vector<Pending>& out) {
  ready_.clear();  // every ready slot is collected by the walk below
  for (auto& [granule, item] : items_) {
    const bool due = item.stage == Stage::kReady || (item.stage == Stage::kQuarantined && item.at <= now) ||
                     (item.stage == Stage::kSent && item.at + retry <= now);
    if (!due) continue;
    item.stage = Stage::kSent;
    item.at = now;
    out.push_back(Pending{granule, item.granules, item.generation, Stage::kSent});
  }
}

void ReclaimQueue::collect_ready(Clock::time_point now, std::vector<Pending>& out) {
  for (std::uint32_t granule : ready_) {
    auto it = items_.find(granule);
    // Gone or already sent by collect_due: nothing to do.
    if (it == items_.end() || it->second.stage != Stage::kReady) continue;
    it->second.stage = Stage::kSent;
    it->second.at = now;
    out.push_back(Pending{granule, it->second.granules, it->second.generation, Stage::kSent});
  }
  ready_.clear();
}

bool ReclaimQueue::acknowledge(std::uint32_t granule, std::uint32_t granules, Generation generation) {
  auto it = items_.find(granule);
  if (it == items_.end() || it->second.stage != Stage::kSent || it->second.granules != granules ||
      it->second.generation != generation) {
    return false;
  }
  granules_total_ -= granules;
  items_.erase(it);
  return true;
}

}  // namespace kvpool::coordinator
