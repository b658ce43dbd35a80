#include "coordinator/server.h"

#include <algorithm>
#include <array>
#include <optional>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>

#include "coordinator/tenant_gate.h"
#include "runtime/common/logging.h"
#include "runtime/rpc/messages.h"
#include "runtime/rpc/server.h"

namespace kvpool::coordinator {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("coordinator");
  return l;
}

rpc::LocationWire to_wire(const Location& l) {
  return {to_u32(l.agent), l.incarnation, l.payload_offset, l.header_offset, l.length, l.generation};
}

std::uint32_t ms_until(Clock::time_point t, Clock::time_point now) {
  if (t <= now) return 0;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count();
  return static_cast<std::uint32_t>(std::min<long long>(ms, UINT32_MAX));
}

// The operation label of a request type in kvpool_coordinator_* metrics.
const char* op_name(std::uint16_t type) {
  switch (type) {
    case rpc::kRegisterNamespace:
      return "register_namespace";
    case rpc::kRegisterAgent:
      return "register_agent";
    case rpc::kHeartbeat:
      return "heartbeat";
    case rpc::kListAgents:
      return "list_agents";
    case rpc::kAllocate:
      return "allocate";
    case rpc::kCommit:
      return "commit";
    case rpc::kAbort:
      return "abort";
    case rpc::kLookup:
      return "lookup";
    case rpc::kRelease:
      return "release";
    case rpc::kRemove:
      return "remove";
    case rpc::kWaitFor:
      return "wait_for";
    case rpc::kStats:
      return "stats";
    case rpc::kListNamespaces:
      return "list_namespaces";
    case rpc::kUsage:
      return "usage";
    case rpc::kEvictNamespace:
      return "evict_namespace";
    case rpc::kAgentStats:
      return "agent_stats";
    case rpc::kInvalidateDone:
      return "invalidate_done";
    case rpc::kRemovedDone:
      return "removed_done";
    case rpc::kDrain:
      return "drain";
    case rpc::kDrainCopied:
      return "drain_copied";
    case rpc::kSetQuota:
      return "set_quota";
    case rpc::kRecoverBlocks:
      return "recover_blocks";
    default:
      return "unknown";
  }
}

std::int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string ns_label(NamespaceId id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

// Instruments of one operation, created once at start.
struct OpMetrics {
  std::string name;
  metrics::Counter* requests = nullptr;
  metrics::Histogram* latency = nullptr;
  // Error replies by status code, indexed by StatusCode.
  std::array<metrics::Counter*, static_cast<std::size_t>(kLastStatusCode) + 1> errors{};
};

}  // namespace

struct CoordinatorServer::Impl {
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

  // Metrics: instruments updated as requests come and go, and a collector
  // reading the core at scrape time (removed in stop() and ~Impl, before the
  // core goes).
  std::shared_ptr<metrics::Registry> registry;
  std::map<std::uint16_t, OpMetrics> ops;  // filled at start, read-only after
  OpMetrics* unknown_op = nullptr;
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

  struct EvictSummary {
    std::uint64_t blocks = 0, bytes = 0, removed = 0, failed = 0;
    // What the reply waits for (as a remove's does), and what to send.
    std::vector<Location> removed_slots, removed_leased;
    std::vector<InvalidateRequest> invalidations;
  };

  // A server that failed to start (or was never stopped) must not leave its
  // collector in a registry that outlives it.
  ~Impl() {
    if (registry) registry->remove_collector(collector_id);
  }
  void init_metrics();
  void collect(metrics::Collector& c) const;
  OpMetrics& op(std::uint16_t type) {
    auto it = ops.find(type);
    return it == ops.end() ? *unknown_op : it->second;
  }

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
  using SlotKey = std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>;  // agent, header offset, generation
  std::map<SlotKey, std::shared_ptr<PendingRemove>> remove_waits;           // guarded by mu

