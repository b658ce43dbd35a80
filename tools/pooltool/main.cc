// pooltool: the operator's CLI for a kvpool pool. Human tables by default,
// --json for scripts; exit codes in --help (output.h).

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iomanip>
#include <map>
#include <optional>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "runtime/common/logging.h"
#include "runtime/common/secret.h"
#include "runtime/common/tenants.h"
#include "runtime/common/subprocess.h"
#include "runtime/common/units.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/shard_map.h"
#include "tools/pooltool/admin.h"
#include "tools/pooltool/cluster.h"
#include "tools/pooltool/doctor.h"
#include "tools/pooltool/output.h"
#include "tools/replay/replay.h"

using namespace kvpool;
using namespace kvpool::pooltool;
using json = nlohmann::json;

namespace {

constexpr const char* kExitCodes =
    "Exit codes:\n"
    "  0  ok\n"
    "  1  the operation failed (unknown namespace or agent, a key not removed, a failing doctor check,\n"
    "     a drain with blocks no other agent has room for, a replay with wrong bytes, ...)\n"
    "  2  usage error (unknown command or option, malformed key, size, duration or file)\n"
    "  3  the coordinator could not be reached, refused this client's secret, or went away mid-call\n"
    "With --json, an error that stops a command also prints {\"error\": {\"code\", \"message\"}} on stdout; messages go to stderr.\n";

struct Globals {
  std::string coordinator = "127.0.0.1:7400";
  bool json = false;
  std::string timeout = "10s";
  std::string secret_file;
  std::chrono::milliseconds timeout_ms{10000};
};

void print_json(const json& j) { std::cout << j.dump(2) << "\n"; }

// Reports an error on stderr (and as {"error": ...} on stdout with --json);
// returns the exit code.
int fail(const Globals& g, const Status& s, int code) {
  std::fprintf(stderr, "pooltool: %s\n", s.to_string().c_str());
  if (g.json) print_json({{"error", {{"code", std::string(code_name(s.code()))}, {"message", s.message()}}}});
  return code;
}
int fail(const Globals& g, const Status& s) { return fail(g, s, exit_code_for(s)); }
// A malformed --coordinator is a usage error; anything else is unreachable.
int fail_connect(const Globals& g, const Status& s) {
  return fail(g, s, s.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitUnreachable);
}

Result<std::unique_ptr<AdminClient>> connect(const Globals& g) {
  AdminOptions o;
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.secret_file = g.secret_file;
  auto c = AdminClient::connect(o);
  if (!c && c.error().code() != StatusCode::kInvalidArgument) {
    // Whatever the reason (refused, timed out, refused hello), the
    // coordinator is not reachable as asked.
    return make_error(StatusCode::kUnavailable,
                      "cannot reach the coordinator at " + g.coordinator + ": " + c.error().message());
  }
  return c;
}

std::string model_of(const std::map<NamespaceId, rpc::NamespaceRecord>& ns, NamespaceId id) {
  auto it = ns.find(id);
  return it == ns.end() ? std::string() : it->second.descriptor.model_id;
}

// ---- shards add ----
int cmd_shards_add(const Globals& g, std::uint32_t shard, bool wait, const std::string& wait_for) {
  auto addr = etcd::parse_etcd_address(g.coordinator);
  if (!addr) {
    return fail(g, Status(StatusCode::kInvalidArgument, "shards add: --coordinator must be etcd://HOST:PORT[,...]"),
                kExitUsage);
  }
  auto limit = parse_duration(wait_for);
  if (!limit || limit->count() <= 0) {
    return fail(g, Status(StatusCode::kInvalidArgument, "--timeout-move: not a positive duration"), kExitUsage);
  }
  const std::string rest = g.coordinator.substr(7);
  const std::string endpoints = rest.substr(0, rest.find('/'));
  auto ec = etcd::Client::create({addr->endpoints, std::min(g.timeout_ms, std::chrono::milliseconds(5000))});
  if (!ec) return fail(g, ec.error());
  // The new shard must be up: it takes writes the moment the map changes.
  if (auto leader = etcd::find_leader(**ec, shard); !leader) {
    return fail(g, Status(StatusCode::kFailedPrecondition,
                          "shard " + std::to_string(shard) + " has no leader (" + leader.error().message() +
                              "): start kvpool-coordinator --etcd " + endpoints + " --shard " + std::to_string(shard) +
                              " and kvpool-agent --coordinator etcd://" + endpoints + "/" + std::to_string(shard) +
                              " first"),
                kExitFailed);
  }
  auto cur = (*ec)->get(etcd::kShardMapKey);
  if (!cur) return fail(g, cur.error());
  etcd::ShardMap map = etcd::ShardMap::equal(1, 0);
  std::int64_t mod = 0;
  if (!cur->kvs.empty()) {
    auto m = etcd::parse_shard_map(cur->kvs[0].value);
    if (!m) return fail(g, Status(StatusCode::kFailedPrecondition, "etcd key /kvpool/shardmap: " + m.error().message()));
    map = *m;
    mod = cur->kvs[0].mod_revision;
  }
  auto next = etcd::add_shard(map, shard);
  if (!next) return fail(g, next.error(), kExitFailed);
  etcd::ShardRange moved;
  for (const auto& r : next->ranges) {
    if (r.shard == shard) moved = r;
  }
  auto txn = (*ec)->txn({cur->kvs.empty() ? etcd::Compare::created(etcd::kShardMapKey, 0)
                                          : etcd::Compare::modified(etcd::kShardMapKey, mod)},
                        {etcd::TxnOp::put(etcd::kShardMapKey, etcd::encode_shard_map(*next))});
  if (!txn) return fail(g, txn.error());
  if (!txn->succeeded) {
    return fail(g, Status(StatusCode::kFailedPrecondition, "the shard map changed meanwhile: run the command again"), kExitFailed);
  }
  if (!g.json) {
    std::printf("shard map version %lld: keys [%llu, %llu) move from shard %u to shard %u\n",
                static_cast<long long>(next->version), static_cast<unsigned long long>(moved.start),
                static_cast<unsigned long long>(moved.end), *moved.from, shard);
    std::fflush(stdout);
  }
  bool done = false;
  double seconds = 0;
  if (wait) {
    const auto t0 = Clock::now();
    for (auto d = Deadline::after(*limit); !d.expired();) {
      auto m = etcd::read_shard_map(**ec);
      if (m && m->version > next->version) {
        done = true;
        for (const auto& r : m->ranges) done &= !(r.shard == shard && r.from);
        if (done) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  if (g.json) {
    print_json({{"version", next->version},
                {"start", moved.start},
                {"end", moved.end},
                {"from", *moved.from},
                {"to", shard},
                {"done", wait ? json(done) : json(nullptr)},
                {"seconds", wait ? json(seconds) : json(nullptr)}});
  } else if (wait) {
    if (done) std::printf("moved in %.1f s: shard %u owns [%llu, %llu)\n", seconds, shard,
                          static_cast<unsigned long long>(moved.start), static_cast<unsigned long long>(moved.end));
  }
  if (wait && !done) {
    std::fprintf(stderr, "pooltool: the move did not end within %s (pooltool status shows the range still moving)\n",
                 wait_for.c_str());
    return kExitFailed;
  }
  return kExitOk;
}

// ---- status ----
json cluster_json(const ClusterView& v) {
  json members = json::array();
  for (const auto& m : v.members) {
    members.push_back({{"endpoint", m.endpoint},
                       {"healthy", m.health.ok()},
                       {"error", m.health.ok() ? json(nullptr) : json(m.health.message())},
                       {"member_id", m.status ? json(member_hex(m.status->member_id)) : json(nullptr)},
                       {"version", m.status ? json(m.status->version) : json(nullptr)},
                       {"raft_leader", m.raft_leader}});
  }
  json shards = json::array();
  for (const auto& s : v.shards) {
    json ranges = json::array();
    for (const auto& r : s.ranges) {
      json o{{"start", r.start}, {"end", r.end}};
      if (r.from) o["moving_from"] = *r.from;
      ranges.push_back(o);
    }
    json j{{"shard", s.shard}, {"key_fraction", s.key_fraction}, {"ranges", ranges}};
    if (s.leader_status.ok()) {
      j["leader"] = {{"address", s.leader.address}, {"epoch", s.leader.epoch}, {"id", s.leader.id}};
    } else {
      j["leader"] = nullptr;
      j["error"] = s.leader_status.message();
    }
    if (s.stats_status.ok()) {
      j["agents_alive"] = s.stats.agents_alive;
      j["agents_dead"] = s.stats.agents_dead;
      j["blocks"] = s.stats.blocks;
      j["used_bytes"] = s.stats.used_bytes;
      j["capacity_bytes"] = s.stats.capacity_bytes;
    } else if (s.leader_status.ok()) {
      j["error"] = s.stats_status.message();
    }
    shards.push_back(std::move(j));
  }
  std::size_t healthy = 0;
  for (const auto& m : v.members) healthy += m.health.ok();
  json agents = json::array();
  for (const auto& a : v.agents) {
    char inc[24];
    std::snprintf(inc, sizeof inc, "%#llx", static_cast<unsigned long long>(a.incarnation));
    agents.push_back({{"name", a.name},
                      {"shard", a.shard},
                      {"host", a.host},
                      {"incarnation", inc},
                      {"address", a.address},
                      {"region_bytes", a.region_bytes},
                      {"lease", a.lease}});
  }
  return {{"endpoints", members},
          {"agents", v.agents_status.ok() ? agents : json{{"error", v.agents_status.message()}}},
          {"healthy", healthy},
          {"raft_leader", v.raft_leader ? json(member_hex(*v.raft_leader)) : json(nullptr)},
          {"shard_map", v.map_status.ok() ? json{{"version", v.map.version}, {"shards", v.map.shards().size()}}
                                          : json{{"error", v.map_status.message()}}},
          {"shards", shards}};
}

std::string cluster_text(const ClusterView& v) {
  std::string out;
  std::size_t healthy = 0;
  std::string version;
  for (const auto& m : v.members) {
    healthy += m.health.ok();
    if (m.status && version.empty()) version = m.status->version;
  }
  std::string leader = "none known";
  if (v.raft_leader) {
    leader = member_hex(*v.raft_leader);
    for (const auto& m : v.members) {
      if (m.raft_leader) leader += " (" + m.endpoint + ")";
    }
  }
  Table head({"", ""});
  head.add({"etcd", std::to_string(v.members.size()) + " endpoint" + (v.members.size() == 1 ? "" : "s") + ", " +
                        std::to_string(healthy) + " healthy; raft leader " + leader +
                        (version.empty() ? "" : "; etcd " + version)});
  head.add({"shard map", v.map_status.ok() ? (v.map.version == 0 ? std::string("none in etcd: one shard, 0")
                                                                  : "version " + std::to_string(v.map.version) + ", " +
                                                                        std::to_string(v.map.shards().size()) +
                                                                        " shard" + (v.map.shards().size() == 1 ? "" : "s"))
                                           : v.map_status.message()});
  std::string text = head.render();
  out += text.substr(text.find('\n') + 1);
  Table shards({"SHARD", "LEADER", "EPOCH", "KEYS", "AGENTS", "BLOCKS", "USED"});
  for (const auto& s : v.shards) {
    std::string keys = percent(s.key_fraction);
    for (const auto& r : s.ranges) {
      if (r.from) keys += " (moving from " + std::to_string(*r.from) + ")";
    }
    if (!s.leader_status.ok()) {
      shards.add({std::to_string(s.shard), "none: " + s.leader_status.message(), "-", keys, "-", "-", "-"});
      continue;
    }
    const bool st = s.stats_status.ok();
    shards.add({std::to_string(s.shard), s.leader.address + " (" + s.leader.id + ")", std::to_string(s.leader.epoch),
                keys, st ? std::to_string(s.stats.agents_alive) + " up" : "-",
                st ? std::to_string(s.stats.blocks) : "-",
                st ? human_bytes(s.stats.used_bytes) + " of " + human_bytes(s.stats.capacity_bytes)
                   : s.stats_status.message()});
  }
  out += "\n" + shards.render();
  Table members({"ETCD ENDPOINT", "HEALTH", "MEMBER", "RAFT"});
  for (const auto& m : v.members) {
    members.add({m.endpoint, m.health.ok() ? "healthy" : "unhealthy: " + m.health.message(),
                 m.status ? member_hex(m.status->member_id) : "-",
                 m.raft_leader ? "leader" : (m.status ? "follower" : "-")});
  }
  out += "\n" + members.render();
  // Agent membership in etcd: what every shard leader watches.
  Table agents({"AGENT (ETCD MEMBER)", "SHARD", "HOST", "INCARNATION", "REGION"});
  for (const auto& a : v.agents) {
    char inc[24];
    std::snprintf(inc, sizeof inc, "%#llx", static_cast<unsigned long long>(a.incarnation));
    agents.add({a.name, std::to_string(a.shard), a.host, inc, human_bytes(a.region_bytes)});
  }
  if (!v.agents_status.ok()) {
    out += "\netcd agent members: " + v.agents_status.message() + "\n";
  } else if (v.agents.empty()) {
    out += "\nno agent is a member in etcd (/kvpool/agents/)\n";
  } else {
    out += "\n" + agents.render();
  }
  return out;
}

int cmd_status(const Globals& g) {
  std::optional<ClusterView> cluster;
  if (etcd::is_etcd_address(g.coordinator)) {
    auto v = inspect_cluster(g.coordinator, g.timeout_ms, g.secret_file);
    if (!v) return fail(g, v.error(), kExitUsage);
    cluster = std::move(*v);
  }
  auto c = connect(g);
  if (!c) {
    // Behind etcd, what etcd knows is worth showing when the leader is away.
    if (cluster) {
      if (g.json) {
        print_json({{"coordinator", g.coordinator},
                    {"error", {{"code", std::string(code_name(c.error().code()))}, {"message", c.error().message()}}},
                    {"etcd", cluster_json(*cluster)}});
      } else {
        std::cout << cluster_text(*cluster);
      }
      std::fprintf(stderr, "pooltool: %s\n", c.error().to_string().c_str());
      return kExitUnreachable;
    }
    return fail_connect(g, c.error());
  }
  auto st = (*c)->stats();
  if (!st) return fail(g, st.error());
  const auto& s = *st;
  const std::uint64_t asked = s.lookup_hits + s.lookup_misses;
  const double hit_rate = asked == 0 ? 0.0 : static_cast<double>(s.lookup_hits) / static_cast<double>(asked);
  const std::string version = (*c)->server().server_version;
  if (g.json) {
    print_json({{"coordinator", g.coordinator},
                {"version", version},
                {"uptime_seconds", static_cast<double>(s.uptime_ms) / 1000},
                {"agents_alive", s.agents_alive},
                {"agents_dead", s.agents_dead},
                {"capacity_bytes", s.capacity_bytes},
                {"used_bytes", s.used_bytes},
                {"live_bytes", s.live_bytes},
                {"reclaiming_bytes", s.reclaiming_bytes},
                {"blocks", s.blocks},
                {"namespaces", s.namespaces},
                {"lookup_hits", s.lookup_hits},
                {"lookup_misses", s.lookup_misses},
                {"hit_rate", asked == 0 ? json(nullptr) : json(hit_rate)},
                {"write_leases", s.write_leases},
                {"read_leases", s.read_leases},
                {"evictions", s.evictions},
                {"expired_write_leases", s.expired_write_leases},
                // null without --etcd; only a leader answers at all behind etcd.
                {"ha", s.leader ? json{{"shard", s.shard}, {"epoch", s.epoch}, {"leader", true}} : json(nullptr)},
                // null without etcd: its members, the shard map, every shard's leader.
                {"etcd", cluster ? cluster_json(*cluster) : json(nullptr)}});
    return kExitOk;
  }
  Table t({"", ""});
  t.add({"coordinator", g.coordinator + " (" + version + ", up " + human_duration_ms(s.uptime_ms) + ")"});
  if (s.leader) {
    t.add({"high availability",
           "leader of shard " + std::to_string(s.shard) + " (epoch " + std::to_string(s.epoch) + "), through etcd"});
  }
  t.add({"agents", std::to_string(s.agents_alive) + " up, " + std::to_string(s.agents_dead) + " down"});
  t.add({"capacity", human_bytes(s.capacity_bytes)});
  t.add({"used",
         human_bytes(s.used_bytes) +
             (s.capacity_bytes
                  ? " (" + percent(static_cast<double>(s.used_bytes) / static_cast<double>(s.capacity_bytes)) + ")"
                  : "") +
             (s.reclaiming_bytes ? ", " + human_bytes(s.reclaiming_bytes) + " being reclaimed" : "")});
  t.add({"blocks", std::to_string(s.blocks) + " in " + std::to_string(s.namespaces) + " namespace" +
                       (s.namespaces == 1 ? "" : "s")});
  t.add({"lookups", std::to_string(s.lookup_hits) + " blocks hit, " + std::to_string(s.lookup_misses) + " missed" +
                        (asked ? " (hit rate " + percent(hit_rate) + ")" : "")});
  t.add({"leases", std::to_string(s.write_leases) + " write, " + std::to_string(s.read_leases) + " read"});
  t.add({"evictions",
         std::to_string(s.evictions) + " (" + std::to_string(s.expired_write_leases) + " write leases expired)"});
  std::string text = t.render();
  std::cout << text.substr(text.find('\n') + 1);  // no header row
  if (cluster) std::cout << "\n" << cluster_text(*cluster);
  return kExitOk;
}

// "up", "draining", "drained" (up, takes no blocks, holds none needed) or "down".
std::string agent_state(const rpc::AgentStatsRecord& a) {
  if (!a.alive) return "down";
  if (a.drained) return "drained";
  return a.draining ? "draining" : "up";
}

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

// The fraction of its quota a namespace uses (the larger of blocks and
// bytes when it has both); null without a quota.
json quota_used(const rpc::NamespaceRecord& n) {
  double f = -1;
  if (n.quota_blocks != 0) f = static_cast<double>(n.live_blocks) / static_cast<double>(n.quota_blocks);
  if (n.quota_bytes != 0) f = std::max(f, static_cast<double>(n.live_bytes) / static_cast<double>(n.quota_bytes));
  return f < 0 ? json(nullptr) : json(f);
}

// "812 of 1000 blocks (81.2%)", "1.5 GiB of 2.0 GiB (75.0%)", or "-".
std::string quota_text(const rpc::NamespaceRecord& n) {
  std::string out;
  if (n.quota_blocks != 0) {
    out = std::to_string(n.live_blocks) + " of " + std::to_string(n.quota_blocks) + " blocks (" +
          percent(static_cast<double>(n.live_blocks) / static_cast<double>(n.quota_blocks)) + ")";
  }
  if (n.quota_bytes != 0) {
    out += (out.empty() ? "" : ", ") + human_bytes(n.live_bytes) + " of " + human_bytes(n.quota_bytes) + " (" +
           percent(static_cast<double>(n.live_bytes) / static_cast<double>(n.quota_bytes)) + ")";
  }
  return out.empty() ? "-" : out;
}

json namespace_json(const rpc::NamespaceRecord& n) {
  const auto& d = n.descriptor;
  return {{"id", ns_to_hex(n.id)},
          {"model", d.model_id},
          {"dtype", d.dtype},
          {"layers", d.num_layers},
          {"kv_heads", d.num_kv_heads},
          {"head_dim", d.head_dim},
          {"tokens_per_block", d.tokens_per_block},
          {"layout", d.layout},
          {"tp_rank", d.tp_rank},
          {"tp_size", d.tp_size},
          {"block_bytes", n.block_bytes},
          {"blocks", n.blocks},
          {"live_blocks", n.live_blocks},
          {"live_bytes", n.live_bytes},
          {"quota_blocks", n.quota_blocks},
          {"quota_bytes", n.quota_bytes},
          {"quota_used", quota_used(n)}};
}

// ---- namespaces ----
int cmd_namespaces(const Globals& g) {
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->namespaces();
  if (!ns) return fail(g, ns.error());
  if (g.json) {
    json arr = json::array();
    for (const auto& n : ns->namespaces) arr.push_back(namespace_json(n));
    print_json({{"namespaces", arr}});
    return kExitOk;
  }
  Table t({"ID", "MODEL", "DTYPE", "LAYOUT", "TOKENS/BLOCK", "TP", "BLOCK", "BLOCKS", "QUOTA (USED OF)"});
  for (const auto& n : ns->namespaces) {
    const auto& d = n.descriptor;
    t.add({ns_to_hex(n.id), d.model_id, d.dtype, d.layout, std::to_string(d.tokens_per_block),
           std::to_string(d.tp_rank) + "/" + std::to_string(d.tp_size), human_bytes(n.block_bytes),
           std::to_string(n.blocks), quota_text(n)});
  }
  std::cout << t.render();
  return kExitOk;
}

// ---- usage ----
int cmd_usage(const Globals& g, const std::string& ns_text) {
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto list = (*c)->namespaces();
  if (!list) return fail(g, list.error());
  std::map<NamespaceId, rpc::NamespaceRecord> by_id;
  for (const auto& n : list->namespaces) by_id[n.id] = n;
  rpc::UsageRequest req;
  if (!ns_text.empty()) {
    auto ns = (*c)->resolve_namespace(ns_text);
    if (!ns) return fail(g, ns.error());
    req.all = false;
    req.ns = ns->id;
  }
  auto usage = (*c)->usage(req);
  if (!usage) return fail(g, usage.error());
  auto agents = (*c)->agents();
  if (!agents) return fail(g, agents.error());
  struct Sum {
    std::uint64_t blocks = 0, bytes = 0;
  };
  std::map<NamespaceId, Sum> per_ns;
  std::map<std::uint32_t, Sum> per_agent;
  std::map<std::uint32_t, std::uint64_t> capacity;
  std::map<std::uint32_t, std::string> address;
  for (const auto& a : agents->agents) {
    capacity[a.agent] = a.capacity_bytes;
    address[a.agent] = a.control_address;
    if (a.alive) per_agent[a.agent];  // every live agent gets a row, empty or not
  }
  if (!req.all) per_ns[req.ns];
  for (const auto& r : usage->rows) {
    per_ns[r.ns].blocks += r.blocks;
    per_ns[r.ns].bytes += r.bytes;
    per_agent[r.agent].blocks += r.blocks;
    per_agent[r.agent].bytes += r.bytes;
  }
  if (g.json) {
    json jn = json::array(), ja = json::array(), jr = json::array();
    for (const auto& [id, s] : per_ns) {
      jn.push_back(
          {{"namespace", ns_to_hex(id)}, {"model", model_of(by_id, id)}, {"blocks", s.blocks}, {"bytes", s.bytes}});
    }
    for (const auto& [id, s] : per_agent) {
      ja.push_back({{"agent", id},
                    {"address", address[id]},
                    {"blocks", s.blocks},
                    {"bytes", s.bytes},
                    {"capacity_bytes", capacity[id]}});
    }
    for (const auto& r : usage->rows) {
      jr.push_back({{"namespace", ns_to_hex(r.ns)}, {"agent", r.agent}, {"blocks", r.blocks}, {"bytes", r.bytes}});
    }
    print_json({{"by_namespace", jn}, {"by_agent", ja}, {"rows", jr}});
    return kExitOk;
  }
  Table tn({"NAMESPACE", "MODEL", "BLOCKS", "BYTES"});
  for (const auto& [id, s] : per_ns) {
    tn.add({ns_to_hex(id), model_of(by_id, id), std::to_string(s.blocks), human_bytes(s.bytes)});
  }
  Table ta({"AGENT", "ADDRESS", "BLOCKS", "BYTES", "OF CAPACITY"});
  for (const auto& [id, s] : per_agent) {
    ta.add({std::to_string(id), address[id], std::to_string(s.blocks), human_bytes(s.bytes),
            capacity[id] ? percent(static_cast<double>(s.bytes) / static_cast<double>(capacity[id])) : "-"});
  }
  std::cout << "By namespace:\n" << tn.render() << "\nBy agent:\n" << ta.render();
  return kExitOk;
}

// Keys from the command line (32 hex digits each) or from a token file.
Result<std::vector<Key128>> keys_from(const std::vector<std::string>& hex, const std::string& tokens_file,
                                      const rpc::NamespaceRecord& ns, std::size_t* tokens_out) {
  std::vector<Key128> keys;
  if (!tokens_file.empty()) {
    auto tokens = read_tokens(tokens_file);
    if (!tokens) return tl::unexpected(tokens.error());
    *tokens_out = tokens->size();
    return prefix_keys(ns.id, *tokens, ns.descriptor.tokens_per_block);
  }
  for (const auto& h : hex) {
    auto k = key_from_hex(h);
    if (!k) return tl::unexpected(k.error());
    keys.push_back(*k);
  }
  return keys;
}

// ---- lookup ----
int cmd_lookup(const Globals& g, const std::string& ns_text, const std::vector<std::string>& hex,
               const std::string& tokens_file) {
  if (hex.empty() == tokens_file.empty()) {
    return fail(g, Status(StatusCode::kInvalidArgument, "lookup: give keys or --tokens FILE (one of them)"),
                kExitUsage);
  }
  for (const auto& h : hex) {
    if (auto k = key_from_hex(h); !k) return fail(g, k.error(), kExitUsage);
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  std::size_t tokens = 0;
  auto keys = keys_from(hex, tokens_file, *ns, &tokens);
  if (!keys) return fail(g, keys.error(), kExitUsage);
  auto agents = (*c)->agents();
  if (!agents) return fail(g, agents.error());
  std::map<std::uint32_t, std::string> address;
  for (const auto& a : agents->agents) address[a.agent] = a.control_address;
  rpc::LookupReply rep;
  if (!keys->empty()) {
    auto r = (*c)->lookup(ns->id, *keys);
    if (!r) return fail(g, r.error());
    rep = *r;
  }
  const std::size_t prefix = rep.locations.size();
  const std::uint32_t tpb = ns->descriptor.tokens_per_block;
  if (g.json) {
    json blocks = json::array();
    for (std::size_t i = 0; i < prefix; ++i) {
      const auto& l = rep.locations[i];
      blocks.push_back({{"index", i},
                        {"key", key_to_hex((*keys)[i])},
                        {"agent", l.agent},
                        {"address", address[l.agent]},
                        {"payload_offset", l.payload_offset},
                        {"length", l.length},
                        {"generation", l.generation}});
    }
    json out = {{"namespace", ns_to_hex(ns->id)},
                {"keys", keys->size()},
                {"prefix_blocks", prefix},
                {"cached_tokens", prefix * tpb},
                {"blocks", blocks}};
    if (!tokens_file.empty()) out["tokens"] = tokens;
    print_json(out);
    return kExitOk;
  }
  std::cout << "cached prefix: " << prefix << " of " << keys->size() << " blocks (" << prefix * tpb << " tokens";
  if (!tokens_file.empty()) std::cout << " of " << tokens;
  std::cout << ")\n";
  if (prefix > 0) {
    Table t({"#", "KEY", "AGENT", "ADDRESS", "OFFSET", "LENGTH", "GENERATION"});
    for (std::size_t i = 0; i < prefix; ++i) {
      const auto& l = rep.locations[i];
      t.add({std::to_string(i), key_to_hex((*keys)[i]), std::to_string(l.agent), address[l.agent],
             std::to_string(l.payload_offset), human_bytes(l.length), std::to_string(l.generation)});
    }
    std::cout << t.render();
  }
  return kExitOk;
}

// ---- remove ----
int cmd_remove(const Globals& g, const std::string& ns_text, const std::vector<std::string>& hex) {
  std::vector<Key128> keys;
  for (const auto& h : hex) {
    auto k = key_from_hex(h);
    if (!k) return fail(g, k.error(), kExitUsage);
    keys.push_back(*k);
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  auto rep = (*c)->remove(ns->id, keys);
  if (!rep) return fail(g, rep.error());
  std::size_t removed = 0;
  json results = json::array();
  Table t({"KEY", "RESULT"});
  for (std::size_t i = 0; i < keys.size() && i < rep->results.size(); ++i) {
    Status s = rep->results[i].to_status();
    removed += s.ok() ? 1 : 0;
    results.push_back(
        {{"key", key_to_hex(keys[i])}, {"status", std::string(code_name(s.code()))}, {"message", s.message()}});
    t.add({key_to_hex(keys[i]), s.ok() ? "removed" : s.to_string()});
  }
  const bool all = removed == keys.size();
  if (g.json) {
    print_json({{"namespace", ns_to_hex(ns->id)},
                {"removed", removed},
                {"failed", keys.size() - removed},
                {"results", results}});
  } else {
    std::cout << t.render();
  }
  return all ? kExitOk : kExitFailed;
}

// ---- evict ----
int cmd_evict(const Globals& g, const std::string& ns_text, bool dry_run, const std::string& older_than) {
  std::uint64_t older_ms = 0;
  if (!older_than.empty()) {
    auto d = parse_duration(older_than);
    if (!d || d->count() <= 0) {
      return fail(g, Status(StatusCode::kInvalidArgument, "--older-than: not a positive duration"), kExitUsage);
    }
    older_ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(*d).count());
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  auto rep = (*c)->evict_namespace(ns->id, dry_run, older_ms);
  if (!rep) return fail(g, rep.error());
  if (g.json) {
    print_json({{"namespace", ns_to_hex(ns->id)},
                {"model", ns->descriptor.model_id},
                {"dry_run", dry_run},
                {"older_than_seconds", older_ms == 0 ? json(nullptr) : json(static_cast<double>(older_ms) / 1000)},
                {"blocks", rep->blocks},
                {"bytes", rep->bytes},
                {"removed", rep->removed},
                {"failed", rep->failed}});
  } else if (dry_run) {
    std::cout << "would evict " << rep->blocks << " blocks (" << human_bytes(rep->bytes) << ") of namespace "
              << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << ")\n";
  } else {
    std::cout << "evicted " << rep->removed << " of " << rep->blocks << " blocks (" << human_bytes(rep->bytes)
              << ") of namespace " << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << ")";
    if (rep->failed) std::cout << "; " << rep->failed << " could not be removed (being written or read)";
    std::cout << "\n";
  }
  return rep->failed == 0 ? kExitOk : kExitFailed;
}

// ---- quota ----
int cmd_quota(const Globals& g, const std::string& ns_text, const std::string& size_text) {
  std::uint64_t blocks = 0, bytes = 0;
  const std::string suffix = "blocks";
  if (size_text.size() > suffix.size() && size_text.compare(size_text.size() - suffix.size(), suffix.size(), suffix) == 0) {
    try {
      blocks = std::stoull(size_text.substr(0, size_text.size() - suffix.size()));
    } catch (...) {
      return fail(g, Status(StatusCode::kInvalidArgument, "quota: '" + size_text + "' is not a block count"), kExitUsage);
    }
  } else {
    auto b = parse_size(size_text);
    if (!b) return fail(g, Status(StatusCode::kInvalidArgument, "quota: " + b.error().message()), kExitUsage);
    bytes = *b;
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  if (Status st = (*c)->set_quota(ns->id, blocks, bytes); !st.ok()) return fail(g, st);
  if (g.json) {
    print_json({{"namespace", ns_to_hex(ns->id)}, {"quota_blocks", blocks}, {"quota_bytes", bytes}});
  } else if (blocks == 0 && bytes == 0) {
    std::cout << "namespace " << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << "): no quota\n";
  } else {
    std::cout << "namespace " << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << "): quota "
              << (blocks != 0 ? std::to_string(blocks) + " blocks" : human_bytes(bytes)) << "\n";
  }
  return kExitOk;
}

// ---- replay ----
int cmd_replay(const Globals& g, const std::string& path, std::size_t max_requests, replay::Options o) {
  auto trace = replay::load_trace(path, max_requests);
  if (!trace) return fail(g, trace.error(), kExitUsage);
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.secret_file = g.secret_file;
  const bool bar = !g.json && ::isatty(STDERR_FILENO);
  if (bar) {
    o.progress = [](std::size_t done, std::size_t total) {
      const int width = 40;
      const int filled = total == 0 ? width : static_cast<int>(width * done / total);
      std::fprintf(stderr, "\r[%s%s] %zu/%zu requests", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), done, total);
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  auto r = replay::run(o, *trace);
  if (!r) return fail(g, r.error());
  if (g.json) {
    print_json({{"requests", r->requests},
                {"failed_requests", r->failed_requests},
                {"block_hit_rate", r->rates.block_hit_rate()},
                {"token_hit_rate", r->rates.token_hit_rate()},
                {"blocks", r->rates.blocks},
                {"hit_blocks", r->rates.hit_blocks},
                {"bytes_moved", r->bytes_moved},
                {"wrong_bytes", r->wrong_bytes},
                {"seconds", r->seconds},
                {"requests_per_second", r->seconds > 0 ? r->requests / r->seconds : 0.0},
                {"latency_ms", {{"p50", r->p50_ms}, {"p90", r->p90_ms}, {"p99", r->p99_ms}, {"max", r->max_ms}}}});
  } else {
    std::printf("replayed %zu requests (%zu failed) with %d workers in %.2f s (%.0f requests/s)\n", r->requests,
                r->failed_requests, o.workers, r->seconds, r->seconds > 0 ? r->requests / r->seconds : 0.0);
    std::printf("block hit rate  %.4f (%llu of %llu blocks)\n", r->rates.block_hit_rate(),
                static_cast<unsigned long long>(r->rates.hit_blocks), static_cast<unsigned long long>(r->rates.blocks));
    std::printf("token hit rate  %.4f\n", r->rates.token_hit_rate());
    std::printf("bytes moved     %s (%.2f GB/s)\n", human_bytes(r->bytes_moved).c_str(),
                r->seconds > 0 ? r->bytes_moved / r->seconds / 1e9 : 0.0);
    std::printf("latency         p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms per request\n", r->p50_ms,
                r->p90_ms, r->p99_ms, r->max_ms);
    std::printf("wrong bytes     %llu\n", static_cast<unsigned long long>(r->wrong_bytes));
  }
  return r->wrong_bytes == 0 && r->failed_requests == 0 ? kExitOk : kExitFailed;
}

// A progress bar on stderr when it is a terminal (never with --json):
// "[#####.....] 120/400 label".
void progress_bar(std::uint64_t done, std::uint64_t total, const std::string& label) {
  const int width = 40;
  const int filled = total == 0 ? width : static_cast<int>(width * std::min(done, total) / total);
  std::fprintf(stderr, "\r[%s%s] %llu/%llu %s", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), static_cast<unsigned long long>(done),
               static_cast<unsigned long long>(total), label.c_str());
  std::fflush(stderr);
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
  rpc::DrainRequest req;
  req.agent = agent->agent;
  if (undrain) {
    req.mode = rpc::DrainMode::kUndrain;
    auto r = (*c)->drain(req);
    if (!r) return fail(g, r.error());
    if (g.json) {
      print_json({{"agent", agent->agent}, {"address", agent->control_address}, {"draining", false}});
    } else {
      std::cout << who << " takes new blocks again\n";
    }
    return kExitOk;
  }
  req.max_in_flight = in_flight;
  const bool bar = !g.json && ::isatty(STDERR_FILENO);
  const auto start = Clock::now();
  auto last_progress = start;
  std::uint64_t last_moved = 0;
  rpc::DrainReply rep;
  for (;;) {
    auto r = (*c)->drain(req);
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
      if (g.json) {
        print_json({{"agent", agent->agent},
                    {"address", agent->control_address},
                    {"drained", false},
                    {"draining", true},
                    {"moved", rep.moved},
                    {"blocks_left", rep.blocks_left},
                    {"unplaceable", rep.unplaceable},
                    {"failed_attempts", rep.failed},
                    {"error", {{"code", std::string(code_name(rep.placement.code))}, {"message", rep.placement.message}}}});
      }
      std::fprintf(stderr,
                   "pooltool: %s: %llu blocks cannot be placed on any other agent (%s); %llu moved. It stays "
                   "draining (takes no new blocks) and keeps its %llu blocks, nothing is lost: free space "
                   "(pooltool evict, pooltool quota), add an agent and run drain again, or pooltool drain --undrain\n",
                   who.c_str(), static_cast<unsigned long long>(rep.blocks_left), rep.placement.message.c_str(),
                   static_cast<unsigned long long>(rep.moved), static_cast<unsigned long long>(rep.blocks_left));
      return kExitFailed;
    }
    if (now - last_progress > *stall) {
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
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (g.json) {
    print_json({{"agent", agent->agent},
                {"address", agent->control_address},
                {"drained", true},
                {"draining", true},
                {"moved", rep.moved},
                {"blocks_left", rep.blocks_left},
                {"failed_attempts", rep.failed},
                {"seconds", seconds}});
  } else {
    std::cout << who << " drained: " << rep.moved << " blocks moved to other agents in " << std::fixed
              << std::setprecision(2) << seconds << " s" << (rep.failed ? " (" + std::to_string(rep.failed) +
              " attempts retried)" : "") << "; it takes no new blocks and can be stopped without losing one\n";
  }
  return kExitOk;
}

// ---- secret ----
int cmd_secret_new(const Globals& g, const std::string& path, const std::string& tenant, const std::string& namespaces,
                   const std::string& tenants_file, const std::string& isolated) {
  if (!isolated.empty() && tenant.empty()) {
    return fail(g, Status(StatusCode::kInvalidArgument, "--isolated needs --tenant"), kExitUsage);
  }
  if (!tenant.empty()) {
    if (namespaces.empty() || tenants_file.empty()) {
      return fail(g, Status(StatusCode::kInvalidArgument, "--tenant needs --namespaces and --tenants"), kExitUsage);
    }
    Tenant t;
    t.name = tenant;
    if (!isolated.empty()) {
      auto size = parse_size(isolated);
      if (!size || *size < kMinIsolatedBytes) {
        return fail(g, Status(StatusCode::kInvalidArgument, "--isolated: a region size of at least 1MiB (e.g. 4GiB)"),
                    kExitUsage);
      }
      t.isolated_bytes = *size;
    }
    for (std::size_t at = 0;;) {
      std::size_t comma = namespaces.find(',', at);
      t.namespaces.push_back(namespaces.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
    // Checked before anything is written, so a refusal leaves no file.
    if (auto existing = TenantTable::load(tenants_file); existing && existing->find(tenant) != nullptr) {
      return fail(g, Status(StatusCode::kAlreadyExists,
                            "tenants file " + tenants_file + " names tenant '" + tenant + "' already"));
    }
    if (Status s = create_tenant_secret_file(path, tenant); !s.ok()) return fail(g, s);
    auto cred = load_secret(path);
    if (!cred) return fail(g, cred.error());
    t.key = std::string(cred->key());
    if (Status s = append_tenant(tenants_file, t); !s.ok()) {
      std::remove(path.c_str());
      return fail(g, s);
    }
    if (g.json) {
      print_json({{"path", path}, {"tenant", tenant}, {"tenants_file", tenants_file}});
    } else {
      std::cout << "wrote tenant '" << tenant << "''s credential to " << path << " (mode 0600) and added the tenant to "
                << tenants_file << ": give the credential to the tenant's workers (--secret-file), and restart the "
                << "coordinator with --tenants " << tenants_file << "\n";
    }
    return kExitOk;
  }
  if (Status s = create_secret_file(path); !s.ok()) return fail(g, s);
  if (g.json) {
    print_json({{"path", path}});
  } else {
    std::cout << "wrote a new cluster secret to " << path
              << " (mode 0600): copy it to every host of the pool, or point --secret-file at it\n";
  }
  return kExitOk;
}

// ---- doctor ----
int cmd_doctor(const Globals& g, bool no_probe, const std::string& max_skew) {
  auto skew = parse_duration(max_skew);
  if (!skew || skew->count() <= 0) {
    return fail(g, Status(StatusCode::kInvalidArgument, "--max-clock-skew: not a positive duration"), kExitUsage);
  }
  DoctorOptions o;
  o.max_clock_skew_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*skew).count();
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.probe = !no_probe;
  o.secret_file = g.secret_file;
  auto checks = run_doctor(o);
  bool failed = false;
  json arr = json::array();
  for (const auto& c : checks) {
    failed = failed || c.level == CheckLevel::kFail;
    arr.push_back({{"name", c.name}, {"status", level_name(c.level)}, {"detail", c.detail}, {"fix", c.fix}});
  }
  if (g.json) {
    print_json({{"ok", !failed}, {"checks", arr}});
  } else {
    for (const auto& c : checks) {
      std::printf("[%-4s] %s: %s\n", level_name(c.level), c.name.c_str(), c.detail.c_str());
      if (!c.fix.empty() && c.level != CheckLevel::kOk) std::printf("       fix: %s\n", c.fix.c_str());
    }
  }
  return failed ? kExitFailed : kExitOk;
}

// ---- demo ----
int cmd_demo(const std::vector<std::string>& args) {
  std::string demo = bin_dir() + "/kvpool-demo";
  if (access(demo.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "pooltool: %s not found: build it (scripts/demo.sh builds and runs it)\n", demo.c_str());
    return kExitFailed;
  }
  std::vector<char*> argv;
  argv.push_back(demo.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  execv(demo.c_str(), argv.data());
  std::perror("pooltool: exec kvpool-demo");
  return kExitFailed;
}

// ---- bench ----
int cmd_bench(const Globals& g, const std::string& block, std::uint32_t blocks, std::uint32_t rounds) {
  auto size = parse_size(block);
  if (!size) return fail(g, size.error(), kExitUsage);
  {
    auto c = connect(g);
    if (!c) return fail_connect(g, c.error());
  }
  BenchOptions o;
  o.secret_file = g.secret_file;
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.block_bytes = *size;
  o.blocks = blocks;
  o.rounds = rounds;
  const bool bar = !g.json && ::isatty(STDERR_FILENO);
  if (bar) {
    o.progress = [](std::uint32_t done, std::uint32_t total) {
      progress_bar(done, total, "rounds");
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  auto r = run_bench(o);
  if (!r) return fail(g, r.error());
  if (g.json) {
    print_json({{"block_bytes", r->block_bytes},
                {"blocks", r->blocks},
                {"rounds", r->rounds},
                {"put_gbps", r->put_gbps},
                {"get_gbps", r->get_gbps},
                {"lookup_us", r->lookup_us},
                {"transports", r->transports},
                {"verify_failures", r->verify_failures}});
  } else {
    std::printf("%u x %s blocks, best of %u rounds, through the live pool over %s:\n", r->blocks,
                human_bytes(r->block_bytes).c_str(), r->rounds, r->transports.c_str());
    std::printf("  put     %.2f GB/s\n  get     %.2f GB/s (verified)\n  lookup  %.0f us per batch\n", r->put_gbps,
                r->get_gbps, r->lookup_us);
    std::printf("(kvbench --mode e2e measures the same path against an agent it starts itself.)\n");
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pooltool: inspect and operate a kvpool pool"};
  app.footer(kExitCodes);
  app.require_subcommand(1);
  app.fallthrough();
  Globals g;
  if (const char* env = std::getenv("KVPOOL_COORDINATOR")) g.coordinator = env;
  app.add_option("--coordinator", g.coordinator,
                 "HOST:PORT of the coordinator, or etcd://HOST:PORT[,...][/SHARD]: the shard's leader "
                 "(default: $KVPOOL_COORDINATOR, else 127.0.0.1:7400)")
      ->capture_default_str();
  app.add_flag("--json", g.json, "Print JSON (for scripts) instead of tables");
  app.add_option("--timeout", g.timeout, "Deadline of each coordinator call")->capture_default_str();
  app.add_option("--secret-file", g.secret_file,
                 "The cluster secret file (default: $KVPOOL_SECRET_FILE, else /etc/kvpool/secret for root, "
                 "~/.config/kvpool/secret otherwise; SECURITY.md)")
      ->check(CLI::ExistingFile);

  auto* status = app.add_subcommand("status", "Agents up and down, capacity, use, blocks, hit rate, uptime");
  auto* agents = app.add_subcommand(
      "agents", "One row per agent: address, UCX transports from this host, region, use, blocks, state, heartbeat age");
  bool agents_no_probe = false;
  agents->add_flag("--no-probe", agents_no_probe,
                   "Do not reach each agent over UCX (its TRANSPORTS column then shows -)");
  auto* namespaces = app.add_subcommand("namespaces", "Registered namespaces: model, layout, block size, blocks");
  std::string usage_ns;
  auto* usage = app.add_subcommand("usage", "Bytes and blocks by namespace and by agent");
  usage->add_option("--namespace,-n", usage_ns, "Only this namespace (id or model)");

  std::string lookup_ns, tokens_file;
  std::vector<std::string> lookup_keys;
  auto* lookup = app.add_subcommand("lookup", "Where blocks live and how long a prefix is cached");
  lookup->add_option("namespace", lookup_ns, "Namespace id (hex) or model id")->required();
  lookup->add_option("keys", lookup_keys, "Block keys, 32 hex digits each, in prefix order");
  lookup->add_option("--tokens", tokens_file,
                     "File of token ids (whitespace/comma separated, or a JSON array): keyed with the "
                     "runtime's prefix_keys");

  std::string remove_ns;
  std::vector<std::string> remove_keys;
  auto* remove = app.add_subcommand("remove", "Remove blocks by key");
  remove->add_option("namespace", remove_ns, "Namespace id (hex) or model id")->required();
  remove->add_option("keys", remove_keys, "Block keys, 32 hex digits each")->required();

  std::string evict_ns;
  bool dry_run = false;
  auto* evict = app.add_subcommand("evict", "Remove every block of a namespace");
  evict->add_option("--namespace,-n", evict_ns, "Namespace id (hex) or model id")->required();
  evict->add_flag("--dry-run", dry_run, "Only count what would be removed");
  std::string older_than;
  evict->add_option("--older-than", older_than,
                    "Only blocks not written or looked up for this long (30m, 2h; to about a second)");

  bool no_probe = false;
  auto* doctor = app.add_subcommand("doctor", "Check this host and the pool; print a fix for each problem");
  doctor->add_flag("--no-probe", no_probe, "Skip the put/get probe through libkvpool");
  std::string max_skew = "500ms";
  doctor->add_option("--max-clock-skew", max_skew, "Warn when the coordinator's or an agent's clock is further off")
      ->capture_default_str();

  auto* demo = app.add_subcommand("demo", "Run the pool demo (kvpool-demo; extra arguments go to it)");
  demo->allow_extras();
  demo->prefix_command();

  std::string bench_block = "1MiB";
  std::uint32_t bench_blocks = 64, bench_rounds = 3;
  auto* bench = app.add_subcommand("bench", "Put, get and lookup throughput through the live pool (libkvpool)");
  bench->add_option("--block", bench_block, "Block size")->capture_default_str();
  bench->add_option("--blocks", bench_blocks, "Blocks per batch")->check(CLI::Range(1u, 4096u))->capture_default_str();
  bench->add_option("--rounds", bench_rounds, "Rounds (the best is reported)")
      ->check(CLI::Range(1u, 100u))
      ->capture_default_str();

  std::string quota_ns, quota_size;
  auto* quota = app.add_subcommand("quota", "Set a namespace's budget: a write over it evicts that namespace's "
                                            "least recently used unleased blocks, exactly");
  quota->add_option("namespace", quota_ns, "Namespace id (hex) or model id")->required();
  quota->add_option("size", quota_size, "Bytes (4GiB), blocks (10000blocks), or 0 to lift it")->required();

  std::string trace_file;
  replay::Options ro;
  std::size_t replay_requests = 0;
  auto* replay_cmd = app.add_subcommand("replay", "Replay a Mooncake-format request trace against the live pool");
  replay_cmd->add_option("trace", trace_file, "JSON-lines trace (../shared/traces/README.md)")->required();
  replay_cmd->add_option("--workers", ro.workers, "Concurrent workers, each with its own client")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  replay_cmd->add_option("--requests", replay_requests, "Replay only the first N requests (0: all)");
  replay_cmd->add_option("--bytes-per-token", ro.bytes_per_token,
                         "KV bytes per token (a 512-token block must be 64 KiB..256 MiB)")
      ->capture_default_str();
  replay_cmd->add_option("--capacity-blocks", ro.capacity_blocks,
                         "Quota of the run's namespace in blocks, exact LRU (0: the pool's watermarks decide)");
  replay_cmd->add_option("--speed", ro.speed, "X times real time by the trace's timestamps; 0: as fast as possible")
      ->capture_default_str();
  replay_cmd->add_option("--model", ro.model, "Model id of the run's namespace")->capture_default_str();

  std::string drain_agent, drain_stall = "60s";
  bool undrain = false;
  std::uint32_t drain_in_flight = 256;
  auto* drain = app.add_subcommand(
      "drain", "Move an agent's blocks to the other agents (agent to agent), then mark it drained: it takes no new "
               "blocks and can stop without losing one");
  drain->add_option("agent", drain_agent, "Agent id or address (pooltool agents)")->required();
  drain->add_flag("--undrain", undrain, "Bring a draining or drained agent back: it takes new blocks again");
  drain->add_option("--in-flight", drain_in_flight, "Blocks being copied at once")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  drain->add_option("--stall-timeout", drain_stall, "Give up when no block moved for this long")
      ->capture_default_str();

  std::uint32_t add_shard_id = 0;
  bool add_wait = false;
  std::string add_timeout = "300s";
  auto* shards_cmd = app.add_subcommand("shards", "The shard map in etcd (--coordinator etcd://HOST:PORT,...)");
  shards_cmd->require_subcommand(1);
  auto* shards_add = shards_cmd->add_subcommand(
      "add", "Add a shard: the upper half of the largest key range moves to it, its old owner copies the blocks over "
             "(start the shard's coordinators and agents first; coordinator/README.md, \"Adding a shard\")");
  shards_add->add_option("shard", add_shard_id, "The new shard's number")->required();
  shards_add->add_flag("--wait", add_wait, "Wait until the move is over");
  shards_add->add_option("--timeout-move", add_timeout, "With --wait: give up after this long")->capture_default_str();

  std::string secret_path;
  auto* secret = app.add_subcommand("secret", "The cluster secret file");
  secret->require_subcommand(1);
  auto* secret_new = secret->add_subcommand("new", "Create a new secret file (mode 0600); never overwrites one");
  secret_new->add_option("path", secret_path, "Where to write it")->required();
  std::string secret_tenant, secret_namespaces, secret_tenants_file;
  secret_new->add_option("--tenant", secret_tenant,
                         "Write a tenant credential for this tenant instead of a cluster secret (SECURITY.md)");
  secret_new->add_option("--namespaces", secret_namespaces,
                         "With --tenant: the namespaces it may use, comma-separated model-id globs or 16-hex-digit ids");
  secret_new->add_option("--tenants", secret_tenants_file,
                         "With --tenant: the coordinator's tenants file to add the tenant to (created 0600)");
  std::string secret_isolated;
  secret_new->add_option("--isolated", secret_isolated,
                         "With --tenant: give the tenant a region of its own of this size on every agent (4GiB; "
                         "SECURITY.md, \"Isolated tenants\")");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  // Library logs (UCX fallbacks, client retries) would garble tables:
  // warnings and errors only, unless KVPOOL_LOG_LEVEL asks for more.
  if (std::getenv("KVPOOL_LOG_LEVEL") == nullptr) (void)log::set_log_level("warn");
  auto t = parse_duration(g.timeout);
  if (!t || t->count() <= 0) {
    return fail(g, Status(StatusCode::kInvalidArgument, "--timeout: not a positive duration"), kExitUsage);
  }
  g.timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*t);

  if (*status) return cmd_status(g);
  if (*agents) return cmd_agents(g, !agents_no_probe);
  if (*namespaces) return cmd_namespaces(g);
  if (*usage) return cmd_usage(g, usage_ns);
  if (*lookup) return cmd_lookup(g, lookup_ns, lookup_keys, tokens_file);
  if (*remove) return cmd_remove(g, remove_ns, remove_keys);
  if (*evict) return cmd_evict(g, evict_ns, dry_run, older_than);
  if (*doctor) return cmd_doctor(g, no_probe, max_skew);
  if (*demo) return cmd_demo(demo->remaining());
  if (*bench) return cmd_bench(g, bench_block, bench_blocks, bench_rounds);
  if (*quota) return cmd_quota(g, quota_ns, quota_size);
  if (*replay_cmd) return cmd_replay(g, trace_file, replay_requests, ro);
  if (*secret_new) {
    return cmd_secret_new(g, secret_path, secret_tenant, secret_namespaces, secret_tenants_file, secret_isolated);
  }
  if (*drain) return cmd_drain(g, drain_agent, undrain, drain_in_flight, drain_stall);
  if (*shards_add) return cmd_shards_add(g, add_shard_id, add_wait, add_timeout);
  return kExitUsage;
}
