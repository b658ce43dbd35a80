#pragma once
// LeaseTable: the live leases of one kind (write or read) by id, with their
// deadlines in a heap for expiry. No lock and no clock: CoordinatorCore
// calls it under its mutex with `now`. Not thread-safe.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coordinator/coordinator_types.h"

namespace kvpool::coordinator {

// Lease: any value with a `Clock::time_point deadline` that never changes.
template <typename Lease>
class LeaseTable {
 public:
  void add(std::uint64_t id, Lease lease) {
    const Clock::time_point deadline = lease.deadline;
    live_.emplace(id, std::move(lease));
    compact();
    expiry_.emplace(deadline, id);
  }

  // The lease, taken out; nullopt when unknown (never added, taken, or
  // expired).
  std::optional<Lease> take(std::uint64_t id) {
    auto it = live_.find(id);
    if (it == live_.end()) return std::nullopt;
    Lease l = std::move(it->second);
    live_.erase(it);
    return l;
  }

  // The next lease whose deadline is before `now`, taken out with its id;
  // nullopt when none is. A lease is good through its deadline (commit
  // accepts now == deadline), so it expires once now is past it.
  std::optional<std::pair<std::uint64_t, Lease>> take_expired(Clock::time_point now) {
    // Deadlines never change, so the heap pair of a lease still present
    // carries its deadline; pairs of leases taken early are skipped.
    while (!expiry_.empty() && expiry_.top().first < now) {
      const std::uint64_t id = expiry_.top().second;
      expiry_.pop();
      if (auto l = take(id)) return std::make_pair(id, std::move(*l));
    }
    return std::nullopt;
  }

  std::size_t size() const { return live_.size(); }

 private:
  using ExpiryHeap = std::priority_queue<std::pair<Clock::time_point, std::uint64_t>,
                                         std::vector<std::pair<Clock::time_point, std::uint64_t>>, std::greater<>>;

  // A lease that ends early (commit, abort, release) leaves its heap pair
  // behind until the deadline passes. At a high rate that is rate x ttl stale
  // pairs (16 MB per million), so the heap is rebuilt from the live leases once
  // it holds more than twice as many pairs: amortised O(1) per lease.
  void compact() {
    if (expiry_.size() < 1024 || expiry_.size() <= 2 * live_.size()) return;
    std::vector<std::pair<Clock::time_point, std::uint64_t>> pairs;
    pairs.reserve(live_.size());
    for (const auto& [id, lease] : live_) pairs.emplace_back(lease.deadline, id);
    expiry_ = ExpiryHeap(std::greater<>(), std::move(pairs));
  }

  std::unordered_map<std::uint64_t, Lease> live_;
  ExpiryHeap expiry_;  // (deadline, lease id); stale pairs are skipped
};

}  // namespace kvpool::coordinator
