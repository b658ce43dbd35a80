#pragma once
// CoordinatorServer::Impl, shared by the server's files (private: not for
// other targets). server.cc: start/stop, the tick, the shared middleware in
// front of every request and the table of handlers; server_metrics.cc:
// instruments; server_acks.cc: replies deferred until agents acknowledge;
// server_blocks.cc, server_agents.cc (with the pushes), server_admin.cc and
// server_namespaces.cc: the handlers, by area.

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "coordinator/server.h"
#include "coordinator/tenant_gate.h"
#include "runtime/common/logging.h"
#include "runtime/rpc/messages.h"
#include "runtime/rpc/server.h"

namespace kvpool::coordinator {
namespace server_detail {

inline std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("coordinator");
  return l;
}

inline rpc::LocationWire to_wire(const Location& l) {
  return {to_u32(l.agent), l.incarnation, l.payload_offset, l.header_offset, l.length, l.generation};
}

std::int64_t unix_now_ms();
std::string ns_label(NamespaceId id);

// Instruments of one operation, created once at start.
struct OpMetrics {
  std::string name;
  metrics::Counter* requests = nullptr;
  metrics::Histogram* latency = nullptr;
  // Error replies by status code, indexed by StatusCode.
  std::array<metrics::Counter*, static_cast<std::size_t>(kLastStatusCode) + 1> errors{};
};

// Answers a request like rpc::Responder and records the outcome: latency
// (until the answer: for wait_for, the wait) and errors by code.
class MeteredResponder {
 public:
  MeteredResponder(rpc::Responder r, OpMetrics* op) : r_(std::move(r)), op_(op), start_(Clock::now()) {}
  void reply(std::string payload) const {
    observe();
    r_.reply(std::move(payload));
  }
  void fail(const Status& s) const {
    observe();
    auto i = static_cast<std::size_t>(s.code());
    if (i < op_->errors.size() && op_->errors[i] != nullptr) op_->errors[i]->inc();
    r_.fail(s);
  }
  const rpc::Responder& raw() const { return r_; }

 private:
  void observe() const { op_->latency->observe(std::chrono::duration<double>(Clock::now() - start_).count()); }
  rpc::Responder r_;
  OpMetrics* op_;
  Clock::time_point start_;
};

// What a handler is given besides its decoded request. Valid for the
// handler's call only: what answers later copies `resp` (a copy answers the
// same request) and whatever of `req` it needs.
struct Call {
  const rpc::Request& req;
  const MeteredResponder& resp;
  Clock::time_point now;
};

}  // namespace server_detail

struct CoordinatorServer::Impl {
  using Call = server_detail::Call;
  using MeteredResponder = server_detail::MeteredResponder;
  using OpMetrics = server_detail::OpMetrics;

  // Destruction order: the tick thread and the RPC server stop first (no
  // handler runs), then the core goes.
  CoordinatorServerOptions options;
  std::unique_ptr<CoordinatorCore> core;
  std::unique_ptr<TenantGate> gate;
  std::shared_ptr<const TenantTable> tenants;  // null without --tenants
  bool any_isolated = false;                   // some tenant has isolated=SIZE
  std::unique_ptr<rpc::Server> server;
  Clock::time_point started = Clock::now();

  std::mutex mu;
  std::unordered_map<std::uint32_t, std::uint64_t> agent_connections;  // agent id -> connection; guarded by mu
  std::set<std::uint64_t> worker_connections;                          // guarded by mu
  // Each agent's clock minus ours at its last heartbeat (ms), for pooltool
  // doctor's clock-skew check; guarded by mu.
  std::unordered_map<std::uint32_t, std::int64_t> agent_clock_offset_ms;

  std::mutex tick_mu;
  std::condition_variable tick_cv;
  bool stopping = false;  // guarded by tick_mu
  std::thread ticker;

