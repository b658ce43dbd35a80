// Waiters: wait_for callbacks on keys being committed, and their deadlines.

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

void CoordinatorCore::State::finish_waiter(std::uint64_t id, ReadyCallbacks* ready) {
  auto it = waiters.find(id);
  if (it == waiters.end()) return;
  Waiter& w = it->second;
  for (std::size_t pos = 0; pos < w.keys.size(); ++pos) {
    if (w.committed[pos]) continue;
    auto wi = wait_index.find(WaitKey{w.ns, w.keys[pos]});
    if (wi == wait_index.end()) continue;
    auto& v = wi->second;
    v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& p) { return p.first == id; }), v.end());
    if (v.empty()) wait_index.erase(wi);
  }
  waiter_deadlines.erase({w.deadline, id});
  if (ready != nullptr) ready->emplace_back(std::move(w.done), std::move(w.committed));
  waiters.erase(it);
}

void CoordinatorCore::State::notify_committed(std::uint32_t ns, const Key128& key, ReadyCallbacks& ready) {
  if (wait_index.empty()) return;
  auto it = wait_index.find(WaitKey{ns, key});
  if (it == wait_index.end()) return;
  const auto list = std::move(it->second);
  wait_index.erase(it);
  for (const auto& [id, pos] : list) {
    auto wit = waiters.find(id);
    if (wit == waiters.end() || wit->second.committed[pos]) continue;
    wit->second.committed[pos] = true;
    if (--wit->second.remaining == 0) finish_waiter(id, &ready);
  }
}

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
    const std::uint64_t id = s.next_waiter++;
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
      for (std::size_t k = 0; k < keys.size(); ++k) {
        if (!w.committed[k]) s.wait_index[WaitKey{*ns, keys[k]}].emplace_back(id, static_cast<std::uint32_t>(k));
      }
      s.waiter_deadlines.emplace(deadline, id);
      s.waiters.emplace(id, std::move(w));
    }
  }
  run_callbacks(ready);
  return result;
}

bool CoordinatorCore::cancel_wait(WaiterId waiter) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  const auto id = static_cast<std::uint64_t>(waiter);
  if (s.waiters.count(id) == 0) return false;
  s.finish_waiter(id, nullptr);
  return true;
}

}  // namespace kvpool::coordinator
