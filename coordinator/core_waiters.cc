// wait_for and cancel_wait; the waiters themselves are a WaiterTable (waiter_table.h).

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

Result<WaiterId> CoordinatorCore::wait_for(NamespaceId ns_id, std::span<const Key128> keys, Clock::time_point deadline,
                                           WaitCallback done, Clock::time_point now) {
  if (!done) return make_error(StatusCode::kInvalidArgument, "wait_for needs a callback");
  ReadyCallbacks ready;
  WaiterId result{};
  {
    std::lock_guard lock(mu_);
    State& s = *s_;
    s.sweep(now);
    auto ns = s.ns_lookup(ns_id);
    if (!ns) return tl::unexpected(ns.error());
    if (Status st = s.check_shard(keys); !st.ok()) return tl::unexpected(st);
    const std::uint64_t id = s.waiters.next_id();
    result = WaiterId{id};
    Waiter w;
    w.ns = *ns;
    w.keys.assign(keys.begin(), keys.end());
    w.committed.assign(keys.size(), false);
    for (std::size_t k = 0; k < keys.size(); ++k) {
      const std::uint32_t i = s.find_key(*ns, keys[k]);
      w.committed[k] = i != kNil && s.slab[i].state == BlockState::kCommitted;
      if (!w.committed[k]) ++w.remaining;
    }
    if (w.remaining == 0 || deadline <= now) {
      ready.emplace_back(std::move(done), std::move(w.committed));
    } else {
      w.deadline = deadline;
      w.done = std::move(done);
      s.waiters.add(id, std::move(w));
    }
  }
  run_callbacks(ready);
  return result;
}

bool CoordinatorCore::cancel_wait(WaiterId waiter) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  const auto id = static_cast<std::uint64_t>(waiter);
  if (!s.waiters.contains(id)) return false;
  s.waiters.finish(id, nullptr);
  return true;
}

}  // namespace kvpool::coordinator
