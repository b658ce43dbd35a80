#pragma once
// WaiterTable: the callbacks of CoordinatorCore::wait_for, indexed by the
// keys they wait for and by deadline. Same contract as the core: no I/O,
// `now` passed in, and callbacks are handed back (ReadyCallbacks) for the
// caller to run once its lock is released, never run here. Not thread-safe:
// CoordinatorCore calls it under its mutex.

#include <cstddef>
#include <cstdint>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coordinator/coordinator_types.h"
#include "coordinator/index_table.h"
#include "kvpool/types.h"

namespace kvpool::coordinator {

// A key of a namespace, by the namespace's index in the core.
struct WaitKey {
  std::uint32_t ns = 0;
  Key128 key;
  friend bool operator==(const WaitKey&, const WaitKey&) = default;
};
struct WaitKeyHash {
  std::size_t operator()(const WaitKey& k) const { return static_cast<std::size_t>(key_hash(k.ns, k.key)); }
};

struct Waiter {
  std::uint32_t ns = 0;
  std::vector<Key128> keys;
  std::vector<bool> committed;
  std::size_t remaining = 0;
  Clock::time_point deadline{};
  WaitCallback done;
};

// Callbacks to run once the lock is released.
using ReadyCallbacks = std::vector<std::pair<WaitCallback, std::vector<bool>>>;

inline void run_callbacks(ReadyCallbacks& ready) {
  for (auto& [done, committed] : ready) done(std::move(committed));
}

class WaiterTable {
 public:
  // A fresh waiter id (ids are never reused, also those of waiters that
  // fired at once and were never added).
  std::uint64_t next_id() { return next_id_++; }

  // Waits for the keys of `w` whose committed flag is false (remaining of
  // them, at least one) until w.deadline.
  void add(std::uint64_t id, Waiter w);

  bool contains(std::uint64_t id) const { return waiters_.count(id) != 0; }
  std::size_t size() const { return waiters_.size(); }

  // Removes the waiter; its callback goes to `ready` (with the keys
  // committed so far) unless ready is null (cancelled). Unknown ids: nothing.
  void finish(std::uint64_t id, ReadyCallbacks* ready);

  // The key became committed: each waiter of it marks it, and one that has
  // all its keys now finishes into `ready`.
  void notify_committed(std::uint32_t ns, const Key128& key, ReadyCallbacks& ready);

  // Finishes every waiter whose deadline is at or before `now`, into
  // `ready`; how many.
  std::size_t fire_due(Clock::time_point now, ReadyCallbacks& ready);

 private:
  std::unordered_map<std::uint64_t, Waiter> waiters_;
  // Per key, its waiters as (waiter id, position of the key in it).
  std::unordered_map<WaitKey, std::vector<std::pair<std::uint64_t, std::uint32_t>>, WaitKeyHash> wait_index_;
  std::set<std::pair<Clock::time_point, std::uint64_t>> deadlines_;
  std::uint64_t next_id_ = 1;
};

}  // namespace kvpool::coordinator
