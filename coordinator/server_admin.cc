// What operators ask (pooltool): stats, usage, namespaces, quotas,
// evictions, drains.

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "coordinator/server_impl.h"

namespace kvpool::coordinator {

using server_detail::logger;
using server_detail::ns_label;
using server_detail::to_wire;
using server_detail::unix_now_ms;

void CoordinatorServer::Impl::stats(const Call& c) {
  if (!c.req.tenant.empty()) return c.resp.reply(rpc::encode(tenant_stats(c.req.tenant)));
  Stats st = core->stats();
  rpc::StatsReply rep;
  rep.agents_alive = st.agents_alive;
  rep.agents_dead = st.agents.size() - st.agents_alive;
  rep.capacity_bytes = st.capacity_bytes;
  rep.used_bytes = st.used_bytes;
  rep.blocks = st.blocks;
  rep.namespaces = st.namespaces;
  rep.lookup_hits = st.lookup_hits;
  rep.lookup_misses = st.lookup_misses;
  rep.live_bytes = st.live_bytes;
  rep.reclaiming_bytes = st.reclaiming_bytes;
  rep.write_leases = st.write_leases;
  rep.read_leases = st.read_leases;
  rep.evictions = st.evictions;
  rep.expired_write_leases = st.expired_write_leases;
  rep.unix_ms = unix_now_ms();
  // Only a leader serves at all behind etcd (the fence refuses first).
  rep.leader = options.epoch != 0;
  rep.shard = options.shard;
  rep.epoch = options.epoch;
  rep.uptime_ms =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(c.now - started).count());
  c.resp.reply(rpc::encode(rep));
}

rpc::StatsReply CoordinatorServer::Impl::tenant_stats(const std::string& tenant) const {
  // What a tenant may know: the regions it may reach and its namespaces.
  // Pool-wide counters (lookups, leases, evictions) mix every tenant's
  // traffic and stay 0.
  rpc::StatsReply rep;
  const std::string mine = region_class(tenant);
  for (const AgentView& a : core->agents()) {
    if (a.registration.tenant != mine) continue;
    if (!a.alive) {
      ++rep.agents_dead;
      continue;
    }
    ++rep.agents_alive;
    rep.capacity_bytes += a.capacity_bytes;
    rep.used_bytes += a.used_bytes;
    rep.live_bytes += a.live_bytes;
    rep.reclaiming_bytes += a.reclaiming_bytes;
  }
  for (const NamespaceView& ns : core->namespaces()) {
    if (!gate->allows(tenant, ns.id, *core)) continue;
    ++rep.namespaces;
    rep.blocks += ns.blocks;
  }
  rep.unix_ms = unix_now_ms();
  rep.leader = options.epoch != 0;
  rep.shard = options.shard;
  rep.epoch = options.epoch;
  rep.uptime_ms =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
  return rep;
}

void CoordinatorServer::Impl::list_namespaces(const Call& c) {
  rpc::ListNamespacesReply rep;
  for (const NamespaceView& ns : core->namespaces()) {
    if (!c.req.tenant.empty() && !gate->allows(c.req.tenant, ns.id, *core)) continue;
    rep.namespaces.push_back({ns.id, ns.descriptor, ns.block_bytes, ns.blocks, ns.live_blocks, ns.live_bytes,
                              ns.quota_blocks, ns.quota_bytes});
  }
  c.resp.reply(rpc::encode(rep));
}

