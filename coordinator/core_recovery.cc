// Recovery: taking back the blocks a rejoining agent scanned from its headers.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

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
  const std::uint32_t agent_id = to_u32(id);
  for (const RecoveredBlock& b : blocks) {
    const std::uint64_t g = slot_granules(b.length);
    if (b.length == 0 || b.length > UINT32_MAX || b.payload_offset % kGranule != 0 ||
        b.payload_offset >= a->layout.payload_bytes || g > (a->layout.payload_bytes - b.payload_offset) / kGranule ||
        !s.can_read(b.key)) {
      ++out.dropped;  // left to the end of recovery, which invalidates it
      continue;
    }
    const auto granule = static_cast<std::uint32_t>(b.payload_offset / kGranule);
    if (const std::uint32_t i = s.find_slot(agent_id, granule); i != kNil) {
      const BlockEntry& e = s.slab[i];
      if (e.key != b.key || e.generation != b.generation) ++out.dropped;
      continue;  // sent before (a repeat), or overlapping
    }
    const pool::Slot slot{b.payload_offset, g * kGranule};
    if (!a->space->reserve(slot).ok()) {
      ++out.dropped;  // overlaps an adopted block: not a block this coordinator can account for
      continue;
    }
    a->used_granules += g;
    std::uint32_t ns;
    if (auto it = s.ns_index.find(b.ns); it != s.ns_index.end()) {
      ns = it->second;
      if (s.namespaces[ns].tenant != a->reg.tenant) {
        // A block in a region its namespace may not use (the tenants file
        // changed): left out, so no one is handed a location in a region
        // that is not theirs.
        a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
        ++out.dropped;
        continue;
      }
    } else if (s.namespaces.size() < kNil) {
      ns = static_cast<std::uint32_t>(s.namespaces.size());
      s.ns_index.emplace(b.ns, ns);
      Namespace& recovered = s.namespaces.emplace_back();
      recovered.id = b.ns;
      recovered.tenant = a->reg.tenant;
    } else {
      a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
      ++out.dropped;
      continue;
    }
    if (const std::uint32_t i = s.find_key(ns, b.key); i != kNil) {
      BlockEntry& e = s.slab[i];
      if (e.state == BlockState::kCommitted && e.pins == 0 && e.generation < b.generation) {
        s.retire(i, std::nullopt);  // the older copy loses
      } else {
        a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
        ++out.dropped;
        continue;
      }
    }
    const std::uint32_t i = s.slab.allocate();
    if (i == kNil || !a->future->reserve(slot).ok()) {
      if (i != kNil) s.slab.free(i);
      a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
      ++out.dropped;
      continue;
    }
    BlockEntry& e = s.slab[i];
    e.key = b.key;
    e.generation = b.generation;
    e.stamp = ++s.touch_clock;
    e.agent = agent_id;
    e.granule = granule;
    e.length = static_cast<std::uint32_t>(b.length);
    e.ns = ns;
    e.state = BlockState::kCommitted;
    s.by_key.insert(key_hash(ns, b.key), i);
    s.by_slot.insert(slot_hash(agent_id, granule), i);
    a->lists.link_lru(s.slab, i);
    a->live_granules += g;
    ++a->committed_blocks;
    ++s.namespaces[ns].blocks;
    ++s.namespaces[ns].live_blocks;
    s.namespaces[ns].live_bytes += g * kGranule;
    s.lru_insert(i);
    s.next_generation = std::max(s.next_generation, b.generation + 1);
    ++out.adopted;
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
