// Writes: allocate (dedupe, limits, quota room, placement), commit and abort,
// and the validity of a write lease.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

bool CoordinatorCore::State::write_lease_valid(const WriteLease& l) const {
  const Agent& a = agent(l.agent);
  if (!a.alive || a.reg.incarnation != l.incarnation || a.joins != l.join) return false;
  const BlockEntry& e = slab[l.entry];
  return e.state == BlockState::kWriting && e.generation == l.generation;
}

void CoordinatorCore::State::expire_write_lease(const WriteLease& l, Clock::time_point now) {
  if (!write_lease_valid(l)) return;
  retire(l.entry, now + config.write_quarantine);
  ++expired_write_leases;
}

Result<AllocateResult> CoordinatorCore::allocate(NamespaceId ns_id, std::span<const BlockRequest> blocks,
                                                 const WriterInfo& writer, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  const std::uint64_t max_bytes = s.namespaces[*ns].block_bytes;
  if (max_bytes == 0) {
    return make_error(StatusCode::kNotFound, "namespace " + hex(ns_id) +
                                                 " is known only from blocks recovered after a coordinator restart: "
                                                 "register it again before writing");
  }

  std::vector<std::uint32_t> local;
  if (!writer.host_id.empty()) {
    for (const auto& a : s.agents) {
      if (a->alive && !a->recovering && a->reg.host_id == writer.host_id) local.push_back(to_u32(a->id));
    }
  }

  std::uint32_t client = 0;
  if (auto it = s.client_index.find(writer.client_id); it != s.client_index.end()) {
    client = it->second;
  } else {
    client = static_cast<std::uint32_t>(s.client_open.size());
    s.client_index.emplace(writer.client_id, client);
    s.client_open.push_back(0);
  }

  AllocateResult result;
  result.items.reserve(blocks.size());
  std::uint32_t budget = s.config.max_evictions_per_call;
  for (const BlockRequest& req : blocks) {
    AllocateItem item;
    if (req.length == 0 || req.length > max_bytes) {
      item.status = Status(StatusCode::kInvalidArgument,
                           "block " + key_text(req.key) + " length " + std::to_string(req.length) + " is not in 1.." +
                               std::to_string(max_bytes) + " (the namespace's block size)");
    } else if (!s.owns(req.key)) {
      item.status = s.shard_error(req.key);
    } else if (const std::uint32_t i = s.find_key(*ns, req.key); i != kNil) {
      BlockEntry& e = s.slab[i];
      if (e.state == BlockState::kCommitted) {
        item.outcome = AllocateOutcome::kExists;
        item.location = s.location_of(e);
        s.touch(i);
      } else {
        item.outcome = AllocateOutcome::kPending;
      }
    } else if (s.client_open[client] >= s.config.max_write_leases_per_client) {
      item.status = Status(StatusCode::kResourceExhausted,
                           "writer '" + writer.client_id + "' holds " + std::to_string(s.client_open[client]) +
                               " open write leases, the limit: commit or abort some first");
    } else if (!s.make_quota_room(*ns, static_cast<std::uint64_t>(slot_granules(req.length)) * kGranule)) {
      item.status = Status(
          StatusCode::kResourceExhausted,
          "namespace " + hex(ns_id) + " is at its quota and every block of it is read-leased or " + "being written");
    } else {
      item = s.place(*ns, req, local, client, now, budget);
    }
    result.items.push_back(std::move(item));
  }
  result.invalidations = s.collect_ready(now);
  result.membership_epoch = s.epoch;
  return result;
}

std::vector<Status> CoordinatorCore::commit(std::span<const LeaseId> leases, Clock::time_point now) {
  std::vector<Status> out;
  out.reserve(leases.size());
  ReadyCallbacks ready;
  {
    std::lock_guard lock(mu_);
    State& s = *s_;
    s.sweep(now);
    for (LeaseId lease : leases) {
      const std::optional<WriteLease> taken = s.write_leases.take(to_u64(lease));
      if (!taken) {
        out.emplace_back(StatusCode::kNotFound, "unknown write lease " + std::to_string(to_u64(lease)) +
                                                    " (never issued, committed, aborted or expired)");
        continue;
      }
      const WriteLease l = *taken;
      --s.client_open[l.client];
      const Agent& a = s.agent(l.agent);
      // An agent that rejoined since (same incarnation) lost this lease's
      // state when it was declared dead.
      if (!a.alive || a.reg.incarnation != l.incarnation || a.joins != l.join) {
        out.emplace_back(StatusCode::kUnavailable, "agent " + std::to_string(l.agent) + " incarnation " +
                                                       std::to_string(l.incarnation) +
                                                       " is gone and the block with it: write it again");
        continue;
      }
      if (now > l.deadline) {
        s.expire_write_lease(l, now);
        out.emplace_back(StatusCode::kFailedPrecondition,
                         "write lease " + std::to_string(to_u64(lease)) + " expired before the commit");
        continue;
      }
      BlockEntry& e = s.slab[l.entry];
      if (e.state != BlockState::kWriting || e.generation != l.generation) {
        out.emplace_back(StatusCode::kInternal,
                         "write lease " + std::to_string(to_u64(lease)) + " names an entry in another state");
        logger()->error("{}", out.back().to_string());
        continue;
      }
      Agent& owner = s.agent(l.agent);
      owner.lists.unlink(s.slab, l.entry);
      e.state = BlockState::kCommitted;
      e.stamp = ++s.touch_clock;
      s.lru_insert(l.entry);
      owner.lists.link_lru(s.slab, l.entry);
      ++owner.committed_blocks;
      ++s.namespaces[e.ns].blocks;
      s.waiters.notify_committed(e.ns, e.key, ready);
      out.emplace_back();
    }
  }
  run_callbacks(ready);
  return out;
}

BatchResult CoordinatorCore::abort(std::span<const LeaseId> leases, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  BatchResult r;
  r.statuses.reserve(leases.size());
  for (LeaseId lease : leases) {
    const std::optional<WriteLease> taken = s.write_leases.take(to_u64(lease));
    if (!taken) {
      r.statuses.emplace_back(StatusCode::kNotFound, "unknown write lease " + std::to_string(to_u64(lease)));
      continue;
    }
    const WriteLease l = *taken;
    --s.client_open[l.client];
    if (s.write_lease_valid(l)) {
      if (now > l.deadline) {
        s.retire(l.entry, now + s.config.write_quarantine);
        ++s.expired_write_leases;
      } else {
        s.retire(l.entry, std::nullopt);
        ++s.aborted_write_leases;
      }
    }
    r.statuses.emplace_back();
  }
  r.invalidations = s.collect_ready(now);
  return r;
}

}  // namespace kvpool::coordinator