  // The handlers, one per message type, each with its operation's
  // instruments; filled at start (add_routes, then init_metrics), read-only
  // after. A type without one is answered kUnimplemented, metered as
  // `unknown_op`.
  struct Route {
    OpMetrics metrics;
    std::function<void(const Call&)> run;
  };
  std::map<std::uint16_t, Route> routes;
  std::vector<std::uint16_t> route_order;  // registration order: the order metrics are created in
  OpMetrics unknown_op;

  // Metrics: instruments updated as requests come and go, and a collector
  // reading the core at scrape time (removed in stop() and ~Impl, before the
  // core goes).
  std::shared_ptr<metrics::Registry> registry;
  std::array<metrics::Counter*, 4> allocate_outcomes{};  // by rpc::AllocateOutcome
  metrics::Counter* commits_ok = nullptr;
  metrics::Counter* commits_failed = nullptr;
  metrics::Counter* removes_ok = nullptr;
  metrics::Counter* removes_failed = nullptr;
  metrics::Counter* write_lease_expiries = nullptr;
  metrics::Counter* read_lease_expiries = nullptr;
  metrics::Counter* tick_evictions = nullptr;
  metrics::Counter* agent_deaths = nullptr;
  metrics::Counter* invalidations_sent = nullptr;
  std::uint64_t collector_id = 0;

  // A server that failed to start (or was never stopped) must not leave its
  // collector in a registry that outlives it.
  ~Impl() {
    if (registry) registry->remove_collector(collector_id);
  }

  // --- server.cc: the middleware and the table.
  void handle(rpc::Request req, rpc::Responder raw_resp);
  void tick_loop();
  void add_routes();
  // Registers the handler of `type`, labelled `name` in the metrics. The
  // first form decodes the payload into Req first (a payload that does not
  // decode is logged and answered kInvalidArgument); the second reads no
  // payload.
  template <class Req>
  void on(rpc::MessageType type, const char* name, void (Impl::*handler)(const Call&, Req&)) {
    add_route(type, name, [this, handler](const Call& c) {
      Req m;
      if (Status s = rpc::decode(c.req.payload, m); !s.ok()) {
        server_detail::logger()->warn("{} from {}: {}", c.req.type, c.req.peer_id, s.to_string());
        return c.resp.fail(s);
      }
      (this->*handler)(c, m);
    });
  }
  void on(rpc::MessageType type, const char* name, void (Impl::*handler)(const Call&)) {
    add_route(type, name, [this, handler](const Call& c) { (this->*handler)(c); });
  }
  void add_route(rpc::MessageType type, const char* name, std::function<void(const Call&)> run);

  // --- server_metrics.cc
  void init_metrics();
  void collect(metrics::Collector& c) const;

  // --- server_acks.cc: replies deferred until agents acknowledge.
  //
  // Two mechanisms for one aim (no client learns of a block's end before
  // its agent has made it stick), kept apart because what they wait for
  // differs:
  // - A remove (or evict_namespace) waits for acknowledgements that only
  //   this server sees: kRemovedDone never reaches the core. So it counts
  //   them, per slot, with one waiter per slot (the core removes a block
  //   once), ends a slot early when the tick declares its agent dead, and
  //   then sends the reply it already holds.
  // - A lookup or wait_for held back by an eviction asks the core
  //   (any_evicting), the one judge of when a slot stops evicting: its
  //   agent's acknowledgement, death or restart. Many requests may wait on
  //   one slot, and each resumes by running again (a lookup may wait anew).
  // What they share is the shape: keyed by SlotKey, under mu, answered
  // outside it, bounded by a deadline the tick enforces.
  using SlotKey = std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>;  // agent, header offset, generation

