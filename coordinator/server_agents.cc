// What agents send (registration, heartbeats, recovery scans,
// acknowledgements), the agent list workers read, and what the coordinator
// pushes to agents and workers unasked.

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/server_impl.h"

namespace kvpool::coordinator {

using server_detail::logger;
using server_detail::unix_now_ms;

void CoordinatorServer::Impl::register_agent(const Call& c, rpc::RegisterAgentRequest& m) {
  AgentRegistration reg{m.agent.worker_address, m.agent.packed_rkey,  m.agent.host_id,     m.agent.control_address,
                        m.agent.region_base,    m.agent.region_bytes, m.agent.incarnation, m.agent.tenant};
  if (!reg.tenant.empty() && region_class(reg.tenant) != reg.tenant) {
    return c.resp.fail(Status(StatusCode::kFailedPrecondition,
                              "region " + reg.control_address + " is for tenant '" + reg.tenant +
                                  "', which is not an isolated tenant of this coordinator's --tenants file"));
  }
  Result<Rejoin> joined =
      m.rejoin ? core->rejoin_agent(reg, c.now) : core->register_agent(reg, c.now).map([](AgentId id) {
        return Rejoin{id, false};
      });
  if (!joined) return c.resp.fail(joined.error());
  const std::uint32_t id = to_u32(joined->id);
  {
    std::lock_guard lock(mu);
    agent_connections[id] = c.req.connection_id;
  }
  logger()->info("agent {} {}: {} bytes, host {}, incarnation {:#x}", id, m.rejoin ? "rejoined" : "registered",
                 reg.region_bytes, reg.host_id, reg.incarnation);
  rpc::RegisterAgentReply rep;
  rep.agent = id;
  rep.heartbeat_interval_ms = static_cast<std::uint32_t>(options.heartbeat_interval.count());
  rep.send_blocks = joined->send_blocks;
  rep.epoch = options.epoch;
  if (reg.tenant.empty() && any_isolated) {
    for (const Tenant& t : tenants->all()) {
      if (t.isolated()) rep.isolated.push_back({t.name, t.isolated_bytes});
    }
  }
  c.resp.reply(rpc::encode(rep));
}

void CoordinatorServer::Impl::heartbeat(const Call& c, rpc::HeartbeatRequest& m) {
  Status s = core->heartbeat(AgentId{m.agent}, m.incarnation, c.now);
  if (s.ok() && m.unix_ms != 0) {
    std::lock_guard lock(mu);
    agent_clock_offset_ms[m.agent] = m.unix_ms - unix_now_ms();
  }
  return s.ok() ? c.resp.reply({}) : c.resp.fail(s);
}

void CoordinatorServer::Impl::list_agents(const Call& c) {
  rpc::ListAgentsReply rep;
  rep.epoch = core->membership_epoch();
  const std::string mine = region_class(c.req.tenant);
  for (const auto& a : core->agents()) {
    // Only the regions this requester may reach: an rkey is access.
    if (a.registration.tenant != mine) continue;
    rpc::AgentRecord r;
    r.agent = to_u32(a.id);
    r.incarnation = a.incarnation;
    r.worker_address = a.registration.worker_address;
    r.packed_rkey = a.registration.packed_rkey;
    r.host_id = a.registration.host_id;
    r.control_address = a.registration.control_address;
    r.region_base = a.registration.region_base;
    r.region_bytes = a.registration.region_bytes;
    r.alive = a.alive;
    r.used_bytes = a.used_bytes;
    r.blocks = a.blocks;
    r.tenant = a.registration.tenant;
    rep.agents.push_back(std::move(r));
  }
  c.resp.reply(rpc::encode(rep));
}

void CoordinatorServer::Impl::recover_blocks(const Call& c, rpc::RecoverBlocksRequest& m) {
  std::vector<RecoveredBlock> blocks;
  blocks.reserve(m.blocks.size());
  for (const auto& b : m.blocks) blocks.push_back({b.ns, b.key, b.payload_offset, b.length, b.generation});
  auto res = core->recover_blocks(AgentId{m.agent}, m.incarnation, blocks, c.now);
  if (!res) return c.resp.fail(res.error());
  send_invalidations(res->invalidations);
  if (m.last) {
    if (Status s = core->finish_recovery(AgentId{m.agent}, m.incarnation, c.now); !s.ok()) return c.resp.fail(s);
  }
  c.resp.reply(rpc::encode(rpc::RecoverBlocksReply{res->adopted, res->dropped}));
}

void CoordinatorServer::Impl::invalidate_done(const Call& c, rpc::InvalidateMessage& m) {
  std::vector<SlotRef> slots;
  for (const auto& s : m.slots) slots.push_back({s.header_offset, s.payload_offset, s.length, s.generation});
  Status s = core->invalidated(AgentId{m.agent}, m.incarnation, slots, c.now);
  if (s.ok()) {
    acknowledge_removes(m);
    acknowledge_evictions(m);
  }
  return s.ok() ? c.resp.reply({}) : c.resp.fail(s);
}

void CoordinatorServer::Impl::removed_done(const Call& c, rpc::InvalidateMessage& m) {
  // The agent has noted blocks removed while read-leased (kPushRemoved):
  // the removes waiting for that can be answered.
  acknowledge_removes(m);
  c.resp.reply({});
}

void CoordinatorServer::Impl::drain_copied(const Call& c, rpc::DrainCopiedRequest& m) {
  std::vector<MoveOutcome> outcomes;
  outcomes.reserve(m.results.size());
  for (const auto& r : m.results) outcomes.push_back({r.id, r.status.to_status()});
  auto res = core->finish_moves(AgentId{m.agent}, m.incarnation, outcomes, c.now);
  if (!res) return c.resp.fail(res.error());
  std::size_t ok = 0;
  for (std::size_t i = 0; i < res->statuses.size(); ++i) {
    if (res->statuses[i].ok()) {
      ++ok;
    } else {
      logger()->info("drain of agent {}: move {} not applied: {}", m.agent, outcomes[i].id,
                     res->statuses[i].to_string());
    }
  }
  logger()->debug("drain of agent {}: {} of {} moves applied", m.agent, ok, outcomes.size());
  send_invalidations(res->invalidations);
  c.resp.reply({});
}

void CoordinatorServer::Impl::send_invalidations(const std::vector<InvalidateRequest>& reqs) {
  for (const auto& req : reqs) {
    std::uint64_t conn = 0;
    {
      std::lock_guard lock(mu);
      auto it = agent_connections.find(to_u32(req.agent));
      if (it == agent_connections.end()) continue;  // retried by tick once the agent is back
      conn = it->second;
    }
    invalidations_sent->inc(req.slots.size());
    rpc::InvalidateMessage msg;
    msg.agent = to_u32(req.agent);
    msg.incarnation = req.incarnation;
    msg.epoch = options.epoch;
    for (const auto& s : req.slots) msg.slots.push_back({s.header_offset, s.payload_offset, s.length, s.generation});
    if (Status st = server->push(conn, rpc::kPushInvalidate, rpc::encode(msg)); !st.ok()) {
      logger()->debug("invalidate push to agent {}: {}", msg.agent, st.to_string());
    }
  }
}

void CoordinatorServer::Impl::send_removed_leased(const std::vector<Location>& removed_leased) {
  std::map<std::uint32_t, rpc::InvalidateMessage> by_agent;
  for (const Location& l : removed_leased) {
    rpc::InvalidateMessage& m = by_agent[to_u32(l.agent)];
    m.agent = to_u32(l.agent);
    m.incarnation = l.incarnation;
    m.epoch = options.epoch;
    m.slots.push_back({l.header_offset, l.payload_offset, l.length, l.generation});
  }
  for (const auto& [agent, m] : by_agent) {
    std::uint64_t conn = 0;
    {
      std::lock_guard lock(mu);
      auto it = agent_connections.find(agent);
      if (it == agent_connections.end()) continue;
      conn = it->second;
    }
    if (Status st = server->push(conn, rpc::kPushRemoved, rpc::encode(m)); !st.ok()) {
      logger()->debug("removed push to agent {}: {}", agent, st.to_string());
    }
  }
}

void CoordinatorServer::Impl::broadcast_dead(const std::vector<DeadAgent>& dead) {
  if (dead.empty()) return;
  std::vector<std::uint64_t> workers;
  {
    std::lock_guard lock(mu);
    // agent_connections stays: the agent may already have rejoined or
    // restarted on a new connection under the same id (a registration
    // replaces the entry, a closed connection removes its own).
    workers.assign(worker_connections.begin(), worker_connections.end());
  }
  std::uint64_t epoch = core->membership_epoch();
  agent_deaths->inc(dead.size());
  for (const auto& d : dead) {
    logger()->warn("agent {} (incarnation {:#x}) is down: its blocks left the index", to_u32(d.agent), d.incarnation);
    std::string payload = rpc::encode(rpc::AgentDownMessage{to_u32(d.agent), d.incarnation, epoch});
    for (auto w : workers) (void)server->push(w, rpc::kPushAgentDown, payload);
  }
}

}  // namespace kvpool::coordinator
