#pragma once
// Agent: what kvpool-agent runs on every server that lends DRAM.
//
// It allocates its PoolRegion through the transport (so same-host workers
// map it), serves it (a progress thread: over TCP, RMA needs the owner's
// worker to progress; owner reads), registers with the coordinator and
// heartbeats. On the coordinator's request it invalidates slot headers and
// acknowledges, so freed space is reused only once no restart scan could
// bring the old block back (DESIGN.md).
//
// Coordinator loss: when the connection breaks, the agent redials with
// backoff (50 ms doubling to 2 s) and rejoins with the same incarnation;
// when the coordinator says it does not know the agent (restarted, or it
// declared the agent dead during a partition), the agent rejoins at once.
// A rejoin taken fresh asks for the region's scan: the agent sends every
// valid block, and the coordinator rebuilds its index from them (DESIGN.md,
// "Failure model"). The region and its blocks survive all of this.
//
// Drain (pooltool drain): on the coordinator's kPushDrainCopy the agent
// copies blocks of its own region into slots reserved on other agents: it
// checks each block's header and payload checksum, puts the payload into
// the target's region over UCX, then (after that put completed) a header
// with the new generation, and reports the outcomes (kDrainCopied). The
// source puts rather than the target getting: the source has the bytes in
// local memory and can verify them before they leave, puts are the fast
// direction over TCP (DESIGN.md: get is 5-60x slower there), and the work
// runs on a thread of the agent being drained, never on the targets that
// keep serving workers. The bytes never pass through pooltool or the
// coordinator.
//
// Isolated tenants (runtime/common/tenants.h, SECURITY.md): the
// coordinator's reply to the shared region's registration lists the
// isolated tenants of its --tenants file and the size each gets. For each,
// the agent allocates another region through the same transport (so its
// own UCX registration and packed rkey, the same worker) with its own slot
// headers, and registers it as a separate agent record tagged with the
// tenant (name "NAME/TENANT"), on a connection of its own with its own
// heartbeats, rejoins and scans: to the coordinator each tenant region is
// one more agent, sharing this process's host and fate. A tenant added to
// the coordinator's file is picked up at the next rejoin; a tenant's region
// whose coordinator no longer lists it stays, unused, until the agent
// restarts. Owner reads of a region need that region's rkey (transport.h),
// so a reader holding only the shared rkey cannot have the agent read a
// tenant's region for it.
//
// Lifetime: start() returns a running agent; the destructor (or stop())
// stops heartbeats, leaves the coordinator connection, then frees the
// regions (the tenants' first) before the transport.

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "kvpool/status.h"
#include "pool/pool_region.h"
#include "pool/slot_header.h"
#include "runtime/common/units.h"
#include "runtime/metrics/registry.h"
#include "runtime/rpc/messages.h"
#include "transport/transport.h"

namespace kvpool::rpc {
class Client;
}
namespace kvpool::etcd {
class MembershipLease;
}

namespace kvpool::agent {

struct AgentOptions {
  // host:port, or etcd://HOST:PORT[,...][/SHARD]: the shard's leader, looked
  // up in etcd on every (re)dial (runtime/etcd/leader_address.h).
  std::string coordinator = "127.0.0.1:7400";
  std::uint64_t pool_size = 1ull << 30;
  pool::HugePages huge_pages = pool::HugePages::kTry;
  pool::Lock lock = pool::Lock::kTry;
  transport::ProgressMode progress = transport::ProgressMode::kEvent;
  std::string tls;  // UCX_TLS; empty: environment or kvpool's default
  std::chrono::milliseconds connect_timeout{10000};
  // Identifies the agent to the coordinator across restarts: a restarted
  // agent of the same name replaces its old incarnation at once (its blocks
  // leave lookups then, not after the heartbeat timeout). Empty: unique per
  // process (several agents may share a host).
  std::string name;
  // The cluster secret file; empty: KVPOOL_SECRET_FILE, else the default
  // path (runtime/common/secret.h). The agent never creates one.
  std::string secret_file;
  // Where the agent's metrics go (kvpool_agent_*: region, invalidations,
  // heartbeats, owner reads). Shared with the process's /metrics endpoint
  // and, with --standalone, with the embedded coordinator. Null: a private one.
  std::shared_ptr<metrics::Registry> metrics;
  // Membership in etcd (runtime/etcd/membership.h), with an etcd://
  // coordinator only: the lease TTL of /kvpool/agents/NAME. A kill -9 is
  // seen by every coordinator shard about this long after (etcd raises a
  // short TTL to its minimum); a clean stop revokes the lease at once.
  std::chrono::seconds membership_ttl{3};
};

class Agent {
 public:
  static Result<std::unique_ptr<Agent>> start(const AgentOptions& options);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  void stop();

