#pragma once
// LeaderElection: one coordinator of a shard leads, the others stand by,
// through etcd (coordinator/README.md, "High availability").
//
// campaign() grants an etcd lease and creates /kvpool/shards/<N>/leader under
// it in a transaction that succeeds only when the key does not exist
// (create_revision == 0). A standby watches the key and tries again when it
// goes (the leader's lease expired or was revoked). The winner's epoch is the
// key's create revision: it grows with every new leader.
//
// While leading, a thread renews the lease every TTL/4. The leader serves
// only while it may still hold the lease: `fence()` refuses once the last
// renewal that etcd acknowledged was sent more than TTL minus a margin ago,
// so a leader cut off from etcd, or frozen (SIGSTOP) and thawed, stops
// answering before a standby can win (the standby needs the lease to expire
// first). When the lease is lost for good, `on_lost` runs once: the
// coordinator process exits, and a supervisor starts it again as a standby.
//
// Thread-safety: campaign() and resign() from one thread; fence() from any.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kvpool/status.h"
#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/leader_address.h"

namespace kvpool::coordinator {

struct LeaderOptions {
  etcd::ClientOptions etcd;
  std::uint32_t shard = 0;
  std::string id;                  // this process (host:pid), for operators
  std::int64_t lease_ttl_seconds = 2;  // etcd raises it to its minimum (about 2 s by default)
};

class LeaderElection {
 public:
  static Result<std::unique_ptr<LeaderElection>> create(const LeaderOptions& options);
  ~LeaderElection();
  LeaderElection(const LeaderElection&) = delete;
  LeaderElection& operator=(const LeaderElection&) = delete;

  // Blocks until this process leads the shard; the epoch. kCancelled-like
  // kFailedPrecondition when `stop` becomes true first. etcd being away is
  // waited out (logged), not returned.
  Result<std::int64_t> campaign(const std::atomic<bool>& stop);

  // Publishes the address clients dial (after the server is listening), and
  // starts renewing the lease; `on_lost` runs once, on the renewal thread,
  // when leadership is lost. kFailedPrecondition when the key is no longer
  // ours.
  Status publish(const std::string& address, std::function<void(const Status&)> on_lost);

  // Ok while the lease is surely held; kUnavailable naming the shard
  // otherwise (what every request gets then).
  Status fence() const;

  // Gives leadership up at once (lease revoked): standbys take over without
  // waiting for the TTL. Call after the server has stopped.
  void resign();

  std::int64_t epoch() const { return epoch_; }
  std::int64_t lease_ttl() const { return ttl_; }

 private:
  LeaderElection() = default;
  void renew_loop();

  LeaderOptions options_;
  std::unique_ptr<etcd::Client> client_;
  std::string key_;
  std::int64_t lease_ = 0;
  std::int64_t ttl_ = 0;
  std::int64_t epoch_ = 0;
  // When the last acknowledged renewal was sent (steady clock, ns): the
  // lease runs at least TTL from then.
  std::atomic<std::int64_t> renewed_at_{0};
  std::atomic<bool> lost_{false};
  std::function<void(const Status&)> on_lost_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread renewer_;
};

}  // namespace kvpool::coordinator
