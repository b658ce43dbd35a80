// An index entry's life: LRU stamps, pins, retirement to the reclaim queue,
// evictions awaiting their acknowledgement, and that acknowledgement.

#include <cassert>
#include <cstdint>
#include <optional>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

void CoordinatorCore::State::lru_insert(std::uint32_t i) {
  const BlockEntry& e = slab[i];
  Namespace& n = namespaces[e.ns];
  if (n.has_quota() && e.state == BlockState::kCommitted) n.lru.emplace(e.stamp, i);
}

void CoordinatorCore::State::lru_erase(std::uint32_t i) {
  const BlockEntry& e = slab[i];
  Namespace& n = namespaces[e.ns];
  if (n.has_quota()) n.lru.erase({e.stamp, i});
}

void CoordinatorCore::State::restamp(std::uint32_t i) {
  lru_erase(i);
  slab[i].stamp = ++touch_clock;
  lru_insert(i);
}

void CoordinatorCore::State::touch(std::uint32_t i) {
  BlockEntry& e = slab[i];
  restamp(i);
  if (e.list == BlockLists::kLru) {
    Agent& a = agent(e.agent);
    a.lists.unlink(slab, i);
    a.lists.link_lru(slab, i);
  }
}

void CoordinatorCore::State::pin(std::uint32_t i) {
  BlockEntry& e = slab[i];
  if (e.pins++ == 0 && e.list == BlockLists::kLru) {
    Agent& a = agent(e.agent);
    a.lists.unlink(slab, i);
    a.lists.link_busy(slab, i);
  }
}

void CoordinatorCore::State::unpin(std::uint32_t i, Generation generation) {
  // The entry may be gone (its agent died) and even reused since.
  if (i >= slab.high_water()) return;
  BlockEntry& e = slab[i];
  if (e.state == BlockState::kFree || e.generation != generation || e.pins == 0) return;
  if (--e.pins > 0) return;
  Agent& a = agent(e.agent);
  if (e.state == BlockState::kCommitted) {
    a.lists.unlink(slab, i);
    restamp(i);
    a.lists.link_lru(slab, i);
  } else if (e.state == BlockState::kRemovedLeased) {
    retire(i, std::nullopt);
  }
}

void CoordinatorCore::State::retire(std::uint32_t i, std::optional<Clock::time_point> quarantine_until) {
  BlockEntry& e = slab[i];
  Agent& a = agent(e.agent);
  const std::uint32_t g = slot_granules(e.length);
  a.lists.unlink(slab, i);
  if (e.state == BlockState::kWriting || e.state == BlockState::kCommitted) {
    [[maybe_unused]] const bool erased = by_key.erase(key_hash(e.ns, e.key), i);
    assert(erased);
    lru_erase(i);
    Namespace& n = namespaces[e.ns];
    --n.live_blocks;
    n.live_bytes -= static_cast<std::uint64_t>(g) * kGranule;
    a.live_granules -= g;
    if (e.state == BlockState::kCommitted) {
      --a.committed_blocks;
      --namespaces[e.ns].blocks;
    }
  }
  [[maybe_unused]] const bool erased = by_slot.erase(slot_hash(e.agent, e.granule), i);
  assert(erased);
  const pool::Slot slot{static_cast<std::uint64_t>(e.granule) * kGranule, static_cast<std::uint64_t>(g) * kGranule};
  if (Status st = a.future->free(slot); !st.ok()) {
    logger()->error("agent {}: reclaim of slot of block {}: {}", e.agent, key_text(e.key), st.to_string());
  }
  if (quarantine_until) {
    a.reclaim.add_quarantined(e.granule, g, e.generation, *quarantine_until);
  } else {
    a.reclaim.add_ready(e.granule, g, e.generation);
  }
  slab.free(i);
}

void CoordinatorCore::State::evict(std::uint32_t i) {
  assert(slab[i].state == BlockState::kCommitted && slab[i].pins == 0);
  SPDLOG_LOGGER_TRACE(logger(), "evict block {} from agent {}", key_text(slab[i].key), slab[i].agent);
  retire_tracked(i, /*removal=*/false);
  ++evictions;
}