void CoordinatorServer::Impl::agent_stats(const Call& c) {
  rpc::AgentStatsReply rep;
  const std::string mine = region_class(c.req.tenant);
  for (const AgentView& a : core->agents()) {
    // The operator sees every region; a tenant only those it may reach.
    if (!c.req.tenant.empty() && a.registration.tenant != mine) continue;
    rpc::AgentStatsRecord r;
    r.tenant = a.registration.tenant;
    r.agent = to_u32(a.id);
    r.incarnation = a.incarnation;
    r.host_id = a.registration.host_id;
    r.control_address = a.registration.control_address;
    r.alive = a.alive;
    r.heartbeat_age_ms =
        a.last_heartbeat >= c.now
            ? 0
            : static_cast<std::uint64_t>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(c.now - a.last_heartbeat).count());
    r.region_bytes = a.registration.region_bytes;
    r.capacity_bytes = a.capacity_bytes;
    r.used_bytes = a.used_bytes;
    r.live_bytes = a.live_bytes;
    r.reclaiming_bytes = a.reclaiming_bytes;
    r.blocks = a.blocks;
    r.largest_free = a.largest_free;
    r.draining = a.draining;
    r.drained = a.drained;
    {
      std::lock_guard lock(mu);
      auto it = agent_clock_offset_ms.find(r.agent);
      r.clock_known = a.alive && it != agent_clock_offset_ms.end();
      if (r.clock_known) r.clock_offset_ms = it->second;
    }
    rep.agents.push_back(std::move(r));
  }
  c.resp.reply(rpc::encode(rep));
}

void CoordinatorServer::Impl::usage(const Call& c, rpc::UsageRequest& m) {
  rpc::UsageReply rep = usage_rows(m);
  if (!c.req.tenant.empty()) {
    std::erase_if(rep.rows, [&](const rpc::UsageRow& r) { return !gate->allows(c.req.tenant, r.ns, *core); });
  }
  c.resp.reply(rpc::encode(rep));
}

rpc::UsageReply CoordinatorServer::Impl::usage_rows(const rpc::UsageRequest& m) const {
  // O(blocks): walks every agent's slots. For operators, not for workers.
  rpc::UsageReply rep;
  for (const AgentView& a : core->agents()) {
    if (!a.alive) continue;
    auto slots = core->slots(a.id);
    if (!slots) continue;
    std::map<NamespaceId, rpc::UsageRow> rows;
    for (const SlotView& v : *slots) {
      if (v.state != SlotState::kCommitted || (!m.all && v.namespace_id != m.ns)) continue;
      rpc::UsageRow& row = rows[v.namespace_id];
      row.ns = v.namespace_id;
      row.agent = to_u32(a.id);
      row.blocks += 1;
      row.bytes += v.length;
    }
    for (auto& [ns, row] : rows) rep.rows.push_back(row);
  }
  return rep;
}

void CoordinatorServer::Impl::set_quota(const Call& c, rpc::SetQuotaRequest& m) {
  auto res = core->set_quota(m.ns, m.quota_blocks, m.quota_bytes, c.now);
  if (!res) return c.resp.fail(res.error());
  send_invalidations(res->invalidations);
  c.resp.reply({});
}

void CoordinatorServer::Impl::evict_namespace(const Call& c, rpc::EvictNamespaceRequest& m) {
  bool known = false;
  for (const NamespaceView& ns : core->namespaces()) known = known || ns.id == m.ns;
  if (!known) return c.resp.fail(Status(StatusCode::kNotFound, "unknown namespace " + ns_label(m.ns)));
  EvictSummary sum = evict_blocks(m.ns, m.dry_run, m.older_than_ms, c.now);
  logger()->info("{} namespace {} for {}: {} blocks ({} bytes), {} removed, {} failed",
                 m.dry_run ? "dry-run evict of" : "evicted", ns_label(m.ns), c.req.peer_id, sum.blocks, sum.bytes,
                 sum.removed, sum.failed);
  // Answered once the agents have invalidated the slots (bounded, like
  // remove): a coordinator restart after the answer brings none back.
  reply_after_removed(c.resp, rpc::encode(rpc::EvictNamespaceReply{sum.blocks, sum.bytes, sum.removed, sum.failed}),
                      sum.removed_slots, sum.removed_leased, sum.invalidations, c.now);
}

