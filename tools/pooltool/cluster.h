#pragma once
// pooltool's view of a pool behind etcd (status, doctor): etcd's members and
// their health, raft's leader, the shard map, and every shard's leader,
// epoch and load (coordinator/README.md, "Sharding").

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/membership.h"
#include "runtime/etcd/shard_map.h"
#include "runtime/rpc/messages.h"
#include "tools/pooltool/doctor.h"

namespace kvpool::pooltool {

struct EtcdMember {
  std::string endpoint;
  Status health;  // GET /health: ok when the member has a raft leader
  std::optional<etcd::Client::MemberStatus> status;  // nullopt when it did not answer
  bool raft_leader = false;                           // this member leads etcd's raft
};

struct ShardView {
  std::uint32_t shard = 0;
  double key_fraction = 0;  // of the key space it owns
  std::vector<etcd::ShardRange> ranges;
  Status leader_status;  // ok, or why no leader is found
  etcd::LeaderInfo leader;
  Status stats_status;  // ok, or why its leader's stats could not be read
  rpc::StatsReply stats;
};

struct ClusterView {
  std::vector<EtcdMember> members;
  std::optional<std::uint64_t> raft_leader;  // member id, when some member knows it
  Status map_status;                         // ok, or why the shard map cannot be read
  etcd::ShardMap map;
  std::vector<ShardView> shards;
  // Agents that are members in etcd (/kvpool/agents/, each under its own
  // lease: runtime/etcd/membership.h), by name.
  Status agents_status;  // ok, or why they cannot be read
  std::vector<etcd::MemberInfo> agents;
};

// Inspects the pool behind `coordinator` (an etcd:// address): asks every
// etcd endpoint, reads the shard map, finds each shard's leader and reads
// its stats. Problems are recorded in the view, not returned; the call
// fails only for an address that is not etcd:// (kInvalidArgument).
Result<ClusterView> inspect_cluster(const std::string& coordinator, std::chrono::milliseconds timeout,
                                    const std::string& secret_file);

// doctor's checks of a pool behind etcd: etcd's members reachable and
// healthy, raft's leader known, the shard map readable, and every shard led
// and lent memory by at least one agent. `endpoints` is the etcd part of the
// address, for the fixes printed.
std::vector<Check> check_cluster(const ClusterView& view, const std::string& endpoints);

// "6a1e..." for a member id.
std::string member_hex(std::uint64_t id);

}  // namespace kvpool::pooltool
