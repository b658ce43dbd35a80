// Size-aware eviction (free space in crumbs) and eviction down to a quota.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <numeric>
#include <optional>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

namespace {

// Candidate windows (largest free-to-be extents) tried by size-aware eviction
// before the bounded sweep of the whole region.
constexpr std::size_t kWindowCandidates = 16;
// Bounds the sweep (a hash lookup a step) to a few milliseconds under the lock.
constexpr std::uint64_t kMaxSweepSteps = 1u << 16;

}  // namespace

Step CoordinatorCore::State::step_at(const Agent& a, std::uint64_t granule,
                                     const std::vector<pool::Slot>& free_extents) const {
  const std::uint64_t offset = granule * kGranule;
  // The free extent holding offset, if any (the last one starting at or before it).
  auto it = std::upper_bound(free_extents.begin(), free_extents.end(), offset,
                             [](std::uint64_t off, const pool::Slot& s) { return off < s.offset; });
  if (it != free_extents.begin() && std::prev(it)->end() > offset) {
    return Step{Step::kFree, (std::prev(it)->end() - offset) / kGranule, kNil};
  }
  const std::uint32_t i = find_slot(to_u32(a.id), static_cast<std::uint32_t>(granule));
  // Inside a slot (a sweep resuming where boundaries have since moved):
  // step one granule until the next boundary.
  if (i == kNil) return Step{};
  const BlockEntry& e = slab[i];
  const bool evictable = e.state == BlockState::kCommitted && e.pins == 0;
  return Step{evictable ? Step::kEvictable : Step::kBlocked, slot_granules(e.length), i};
}

std::optional<std::vector<std::uint32_t>> CoordinatorCore::State::plan_window(
    const Agent& a, std::uint64_t start, std::uint64_t granules, const std::vector<pool::Slot>& free_extents,
    std::uint32_t budget) const {
  if (start + granules > a.layout.num_granules) return std::nullopt;
  std::vector<std::uint32_t> plan;
  for (std::uint64_t pos = start; pos < start + granules;) {
    const Step s = step_at(a, pos, free_extents);
    if (s.kind == Step::kBlocked) return std::nullopt;
    if (s.kind == Step::kEvictable) {
      if (plan.size() == budget) return std::nullopt;
      plan.push_back(s.entry);
    }
    pos += s.granules;
  }
  return plan;
}

RoomOutcome CoordinatorCore::State::make_room(Agent& a, std::uint64_t granules, std::uint32_t& budget) {
  if (a.future->stats().largest_free >= granules * kGranule) return RoomOutcome::kFits;
  if (a.lists.evictable_count() == 0) return RoomOutcome::kNoWay;
  if (budget == 0) return RoomOutcome::kProgress;
  const auto g32 = static_cast<std::uint32_t>(granules);
  std::uint32_t i = a.lists.oldest_of_size(g32);
  if (i == kNil) i = a.lists.oldest_larger_than(g32);
  if (i != kNil) {
    evict(i);
    --budget;
    return RoomOutcome::kFits;
  }

  const std::vector<pool::Slot> extents = a.future->free_extents();
  if (evict_next_to_free(a, granules, extents, budget)) return RoomOutcome::kFits;
  return sweep_for_room(a, granules, extents, budget);
}

bool CoordinatorCore::State::evict_next_to_free(Agent& a, std::uint64_t granules,
                                                const std::vector<pool::Slot>& extents, std::uint32_t& budget) {
  std::vector<std::size_t> order(extents.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  const std::size_t n = std::min(order.size(), kWindowCandidates);
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                    [&](std::size_t x, std::size_t y) { return extents[x].length > extents[y].length; });
  for (std::size_t k = 0; k < n; ++k) {
    if (auto plan = plan_window(a, extents[order[k]].offset / kGranule, granules, extents, budget)) {
      for (std::uint32_t e : *plan) evict(e);
      budget -= static_cast<std::uint32_t>(plan->size());
      return true;
    }
  }
  return false;
}

RoomOutcome CoordinatorCore::State::sweep_for_room(Agent& a, std::uint64_t granules,
                                                   const std::vector<pool::Slot>& extents, std::uint32_t& budget) {
  // Sliding window over the region, resuming where the previous sweep
  // stopped and wrapping around: the shortest run ending at each position
  // that spans `granules` with no blocked slot; the first within budget
  // wins, else the one needing the fewest evictions is started on. A
  // sweep cut short by its bound asks for a retry (the next one goes on).
  std::deque<Step> window;
  std::uint64_t window_granules = 0;
  std::uint32_t window_evictable = 0;
  std::vector<std::uint32_t> best;
  bool best_set = false;
  auto reset_window = [&] {
    window.clear();
    window_granules = 0;
    window_evictable = 0;
  };
  const std::uint64_t total = a.layout.num_granules;
  std::uint64_t pos = a.sweep_cursor < total ? a.sweep_cursor : 0;
  std::uint64_t covered = 0;
  std::uint64_t steps = 0;
  for (; covered < total + granules && steps < kMaxSweepSteps; ++steps) {
    if (pos >= total) {
      pos = 0;
      reset_window();
    }
    const Step s = step_at(a, pos, extents);
    pos += s.granules;
    covered += s.granules;
    if (s.kind == Step::kBlocked) {
      reset_window();
      continue;
    }
    window.push_back(s);
    window_granules += s.granules;
    if (s.kind == Step::kEvictable) ++window_evictable;
    while (!window.empty() && window_granules - window.front().granules >= granules) {
      window_granules -= window.front().granules;
      if (window.front().kind == Step::kEvictable) --window_evictable;
      window.pop_front();
    }
    if (window_granules < granules) continue;
    if (window_evictable <= budget) {
      for (const Step& w : window) {
        if (w.kind == Step::kEvictable) evict(w.entry);
      }
      budget -= window_evictable;
      a.sweep_cursor = pos;
      return RoomOutcome::kFits;
    }
    if (!best_set || window_evictable < best.size()) {
      best.clear();
      for (const Step& w : window) {
        if (w.kind == Step::kEvictable) best.push_back(w.entry);
      }
      best_set = true;
    }
  }
  a.sweep_cursor = pos;
  if (best_set) {
    for (std::size_t k = 0; k < best.size() && budget > 0; ++k, --budget) evict(best[k]);
    return RoomOutcome::kProgress;
  }
  return steps < kMaxSweepSteps ? RoomOutcome::kNoWay : RoomOutcome::kProgress;
}

bool CoordinatorCore::State::make_quota_room(std::uint32_t ns, std::uint64_t bytes) {
  Namespace& n = namespaces[ns];
  auto it = n.lru.begin();
  while (n.over_quota(1, bytes)) {
    while (it != n.lru.end() && slab[it->second].pins != 0) ++it;
    if (it == n.lru.end()) return false;
    const std::uint32_t victim = (it++)->second;
    evict(victim);  // erases victim's pair; `it` already moved past it
  }
  return true;
}

}  // namespace kvpool::coordinator
