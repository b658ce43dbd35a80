#pragma once
// Where a coordinator shard's leader is published in etcd, and how agents and
// workers find it: a coordinator address of the form
// etcd://HOST:PORT[,HOST:PORT...][/SHARD] names etcd endpoints, and the
// address to dial is read from the shard's leadership key on every (re)dial.
//
// etcd layout (coordinator/README.md, "High availability"):
//   /kvpool/shards/<N>/leader  {"address": "HOST:PORT", "epoch": E, "id": "..."}
//                              under the leader's lease; E is the key's
//                              create revision, so it grows with every new
//                              leader.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "runtime/etcd/etcd_client.h"

namespace kvpool::etcd {

inline constexpr const char* kKeyRoot = "/kvpool/";

std::string leader_key(std::uint32_t shard);

struct LeaderInfo {
  std::string address;     // HOST:PORT clients dial
  std::int64_t epoch = 0;  // the leadership key's create revision
  std::string id;          // the leader's process identity (host:pid)
};
std::string encode_leader(const LeaderInfo& info);
// kInvalidArgument for a value that is not a leader record.
Result<LeaderInfo> decode_leader(const std::string& value);

// Whether `coordinator` is an etcd:// address.
bool is_etcd_address(const std::string& coordinator);

struct EtcdAddress {
  std::vector<Endpoint> endpoints;
  std::uint32_t shard = 0;
  bool has_shard = false;  // "/SHARD" was given (without it: the shard map decides)
};
// kInvalidArgument for a malformed etcd:// address.
Result<EtcdAddress> parse_etcd_address(const std::string& coordinator);

// The shard's current leader (epoch from the key's create revision).
// kUnavailable when no leader is published (an election in progress, or the
// winner has not published its address yet) or etcd cannot be reached.
Result<LeaderInfo> find_leader(const Client& client, std::uint32_t shard);

// The HOST:PORT to dial for `coordinator`: itself when it is HOST:PORT, the
// leader's address when it is etcd://... (asked within `timeout`).
Result<std::string> resolve_coordinator(const std::string& coordinator, std::chrono::milliseconds timeout);

}  // namespace kvpool::etcd
