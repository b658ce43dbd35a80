// Recovery: taking back the blocks a rejoining agent scanned from its headers.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

std::optional<std::uint32_t> CoordinatorCore::State::recovered_namespace(const Agent& a, NamespaceId id) {
  if (auto it = ns_index.find(id); it != ns_index.end()) {
    // A block in a region its namespace may not use (the tenants file
    // changed): left out, so no one is handed a location in a region
    // that is not theirs.
    if (namespaces[it->second].tenant != a.reg.tenant) return std::nullopt;
    return it->second;
  }
  if (namespaces.size() >= kNil) return std::nullopt;
  const auto ns = static_cast<std::uint32_t>(namespaces.size());
  ns_index.emplace(id, ns);
  Namespace& recovered = namespaces.emplace_back();
  recovered.id = id;
  recovered.tenant = a.reg.tenant;
  return ns;
}

CoordinatorCore::State::Adoption CoordinatorCore::State::adopt_block(Agent& a, const RecoveredBlock& b) {
  const std::uint32_t agent_id = to_u32(a.id);
  const std::uint64_t g = slot_granules(b.length);
  if (b.length == 0 || b.length > UINT32_MAX || b.payload_offset % kGranule != 0 ||
      b.payload_offset >= a.layout.payload_bytes || g > (a.layout.payload_bytes - b.payload_offset) / kGranule ||
      !can_read(b.key)) {
    return Adoption::kDropped;  // left to the end of recovery, which invalidates it
  }
  const auto granule = static_cast<std::uint32_t>(b.payload_offset / kGranule);
  if (const std::uint32_t i = find_slot(agent_id, granule); i != kNil) {
    const BlockEntry& e = slab[i];
    // Sent before (a repeat), or overlapping.
    return e.key != b.key || e.generation != b.generation ? Adoption::kDropped : Adoption::kRepeat;
  }
  const pool::Slot slot{b.payload_offset, g * kGranule};
  if (!a.space->reserve(slot).ok()) {
    return Adoption::kDropped;  // overlaps an adopted block: not a block this coordinator can account for
  }
  a.used_granules += g;
  const std::optional<std::uint32_t> found_ns = recovered_namespace(a, b.ns);
  if (!found_ns) {
    a.reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
    return Adoption::kDropped;
  }
  const std::uint32_t ns = *found_ns;
  if (const std::uint32_t i = find_key(ns, b.key); i != kNil) {
    BlockEntry& e = slab[i];
    if (e.state == BlockState::kCommitted && e.pins == 0 && e.generation < b.generation) {
      retire(i, std::nullopt);  // the older copy loses
    } else {
      a.reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
      return Adoption::kDropped;
    }
  }
  const std::uint32_t i = slab.allocate();
  if (i == kNil || !a.future->reserve(slot).ok()) {
    if (i != kNil) slab.free(i);
    a.reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
    return Adoption::kDropped;
  }
  BlockEntry& e = slab[i];
  e.key = b.key;
  e.generation = b.generation;
  e.stamp = ++touch_clock;
  e.agent = agent_id;
  e.granule = granule;
  e.length = static_cast<std::uint32_t>(b.length);
  e.ns = ns;
  e.state = BlockState::kCommitted;
  by_key.insert(key_hash(ns, b.key), i);
  by_slot.insert(slot_hash(agent_id, granule), i);
  a.lists.link_lru(slab, i);
  a.live_granules += g;
  ++a.committed_blocks;
  ++namespaces[ns].blocks;
  ++namespaces[ns].live_blocks;
  namespaces[ns].live_bytes += g * kGranule;
  lru_insert(i);
  next_generation = std::max(next_generation, b.generation + 1);
  return Adoption::kAdopted;
}

Result<RecoverResult> CoordinatorCore::recover_blocks(AgentId id, std::uint64_t incarnation,
                                                      std::span<const RecoveredBlock> blocks, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto found = s.current_agent(id, incarnation);
  if (!found) return tl::unexpected(found.error());
  Agent* a = *found;
  if (!a->recovering) {
    return make_error(StatusCode::kFailedPrecondition,
                      "agent " + std::to_string(to_u32(id)) + " is not recovering: rejoin first");
  }
  RecoverResult out;
  for (const RecoveredBlock& b : blocks) {
    switch (s.adopt_block(*a, b)) {
      case State::Adoption::kAdopted:
        ++out.adopted;
        break;
      case State::Adoption::kDropped:
        ++out.dropped;
        break;
      case State::Adoption::kRepeat:
        break;
    }
  }
  out.invalidations = s.collect_ready(now);
  return out;
}

Status CoordinatorCore::finish_recovery(AgentId id, std::uint64_t incarnation, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto found = s.current_agent(id, incarnation);
  if (!found) return found.error();
  Agent* a = *found;
  if (!a->recovering) return Status::ok_status();
  // Space no valid header covers may still receive a late put of a lease
  // issued before the restart: it waits out a lease and a quarantine, then
  // its headers are zeroed like any freed slot's.
  const Clock::time_point until = now + s.config.write_lease_ttl + s.config.write_quarantine;
  std::uint64_t gap_granules = 0;
  for (const pool::Slot& gap : a->space->free_extents()) {
    if (Status st = a->space->reserve(gap); !st.ok()) {
      logger()->error("agent {}: quarantining free extent {}: {}", to_u32(id), gap.offset, st.to_string());
      continue;
    }
    const auto g = static_cast<std::uint32_t>(gap.length / kGranule);
    a->reclaim.add_quarantined(static_cast<std::uint32_t>(gap.offset / kGranule), g, 0, until);
    a->used_granules += g;
    gap_granules += g;
  }
  a->recovering = false;
  ++s.epoch;
  logger()->info("agent {} recovered: {} blocks, {} bytes of unclaimed space quarantined", to_u32(id),
                 a->committed_blocks, gap_granules * kGranule);
  return Status::ok_status();
}

}  // namespace kvpool::coordinator
