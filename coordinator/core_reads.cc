// Reads: lookup (with read leases), contains, release, remove, and the
// evictions a lookup may have to wait for.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

Result<LookupResult> CoordinatorCore::lookup(NamespaceId ns_id, std::span<const Key128> keys, bool take_read_lease,
                                             Clock::time_point now, bool report_evicting) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  if (Status st = s.check_read(keys); !st.ok()) return tl::unexpected(st);
  LookupResult r;
  r.membership_epoch = s.epoch;
  std::vector<std::pair<std::uint32_t, Generation>> pins;
  for (const Key128& key : keys) {
    const std::uint32_t i = s.find_key(*ns, key);
    if (i == kNil || s.slab[i].state != BlockState::kCommitted) {
      // The prefix ends here. A miss on a block still being evicted must not
      // be seen yet: the caller waits for the agent and asks again. (One
      // branch when nothing is evicting; hits never get here.)
      if (report_evicting) {
        if (const auto* ev = s.evicting_of(*ns, key)) {
          r.evicting = *ev;
          for (const auto& [entry, generation] : pins) s.unpin(entry, generation);
          r.locations.clear();
          return r;
        }
      }
      break;
    }
    r.locations.push_back(s.location_of(s.slab[i]));
    s.touch(i);
    if (take_read_lease) {
      s.pin(i);
      pins.emplace_back(i, s.slab[i].generation);
    }
  }
  s.lookup_hits += r.locations.size();
  s.lookup_misses += keys.size() - r.locations.size();
  if (take_read_lease && !pins.empty()) {
    const std::uint64_t id = s.next_lease++;
    const Clock::time_point deadline = now + s.config.read_lease_ttl;
    s.read_leases.add(id, ReadLease{deadline, std::move(pins)});
    r.read_lease = LeaseId{id};
    r.lease_deadline = deadline;
  }
  return r;
}

std::vector<EvictingSlot> CoordinatorCore::evicting(NamespaceId ns_id, std::span<const Key128> keys) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  std::vector<EvictingSlot> out;
  if (s.evicting.empty()) return out;
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return out;
  for (const Key128& key : keys) {
    if (const auto* ev = s.evicting_of(*ns, key)) out.insert(out.end(), ev->begin(), ev->end());
  }
  return out;
}

bool CoordinatorCore::any_evicting(std::span<const EvictingSlot> slots) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  if (s.evicting.empty()) return false;
  for (const EvictingSlot& e : slots) {
    const Agent* a = s.find_agent(e.agent);
    if (a == nullptr || !a->alive) continue;
    auto it = a->evicting.find(e.header_offset);
    if (it != a->evicting.end() && it->second.generation == e.generation) return true;
  }
  return false;
}

Result<std::vector<bool>> CoordinatorCore::contains(NamespaceId ns_id, std::span<const Key128> keys,
                                                    Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  if (Status st = s.check_read(keys); !st.ok()) return tl::unexpected(st);
  std::vector<bool> out(keys.size(), false);
  for (std::size_t k = 0; k < keys.size(); ++k) {
    const std::uint32_t i = s.find_key(*ns, keys[k]);
    out[k] = i != kNil && s.slab[i].state == BlockState::kCommitted;
  }
  return out;
}

Status CoordinatorCore::release(LeaseId lease, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  const std::optional<ReadLease> l = s.read_leases.take(to_u64(lease));
  if (!l) {
    return Status(StatusCode::kNotFound, "unknown read lease " + std::to_string(to_u64(lease)) + " (or expired)");
  }
  for (const auto& [i, generation] : l->pins) s.unpin(i, generation);
  return Status::ok_status();
}

Result<BatchResult> CoordinatorCore::remove(NamespaceId ns_id, std::span<const Key128> keys, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  BatchResult r;
  r.statuses.reserve(keys.size());
  for (const Key128& key : keys) {
    if (!s.can_read(key)) {
      r.statuses.push_back(s.shard_error(key));
      continue;
    }
    const std::uint32_t i = s.find_key(*ns, key);
    if (i == kNil) {
      r.statuses.emplace_back(StatusCode::kNotFound, "block " + key_text(key) + " is not in the pool");
      continue;
    }
    BlockEntry& e = s.slab[i];
    if (e.state == BlockState::kWriting) {
      r.statuses.emplace_back(StatusCode::kFailedPrecondition,
                              "block " + key_text(key) + " is being written: remove it after its commit");
      continue;
    }
    ++s.removals;
    if (e.pins == 0) {
      r.removed.push_back(s.location_of(e));
      s.retire_tracked(i, /*removal=*/true);
    } else {
      // Readers still hold it: out of the index now, space later.
      r.removed_leased.push_back(s.location_of(e));
      Agent& a = s.agent(e.agent);
      s.by_key.erase(key_hash(e.ns, e.key), i);
      s.lru_erase(i);
      a.live_granules -= slot_granules(e.length);
      --a.committed_blocks;
      Namespace& n = s.namespaces[e.ns];
      --n.blocks;
      --n.live_blocks;
      n.live_bytes -= static_cast<std::uint64_t>(slot_granules(e.length)) * kGranule;
      e.state = BlockState::kRemovedLeased;
    }
    r.statuses.emplace_back();
  }
  r.invalidations = s.collect_ready(now);
  return r;
}

}  // namespace kvpool::coordinator
