#pragma once
// EvictingKeys: evicted (or removed) blocks whose agent has not yet
// acknowledged the slot's invalidation, by (namespace index, key). Lookups,
// wait_for and stats must not show the eviction before the agent has zeroed
// the slot header (a coordinator restart would otherwise bring back a block
// a client saw go). Usually one slot per key; more when a key was written
// and evicted again before the first acknowledgement. No lock: the core
// calls it under its mutex. Not thread-safe.

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "coordinator/coordinator_types.h"
#include "coordinator/waiter_table.h"
#include "kvpool/types.h"

namespace kvpool::coordinator {

class EvictingKeys {
 public:
  // `removal`: removed on request (remove, pooltool evict), not evicted
  // under pressure.
  void add(std::uint32_t ns, const Key128& key, const EvictingSlot& ref, bool removal) {
    by_key_[WaitKey{ns, key}].push_back(ref);
    ++count_;
    if (removal) ++removing_;
  }

  // The slot of `agent` at `generation` is acknowledged (or its agent gone).
  void forget(std::uint32_t ns, const Key128& key, AgentId agent, Generation generation, bool removal) {
    auto k = by_key_.find(WaitKey{ns, key});
    if (k != by_key_.end()) {
      std::erase_if(k->second, [&](const EvictingSlot& r) { return r.agent == agent && r.generation == generation; });
      if (k->second.empty()) by_key_.erase(k);
    }
    --count_;
    if (removal) --removing_;
  }

  // The evicting slots of a key (none: null).
  const std::vector<EvictingSlot>* of(std::uint32_t ns, const Key128& key) const {
    if (by_key_.empty()) return nullptr;
    auto it = by_key_.find(WaitKey{ns, key});
    return it == by_key_.end() ? nullptr : &it->second;
  }

  bool empty() const { return by_key_.empty(); }
  std::uint64_t count() const { return count_; }        // slots added and not forgotten
  std::uint64_t removing() const { return removing_; }  // of which removals
  // The slots listed under keys, counted one by one (check_consistency).
  std::uint64_t listed() const {
    std::uint64_t n = 0;
    for (const auto& [k, refs] : by_key_) n += refs.size();
    return n;
  }

 private:
  std::unordered_map<WaitKey, std::vector<EvictingSlot>, WaitKeyHash> by_key_;
  std::uint64_t count_ = 0;
  std::uint64_t removing_ = 0;
};

}  // namespace kvpool::coordinator
