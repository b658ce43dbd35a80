#pragma once
// Agent membership in etcd (coordinator/README.md, "Membership in etcd").
//
// An agent started with an etcd:// coordinator address grants an etcd lease
// of its own and puts /kvpool/agents/NAME under it:
//   {"name": N, "host": H, "incarnation": "0x...", "shard": S,
//    "address": A, "region_bytes": B}
// (NAME is the agent's --name, or agent-<incarnation>; the incarnation is a
// hex string, since JSON tools round 64-bit numbers). The agent renews the
// lease every TTL/3; a clean exit revokes it, a kill -9 lets it expire after
// the TTL, and either way etcd deletes the key. Every coordinator shard
// leader watches the /kvpool/agents/ prefix and treats a key that goes, or
// that names a new incarnation, like a heartbeat timeout of that agent, at
// once. Heartbeats stay as the fallback (and the only way without etcd).
//
// Thread-safety: MembershipLease's methods from one thread; its renewal runs
// on its own thread.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvpool/status.h"
#include "runtime/etcd/etcd_client.h"

namespace kvpool::etcd {

inline constexpr const char* kAgentsPrefix = "/kvpool/agents/";

std::string member_key(const std::string& name);

struct MemberInfo {
  std::string name;
  std::string host;
  std::uint64_t incarnation = 0;
  std::uint32_t shard = 0;
  std::string address;  // the agent's control address (its name at the coordinator)
  std::uint64_t region_bytes = 0;
  std::int64_t lease = 0;  // the etcd lease the key lives under (read back from etcd; not encoded)
};
std::string encode_member(const MemberInfo& info);
// kInvalidArgument naming what is wrong for a value that is not a member record.
Result<MemberInfo> decode_member(const std::string& value);

// Every member record under /kvpool/agents/ (malformed ones skipped, their
// keys listed in `malformed` when given), and the store's revision.
Result<std::vector<MemberInfo>> list_members(const Client& client, std::int64_t* revision = nullptr,
                                             std::vector<std::string>* malformed = nullptr);

// The agent's side: its key under a lease of its own, renewed until stop().
class MembershipLease {
 public:
  // Grants the lease and puts the key. kFailedPrecondition when the key is
  // held by a live agent of another shard (two agents of one name: give each
  // a name of its own); etcd errors as they come.
  static Result<std::unique_ptr<MembershipLease>> start(const ClientOptions& options, const MemberInfo& info,
                                                        std::int64_t ttl_seconds);
  ~MembershipLease();
  MembershipLease(const MembershipLease&) = delete;
  MembershipLease& operator=(const MembershipLease&) = delete;

  // Stops renewing; with `revoke`, revokes the lease (the key goes at once:
  // the coordinators drop the agent now, not after the TTL).
  void stop(bool revoke);

  std::int64_t lease() const { return lease_.load(); }
  std::int64_t ttl() const { return ttl_; }
  // Leases granted again after the old one was found gone (the agent was
  // frozen or cut off from etcd past the TTL): the key is put again.
  std::uint64_t regrants() const { return regrants_.load(); }

 private:
  MembershipLease() = default;
  Status grant_and_put();
  void renew_loop();

  std::unique_ptr<Client> client_;
  MemberInfo info_;
  std::string key_;
  std::int64_t ttl_ = 0;
  std::atomic<std::int64_t> lease_{0};
  std::atomic<std::uint64_t> regrants_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread renewer_;
};

}  // namespace kvpool::etcd