  // Answers the pending removes whose slots `done` picks (deadline passed,
  // agent dead): a pass over all of them, from the tick thread only.
  void finish_removes(const std::function<bool(const SlotKey&, const PendingRemove&)>& done) {
    std::vector<std::shared_ptr<PendingRemove>> ready;
    {
      std::lock_guard lock(mu);
      for (auto it = remove_waits.begin(); it != remove_waits.end();) {
        if (done(it->first, *it->second)) {
          if (--it->second->left == 0) ready.push_back(it->second);
          it = remove_waits.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& p : ready) p->resp.reply(std::move(p->reply));
  }

  // An agent's acknowledgement: a lookup per slot, not a pass over every
  // pending remove (this runs for every invalidation batch).
  void acknowledge_removes(const rpc::InvalidateMessage& m) {
    std::vector<std::shared_ptr<PendingRemove>> ready;
    {
      std::lock_guard lock(mu);
      if (remove_waits.empty()) return;
      for (const auto& sl : m.slots) {
        auto it = remove_waits.find(SlotKey{m.agent, sl.header_offset, sl.generation});
        if (it == remove_waits.end()) continue;
        if (--it->second->left == 0) ready.push_back(it->second);
        remove_waits.erase(it);
      }
    }
    for (auto& p : ready) p->resp.reply(std::move(p->reply));
  }

  // Answers `rep` once the agents have acknowledged every slot in `removed`
  // and `removed_leased` (bounded as above), then sends what the agents must
  // do. Used by remove and by pooltool evict.
  void reply_after_removed(const MeteredResponder& resp, std::string rep, const std::vector<Location>& removed,
                           const std::vector<Location>& removed_leased,
                           const std::vector<InvalidateRequest>& invalidations, Clock::time_point now) {
    if (removed.empty() && removed_leased.empty()) {
      send_invalidations(invalidations);
      return resp.reply(std::move(rep));
    }
    auto pending = std::make_shared<PendingRemove>(PendingRemove{resp, std::move(rep), 0, now + kRemoveAckWait});
    {
      std::lock_guard lock(mu);
      for (const auto* list : {&removed, &removed_leased}) {
        for (const Location& l : *list) {
          if (remove_waits.emplace(SlotKey{to_u32(l.agent), l.header_offset, l.generation}, pending).second) {
            ++pending->left;
          }
        }
      }
    }
    // Sent only now, so no acknowledgement can come before the wait is set.
    send_removed_leased(removed_leased);
    send_invalidations(invalidations);
  }

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
                       std::function<void(bool expired)> resume) {
    {
      std::lock_guard lock(mu);
      if (core->any_evicting(slots)) {
        auto w = std::make_shared<EvictWait>(EvictWait{std::move(slots), deadline, std::move(resume), false});
        for (const EvictingSlot& e : w->slots) evict_waits[slot_key(e)].push_back(w);
        return;
      }
    }
    resume(false);
  }

  // An agent's acknowledgement: wakes the waits on these slots whose other
  // slots (if any) are done too.
  void acknowledge_evictions(const rpc::InvalidateMessage& m) {
    std::vector<std::shared_ptr<EvictWait>> ready;
    {
      std::lock_guard lock(mu);
      if (evict_waits.empty()) return;
      for (const auto& sl : m.slots) {
        auto it = evict_waits.find(SlotKey{m.agent, sl.header_offset, sl.generation});
        if (it == evict_waits.end()) continue;
        for (auto& w : it->second) {
          if (!w->done && !core->any_evicting(w->slots)) {
            w->done = true;
            ready.push_back(w);
          }
        }
        evict_waits.erase(it);
      }
    }
    for (auto& w : ready) w->resume(false);
  }

  // From the tick: waits whose deadline passed, or whose slots stopped
  // evicting another way (the agent died or restarted).
  void finish_evict_waits(Clock::time_point now) {
    std::vector<std::pair<std::shared_ptr<EvictWait>, bool>> ready;
    {
      std::lock_guard lock(mu);
      for (auto it = evict_waits.begin(); it != evict_waits.end();) {
        for (auto& w : it->second) {
          if (w->done) continue;
          const bool expired = w->deadline <= now;
          if (expired || !core->any_evicting(w->slots)) {
            w->done = true;
            ready.emplace_back(w, expired);
          }
        }
        std::erase_if(it->second, [](const auto& w) { return w->done; });
        it = it->second.empty() ? evict_waits.erase(it) : std::next(it);
      }
    }
    for (auto& [w, expired] : ready) {
      if (expired) {
        logger()->warn("an eviction was not acknowledged within {} s: answering anyway", kEvictAckWait.count());
      }
      w->resume(expired);
    }
  }

  // kLookup, also run again after waiting for evictions: until
  // wait_deadline a miss on an evicting block waits instead.
  // Nothing is copied unless the lookup has to wait.
  void lookup(const std::string& tenant, rpc::LookupRequest& m, const MeteredResponder& resp,
              Clock::time_point wait_deadline) {
    const auto now = Clock::now();
    auto res = core->lookup(m.ns, m.keys, m.take_lease, now, now < wait_deadline);
    if (!res) return resp.fail(res.error());
    if (!res->evicting.empty()) {
      auto held = std::make_shared<rpc::LookupRequest>(std::move(m));
      return after_evictions(std::move(res->evicting), wait_deadline,
                             [this, tenant, held, resp, wait_deadline](bool) {
                               if (options.fence) {
                                 if (Status fenced = options.fence(); !fenced.ok()) return resp.fail(fenced);
                               }
                               lookup(tenant, *held, resp, wait_deadline);
                             });
    }
    rpc::LookupReply rep;
    rep.epoch = options.epoch;
    rep.lease = to_u64(res->read_lease);
    gate->note_lease(tenant, rep.lease);
    rep.locations.reserve(res->locations.size());
    for (const auto& l : res->locations) rep.locations.push_back(to_wire(l));
    resp.reply(rpc::encode(rep));
  }

  // A wait_for answer: a key reported not committed must not be one still
  // being evicted (it was committed, and may come back).
  void answer_wait_for(const MeteredResponder& resp, NamespaceId ns, const std::vector<Key128>& keys,
                       std::vector<bool> committed) {
    std::vector<Key128> missing;
    for (std::size_t k = 0; k < committed.size() && k < keys.size(); ++k) {
      if (!committed[k]) missing.push_back(keys[k]);
    }
    std::vector<EvictingSlot> slots;
    if (!missing.empty()) slots = core->evicting(ns, missing);
    std::string reply = rpc::encode(rpc::WaitForReply{std::move(committed)});
    if (slots.empty()) return resp.reply(std::move(reply));
    after_evictions(std::move(slots), Clock::now() + kEvictAckWait,
                    [resp, reply = std::move(reply)](bool) mutable { resp.reply(std::move(reply)); });
  }

  void send_invalidations(const std::vector<InvalidateRequest>& reqs) {
    for (const auto& req : reqs) {
      std::uint64_t conn = 0;
      {
        std::lock_guard lock(mu);
        auto it = agent_connections.find(to_u32(req.agent));
        if (it == agent_connections.end()) continue;  // retried by tick once the agent is back
        conn = it->second;
      }
      invalidations_sent->inc(req.slots.size());
      rpc::InvalidateMessage msg;
      msg.agent = to_u32(req.agent);
      msg.incarnation = req.incarnation;
      msg.epoch = options.epoch;
      for (const auto& s : req.slots) msg.slots.push_back({s.header_offset, s.payload_offset, s.length, s.generation});
      if (Status st = server->push(conn, rpc::kPushInvalidate, rpc::encode(msg)); !st.ok()) {
        logger()->debug("invalidate push to agent {}: {}", msg.agent, st.to_string());
      }
    }
  }

  // Blocks removed while read-leased keep a valid slot header until their
  // last lease ends: their agents leave them out of any scan meanwhile, so a
  // coordinator restart in between does not bring them back.
  void send_removed_leased(const std::vector<Location>& removed_leased) {
    std::map<std::uint32_t, rpc::InvalidateMessage> by_agent;
    for (const Location& l : removed_leased) {
      rpc::InvalidateMessage& m = by_agent[to_u32(l.agent)];
      m.agent = to_u32(l.agent);
      m.incarnation = l.incarnation;
      m.epoch = options.epoch;
      m.slots.push_back({l.header_offset, l.payload_offset, l.length, l.generation});
    }
    for (const auto& [agent, m] : by_agent) {
      std::uint64_t conn = 0;
      {
        std::lock_guard lock(mu);
        auto it = agent_connections.find(agent);
        if (it == agent_connections.end()) continue;
        conn = it->second;
      }
      if (Status st = server->push(conn, rpc::kPushRemoved, rpc::encode(m)); !st.ok()) {
        logger()->debug("removed push to agent {}: {}", agent, st.to_string());
      }
    }
  }

  void broadcast_dead(const std::vector<DeadAgent>& dead) {
    if (dead.empty()) return;
    std::vector<std::uint64_t> workers;
    {
      std::lock_guard lock(mu);
      // agent_connections stays: the agent may already have rejoined or
      // restarted on a new connection under the same id (a registration
      // replaces the entry, a closed connection removes its own).
      workers.assign(worker_connections.begin(), worker_connections.end());
    }
    std::uint64_t epoch = core->membership_epoch();
    agent_deaths->inc(dead.size());
    for (const auto& d : dead) {
      logger()->warn("agent {} (incarnation {:#x}) is down: its blocks left the index", to_u32(d.agent),
                     d.incarnation);
      std::string payload = rpc::encode(rpc::AgentDownMessage{to_u32(d.agent), d.incarnation, epoch});
      for (auto w : workers) (void)server->push(w, rpc::kPushAgentDown, payload);
    }
  }

  void tick_loop() {
    std::unique_lock lock(tick_mu);
    while (!stopping) {
      tick_cv.wait_for(lock, options.tick_interval);
      if (stopping) break;
      // A fenced leader (HA) neither expires anything nor pushes to agents:
      // the new leader owns the pool now.
      if (options.fence && !options.fence().ok()) continue;
      lock.unlock();
      TickActions a = core->tick(Clock::now());
      write_lease_expiries->inc(a.expired_write_leases);
      read_lease_expiries->inc(a.expired_read_leases);
      tick_evictions->inc(a.evicted_blocks);
      send_invalidations(a.invalidations);
      broadcast_dead(a.dead_agents);
      const auto now = Clock::now();
      finish_removes([&](const SlotKey& k, const PendingRemove& p) {
        if (p.deadline <= now) return true;
        for (const auto& d : a.dead_agents) {
          if (std::get<0>(k) == to_u32(d.agent)) return true;
        }
        return false;
      });
      finish_evict_waits(now);
      lock.lock();
    }
  }

  // Isolated tenants (runtime/common/tenants.h). The regions a requester
  // may be told of and reach: an isolated tenant's own; everyone else's
  // (the cluster secret, a tenant that is not isolated) the shared ones.
  std::string region_class(const std::string& tenant) const {
    if (tenant.empty() || !tenants) return {};
    const Tenant* t = tenants->find(tenant);
    return t != nullptr && t->isolated() ? tenant : std::string();
  }
  // The data path (allocate, lookup, wait_for) of a namespace that lives in
  // an isolated tenant's regions is open to that tenant's credential only:
  // anyone else would be handed locations in a region whose rkey is not
  // theirs. The operator (cluster secret) still lists, evicts and removes.
  Status check_isolation(const rpc::Request& req, NamespaceId ns) const {
    if (!any_isolated) return Status();
    auto owner = core->namespace_tenant(ns);
    if (!owner) return Status();  // unknown: the core says so
    const std::string mine = region_class(req.tenant);
    if (*owner == mine) return Status();
    if (owner->empty()) {
      return Status(StatusCode::kPermissionDenied,
                    "namespace " + ns_label(ns) + " lives in the shared regions, and tenant '" + req.tenant +
                        "' is isolated: it reaches only its own regions (is the namespace among its patterns?)");
    }
    return Status(StatusCode::kPermissionDenied,
                  "namespace " + ns_label(ns) + " lives in the isolated regions of tenant '" + *owner +
                      "': only that tenant's credential reaches it on the data path (" +
                      (req.tenant.empty() ? std::string("the cluster secret may list, evict and remove it")
                                          : "tenant '" + req.tenant + "' may not") +
                      ")");
  }
  rpc::StatsReply tenant_stats(const std::string& tenant) const;

  // High availability: a commit, abort or release names the epoch of the
  // leader that issued its leases (AllocateReply/LookupReply::epoch). Any
  // other epoch is refused, naming both: an older one (the leases died with
  // a deposed leader; kFailedPrecondition: write again) or a newer one (this
  // process is the deposed leader; kUnavailable: find the leader in etcd).
  Status check_epoch(const char* what, std::uint64_t carried) const {
    if (carried == options.epoch) return Status();
    const std::string head = std::string(what) + " carries leader epoch " + std::to_string(carried) + " of shard " +
                             std::to_string(options.shard) + ", but this coordinator's epoch is " +
                             std::to_string(options.epoch);
    if (carried < options.epoch) {
      return Status(StatusCode::kFailedPrecondition,
                    head + ": its leases were issued by an earlier leader and ended with it (write the blocks again)");
    }
    return Status(StatusCode::kUnavailable, head + ": this is a deposed leader; find the leader in etcd");
  }

  void handle(rpc::Request req, rpc::Responder raw_resp);
  // One step of a drain: the core issues moves, which go to the draining
  // agent as a kPushDrainCopy (the agent copies agent-to-agent over UCX and
  // reports with kDrainCopied); moves that cannot be sent fail at once.
  Result<rpc::DrainReply> drain_step(const rpc::DrainRequest& m, Clock::time_point now);
  void drain_copied(const rpc::DrainCopiedRequest& m, Clock::time_point now, const MeteredResponder& resp);
  rpc::UsageReply usage(const rpc::UsageRequest& m) const;
  EvictSummary evict_namespace(NamespaceId ns, bool dry_run, std::uint64_t older_than_ms, Clock::time_point now);
};

void CoordinatorServer::Impl::init_metrics() {
  auto& r = *registry;
  const metrics::Labels none;
  std::vector<std::uint16_t> types = {rpc::kRegisterNamespace,
                                      rpc::kRegisterAgent,
                                      rpc::kHeartbeat,
                                      rpc::kListAgents,
                                      rpc::kAllocate,
                                      rpc::kCommit,
                                      rpc::kAbort,
                                      rpc::kLookup,
                                      rpc::kRelease,
                                      rpc::kRemove,
                                      rpc::kWaitFor,
                                      rpc::kStats,
                                      rpc::kListNamespaces,
                                      rpc::kUsage,
                                      rpc::kEvictNamespace,
                                      rpc::kAgentStats,
                                      rpc::kInvalidateDone,
                                      rpc::kRemovedDone,
                                      rpc::kDrain,
                                      rpc::kDrainCopied,
                                      rpc::kSetQuota,
                                      rpc::kRecoverBlocks,
                                      0};
  for (std::uint16_t t : types) {
    OpMetrics& m = ops[t];
    m.name = op_name(t);
    metrics::Labels l = {{"op", m.name}};
    m.requests = &r.counter("kvpool_coordinator_requests_total", "Control-protocol requests received, by operation", l);
    m.latency = &r.histogram("kvpool_coordinator_request_duration_seconds",
                             "Time from receiving a request to answering it, by operation (wait_for: the wait)",
                             metrics::latency_buckets(), l);
    for (std::size_t c = 1; c < m.errors.size(); ++c) {
      m.errors[c] = &r.counter("kvpool_coordinator_request_errors_total",
                               "Requests answered with an error, by operation and status code",
                               {{"op", m.name}, {"code", std::string(code_name(static_cast<StatusCode>(c)))}});
    }
  }
  unknown_op = &ops[0];
  const char* outcomes[] = {"placed", "exists", "pending", "error"};
  for (int i = 0; i < 4; ++i) {
    allocate_outcomes[i] = &r.counter("kvpool_coordinator_allocate_blocks_total",
                                      "Blocks asked for by allocate, by outcome", {{"outcome", outcomes[i]}});
  }
  commits_ok =
      &r.counter("kvpool_coordinator_commit_leases_total", "Write leases committed or refused", {{"result", "ok"}});
  commits_failed =
      &r.counter("kvpool_coordinator_commit_leases_total", "Write leases committed or refused", {{"result", "error"}});
  removes_ok =
      &r.counter("kvpool_coordinator_remove_blocks_total", "Blocks asked to be removed, by result", {{"result", "ok"}});
  removes_failed = &r.counter("kvpool_coordinator_remove_blocks_total", "Blocks asked to be removed, by result",
                              {{"result", "error"}});
  const char* expiry_help = "Leases that ran out before they were committed (write) or released (read)";
  write_lease_expiries = &r.counter("kvpool_coordinator_lease_expiries_total", expiry_help, {{"kind", "write"}});
  read_lease_expiries = &r.counter("kvpool_coordinator_lease_expiries_total", expiry_help, {{"kind", "read"}});
  tick_evictions = &r.counter("kvpool_coordinator_watermark_evictions_total",
                              "Blocks evicted by the background drain of agents above the high watermark", none);
  agent_deaths = &r.counter("kvpool_coordinator_agent_deaths_total",
                            "Agent incarnations declared dead (missed heartbeats or restarted)", none);
  invalidations_sent = &r.counter("kvpool_coordinator_invalidations_sent_total",
                                  "Slot invalidations pushed to agents (retries included)", none);
  r.gauge("kvpool_build_info", "kvpool version of this process", {{"version", "0.1.0"}}).set(1);
  collector_id = r.add_collector([this](metrics::Collector& c) { collect(c); });
}

void CoordinatorServer::Impl::collect(metrics::Collector& c) const {
  const auto now = Clock::now();
  Stats st = core->stats();
  auto g = [&](const char* name, const char* help, double v) { c.gauge(name, help, {}, v); };
  auto n = [&](const char* name, const char* help, double v) { c.counter(name, help, {}, v); };
  g("kvpool_coordinator_capacity_bytes", "Payload bytes of every live agent's region", st.capacity_bytes);
  g("kvpool_coordinator_used_bytes", "Bytes not allocatable now: live, removed-but-leased, awaiting invalidation",
    st.used_bytes);
  g("kvpool_coordinator_live_bytes", "Slot bytes of committed blocks and blocks being written", st.live_bytes);
  g("kvpool_coordinator_reclaiming_bytes", "Bytes quarantined or awaiting an invalidation acknowledgement",
    st.reclaiming_bytes);
  g("kvpool_coordinator_blocks", "Committed blocks (evicted or removed ones count until their agent acknowledges)",
    st.blocks);
  g("kvpool_coordinator_evicting_blocks",
    "Blocks evicted or removed whose agent has not yet acknowledged the slot invalidation (lookups reaching them wait)",
    st.evicting + st.removing);
  g("kvpool_coordinator_namespaces", "Registered namespaces", st.namespaces);
  g("kvpool_coordinator_write_leases", "Write leases outstanding", st.write_leases);
  g("kvpool_coordinator_read_leases", "Read leases outstanding", st.read_leases);
  g("kvpool_coordinator_waiters", "wait_for requests waiting", st.waiters);
  g("kvpool_coordinator_agents_alive", "Agents alive", st.agents_alive);
  g("kvpool_coordinator_agents_dead", "Agents declared dead (known incarnations)",
    static_cast<double>(st.agents.size() - st.agents_alive));
  g("kvpool_coordinator_membership_epoch", "Bumps on every agent join, restart and death", st.membership_epoch);
  g("kvpool_coordinator_uptime_seconds", "Seconds since the coordinator started",
    std::chrono::duration<double>(now - started).count());
  n("kvpool_coordinator_lookup_hits_total", "Blocks returned by lookups", st.lookup_hits);
  n("kvpool_coordinator_lookup_misses_total", "Keys asked by lookups and not returned", st.lookup_misses);
  n("kvpool_coordinator_evictions_total", "Blocks evicted under memory pressure (allocations and drains)",
    st.evictions);
  n("kvpool_coordinator_removals_total", "Blocks removed on request", st.removals);
  n("kvpool_coordinator_expired_write_leases_total", "Write leases that expired uncommitted", st.expired_write_leases);
  n("kvpool_coordinator_aborted_write_leases_total", "Write leases given up by their writers", st.aborted_write_leases);
  for (const AgentView& a : st.agents) {
    metrics::Labels l = {{"agent", std::to_string(to_u32(a.id))}, {"address", a.registration.control_address}};
    c.gauge("kvpool_coordinator_agent_up", "1 while the agent is alive, 0 once declared dead", l, a.alive ? 1 : 0);
    c.gauge("kvpool_coordinator_agent_heartbeat_age_seconds", "Seconds since the agent's last heartbeat", l,
            std::chrono::duration<double>(now - a.last_heartbeat).count());
    c.gauge("kvpool_coordinator_agent_capacity_bytes", "Payload bytes of the agent's region", l, a.capacity_bytes);
    c.gauge("kvpool_coordinator_agent_used_bytes", "Bytes of the agent's region not allocatable now", l, a.used_bytes);
    c.gauge("kvpool_coordinator_agent_blocks", "Committed blocks on the agent", l, a.blocks);
  }
  for (const NamespaceView& ns : core->namespaces()) {
    c.gauge("kvpool_coordinator_namespace_blocks", "Committed blocks of the namespace",
            {{"namespace", ns_label(ns.id)}, {"model", ns.descriptor.model_id}}, ns.blocks);
  }
}

rpc::UsageReply CoordinatorServer::Impl::usage(const rpc::UsageRequest& m) const {
  // O(blocks): walks every agent's slots. For operators, not for workers.
  rpc::UsageReply rep;
  for (const AgentView& a : core->agents()) {
    if (!a.alive) continue;
    auto slots = core->slots(a.id);
    if (!slots) continue;
    std::map<NamespaceId, rpc::UsageRow> rows;
    for (const SlotView& v : *slots) {
      if (v.state != SlotState::kCommitted || (!m.all && v.namespace_id != m.ns)) continue;
      rpc::UsageRow& row = rows[v.namespace_id];
      row.ns = v.namespace_id;
      row.agent = to_u32(a.id);
      row.blocks += 1;
      row.bytes += v.length;
    }
    for (auto& [ns, row] : rows) rep.rows.push_back(row);
  }
  return rep;
}

CoordinatorServer::Impl::EvictSummary CoordinatorServer::Impl::evict_namespace(NamespaceId ns, bool dry_run,
                                                                               std::uint64_t older_than_ms,
                                                                               Clock::time_point now) {
  EvictSummary out;
  std::vector<Key128> keys;
  // A block used after it was listed may still go: the window is one pass.
  const std::uint64_t max_stamp =
      older_than_ms == 0 ? UINT64_MAX : core->stamp_at(now - std::chrono::milliseconds(older_than_ms));
  for (const AgentView& a : core->agents()) {
    if (!a.alive) continue;
    auto slots = core->slots(a.id);
    if (!slots) continue;
    for (const SlotView& v : *slots) {
      if (v.state != SlotState::kCommitted || v.namespace_id != ns || v.stamp > max_stamp) continue;
      keys.push_back(v.key);
      out.bytes += v.length;
    }
  }
  out.blocks = keys.size();
  if (dry_run) return out;
  for (std::size_t i = 0; i < keys.size(); i += rpc::kMaxBatch) {
    std::span<const Key128> batch(keys.data() + i, std::min<std::size_t>(rpc::kMaxBatch, keys.size() - i));
    auto res = core->remove(ns, batch, now);
    if (!res) {
      out.failed += batch.size();
      continue;
    }
    out.removed_slots.insert(out.removed_slots.end(), res->removed.begin(), res->removed.end());
    out.removed_leased.insert(out.removed_leased.end(), res->removed_leased.begin(), res->removed_leased.end());
    out.invalidations.insert(out.invalidations.end(), res->invalidations.begin(), res->invalidations.end());
    for (const auto& st : res->statuses) (st.ok() ? out.removed : out.failed) += 1;
  }
  removes_ok->inc(out.removed);
  removes_failed->inc(out.failed);
  return out;
}

void CoordinatorServer::Impl::handle(rpc::Request req, rpc::Responder raw_resp) {
  const auto now = Clock::now();
  OpMetrics& om = op(req.type);
  om.requests->inc();
  MeteredResponder resp(std::move(raw_resp), &om);
  if (options.fence) {
    if (Status fenced = options.fence(); !fenced.ok()) return resp.fail(fenced);
  }
  if (req.peer_role == rpc::Role::kWorker) {
    std::lock_guard lock(mu);
    worker_connections.insert(req.connection_id);
  }
  if (!req.tenant.empty()) {
    if (Status s = gate->check(req, *core); !s.ok()) {
      logger()->warn("{} from {} refused: {}", op_name(req.type), req.peer_id, s.message());
      return resp.fail(s);
    }
  }
  // Decodes the request into T, or answers the error and returns false.
  auto parse = [&](auto& msg) {
    Status s = rpc::decode(req.payload, msg);
    if (!s.ok()) {
      logger()->warn("{} from {}: {}", req.type, req.peer_id, s.to_string());
      resp.fail(s);
    }
    return s.ok();
  };
  switch (req.type) {
    case rpc::kRegisterNamespace: {
      rpc::RegisterNamespaceRequest m;
      if (!parse(m)) return;
      std::string owner;
      if (any_isolated) {
        auto o = tenants->isolated_owner(namespace_id(m.descriptor), &m.descriptor.model_id);
        if (!o) return resp.fail(o.error());
        owner = std::move(*o);
        if (!req.tenant.empty() && owner != region_class(req.tenant)) {
          return resp.fail(Status(
              StatusCode::kPermissionDenied,
              "tenant '" + req.tenant + "' may not register namespace '" + m.descriptor.model_id + "': " +
                  (owner.empty() ? std::string("it lives in the shared regions and the tenant is isolated")
                                 : "it belongs to isolated tenant '" + owner + "'")));
        }
      }
      auto id = core->register_namespace(m.descriptor, owner, {req.peer_id, req.tenant});
      if (!id) return resp.fail(id.error());
      auto bytes = block_bytes_of(m.descriptor);
      resp.reply(rpc::encode(rpc::RegisterNamespaceReply{*id, bytes ? *bytes : 0}));
      return;
    }
    case rpc::kRegisterAgent: {
      rpc::RegisterAgentRequest m;
      if (!parse(m)) return;
      AgentRegistration reg{m.agent.worker_address, m.agent.packed_rkey,  m.agent.host_id, m.agent.control_address,
                            m.agent.region_base,    m.agent.region_bytes, m.agent.incarnation, m.agent.tenant};
      if (!reg.tenant.empty() && region_class(reg.tenant) != reg.tenant) {
        return resp.fail(Status(StatusCode::kFailedPrecondition,
                                "region " + reg.control_address + " is for tenant '" + reg.tenant +
                                    "', which is not an isolated tenant of this coordinator's --tenants file"));
      }
      Result<Rejoin> joined = m.rejoin ? core->rejoin_agent(reg, now) : core->register_agent(reg, now).map([](AgentId id) {
        return Rejoin{id, false};
      });
      if (!joined) return resp.fail(joined.error());
      const std::uint32_t id = to_u32(joined->id);
      {
        std::lock_guard lock(mu);
        agent_connections[id] = req.connection_id;
      }
      logger()->info("agent {} {}: {} bytes, host {}, incarnation {:#x}", id, m.rejoin ? "rejoined" : "registered",
                     reg.region_bytes, reg.host_id, reg.incarnation);
      rpc::RegisterAgentReply rep;
      rep.agent = id;
      rep.heartbeat_interval_ms = static_cast<std::uint32_t>(options.heartbeat_interval.count());
      rep.send_blocks = joined->send_blocks;
      rep.epoch = options.epoch;
      if (reg.tenant.empty() && any_isolated) {
        for (const Tenant& t : tenants->all()) {
          if (t.isolated()) rep.isolated.push_back({t.name, t.isolated_bytes});
        }
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kSetQuota: {
      rpc::SetQuotaRequest m;
      if (!parse(m)) return;
      auto res = core->set_quota(m.ns, m.quota_blocks, m.quota_bytes, now);
      if (!res) return resp.fail(res.error());
      send_invalidations(res->invalidations);
      resp.reply({});
      return;
    }
    case rpc::kRecoverBlocks: {
      rpc::RecoverBlocksRequest m;
      if (!parse(m)) return;
      std::vector<RecoveredBlock> blocks;
      blocks.reserve(m.blocks.size());
      for (const auto& b : m.blocks) blocks.push_back({b.ns, b.key, b.payload_offset, b.length, b.generation});
      auto res = core->recover_blocks(AgentId{m.agent}, m.incarnation, blocks, now);
      if (!res) return resp.fail(res.error());
      send_invalidations(res->invalidations);
      if (m.last) {
        if (Status s = core->finish_recovery(AgentId{m.agent}, m.incarnation, now); !s.ok()) return resp.fail(s);
      }
      resp.reply(rpc::encode(rpc::RecoverBlocksReply{res->adopted, res->dropped}));
      return;
    }
    case rpc::kHeartbeat: {
      rpc::HeartbeatRequest m;
      if (!parse(m)) return;
      Status s = core->heartbeat(AgentId{m.agent}, m.incarnation, now);
      if (s.ok() && m.unix_ms != 0) {
        std::lock_guard lock(mu);
        agent_clock_offset_ms[m.agent] = m.unix_ms - unix_now_ms();
      }
      return s.ok() ? resp.reply({}) : resp.fail(s);
    }
    case rpc::kListAgents: {
      rpc::ListAgentsReply rep;
      rep.epoch = core->membership_epoch();
      const std::string mine = region_class(req.tenant);
      for (const auto& a : core->agents()) {
        // Only the regions this requester may reach: an rkey is access.
        if (a.registration.tenant != mine) continue;
        rpc::AgentRecord r;
        r.agent = to_u32(a.id);
        r.incarnation = a.incarnation;
        r.worker_address = a.registration.worker_address;
        r.packed_rkey = a.registration.packed_rkey;
        r.host_id = a.registration.host_id;
        r.control_address = a.registration.control_address;
        r.region_base = a.registration.region_base;
        r.region_bytes = a.registration.region_bytes;
        r.alive = a.alive;
        r.used_bytes = a.used_bytes;
        r.blocks = a.blocks;
        r.tenant = a.registration.tenant;
        rep.agents.push_back(std::move(r));
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kAllocate: {
      rpc::AllocateRequest m;
      if (!parse(m)) return;
      if (Status s = check_isolation(req, m.ns); !s.ok()) return resp.fail(s);
      std::vector<BlockRequest> blocks;
      blocks.reserve(m.items.size());
      for (const auto& it : m.items) blocks.push_back({it.key, it.length});
      auto res = core->allocate(m.ns, blocks, WriterInfo{req.peer_id, m.writer_host}, now);
      if (!res) return resp.fail(res.error());
      send_invalidations(res->invalidations);
      rpc::AllocateReply rep;
      rep.epoch = options.epoch;
      rep.results.reserve(res->items.size());
      for (const auto& item : res->items) {
        rpc::AllocateResult r;
        switch (item.outcome) {
          case AllocateOutcome::kPlaced:
            r.outcome = rpc::AllocateOutcome::kPlaced;
            r.location = to_wire(item.location);
            r.lease = to_u64(item.lease);
            r.lease_ms = ms_until(item.lease_deadline, now);
            gate->note_lease(req.tenant, r.lease);
            break;
          case AllocateOutcome::kExists:
            r.outcome = rpc::AllocateOutcome::kExists;
            break;
          case AllocateOutcome::kPending:
            r.outcome = rpc::AllocateOutcome::kPending;
            break;
          case AllocateOutcome::kError:
            r.outcome = rpc::AllocateOutcome::kError;
            r.error = rpc::StatusWire::from(item.status);
            break;
        }
        allocate_outcomes[static_cast<std::size_t>(r.outcome)]->inc();
        rep.results.push_back(std::move(r));
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kCommit:
    case rpc::kAbort: {
      rpc::LeaseBatch m;
      if (!parse(m)) return;
      if (Status s = check_epoch(req.type == rpc::kCommit ? "commit" : "abort", m.epoch); !s.ok()) {
        logger()->warn("{} of {} leases from {} refused: {}", op_name(req.type), m.leases.size(), req.peer_id,
                       s.message());
        return resp.fail(s);
      }
      std::vector<LeaseId> leases;
      for (auto l : m.leases) leases.push_back(LeaseId{l});
      rpc::StatusBatch rep;
      if (req.type == rpc::kCommit) {
        auto statuses = core->commit(leases, now);
        for (std::size_t i = 0; i < statuses.size(); ++i) {
          const Status& s = statuses[i];
          if (s.ok()) gate->forget_lease(req.tenant, m.leases[i]);
          (s.ok() ? commits_ok : commits_failed)->inc();
          rep.results.push_back(rpc::StatusWire::from(s));
        }
      } else {
        BatchResult br = core->abort(leases, now);
        send_invalidations(br.invalidations);
        for (const auto& s : br.statuses) rep.results.push_back(rpc::StatusWire::from(s));
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kLookup: {
      rpc::LookupRequest m;
      if (!parse(m)) return;
      if (Status s = check_isolation(req, m.ns); !s.ok()) return resp.fail(s);
      lookup(req.tenant, m, resp, now + kEvictAckWait);
      return;
    }
    case rpc::kRelease: {
      rpc::ReleaseRequest m;
      if (!parse(m)) return;
      if (Status e = check_epoch("release", m.epoch); !e.ok()) return resp.fail(e);
      Status s = core->release(LeaseId{m.lease}, now);
      return s.ok() ? resp.reply({}) : resp.fail(s);
    }
    case rpc::kRemove: {
      rpc::KeysRequest m;
      if (!parse(m)) return;
      auto res = core->remove(m.ns, m.keys, now);
      if (!res) return resp.fail(res.error());
      rpc::StatusBatch rep;
      for (const auto& s : res->statuses) {
        (s.ok() ? removes_ok : removes_failed)->inc();
        rep.results.push_back(rpc::StatusWire::from(s));
      }
      reply_after_removed(resp, rpc::encode(rep), res->removed, res->removed_leased, res->invalidations, now);
      return;
    }
    case rpc::kWaitFor: {
      rpc::WaitForRequest m;
      if (!parse(m)) return;
      if (Status s = check_isolation(req, m.ns); !s.ok()) return resp.fail(s);
      auto deadline = now + std::chrono::milliseconds(m.timeout_ms);
      // The callback may run at once (all committed), from a commit on
      // another connection, or from tick at the deadline; the responder is
      // a no-op if this client has gone.
      auto keys = std::make_shared<std::vector<Key128>>(std::move(m.keys));
      auto res = core->wait_for(
          m.ns, *keys, deadline,
          [this, resp, ns = m.ns, keys](std::vector<bool> committed) {
            answer_wait_for(resp, ns, *keys, std::move(committed));
          },
          now);
      if (!res) resp.fail(res.error());
      return;
    }
    case rpc::kStats: {
      if (!req.tenant.empty()) return resp.reply(rpc::encode(tenant_stats(req.tenant)));
      Stats st = core->stats();
      rpc::StatsReply rep;
      rep.agents_alive = st.agents_alive;
      rep.agents_dead = st.agents.size() - st.agents_alive;
      rep.capacity_bytes = st.capacity_bytes;
      rep.used_bytes = st.used_bytes;
      rep.blocks = st.blocks;
      rep.namespaces = st.namespaces;
      rep.lookup_hits = st.lookup_hits;
      rep.lookup_misses = st.lookup_misses;
      rep.live_bytes = st.live_bytes;
      rep.reclaiming_bytes = st.reclaiming_bytes;
      rep.write_leases = st.write_leases;
      rep.read_leases = st.read_leases;
      rep.evictions = st.evictions;
      rep.expired_write_leases = st.expired_write_leases;
      rep.unix_ms = unix_now_ms();
      // Only a leader serves at all behind etcd (the fence refuses first).
      rep.leader = options.epoch != 0;
      rep.shard = options.shard;
      rep.epoch = options.epoch;
      rep.uptime_ms = static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - started).count());
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kInvalidateDone: {
      rpc::InvalidateMessage m;
      if (!parse(m)) return;
      std::vector<SlotRef> slots;
      for (const auto& s : m.slots) slots.push_back({s.header_offset, s.payload_offset, s.length, s.generation});
      Status s = core->invalidated(AgentId{m.agent}, m.incarnation, slots, now);
      if (s.ok()) {
        acknowledge_removes(m);
        acknowledge_evictions(m);
      }
      return s.ok() ? resp.reply({}) : resp.fail(s);
    }
    case rpc::kRemovedDone: {
      // The agent has noted blocks removed while read-leased (kPushRemoved):
      // the removes waiting for that can be answered.
      rpc::InvalidateMessage m;
      if (!parse(m)) return;
      acknowledge_removes(m);
      return resp.reply({});
    }
    case rpc::kListNamespaces: {
      rpc::ListNamespacesReply rep;
      for (const NamespaceView& ns : core->namespaces()) {
        if (!req.tenant.empty() && !gate->allows(req.tenant, ns.id, *core)) continue;
        rep.namespaces.push_back({ns.id, ns.descriptor, ns.block_bytes, ns.blocks, ns.live_blocks, ns.live_bytes,
                                  ns.quota_blocks, ns.quota_bytes});
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kAgentStats: {
      rpc::AgentStatsReply rep;
      const std::string mine = region_class(req.tenant);
      for (const AgentView& a : core->agents()) {
        // The operator sees every region; a tenant only those it may reach.
        if (!req.tenant.empty() && a.registration.tenant != mine) continue;
        rpc::AgentStatsRecord r;
        r.tenant = a.registration.tenant;
        r.agent = to_u32(a.id);
        r.incarnation = a.incarnation;
        r.host_id = a.registration.host_id;
        r.control_address = a.registration.control_address;
        r.alive = a.alive;
        r.heartbeat_age_ms =
            a.last_heartbeat >= now
                ? 0
                : static_cast<std::uint64_t>(
                      std::chrono::duration_cast<std::chrono::milliseconds>(now - a.last_heartbeat).count());
        r.region_bytes = a.registration.region_bytes;
        r.capacity_bytes = a.capacity_bytes;
        r.used_bytes = a.used_bytes;
        r.live_bytes = a.live_bytes;
        r.reclaiming_bytes = a.reclaiming_bytes;
        r.blocks = a.blocks;
        r.largest_free = a.largest_free;
        r.draining = a.draining;
        r.drained = a.drained;
        {
          std::lock_guard lock(mu);
          auto it = agent_clock_offset_ms.find(r.agent);
          r.clock_known = a.alive && it != agent_clock_offset_ms.end();
          if (r.clock_known) r.clock_offset_ms = it->second;
        }
        rep.agents.push_back(std::move(r));
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kUsage: {
      rpc::UsageRequest m;
      if (!parse(m)) return;
      rpc::UsageReply rep = usage(m);
      if (!req.tenant.empty()) {
        std::erase_if(rep.rows, [&](const rpc::UsageRow& r) { return !gate->allows(req.tenant, r.ns, *core); });
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kEvictNamespace: {
      rpc::EvictNamespaceRequest m;
      if (!parse(m)) return;
      bool known = false;
      for (const NamespaceView& ns : core->namespaces()) known = known || ns.id == m.ns;
      if (!known) return resp.fail(Status(StatusCode::kNotFound, "unknown namespace " + ns_label(m.ns)));
      EvictSummary sum = evict_namespace(m.ns, m.dry_run, m.older_than_ms, now);
      logger()->info("{} namespace {} for {}: {} blocks ({} bytes), {} removed, {} failed",
                     m.dry_run ? "dry-run evict of" : "evicted", ns_label(m.ns), req.peer_id, sum.blocks, sum.bytes,
                     sum.removed, sum.failed);
      // Answered once the agents have invalidated the slots (bounded, like
      // remove): a coordinator restart after the answer brings none back.
      reply_after_removed(resp, rpc::encode(rpc::EvictNamespaceReply{sum.blocks, sum.bytes, sum.removed, sum.failed}),
                          sum.removed_slots, sum.removed_leased, sum.invalidations, now);
      return;
    }
    case rpc::kDrain: {
      rpc::DrainRequest m;
      if (!parse(m)) return;
      auto rep = drain_step(m, now);
      if (!rep) return resp.fail(rep.error());
      resp.reply(rpc::encode(*rep));
      return;
    }
    case rpc::kDrainCopied: {
      rpc::DrainCopiedRequest m;
      if (!parse(m)) return;
      drain_copied(m, now, resp);
      return;
    }
    default:
      om.errors[static_cast<std::size_t>(StatusCode::kUnimplemented)]->inc();
      rpc::fail_unknown_type(req, resp.raw());
      return;
  }
}

rpc::StatsReply CoordinatorServer::Impl::tenant_stats(const std::string& tenant) const {
  // What a tenant may know: the regions it may reach and its namespaces.
  // Pool-wide counters (lookups, leases, evictions) mix every tenant's
  // traffic and stay 0.
  rpc::StatsReply rep;
  const std::string mine = region_class(tenant);
  for (const AgentView& a : core->agents()) {
    if (a.registration.tenant != mine) continue;
    if (!a.alive) {
      ++rep.agents_dead;
      continue;
    }
    ++rep.agents_alive;
    rep.capacity_bytes += a.capacity_bytes;
    rep.used_bytes += a.used_bytes;
    rep.live_bytes += a.live_bytes;
    rep.reclaiming_bytes += a.reclaiming_bytes;
  }
  for (const NamespaceView& ns : core->namespaces()) {
    if (!gate->allows(tenant, ns.id, *core)) continue;
    ++rep.namespaces;
    rep.blocks += ns.blocks;
  }
  rep.unix_ms = unix_now_ms();
  rep.leader = options.epoch != 0;
  rep.shard = options.shard;
  rep.epoch = options.epoch;
  rep.uptime_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
  return rep;
}

Result<rpc::DrainReply> CoordinatorServer::Impl::drain_step(const rpc::DrainRequest& m, Clock::time_point now) {
  const AgentId id{m.agent};
  if (m.mode == rpc::DrainMode::kUndrain) {
    if (Status s = core->undrain(id, now); !s.ok()) return tl::unexpected(s);
    return rpc::DrainReply{};
  }
  auto step = core->drain(id, std::clamp<std::uint32_t>(m.max_in_flight, 1, 4096), now);
  if (!step) return tl::unexpected(step.error());
  if (!step->moves.empty()) {
    rpc::DrainCopyMessage msg;
    msg.agent = m.agent;
    msg.incarnation = step->moves.front().from.incarnation;
    msg.epoch = options.epoch;
    std::set<std::uint32_t> targets;
    for (const BlockMove& bm : step->moves) {
      targets.insert(to_u32(bm.to.agent));
      msg.moves.push_back({bm.id, bm.ns, bm.key, to_wire(bm.from), to_wire(bm.to)});
    }
    for (const AgentView& a : core->agents()) {
      if (!targets.count(to_u32(a.id))) continue;
      msg.targets.push_back({to_u32(a.id), a.incarnation, a.registration.worker_address, a.registration.packed_rkey,
                             a.registration.host_id, a.registration.region_base, a.registration.region_bytes});
    }
    std::optional<std::uint64_t> conn;
    {
      std::lock_guard lock(mu);
      if (auto it = agent_connections.find(m.agent); it != agent_connections.end()) conn = it->second;
    }
    Status sent = conn ? server->push(*conn, rpc::kPushDrainCopy, rpc::encode(msg))
                       : Status(StatusCode::kUnavailable, "agent " + std::to_string(m.agent) + " is not connected");
    if (!sent.ok()) {
      logger()->warn("drain of agent {}: {} moves not sent: {}", m.agent, msg.moves.size(), sent.to_string());
      std::vector<MoveOutcome> failed;
      for (const BlockMove& bm : step->moves) failed.push_back({bm.id, sent});
      if (auto r = core->finish_moves(id, msg.incarnation, failed, now)) send_invalidations(r->invalidations);
      step->in_flight -= std::min<std::uint64_t>(step->in_flight, failed.size());
    }
  }
  rpc::DrainReply rep;
  rep.draining = true;
  rep.drained = step->drained;
  rep.blocks_left = step->blocks_left;
  rep.writing = step->writing;
  rep.in_flight = step->in_flight;
  rep.moved = step->moved;
  rep.failed = step->failed;
  rep.unplaceable = step->unplaceable;
  rep.placement = rpc::StatusWire::from(step->placement);
  return rep;
}

void CoordinatorServer::Impl::drain_copied(const rpc::DrainCopiedRequest& m, Clock::time_point now,
                                           const MeteredResponder& resp) {
  std::vector<MoveOutcome> outcomes;
  outcomes.reserve(m.results.size());
  for (const auto& r : m.results) outcomes.push_back({r.id, r.status.to_status()});
  auto res = core->finish_moves(AgentId{m.agent}, m.incarnation, outcomes, now);
  if (!res) return resp.fail(res.error());
  std::size_t ok = 0;
  for (std::size_t i = 0; i < res->statuses.size(); ++i) {
    if (res->statuses[i].ok()) {
      ++ok;
    } else {
      logger()->info("drain of agent {}: move {} not applied: {}", m.agent, outcomes[i].id,
                     res->statuses[i].to_string());
    }
  }
  logger()->debug("drain of agent {}: {} of {} moves applied", m.agent, ok, outcomes.size());
  send_invalidations(res->invalidations);
  resp.reply({});
}

CoordinatorServer::CoordinatorServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CoordinatorServer::~CoordinatorServer() { stop(); }

Result<std::unique_ptr<CoordinatorServer>> CoordinatorServer::start(const CoordinatorServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  auto core = CoordinatorCore::create(options.core);
  if (!core) return tl::unexpected(core.error());
  impl->core = std::move(*core);
  std::shared_ptr<const TenantTable> tenants;
  if (!options.tenants_file.empty()) {
    auto table = TenantTable::load(options.tenants_file);
    if (!table) return tl::unexpected(table.error());
    logger()->info("{} tenant(s) from {}", table->size(), options.tenants_file);
    tenants = std::make_shared<const TenantTable>(std::move(*table));
    impl->any_isolated = tenants->any_isolated();
    for (const Tenant& t : tenants->all()) {
      if (t.isolated()) {
        logger()->info("tenant '{}' is isolated: a region of {} bytes of its own on every agent", t.name,
                       t.isolated_bytes);
      }
    }
  }
  impl->tenants = tenants;
  impl->gate = std::make_unique<TenantGate>(tenants);
  impl->registry = options.metrics ? options.metrics : std::make_shared<metrics::Registry>();
  impl->init_metrics();
  rpc::ServerOptions so;
  so.host = options.host;
  so.port = options.port;
  so.max_frame = options.max_frame;
  so.max_connections = options.max_connections;
  so.threads = options.threads;
  so.role = rpc::Role::kCoordinator;
  so.server_id = "coordinator";
  so.version = "kvpool 0.1.0";
  so.secret_file = options.secret_file;
  so.create_secret = options.create_secret;
  so.tls = options.control_tls;
  so.tenants = tenants;
  Impl* raw = impl.get();
  so.on_disconnect = [raw](std::uint64_t conn) {
    std::lock_guard lock(raw->mu);
    raw->worker_connections.erase(conn);
    std::erase_if(raw->agent_connections, [conn](const auto& kv) { return kv.second == conn; });
  };
  auto server = rpc::Server::start(so, [raw](rpc::Request req, rpc::Responder resp) {
    raw->handle(std::move(req), std::move(resp));
  });
  if (!server) return tl::unexpected(server.error());
  impl->server = std::move(*server);
  impl->ticker = std::thread([raw] { raw->tick_loop(); });
  logger()->info("coordinator listening on {}:{}", options.host, impl->server->port());
  return std::unique_ptr<CoordinatorServer>(new CoordinatorServer(std::move(impl)));
}

std::uint16_t CoordinatorServer::port() const { return impl_->server->port(); }
CoordinatorCore& CoordinatorServer::core() { return *impl_->core; }

void CoordinatorServer::stop() {
  if (!impl_) return;
  {
    std::lock_guard lock(impl_->tick_mu);
    if (impl_->stopping) return;
    impl_->stopping = true;
  }
  impl_->tick_cv.notify_all();
  if (impl_->ticker.joinable()) impl_->ticker.join();
  if (impl_->server) impl_->server->stop();
  // The registry may outlive this server (it is the process's): stop reading
  // the core from scrapes before the core goes.
  if (impl_->registry) impl_->registry->remove_collector(impl_->collector_id);
}

}  // namespace kvpool::coordinator