  std::uint32_t id() const { return id_.load(); }
  std::uint64_t incarnation() const { return incarnation_; }
  const pool::PoolRegion& region() const { return *region_; }
  const pool::RegionLayout& layout() const { return layout_; }
  // The blocks the region's valid headers describe (torn and invalidated
  // slots skipped, and slots the coordinator said were removed while
  // read-leased, kPushRemoved): what a restarted coordinator rebuilds its
  // index from.
  Result<pool::ScanResult> scan() const;
  // Invalidations applied so far (for tests and status).
  std::uint64_t invalidated_slots() const { return invalidated_.load(); }
  // Successful rejoins after losing the coordinator (for tests and status).
  std::uint64_t rejoins() const { return rejoins_.load(); }
  // Blocks copied to other agents for drains (for tests and status).
  std::uint64_t drain_copies() const { return drain_copies_.load(); }
  // High availability: the highest leader epoch a coordinator registered
  // this agent with (0: none behind etcd), and how many registrations were
  // refused because the coordinator's epoch was lower (a deposed leader).
  std::uint64_t leader_epoch() const { return leader_epoch_.load(); }
  std::uint64_t stale_leader_refusals() const { return stale_leader_refusals_.load(); }
  // Pushes (kPushInvalidate, kPushRemoved, kPushDrainCopy) refused because
  // they were stamped with a leader epoch below leader_epoch().
  std::uint64_t stale_push_refusals() const { return stale_push_refusals_.load(); }
  // Empty for the shared region (what start() returns); an isolated
  // tenant's name for that tenant's region.
  const std::string& tenant() const { return tenant_; }
  // This process's region for isolated tenant `tenant` (its own id,
  // incarnation, region and scan), null when it has none. Valid until
  // stop(). Thread-safe.
  const Agent* tenant_region(std::string_view tenant) const;
  // The etcd lease of this agent's membership record (0: none, without etcd).
  std::int64_t membership_lease() const;
  std::vector<std::string> tenant_names() const;

 private:
  Agent() = default;
  // A region through `transport`, served and described, not registered yet.
  // `parent` null: the shared region; else `tenant`'s region of parent's
  // process.
  static Result<std::unique_ptr<Agent>> open_region(std::shared_ptr<transport::Transport> transport,
                                                    const AgentOptions& options, Agent* parent,
                                                    const std::string& tenant, std::uint64_t bytes);
  void start_threads();
  // Opens and registers the regions of isolated tenants this process has
  // none for yet (the shared region's join only).
  void open_tenant_regions(const std::vector<rpc::IsolatedRegionWire>& isolated, Deadline deadline);
  // Dials the coordinator (a new connection when `fresh`), registers (or
  // rejoins) and, when asked, sends the scan. Runs on start() and on the
  // heartbeat thread only.
  Status join(bool rejoin, bool fresh, Deadline deadline);
  Status send_scan(rpc::Client& rpc, Deadline deadline);
  std::shared_ptr<rpc::Client> rpc() const;
  void on_push(rpc::Client* from, std::uint16_t type, const std::string& payload);
  // The three pushes on_push takes, decoded and checked (incarnation, epoch).
  void queue_drain_copy(const std::string& payload);
  void note_removed(rpc::Client* from, const rpc::InvalidateMessage& msg);
  void invalidate(rpc::Client* from, const rpc::InvalidateMessage& msg);
  void heartbeat_loop();
  void drain_loop();
  // Copies the message's blocks; one result per move, in order.
  std::vector<rpc::MoveResultWire> copy_moves(const rpc::DrainCopyMessage& msg);

