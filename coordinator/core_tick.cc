// Time and introspection: tick(), the LRU stamp clock, stats, slots, memory.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

std::uint64_t CoordinatorCore::State::expire_write_leases(Clock::time_point now) {
  std::uint64_t expired = 0;
  while (auto expired_lease = write_leases.take_expired(now)) {
    const WriteLease l = expired_lease->second;
    --client_open[l.client];
    if (write_lease_valid(l)) {
      expire_write_lease(l, now);
      ++expired;
    }
  }
  return expired;
}

void CoordinatorCore::State::expire_moves(Clock::time_point now) {
  // Moves past their deadline: the source agent never reported (it died,
  // or lost its connection).
  for (auto it = moves.begin(); it != moves.end();) {
    if (it->second.deadline >= now) {
      ++it;
      continue;
    }
    const Move m = it->second;
    const std::uint64_t id = it->first;
    it = moves.erase(it);
    forget_move(m, id);
    fail_move(m, now);
  }
}

std::uint64_t CoordinatorCore::State::expire_read_leases(Clock::time_point now) {
  std::uint64_t expired = 0;
  while (auto expired_lease = read_leases.take_expired(now)) {
    const ReadLease l = std::move(expired_lease->second);
    for (const auto& [i, generation] : l.pins) unpin(i, generation);
    ++expired;
  }
  return expired;
}

std::uint64_t CoordinatorCore::State::evict_draining() {
  std::uint64_t evicted = 0;
  std::uint32_t budget = config.max_evictions_per_tick;
  for (auto& ap : agents) {
    Agent& a = *ap;
    if (!a.alive || !a.draining) continue;
    while (a.live_granules > a.low_granules && budget > 0) {
      const std::uint32_t i = a.lists.oldest(slab);
      if (i == kNil) break;
      evict(i);
      --budget;
      ++evicted;
    }
    a.draining = a.live_granules > a.low_granules && budget == 0;
  }
  return evicted;
}

std::vector<InvalidateRequest> CoordinatorCore::State::collect_due(Clock::time_point now) {
  std::vector<InvalidateRequest> out;
  std::vector<ReclaimQueue::Pending> pending;
  for (auto& ap : agents) {
    if (!ap->alive) continue;
    pending.clear();
    ap->reclaim.collect_due(now, config.invalidation_retry, pending);
    if (pending.empty()) continue;
    InvalidateRequest req{ap->id, ap->reg.incarnation, {}};
    req.slots.reserve(pending.size());
    for (const auto& p : pending) req.slots.push_back(slot_ref(*ap, p));
    out.push_back(std::move(req));
  }
  return out;
}

TickActions CoordinatorCore::tick(Clock::time_point now) {
  TickActions actions;
  ReadyCallbacks ready;
  {
    std::lock_guard lock(mu_);
    State& s = *s_;
    s.sweep(now);
    actions.dead_agents = std::move(s.dead_since_tick);
    s.dead_since_tick.clear();
    actions.expired_write_leases += s.expire_write_leases(now);
    s.expire_moves(now);
    actions.expired_read_leases += s.expire_read_leases(now);
    actions.fired_waiters += s.waiters.fire_due(now, ready);
    s.stamp_notes.note(now, s.touch_clock);
    actions.evicted_blocks += s.evict_draining();
    actions.invalidations = s.collect_due(now);
  }
  run_callbacks(ready);
  return actions;
}

std::uint64_t CoordinatorCore::stamp_at(Clock::time_point t) const {
  std::lock_guard lock(mu_);
  return s_->stamp_notes.stamp_at(t);
}

Stats CoordinatorCore::stats() const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  Stats st;
  for (const auto& ap : s.agents) {
    AgentView v = view_of(*ap);
    st.blocks += v.blocks;
    st.capacity_bytes += v.capacity_bytes;
    st.used_bytes += v.used_bytes;
    st.live_bytes += v.live_bytes;
    st.reclaiming_bytes += v.reclaiming_bytes;
    if (v.alive) ++st.agents_alive;
    st.agents.push_back(std::move(v));
  }
  st.write_leases = s.write_leases.size();
  st.read_leases = s.read_leases.size();
  st.waiters = s.waiters.size();
  st.namespaces = s.namespaces.size();
  st.membership_epoch = s.epoch;
  st.lookup_hits = s.lookup_hits;
  st.lookup_misses = s.lookup_misses;
  st.evictions = s.evictions - (s.evicting.count() - s.evicting.removing());
  st.evicting = s.evicting.count() - s.evicting.removing();
  st.removing = s.evicting.removing();
  st.removals = s.removals;
  st.expired_write_leases = s.expired_write_leases;
  st.aborted_write_leases = s.aborted_write_leases;
  return st;
}

Result<std::vector<SlotView>> CoordinatorCore::slots(AgentId id) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  const Agent* a = s.find_agent(id);
  if (a == nullptr) return make_error(StatusCode::kNotFound, "unknown agent " + std::to_string(to_u32(id)));
  std::vector<SlotView> out;
  a->lists.for_each(s.slab, [&](std::uint32_t i) {
    const BlockEntry& e = s.slab[i];
    SlotView v;
    v.payload_offset = static_cast<std::uint64_t>(e.granule) * kGranule;
    v.length = static_cast<std::uint64_t>(slot_granules(e.length)) * kGranule;
    v.state = e.state == BlockState::kWriting     ? SlotState::kWriting
              : e.state == BlockState::kCommitted ? SlotState::kCommitted
                                                  : SlotState::kRemovedLeased;
    v.generation = e.generation;
    v.key = e.key;
    v.namespace_id = s.namespaces[e.ns].id;
    v.stamp = e.stamp;
    out.push_back(v);
  });
  a->reclaim.for_each([&](const ReclaimQueue::Pending& p) {
    SlotView v;
    v.payload_offset = static_cast<std::uint64_t>(p.granule) * kGranule;
    v.length = static_cast<std::uint64_t>(p.granules) * kGranule;
    v.state = p.stage == ReclaimQueue::Stage::kQuarantined ? SlotState::kQuarantined : SlotState::kInvalidating;
    v.generation = p.generation;
    out.push_back(v);
  });
  std::sort(out.begin(), out.end(),
            [](const SlotView& x, const SlotView& y) { return x.payload_offset < y.payload_offset; });
  return out;
}

MemoryFootprint CoordinatorCore::memory() const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  return MemoryFootprint{s.slab.in_use(), s.slab.memory_bytes(), s.by_key.memory_bytes(), s.by_slot.memory_bytes()};
}

}  // namespace kvpool::coordinator
