#pragma once
// RangeMover: the old shard's side of adding a shard (coordinator/README.md,
// "Adding a shard"). When the shard map gives a key range of this shard to
// another one with `from` set to this shard, the leader of this shard:
//   1. waits a write lease (plus a margin): writes granted here before the
//      map changed commit or expire; from the change on this shard refuses
//      writes in the range (it only reads it), so no new block appears here;
//   2. lists the range's committed blocks (CoordinatorCore::list_keys),
//      reads each from this shard and puts it into the new owner through
//      libkvpool (verified on the way: a get checks header and payload),
//      then removes it here: every block is readable at all times, from the
//      new owner or, through the clients' fallback to `from`, from here;
//   3. once the range holds nothing here, publishes the next map version
//      with the range no longer moving (compare-and-swap on the map key).
// A new leader of this shard (failover mid-move) sees the moving range in
// the map and starts again; copies are idempotent (the new owner answers
// "exists"). Its index is rebuilt from the agents' slot headers as they
// rejoin, so an empty range proves nothing at first: the move ends only
// once every agent of this shard that is a member in etcd
// (/kvpool/agents/NAME, kept alive by the agent's own lease) has rejoined
// with that incarnation, no agent is still sending its scan
// (AgentView::recovering), and `rejoin_wait` (the agent timeout) has passed
// since the mover began, for agents without membership.
//
// Isolated tenants (runtime/common/tenants.h): the cluster secret is refused
// on an isolated tenant's namespace, so the blocks of a namespace whose
// blocks lie in tenant T's isolated regions (CoordinatorCore::
// namespace_tenant) are copied with a client pair authenticated as T: a
// tenant credential `kvpool-tenant T KEY` built from the tenants file
// (`tenants`), written to a private file (a mkdtemp directory of mode 0700
// holding a 0600 file) that lives while the mover runs, since a client
// reads its secret file again on every reconnect. The new owner's
// coordinator must read the same tenants file: it then places them in T's
// regions there. Without `tenants` (or without T in it), such blocks cannot
// be copied and the move waits (logged).
//
// Thread-safety: start/stop from one thread; the work runs on its own.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "coordinator/coordinator_core.h"
#include "runtime/common/tenants.h"
#include "runtime/etcd/shard_map.h"

namespace kvpool::coordinator {

struct RangeMoverOptions {
  std::string etcd_endpoints;  // HOST:PORT,...
  std::uint32_t shard = 0;     // this (the old) shard
  etcd::ShardRange range;      // moving from `shard` to range.shard
  std::chrono::milliseconds settle{0};  // the write lease plus a margin
  std::chrono::milliseconds rejoin_wait{0};  // the agent timeout: how long a live agent may take to rejoin
  std::string secret_file;
  std::shared_ptr<const TenantTable> tenants;  // this coordinator's --tenants; null without
  CoordinatorCore* core = nullptr;
};

class RangeMover {
 public:
  explicit RangeMover(RangeMoverOptions options);
  ~RangeMover();  // stops
  RangeMover(const RangeMover&) = delete;
  RangeMover& operator=(const RangeMover&) = delete;
  void stop();
  const etcd::ShardRange& range() const { return options_.range; }

 private:
  struct Move;  // one run's clients and counts (range_mover.cc)
  void run();
  bool sleep_for(std::chrono::milliseconds d);  // false when stopping
  RangeMoverOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace kvpool::coordinator
