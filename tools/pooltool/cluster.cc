#include "tools/pooltool/cluster.h"

#include <cstdio>
#include <thread>

#include "tools/pooltool/admin.h"
#include "tools/pooltool/output.h"

namespace kvpool::pooltool {

std::string member_hex(std::uint64_t id) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

namespace {

// One etcd endpoint: its health and status, asked within `each`.
EtcdMember inspect_member(const etcd::Endpoint& ep, std::chrono::milliseconds each) {
  EtcdMember m;
  m.endpoint = ep.to_string();
  auto one = etcd::Client::create({{ep}, each});
  if (!one) {
    m.health = one.error();
    return m;
  }
  m.health = (*one)->health(ep);
  auto st = (*one)->member_status(ep);
  if (st) m.status = *st;
  else if (m.health.ok()) m.health = st.error();
  return m;
}

// One shard: its keys, its leader and the leader's stats (asked within
// `each`).
ShardView inspect_shard(const etcd::Client& client, const etcd::ShardMap& map, std::uint32_t shard,
                        std::chrono::milliseconds each, const std::string& secret_file) {
  ShardView s;
  s.shard = shard;
  s.ranges = map.owned_by(s.shard);
  for (const auto& r : s.ranges) s.key_fraction += static_cast<double>(r.end - r.start) / etcd::kPointSpace;
  auto leader = etcd::find_leader(client, s.shard);
  if (!leader) {
    s.leader_status = leader.error();
    s.stats_status = leader.error();
    return s;
  }
  s.leader = *leader;
  AdminOptions o;
  o.coordinator = leader->address;
  o.timeout = each;
  o.secret_file = secret_file;
  auto admin = AdminClient::connect(o);
  if (!admin) {
    s.stats_status = admin.error();
    return s;
  }
  auto st = (*admin)->stats();
  if (!st) {
    s.stats_status = st.error();
    return s;
  }
  s.stats = *st;
  return s;
}

// etcd's members: how many are healthy (in *healthy_out).
Check members_check(const ClusterView& view, std::size_t* healthy_out) {
  std::size_t healthy = 0;
  std::string down;
  for (const auto& m : view.members) {
    if (m.health.ok()) {
      ++healthy;
    } else {
      down += (down.empty() ? "" : "; ") + m.endpoint + ": " + m.health.message();
    }
  }
  Check members{"etcd members", CheckLevel::kOk,
                std::to_string(healthy) + " of " + std::to_string(view.members.size()) + " endpoints healthy", ""};
  if (healthy == 0) {
    members.level = CheckLevel::kFail;
    members.detail += ": " + down;
    members.fix = "start etcd (cluster-configs/etcd/start-etcd.sh), or point --coordinator etcd://HOST:PORT,... at "
                  "its client URLs";
  } else if (healthy < view.members.size()) {
    members.level = CheckLevel::kWarn;
    members.detail += "; down: " + down;
    members.fix = "restart the members that are down (the pool keeps working while a quorum answers)";
  }
  *healthy_out = healthy;
  return members;
}

Check raft_check(const ClusterView& view) {
  Check raft{"etcd raft leader", CheckLevel::kOk, "", ""};
  if (view.raft_leader) {
    raft.detail = "member " + member_hex(*view.raft_leader);
    for (const auto& m : view.members) {
      if (m.raft_leader) raft.detail += " (" + m.endpoint + ")";
    }
  } else {
    raft.level = CheckLevel::kFail;
    raft.detail = "no member knows a raft leader: etcd has lost its quorum";
    raft.fix = "bring back enough etcd members for a majority";
  }
  return raft;
}

Check map_check(const ClusterView& view, const std::string& endpoints) {
  Check map{"shard map", CheckLevel::kOk, "", ""};
  if (!view.map_status.ok()) {
    map.level = CheckLevel::kFail;
    map.detail = view.map_status.message();
    map.fix = std::string("write a valid map, e.g. etcdctl --endpoints ") + endpoints + " put " + etcd::kShardMapKey +
              " '{\"version\": 1, \"shards\": 2}' (coordinator/README.md, \"Sharding\")";
  } else if (view.map.version == 0) {
    map.detail = std::string("none in etcd (") + etcd::kShardMapKey + "): one shard, 0";
  } else {
    map.detail = "version " + std::to_string(view.map.version) + ", " + std::to_string(view.map.shards().size()) +
                 " shards, " + std::to_string(view.map.ranges.size()) + " key ranges";
    for (const auto& r : view.map.ranges) {
      if (r.from) {
        map.level = CheckLevel::kInfo;
        map.detail += "; a range is moving from shard " + std::to_string(*r.from) + " to " + std::to_string(r.shard);
      }
    }
  }
  return map;
}

Check shard_check(const ShardView& s, const std::string& endpoints) {
  Check c{"shard " + std::to_string(s.shard), CheckLevel::kOk, "", ""};
  if (!s.leader_status.ok()) {
    c.level = CheckLevel::kFail;
    c.detail = "no leader: " + s.leader_status.message();
    c.fix = "start kvpool-coordinator --etcd " + endpoints + " --shard " + std::to_string(s.shard) +
            " (two or more for a standby)";
  } else if (!s.stats_status.ok()) {
    c.level = CheckLevel::kFail;
    c.detail = "leader " + s.leader.address + " (epoch " + std::to_string(s.leader.epoch) +
               ") does not answer: " + s.stats_status.message();
    c.fix = "check that host and its coordinator; a standby takes over once its etcd lease ends";
  } else {
    c.detail = "leader " + s.leader.address + " (epoch " + std::to_string(s.leader.epoch) + "), " +
               std::to_string(s.stats.agents_alive) + " agents, " + human_bytes(s.stats.capacity_bytes) + ", " +
               percent(s.key_fraction) + " of the keys";
    if (s.stats.agents_alive == 0 && s.key_fraction > 0) {
      c.level = CheckLevel::kFail;
      c.detail += ": no agent lends it memory, so its keys cannot be written";
      c.fix = "start kvpool-agent --coordinator etcd://" + endpoints + "/" + std::to_string(s.shard) +
              " on the hosts that lend DRAM to this shard";
    }
  }
  return c;
}

}  // namespace

Result<ClusterView> inspect_cluster(const std::string& coordinator, std::chrono::milliseconds timeout,
                                    const std::string& secret_file) {
  auto addr = etcd::parse_etcd_address(coordinator);
  if (!addr) return tl::unexpected(addr.error());
  // Each question gets its own short deadline: a dead member must not eat
  // the whole timeout of the command.
  const auto each = std::min(timeout, std::chrono::milliseconds(2000));
  ClusterView view;
  // Members, in parallel.
  view.members.resize(addr->endpoints.size());
  {
    std::vector<std::thread> ts;
    for (std::size_t i = 0; i < addr->endpoints.size(); ++i) {
      ts.emplace_back([&, i] { view.members[i] = inspect_member(addr->endpoints[i], each); });
    }
    for (auto& t : ts) t.join();
  }
  for (auto& m : view.members) {
    if (!m.status || m.status->leader == 0) continue;
    view.raft_leader = m.status->leader;
    m.raft_leader = m.status->member_id == m.status->leader;
  }
  auto client = etcd::Client::create({addr->endpoints, each});
  if (!client) return tl::unexpected(client.error());
  if (auto members = etcd::list_members(**client)) {
    view.agents = std::move(*members);
  } else {
    view.agents_status = members.error();
  }
  auto map = etcd::read_shard_map(**client);
  if (!map) {
    view.map_status = map.error();
    // Without a map, the shard the address names is still worth showing.
    view.map = etcd::ShardMap::equal(1, 0);
    view.map.ranges[0].shard = addr->shard;
  } else {
    view.map = *map;
  }
  const auto ids = view.map.shards();
  view.shards.resize(ids.size());
  std::vector<std::thread> ts;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ts.emplace_back([&, i] { view.shards[i] = inspect_shard(**client, view.map, ids[i], each, secret_file); });
  }
  for (auto& t : ts) t.join();
  return view;
}

std::vector<Check> check_cluster(const ClusterView& view, const std::string& endpoints) {
  std::vector<Check> out;
  std::size_t healthy = 0;
  out.push_back(members_check(view, &healthy));
  if (healthy == 0) return out;
  out.push_back(raft_check(view));
  out.push_back(map_check(view, endpoints));
  for (const auto& s : view.shards) out.push_back(shard_check(s, endpoints));
  return out;
}

}  // namespace kvpool::pooltool