CoordinatorServer::Impl::EvictSummary CoordinatorServer::Impl::evict_blocks(NamespaceId ns, bool dry_run,
                                                                            std::uint64_t older_than_ms,
                                                                            Clock::time_point now) {
  EvictSummary out;
  std::vector<Key128> keys;
  // A block used after it was listed may still go: the window is one pass.
  const std::uint64_t max_stamp =
      older_than_ms == 0 ? UINT64_MAX : core->stamp_at(now - std::chrono::milliseconds(older_than_ms));
  for (const AgentView& a : core->agents()) {
    if (!a.alive) continue;
    auto slots = core->slots(a.id);
    if (!slots) continue;
    for (const SlotView& v : *slots) {
      if (v.state != SlotState::kCommitted || v.namespace_id != ns || v.stamp > max_stamp) continue;
      keys.push_back(v.key);
      out.bytes += v.length;
    }
  }
  out.blocks = keys.size();
  if (dry_run) return out;
  for (std::size_t i = 0; i < keys.size(); i += rpc::kMaxBatch) {
    std::span<const Key128> batch(keys.data() + i, std::min<std::size_t>(rpc::kMaxBatch, keys.size() - i));
    auto res = core->remove(ns, batch, now);
    if (!res) {
      out.failed += batch.size();
      continue;
    }
    out.removed_slots.insert(out.removed_slots.end(), res->removed.begin(), res->removed.end());
    out.removed_leased.insert(out.removed_leased.end(), res->removed_leased.begin(), res->removed_leased.end());
    out.invalidations.insert(out.invalidations.end(), res->invalidations.begin(), res->invalidations.end());
    for (const auto& st : res->statuses) (st.ok() ? out.removed : out.failed) += 1;
  }
  removes_ok->inc(out.removed);
  removes_failed->inc(out.failed);
  return out;
}

void CoordinatorServer::Impl::drain(const Call& c, rpc::DrainRequest& m) {
  auto rep = drain_step(m, c.now);
  if (!rep) return c.resp.fail(rep.error());
  c.resp.reply(rpc::encode(*rep));
}

Result<rpc::DrainReply> CoordinatorServer::Impl::drain_step(const rpc::DrainRequest& m, Clock::time_point now) {
  const AgentId id{m.agent};
  if (m.mode == rpc::DrainMode::kUndrain) {
    if (Status s = core->undrain(id, now); !s.ok()) return tl::unexpected(s);
    return rpc::DrainReply{};
  }
  auto step = core->drain(id, std::clamp<std::uint32_t>(m.max_in_flight, 1, 4096), now);
  if (!step) return tl::unexpected(step.error());
  if (!step->moves.empty()) {
    rpc::DrainCopyMessage msg;
    msg.agent = m.agent;
    msg.incarnation = step->moves.front().from.incarnation;
    msg.epoch = options.epoch;
    std::set<std::uint32_t> targets;
    for (const BlockMove& bm : step->moves) {
      targets.insert(to_u32(bm.to.agent));
      msg.moves.push_back({bm.id, bm.ns, bm.key, to_wire(bm.from), to_wire(bm.to)});
    }
    for (const AgentView& a : core->agents()) {
      if (!targets.count(to_u32(a.id))) continue;
      msg.targets.push_back({to_u32(a.id), a.incarnation, a.registration.worker_address, a.registration.packed_rkey,
                             a.registration.host_id, a.registration.region_base, a.registration.region_bytes});
    }
    std::optional<std::uint64_t> conn;
    {
      std::lock_guard lock(mu);
      if (auto it = agent_connections.find(m.agent); it != agent_connections.end()) conn = it->second;
    }
    Status sent = conn ? server->push(*conn, rpc::kPushDrainCopy, rpc::encode(msg))
                       : Status(StatusCode::kUnavailable, "agent " + std::to_string(m.agent) + " is not connected");
    if (!sent.ok()) {
      logger()->warn("drain of agent {}: {} moves not sent: {}", m.agent, msg.moves.size(), sent.to_string());
      std::vector<MoveOutcome> failed;
      for (const BlockMove& bm : step->moves) failed.push_back({bm.id, sent});
      if (auto r = core->finish_moves(id, msg.incarnation, failed, now)) send_invalidations(r->invalidations);
      step->in_flight -= std::min<std::uint64_t>(step->in_flight, failed.size());
    }
  }
  rpc::DrainReply rep;
  rep.draining = true;
  rep.drained = step->drained;
  rep.blocks_left = step->blocks_left;
  rep.writing = step->writing;
  rep.in_flight = step->in_flight;
  rep.moved = step->moved;
  rep.failed = step->failed;
  rep.unplaceable = step->unplaceable;
  rep.placement = rpc::StatusWire::from(step->placement);
  return rep;
}

}  // namespace kvpool::coordinator