  // A remove is answered once the agents have acknowledged the invalidation
  // of every block it took out (its slot header is zero), and the notice
  // about every read-leased one (kPushRemoved: left out of scans from now
  // on, kRemovedDone), so no restart's scan can bring a removed block back.
  // Bounded: when the agent dies, or after kRemoveAckWait, the answer goes
  // anyway (the index no longer has the blocks; only a rejoin of that very
  // agent could show them again).
  static constexpr std::chrono::seconds kRemoveAckWait{5};
  struct PendingRemove {
    MeteredResponder resp;
    std::string reply;
    std::size_t left = 0;
    Clock::time_point deadline;
  };
  std::map<SlotKey, std::shared_ptr<PendingRemove>> remove_waits;  // guarded by mu

  // Answers the pending removes whose slots `done` picks (deadline passed,
  // agent dead): a pass over all of them, from the tick thread only.
  void finish_removes(const std::function<bool(const SlotKey&, const PendingRemove&)>& done);
  // An agent's acknowledgement: a lookup per slot, not a pass over every
  // pending remove (this runs for every invalidation batch).
  void acknowledge_removes(const rpc::InvalidateMessage& m);
  // Answers `rep` once the agents have acknowledged every slot in `removed`
  // and `removed_leased` (bounded as above), then sends what the agents must
  // do. Used by remove and by pooltool evict.
  void reply_after_removed(const MeteredResponder& resp, std::string rep, const std::vector<Location>& removed,
                           const std::vector<Location>& removed_leased,
                           const std::vector<InvalidateRequest>& invalidations, Clock::time_point now);

  // Evictions (issue 5). An evicted block leaves the index at once but its
  // slot header stays valid until the agent invalidates it; a coordinator
  // restart before that would find it again. So no client may see the
  // eviction before the agent's acknowledgement: a lookup whose prefix
  // would end at an evicting block, and a wait_for answer with an evicting
  // key not committed, wait for those slots (the core's any_evicting), then
  // go on. Bounded like removes: the agent's death or restart ends the wait
  // (its blocks go anyway), else kEvictAckWait does (answered as the core
  // stands then). Lookups that hit never get here.
  static constexpr std::chrono::seconds kEvictAckWait{5};
  struct EvictWait {
    std::vector<EvictingSlot> slots;
    Clock::time_point deadline;
    std::function<void(bool expired)> resume;  // runs once, outside mu
    bool done = false;                         // guarded by mu
  };
  std::map<SlotKey, std::vector<std::shared_ptr<EvictWait>>> evict_waits;  // guarded by mu
  static SlotKey slot_key(const EvictingSlot& e) { return SlotKey{to_u32(e.agent), e.header_offset, e.generation}; }

  // Runs resume once none of `slots` is evicting any more (or at once when
  // none is now). The check and the registration are one step under mu, and
  // an acknowledgement updates the core before it looks here, so none is
  // missed.
  void after_evictions(std::vector<EvictingSlot> slots, Clock::time_point deadline,
                       std::function<void(bool expired)> resume);
  // An agent's acknowledgement: wakes the waits on these slots whose other
  // slots (if any) are done too.
  void acknowledge_evictions(const rpc::InvalidateMessage& m);
  // From the tick: waits whose deadline passed, or whose slots stopped
  // evicting another way (the agent died or restarted).
  void finish_evict_waits(Clock::time_point now);

  // --- server_agents.cc: messages nobody asked for.
  void send_invalidations(const std::vector<InvalidateRequest>& reqs);
  // Blocks removed while read-leased keep a valid slot header until their
  // last lease ends: their agents leave them out of any scan meanwhile, so a
  // coordinator restart in between does not bring them back.
  void send_removed_leased(const std::vector<Location>& removed_leased);
  void broadcast_dead(const std::vector<DeadAgent>& dead);

  // --- server_namespaces.cc: namespaces and isolated tenants.
  void register_namespace(const Call& c, rpc::RegisterNamespaceRequest& m);
  // Isolated tenants (runtime/common/tenants.h). The regions a requester
  // may be told of and reach: an isolated tenant's own; everyone else's
  // (the cluster secret, a tenant that is not isolated) the shared ones.
  std::string region_class(const std::string& tenant) const;
  // The data path (allocate, lookup, wait_for) of a namespace that lives in
  // an isolated tenant's regions is open to that tenant's credential only:
  // anyone else would be handed locations in a region whose rkey is not
  // theirs. The operator (cluster secret) still lists, evicts and removes.
  Status check_isolation(const rpc::Request& req, NamespaceId ns) const;

