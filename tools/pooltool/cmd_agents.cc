// pooltool agents and drain: the agents that lend memory, and moving an
// agent's blocks off it.

#include <unistd.h>

#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <thread>

#include "runtime/common/units.h"
#include "tools/pooltool/admin.h"
#include "tools/pooltool/commands.h"
#include "tools/pooltool/doctor.h"
#include "tools/pooltool/output.h"

namespace kvpool::pooltool {
namespace {

// "up", "draining", "drained" (up, takes no blocks, holds none needed) or "down".
std::string agent_state(const rpc::AgentStatsRecord& a) {
  if (!a.alive) return "down";
  if (a.drained) return "drained";
  return a.draining ? "draining" : "up";
}

int undrain_agent(const Globals& g, AdminClient& c, const rpc::AgentStatsRecord& agent, const std::string& who) {
  rpc::DrainRequest req;
  req.agent = agent.agent;
  req.mode = rpc::DrainMode::kUndrain;
  auto r = c.drain(req);
  if (!r) return fail(g, r.error());
  if (g.json) {
    print_json({{"agent", agent.agent}, {"address", agent.control_address}, {"draining", false}});
  } else {
    std::cout << who << " takes new blocks again\n";
  }
  return kExitOk;
}

// What --json prints at the end of a drain (the keys print sorted).
json drain_json(const rpc::AgentStatsRecord& agent, const rpc::DrainReply& rep) {
  return {{"agent", agent.agent},
          {"address", agent.control_address},
          {"drained", rep.drained},
          {"draining", true},
          {"moved", rep.moved},
          {"blocks_left", rep.blocks_left},
          {"failed_attempts", rep.failed}};
}

int report_unplaceable(const Globals& g, const rpc::AgentStatsRecord& agent, const std::string& who,
                       const rpc::DrainReply& rep) {
  if (g.json) {
    json j = drain_json(agent, rep);
    j["unplaceable"] = rep.unplaceable;
    j["error"] = {{"code", std::string(code_name(rep.placement.code))}, {"message", rep.placement.message}};
    print_json(j);
  }
  std::fprintf(stderr,
               "pooltool: %s: %llu blocks cannot be placed on any other agent (%s); %llu moved. It stays "
               "draining (takes no new blocks) and keeps its %llu blocks, nothing is lost: free space "
               "(pooltool evict, pooltool quota), add an agent and run drain again, or pooltool drain --undrain\n",
               who.c_str(), static_cast<unsigned long long>(rep.blocks_left), rep.placement.message.c_str(),
               static_cast<unsigned long long>(rep.moved), static_cast<unsigned long long>(rep.blocks_left));
  return kExitFailed;
}

int report_drained(const Globals& g, const rpc::AgentStatsRecord& agent, const std::string& who,
                   const rpc::DrainReply& rep, double seconds) {
  if (g.json) {
    json j = drain_json(agent, rep);
    j["seconds"] = seconds;
    print_json(j);
  } else {
    std::cout << who << " drained: " << rep.moved << " blocks moved to other agents in " << std::fixed
              << std::setprecision(2) << seconds << " s" << (rep.failed ? " (" + std::to_string(rep.failed) +
              " attempts retried)" : "") << "; it takes no new blocks and can be stopped without losing one\n";
  }
  return kExitOk;
}

// Drain steps until the agent is drained, its blocks left have no room, or
// nothing moved for `stall`.
int drain_agent(const Globals& g, AdminClient& c, const rpc::AgentStatsRecord& agent, const std::string& who,
                std::uint32_t in_flight, std::chrono::nanoseconds stall, const std::string& stall_text) {
  rpc::DrainRequest req;
  req.agent = agent.agent;
  req.max_in_flight = in_flight;
  const bool bar = !g.json && ::isatty(STDERR_FILENO);
  const auto start = Clock::now();
  auto last_progress = start;
  std::uint64_t last_moved = 0;
  rpc::DrainReply rep;
  for (;;) {
    auto r = c.drain(req);
    if (!r) {
      if (bar) std::fprintf(stderr, "\n");
      return fail(g, r.error());
    }
    rep = *r;
    const std::uint64_t total = rep.moved + rep.blocks_left;
    if (bar) progress_bar(rep.moved, total, "blocks moved");
    if (rep.drained) break;
    const auto now = Clock::now();
    if (rep.moved != last_moved) {
      last_moved = rep.moved;
      last_progress = now;
    }
    // Nothing moving and blocks with no room: more calls will not help.
    if (rep.unplaceable > 0 && rep.in_flight == 0) {
      if (bar) std::fprintf(stderr, "\n");
      return report_unplaceable(g, agent, who, rep);
    }
    if (now - last_progress > stall) {
      if (bar) std::fprintf(stderr, "\n");
      return fail(g, Status(StatusCode::kDeadlineExceeded,
                            who + ": no block moved for " + stall_text + " (" + std::to_string(rep.blocks_left) +
                                " left, " + std::to_string(rep.writing) + " being written, " +
                                std::to_string(rep.failed) + " failed attempts): see the agent's and coordinator's "
                                "logs; it stays draining, run drain again to go on"),
                  kExitFailed);
    }
    // A step returns at once: poll briskly while copies are in flight (each
    // step tops the agent back up to --in-flight moves).
    std::this_thread::sleep_for(std::chrono::milliseconds(rep.in_flight > 0 ? 2 : 50));
  }
  if (bar) std::fprintf(stderr, "\n");
  return report_drained(g, agent, who, rep, std::chrono::duration<double>(Clock::now() - start).count());
}

}  // namespace

// ---- agents ----
int cmd_agents(const Globals& g, bool probe) {
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ag = (*c)->agents();
  if (!ag) return fail(g, ag.error());
  // The transports a worker on this host reaches each agent over, found by
  // reaching it (a UCX endpoint and a 64-byte read).
  std::map<std::uint32_t, AgentProbe> probes;
  if (probe) {
    auto list = (*c)->list_agents();
    if (!list) return fail(g, list.error());
    auto r = probe_agents(list->agents, std::min(g.timeout_ms, std::chrono::milliseconds(5000)));
    if (r) {
      for (auto& p : *r) probes[p.agent] = std::move(p);
    }
  }
  auto transports = [&](std::uint32_t id) -> std::string {
    auto it = probes.find(id);
    if (it == probes.end()) return "-";
    return it->second.status.ok() ? it->second.transports : "unreachable";
  };
  if (g.json) {
    json arr = json::array();
    for (const auto& a : ag->agents) {
      arr.push_back({{"id", a.agent},
                     {"incarnation", a.incarnation},
                     {"address", a.control_address},
                     {"host_id", a.host_id},
                     {"alive", a.alive},
                     {"heartbeat_age_seconds", static_cast<double>(a.heartbeat_age_ms) / 1000},
                     {"region_bytes", a.region_bytes},
                     {"capacity_bytes", a.capacity_bytes},
                     {"used_bytes", a.used_bytes},
                     {"live_bytes", a.live_bytes},
                     {"reclaiming_bytes", a.reclaiming_bytes},
                     {"blocks", a.blocks},
                     {"largest_free_bytes", a.largest_free},
                     {"state", agent_state(a)},
                     {"clock_offset_ms", a.clock_known ? json(a.clock_offset_ms) : json(nullptr)},
                     {"transports", probes.count(a.agent) && probes[a.agent].status.ok() ? json(probes[a.agent].transports)
                                                                                          : json(nullptr)},
                     {"reachable", probes.count(a.agent) ? json(probes[a.agent].status.ok()) : json(nullptr)},
                     {"draining", a.draining},
                     {"drained", a.drained}});
    }
    print_json({{"agents", arr}});
    return kExitOk;
  }
  Table t({"ID", "ADDRESS", "HOST", "TRANSPORTS", "REGION", "USED", "BLOCKS", "STATE", "HEARTBEAT"});
  for (const auto& a : ag->agents) {
    t.add({std::to_string(a.agent), a.control_address, a.host_id.substr(0, 12), transports(a.agent),
           human_bytes(a.region_bytes),
           human_bytes(a.used_bytes), std::to_string(a.blocks), agent_state(a),
           human_duration_ms(a.heartbeat_age_ms) + " ago"});
  }
  std::cout << t.render();
  return kExitOk;
}

// ---- drain ----
int cmd_drain(const Globals& g, const std::string& agent_text, bool undrain, std::uint32_t in_flight,
              const std::string& stall_text) {
  auto stall = parse_duration(stall_text);
  if (!stall || stall->count() <= 0) {
    return fail(g, Status(StatusCode::kInvalidArgument, "--stall-timeout: not a positive duration"), kExitUsage);
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto agent = (*c)->resolve_agent(agent_text);
  if (!agent) return fail(g, agent.error());
  if (!agent->alive) {
    return fail(g, Status(StatusCode::kFailedPrecondition,
                          "agent " + std::to_string(agent->agent) + " (" + agent->control_address +
                              ") is down: its blocks already left the pool; nothing to drain"));
  }
  const std::string who = "agent " + std::to_string(agent->agent) + " (" + agent->control_address + ")";
  if (undrain) return undrain_agent(g, **c, *agent, who);
  return drain_agent(g, **c, *agent, who, in_flight, *stall, stall_text);
}

}  // namespace kvpool::pooltool
