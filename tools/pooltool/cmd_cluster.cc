// pooltool status and shards add: the pool as a whole, and the shard map
// behind etcd.

#include <cstdio>
#include <iostream>
#include <optional>
#include <thread>

#include "runtime/common/units.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/shard_map.h"
#include "tools/common/pool_access.h"
#include "tools/pooltool/cluster.h"
#include "tools/pooltool/commands.h"
#include "tools/pooltool/output.h"

namespace kvpool::pooltool {
namespace {

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

// Waits until the map of `version` has been replaced by one where no range
// of `shard` is still moving, or `limit` passed; its seconds in *seconds.
bool wait_for_move(etcd::Client& ec, std::uint32_t shard, std::int64_t version, std::chrono::nanoseconds limit,
                   double* seconds) {
  bool done = false;
  const auto t0 = Clock::now();
  for (auto d = Deadline::after(limit); !d.expired();) {
    auto m = etcd::read_shard_map(ec);
    if (m && m->version > version) {
      done = true;
      for (const auto& r : m->ranges) done &= !(r.shard == shard && r.from);
      if (done) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  *seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return done;
}

// What shards add did: the map written (and with --wait, whether the move
// ended); its exit code.
int report_shards_add(const Globals& g, const etcd::ShardMap& next, const etcd::ShardRange& moved, std::uint32_t shard,
                      bool wait, bool done, double seconds, const std::string& wait_for) {
  if (g.json) {
    print_json({{"version", next.version},
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

json status_json(const Globals& g, const rpc::StatsReply& s, const std::string& version,
                 const std::optional<ClusterView>& cluster) {
  const std::uint64_t asked = s.lookup_hits + s.lookup_misses;
  const double hit_rate = asked == 0 ? 0.0 : static_cast<double>(s.lookup_hits) / static_cast<double>(asked);
  return {{"coordinator", g.coordinator},
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
          {"etcd", cluster ? cluster_json(*cluster) : json(nullptr)}};
}

std::string status_text(const Globals& g, const rpc::StatsReply& s, const std::string& version) {
  const std::uint64_t asked = s.lookup_hits + s.lookup_misses;
  const double hit_rate = asked == 0 ? 0.0 : static_cast<double>(s.lookup_hits) / static_cast<double>(asked);
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
  return text.substr(text.find('\n') + 1);  // no header row
}

}  // namespace

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
  const std::string endpoints = tools::etcd_endpoints(g.coordinator);
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
  double seconds = 0;
  const bool done = wait && wait_for_move(**ec, shard, next->version, *limit, &seconds);
  return report_shards_add(g, *next, moved, shard, wait, done, seconds, wait_for);
}

// ---- status ----
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
  const std::string version = (*c)->server().server_version;
  if (g.json) {
    print_json(status_json(g, *st, version, cluster));
    return kExitOk;
  }
  std::cout << status_text(g, *st, version);
  if (cluster) std::cout << "\n" << cluster_text(*cluster);
  return kExitOk;
}

}  // namespace kvpool::pooltool