  // --- server_blocks.cc: the data path.
  void allocate(const Call& c, rpc::AllocateRequest& m);
  void commit_leases(const Call& c, rpc::LeaseBatch& m);
  void abort_leases(const Call& c, rpc::LeaseBatch& m);
  void lookup(const Call& c, rpc::LookupRequest& m);
  void release(const Call& c, rpc::ReleaseRequest& m);
  void remove_blocks(const Call& c, rpc::KeysRequest& m);
  void wait_for(const Call& c, rpc::WaitForRequest& m);
  // A lookup, also run again after waiting for evictions: until
  // wait_deadline a miss on an evicting block waits instead.
  // Nothing is copied unless the lookup has to wait.
  void run_lookup(const std::string& tenant, rpc::LookupRequest& m, const MeteredResponder& resp,
                  Clock::time_point wait_deadline);
  // A wait_for answer: a key reported not committed must not be one still
  // being evicted (it was committed, and may come back).
  void answer_wait_for(const MeteredResponder& resp, NamespaceId ns, const std::vector<Key128>& keys,
                       std::vector<bool> committed);
  // High availability: a commit, abort or release names the epoch of the
  // leader that issued its leases (AllocateReply/LookupReply::epoch). Any
  // other epoch is refused, naming both: an older one (the leases died with
  // a deposed leader; kFailedPrecondition: write again) or a newer one (this
  // process is the deposed leader; kUnavailable: find the leader in etcd).
  Status check_epoch(const char* what, std::uint64_t carried) const;
  // check_epoch for a commit or abort, logged at warn when refused.
  bool lease_epoch_ok(const Call& c, const rpc::LeaseBatch& m);

  // --- server_agents.cc: what agents send (and the pushes above).
  void register_agent(const Call& c, rpc::RegisterAgentRequest& m);
  void heartbeat(const Call& c, rpc::HeartbeatRequest& m);
  void list_agents(const Call& c);
  void recover_blocks(const Call& c, rpc::RecoverBlocksRequest& m);
  void invalidate_done(const Call& c, rpc::InvalidateMessage& m);
  void removed_done(const Call& c, rpc::InvalidateMessage& m);
  void drain_copied(const Call& c, rpc::DrainCopiedRequest& m);

  // --- server_admin.cc: operators (pooltool) and stats.
  void stats(const Call& c);
  rpc::StatsReply tenant_stats(const std::string& tenant) const;
  void list_namespaces(const Call& c);
  void agent_stats(const Call& c);
  void usage(const Call& c, rpc::UsageRequest& m);
  void set_quota(const Call& c, rpc::SetQuotaRequest& m);
  void evict_namespace(const Call& c, rpc::EvictNamespaceRequest& m);
  void drain(const Call& c, rpc::DrainRequest& m);
  struct EvictSummary {
    std::uint64_t blocks = 0, bytes = 0, removed = 0, failed = 0;
    // What the reply waits for (as a remove's does), and what to send.
    std::vector<Location> removed_slots, removed_leased;
    std::vector<InvalidateRequest> invalidations;
  };
  EvictSummary evict_blocks(NamespaceId ns, bool dry_run, std::uint64_t older_than_ms, Clock::time_point now);
  // One step of a drain: the core issues moves, which go to the draining
  // agent as a kPushDrainCopy (the agent copies agent-to-agent over UCX and
  // reports with kDrainCopied); moves that cannot be sent fail at once.
  Result<rpc::DrainReply> drain_step(const rpc::DrainRequest& m, Clock::time_point now);
  rpc::UsageReply usage_rows(const rpc::UsageRequest& m) const;
};

}  // namespace kvpool::coordinator