  // Destruction order matters: threads and the RPC client go first, then the
  // region (unmapped through UCX), then the transport.
  // Shared by the process's shared region and its tenant regions (one UCX
  // worker); the shared region's agent stops its progress thread.
  std::shared_ptr<transport::Transport> transport_;
  std::optional<pool::PoolRegion> region_;
  // The shared region's agent behind etcd: /kvpool/agents/NAME under a
  // lease of its own; revoked in stop(), after the heartbeats stopped.
  std::unique_ptr<etcd::MembershipLease> membership_;
  pool::RegionLayout layout_;
  mutable std::mutex rpc_mu_;
  std::shared_ptr<rpc::Client> rpc_;  // guarded by rpc_mu_; replaced on reconnect
  rpc::AgentRecord record_;          // what register sends
  AgentOptions options_;
  Agent* parent_ = nullptr;  // the shared region's agent, for a tenant region
  std::string tenant_;
  mutable std::mutex tenants_mu_;
  // The shared region's agent only: one per isolated tenant. Declared after
  // transport_ and region_: destroyed first.
  std::map<std::string, std::unique_ptr<Agent>> tenant_regions_;  // guarded by tenants_mu_
  std::atomic<std::uint32_t> id_{0};  // may change when a restarted coordinator takes the agent back
  std::uint64_t incarnation_ = 0;
  std::chrono::milliseconds heartbeat_interval_{1000};
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;
  std::thread heartbeat_;
  std::atomic<std::uint64_t> invalidated_{0};
  std::atomic<std::uint64_t> rejoins_{0};
  std::atomic<std::uint64_t> leader_epoch_{0};  // written by join() only
  std::atomic<std::uint64_t> stale_leader_refusals_{0};
  std::atomic<std::uint64_t> stale_push_refusals_{0};
  // False (logged, counted) for a push stamped below leader_epoch_.
  bool push_epoch_ok(const char* what, std::uint64_t epoch);
  // Removed while read-leased and not yet invalidated: (header offset,
  // generation). In memory only: a new incarnation has a new region.
  mutable std::mutex removed_mu_;
  std::set<std::pair<std::uint64_t, std::uint64_t>> removed_;  // guarded by removed_mu_

  // Drain copies: pushes queue here, one thread works them (a push handler
  // must not block the connection's reader). Peers to target agents are
  // kept per (agent, incarnation) while draining and dropped in stop(),
  // before the transport.
  struct DrainPeer {
    std::unique_ptr<transport::Peer> peer;
    transport::RemoteRegion region;  // destroyed before peer (declared after it)
  };
  // Headers of one message's copies, and their blocks' slice counts.
  struct DrainCopies {
    std::vector<std::array<std::byte, pool::kSlotHeaderBytes>> headers;
    std::vector<std::uint32_t> slices;
  };
  std::mutex drain_mu_;
  std::condition_variable drain_cv_;
  std::deque<rpc::DrainCopyMessage> drain_queue_;  // guarded by drain_mu_
  std::thread drain_thread_;
  using DrainPeers = std::map<std::pair<std::uint32_t, std::uint64_t>, DrainPeer>;
  DrainPeers drain_peers_;  // drain thread only
  std::atomic<std::uint64_t> drain_copies_{0};
  // copy_moves's steps (drain thread only): the checked source and the
  // copy's header, the peer of a target, the puts to one target.
  Status prepare_copy(const rpc::MoveWire& m, std::array<std::byte, pool::kSlotHeaderBytes>& copy_header,
                      std::uint32_t& slices) const;
  Result<DrainPeers::iterator> drain_peer(const rpc::DrainTarget& t);
  Status put_copies(DrainPeer& dp, const rpc::DrainCopyMessage& msg, const std::vector<std::size_t>& moves,
                    DrainCopies& copies, Deadline deadline);

  void init_metrics();
  std::shared_ptr<metrics::Registry> registry_;
  std::uint64_t collector_id_ = 0;  // removed in stop(), before the region goes
  metrics::Histogram* heartbeat_seconds_ = nullptr;
  metrics::Counter* heartbeat_failures_ = nullptr;
  metrics::Counter* invalidated_slots_ = nullptr;
  metrics::Counter* invalidate_requests_ = nullptr;
  metrics::Counter* invalidate_rejected_ = nullptr;
};

}  // namespace kvpool::agent