void CoordinatorCore::State::retire_tracked(std::uint32_t i, bool removal) {
  const BlockEntry& e = slab[i];
  Agent& a = agent(e.agent);
  const Agent::Evicting ev{e.ns, e.key, e.generation, removal};
  const std::uint64_t offset = static_cast<std::uint64_t>(e.granule) * kGranule;
  const EvictingSlot ref{AgentId{e.agent}, a.layout.header_offset(offset), e.generation};
  retire(i, std::nullopt);
  if (a.evicting.emplace(ref.header_offset, ev).second) {
    evicting.add(ev.ns, ev.key, ref, removal);
    ++namespaces[ev.ns].evicting;
  }
}

void CoordinatorCore::State::evicted_done(Agent& a, std::uint64_t header_offset, Generation generation) {
  auto it = a.evicting.find(header_offset);
  if (it == a.evicting.end() || it->second.generation != generation) return;
  forget_evicting(a, it->second);
  a.evicting.erase(it);
}

void CoordinatorCore::State::forget_evicting(const Agent& a, const Agent::Evicting& ev) {
  evicting.forget(ev.ns, ev.key, a.id, ev.generation, ev.removal);
  --namespaces[ev.ns].evicting;
}

const std::vector<EvictingSlot>* CoordinatorCore::State::evicting_of(std::uint32_t ns, const Key128& key) const {
  return evicting.of(ns, key);
}

std::vector<InvalidateRequest> CoordinatorCore::State::collect_ready(Clock::time_point now) {
  std::vector<InvalidateRequest> out;
  std::vector<ReclaimQueue::Pending> pending;
  for (auto& ap : agents) {
    if (!ap->alive) continue;
    pending.clear();
    ap->reclaim.collect_ready(now, pending);
    if (pending.empty()) continue;
    InvalidateRequest req{ap->id, ap->reg.incarnation, {}};
    req.slots.reserve(pending.size());
    for (const auto& p : pending) req.slots.push_back(slot_ref(*ap, p));
    out.push_back(std::move(req));
  }
  return out;
}

Status CoordinatorCore::invalidated(AgentId id, std::uint64_t incarnation, std::span<const SlotRef> slots,
                                    Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto found = s.current_agent(id, incarnation);
  if (!found) return found.error();
  Agent* a = *found;
  std::size_t ignored = 0;
  for (const SlotRef& ref : slots) {
    const pool::RegionLayout& layout = a->layout;
    if (ref.payload_offset < layout.payload_base || ref.length == 0 || ref.length % kGranule != 0 ||
        (ref.payload_offset - layout.payload_base) % kGranule != 0 ||
        ref.payload_offset - layout.payload_base >= layout.payload_bytes ||
        ref.header_offset != layout.header_offset(ref.payload_offset - layout.payload_base)) {
      ++ignored;
      continue;
    }
    const std::uint64_t offset = ref.payload_offset - layout.payload_base;
    const auto granule = static_cast<std::uint32_t>(offset / kGranule);
    const auto granules = static_cast<std::uint32_t>(ref.length / kGranule);
    if (!a->reclaim.acknowledge(granule, granules, ref.generation)) {
      ++ignored;
      continue;
    }
    if (!a->evicting.empty()) s.evicted_done(*a, ref.header_offset, ref.generation);
    if (Status st = a->space->free(pool::Slot{offset, ref.length}); !st.ok()) {
      logger()->error("agent {}: freeing acknowledged slot: {}", to_u32(id), st.to_string());
      continue;
    }
    a->used_granules -= granules;
  }
  if (ignored > 0) {
    logger()->debug("agent {}: {} of {} acknowledged slots matched nothing sent (repeats?)", to_u32(id), ignored,
                    slots.size());
  }
  return Status::ok_status();
}

}  // namespace kvpool::coordinator
