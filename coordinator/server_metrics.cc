#include <string>
#include <vector>

#include "coordinator/server_impl.h"

namespace kvpool::coordinator {

using server_detail::ns_label;

void CoordinatorServer::Impl::init_metrics() {
  auto& r = *registry;
  const metrics::Labels none;
  std::vector<OpMetrics*> ops;
  for (std::uint16_t t : route_order) ops.push_back(&routes.at(t).metrics);
  ops.push_back(&unknown_op);
  for (OpMetrics* op : ops) {
    OpMetrics& m = *op;
    metrics::Labels l = {{"op", m.name}};
    m.requests = &r.counter("kvpool_coordinator_requests_total", "Control-protocol requests received, by operation", l);
    m.latency = &r.histogram("kvpool_coordinator_request_duration_seconds",
                             "Time from receiving a request to answering it, by operation (wait_for: the wait)",
                             metrics::latency_buckets(), l);
    for (std::size_t c = 1; c < m.errors.size(); ++c) {
      m.errors[c] = &r.counter("kvpool_coordinator_request_errors_total",
                               "Requests answered with an error, by operation and status code",
                               {{"op", m.name}, {"code", std::string(code_name(static_cast<StatusCode>(c)))}});
    }
  }
  const char* outcomes[] = {"placed", "exists", "pending", "error"};
  for (int i = 0; i < 4; ++i) {
    allocate_outcomes[i] = &r.counter("kvpool_coordinator_allocate_blocks_total",
                                      "Blocks asked for by allocate, by outcome", {{"outcome", outcomes[i]}});
  }
  commits_ok =
      &r.counter("kvpool_coordinator_commit_leases_total", "Write leases committed or refused", {{"result", "ok"}});
  commits_failed =
      &r.counter("kvpool_coordinator_commit_leases_total", "Write leases committed or refused", {{"result", "error"}});
  removes_ok =
      &r.counter("kvpool_coordinator_remove_blocks_total", "Blocks asked to be removed, by result", {{"result", "ok"}});
  removes_failed = &r.counter("kvpool_coordinator_remove_blocks_total", "Blocks asked to be removed, by result",
                              {{"result", "error"}});
  const char* expiry_help = "Leases that ran out before they were committed (write) or released (read)";
  write_lease_expiries = &r.counter("kvpool_coordinator_lease_expiries_total", expiry_help, {{"kind", "write"}});
  read_lease_expiries = &r.counter("kvpool_coordinator_lease_expiries_total", expiry_help, {{"kind", "read"}});
  tick_evictions = &r.counter("kvpool_coordinator_watermark_evictions_total",
                              "Blocks evicted by the background drain of agents above the high watermark", none);
  agent_deaths = &r.counter("kvpool_coordinator_agent_deaths_total",
                            "Agent incarnations declared dead (missed heartbeats or restarted)", none);
  invalidations_sent = &r.counter("kvpool_coordinator_invalidations_sent_total",
                                  "Slot invalidations pushed to agents (retries included)", none);
  r.gauge("kvpool_build_info", "kvpool version of this process", {{"version", "0.1.0"}}).set(1);
  collector_id = r.add_collector([this](metrics::Collector& c) { collect(c); });
}

void CoordinatorServer::Impl::collect(metrics::Collector& c) const {
  const auto now = Clock::now();
  Stats st = core->stats();
  auto g = [&](const char* name, const char* help, double v) { c.gauge(name, help, {}, v); };
  auto n = [&](const char* name, const char* help, double v) { c.counter(name, help, {}, v); };
  g("kvpool_coordinator_capacity_bytes", "Payload bytes of every live agent's region", st.capacity_bytes);
  g("kvpool_coordinator_used_bytes", "Bytes not allocatable now: live, removed-but-leased, awaiting invalidation",
    st.used_bytes);
  g("kvpool_coordinator_live_bytes", "Slot bytes of committed blocks and blocks being written", st.live_bytes);
  g("kvpool_coordinator_reclaiming_bytes", "Bytes quarantined or awaiting an invalidation acknowledgement",
    st.reclaiming_bytes);
  g("kvpool_coordinator_blocks", "Committed blocks (evicted or removed ones count until their agent acknowledges)",
    st.blocks);
  g("kvpool_coordinator_evicting_blocks",
    "Blocks evicted or removed whose agent has not yet acknowledged the slot invalidation (lookups reaching them wait)",
    st.evicting + st.removing);
  g("kvpool_coordinator_namespaces", "Registered namespaces", st.namespaces);
  g("kvpool_coordinator_write_leases", "Write leases outstanding", st.write_leases);
  g("kvpool_coordinator_read_leases", "Read leases outstanding", st.read_leases);
  g("kvpool_coordinator_waiters", "wait_for requests waiting", st.waiters);
  g("kvpool_coordinator_agents_alive", "Agents alive", st.agents_alive);
  g("kvpool_coordinator_agents_dead", "Agents declared dead (known incarnations)",
    static_cast<double>(st.agents.size() - st.agents_alive));
  g("kvpool_coordinator_membership_epoch", "Bumps on every agent join, restart and death", st.membership_epoch);
  g("kvpool_coordinator_uptime_seconds", "Seconds since the coordinator started",
    std::chrono::duration<double>(now - started).count());
  n("kvpool_coordinator_lookup_hits_total", "Blocks returned by lookups", st.lookup_hits);
  n("kvpool_coordinator_lookup_misses_total", "Keys asked by lookups and not returned", st.lookup_misses);
  n("kvpool_coordinator_evictions_total", "Blocks evicted under memory pressure (allocations and drains)",
    st.evictions);
  n("kvpool_coordinator_removals_total", "Blocks removed on request", st.removals);
  n("kvpool_coordinator_expired_write_leases_total", "Write leases that expired uncommitted", st.expired_write_leases);
  n("kvpool_coordinator_aborted_write_leases_total", "Write leases given up by their writers", st.aborted_write_leases);
  for (const AgentView& a : st.agents) {
    metrics::Labels l = {{"agent", std::to_string(to_u32(a.id))}, {"address", a.registration.control_address}};
    c.gauge("kvpool_coordinator_agent_up", "1 while the agent is alive, 0 once declared dead", l, a.alive ? 1 : 0);
    c.gauge("kvpool_coordinator_agent_heartbeat_age_seconds", "Seconds since the agent's last heartbeat", l,
            std::chrono::duration<double>(now - a.last_heartbeat).count());
    c.gauge("kvpool_coordinator_agent_capacity_bytes", "Payload bytes of the agent's region", l, a.capacity_bytes);
    c.gauge("kvpool_coordinator_agent_used_bytes", "Bytes of the agent's region not allocatable now", l, a.used_bytes);
    c.gauge("kvpool_coordinator_agent_blocks", "Committed blocks on the agent", l, a.blocks);
  }
  for (const NamespaceView& ns : core->namespaces()) {
    c.gauge("kvpool_coordinator_namespace_blocks", "Committed blocks of the namespace",
            {{"namespace", ns_label(ns.id)}, {"model", ns.descriptor.model_id}}, ns.blocks);
  }
}

}  // namespace kvpool::coordinator
