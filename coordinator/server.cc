#include "coordinator/server.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

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

}  // namespace

struct CoordinatorServer::Impl {
  // Destruction order: the tick thread and the RPC server stop first (no
  // handler runs), then the core goes.
  CoordinatorServerOptions options;
  std::unique_ptr<CoordinatorCore> core;
  std::unique_ptr<rpc::Server> server;
  Clock::time_point started = Clock::now();

  std::mutex mu;
  std::unordered_map<std::uint32_t, std::uint64_t> agent_connections;  // agent id -> connection; guarded by mu
  std::set<std::uint64_t> worker_connections;                          // guarded by mu

  std::mutex tick_mu;
  std::condition_variable tick_cv;
  bool stopping = false;  // guarded by tick_mu
  std::thread ticker;

  void send_invalidations(const std::vector<InvalidateRequest>& reqs) {
    for (const auto& req : reqs) {
      std::uint64_t conn = 0;
      {
        std::lock_guard lock(mu);
        auto it = agent_connections.find(to_u32(req.agent));
        if (it == agent_connections.end()) continue;  // retried by tick once the agent is back
        conn = it->second;
      }
      rpc::InvalidateMessage msg;
      msg.agent = to_u32(req.agent);
      msg.incarnation = req.incarnation;
      for (const auto& s : req.slots) msg.slots.push_back({s.header_offset, s.payload_offset, s.length, s.generation});
      if (Status st = server->push(conn, rpc::kPushInvalidate, rpc::encode(msg)); !st.ok()) {
        logger()->debug("invalidate push to agent {}: {}", msg.agent, st.to_string());
      }
    }
  }

  void broadcast_dead(const std::vector<DeadAgent>& dead) {
    if (dead.empty()) return;
    std::vector<std::uint64_t> workers;
    {
      std::lock_guard lock(mu);
      workers.assign(worker_connections.begin(), worker_connections.end());
      for (const auto& d : dead) agent_connections.erase(to_u32(d.agent));
    }
    std::uint64_t epoch = core->membership_epoch();
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
      lock.unlock();
      TickActions a = core->tick(Clock::now());
      send_invalidations(a.invalidations);
      broadcast_dead(a.dead_agents);
      lock.lock();
    }
  }

  void handle(rpc::Request req, rpc::Responder resp);
};

void CoordinatorServer::Impl::handle(rpc::Request req, rpc::Responder resp) {
  const auto now = Clock::now();
  if (req.peer_role == rpc::Role::kWorker) {
    std::lock_guard lock(mu);
    worker_connections.insert(req.connection_id);
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
      auto id = core->register_namespace(m.descriptor);
      if (!id) return resp.fail(id.error());
      auto bytes = block_bytes_of(m.descriptor);
      resp.reply(rpc::encode(rpc::RegisterNamespaceReply{*id, bytes ? *bytes : 0}));
      return;
    }
    case rpc::kRegisterAgent: {
      rpc::RegisterAgentRequest m;
      if (!parse(m)) return;
      AgentRegistration reg{m.agent.worker_address, m.agent.packed_rkey,  m.agent.host_id, m.agent.control_address,
                            m.agent.region_base,    m.agent.region_bytes, m.agent.incarnation};
      auto id = core->register_agent(reg, now);
      if (!id) return resp.fail(id.error());
      {
        std::lock_guard lock(mu);
        agent_connections[to_u32(*id)] = req.connection_id;
      }
      logger()->info("agent {} registered: {} bytes, host {}, incarnation {:#x}", to_u32(*id), reg.region_bytes,
                     reg.host_id, reg.incarnation);
      resp.reply(rpc::encode(
          rpc::RegisterAgentReply{to_u32(*id), static_cast<std::uint32_t>(options.heartbeat_interval.count())}));
      return;
    }
    case rpc::kHeartbeat: {
      rpc::HeartbeatRequest m;
      if (!parse(m)) return;
      Status s = core->heartbeat(AgentId{m.agent}, m.incarnation, now);
      return s.ok() ? resp.reply({}) : resp.fail(s);
    }
    case rpc::kListAgents: {
      rpc::ListAgentsReply rep;
      rep.epoch = core->membership_epoch();
      for (const auto& a : core->agents()) {
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
        rep.agents.push_back(std::move(r));
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kAllocate: {
      rpc::AllocateRequest m;
      if (!parse(m)) return;
      std::vector<BlockRequest> blocks;
      blocks.reserve(m.items.size());
      for (const auto& it : m.items) blocks.push_back({it.key, it.length});
      auto res = core->allocate(m.ns, blocks, WriterInfo{req.peer_id, m.writer_host}, now);
      if (!res) return resp.fail(res.error());
      send_invalidations(res->invalidations);
      rpc::AllocateReply rep;
      rep.results.reserve(res->items.size());
      for (const auto& item : res->items) {
        rpc::AllocateResult r;
        switch (item.outcome) {
          case AllocateOutcome::kPlaced:
            r.outcome = rpc::AllocateOutcome::kPlaced;
            r.location = to_wire(item.location);
            r.lease = to_u64(item.lease);
            r.lease_ms = ms_until(item.lease_deadline, now);
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
        rep.results.push_back(std::move(r));
      }
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kCommit:
    case rpc::kAbort: {
      rpc::LeaseBatch m;
      if (!parse(m)) return;
      std::vector<LeaseId> leases;
      for (auto l : m.leases) leases.push_back(LeaseId{l});
      rpc::StatusBatch rep;
      if (req.type == rpc::kCommit) {
        for (const auto& s : core->commit(leases, now)) rep.results.push_back(rpc::StatusWire::from(s));
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
      auto res = core->lookup(m.ns, m.keys, m.take_lease, now);
      if (!res) return resp.fail(res.error());
      rpc::LookupReply rep;
      rep.lease = to_u64(res->read_lease);
      rep.locations.reserve(res->locations.size());
      for (const auto& l : res->locations) rep.locations.push_back(to_wire(l));
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kRelease: {
      rpc::ReleaseRequest m;
      if (!parse(m)) return;
      Status s = core->release(LeaseId{m.lease}, now);
      return s.ok() ? resp.reply({}) : resp.fail(s);
    }
    case rpc::kRemove: {
      rpc::KeysRequest m;
      if (!parse(m)) return;
      auto res = core->remove(m.ns, m.keys, now);
      if (!res) return resp.fail(res.error());
      send_invalidations(res->invalidations);
      rpc::StatusBatch rep;
      for (const auto& s : res->statuses) rep.results.push_back(rpc::StatusWire::from(s));
      resp.reply(rpc::encode(rep));
      return;
    }
    case rpc::kWaitFor: {
      rpc::WaitForRequest m;
      if (!parse(m)) return;
      auto deadline = now + std::chrono::milliseconds(m.timeout_ms);
      // The callback may run at once (all committed), from a commit on
      // another connection, or from tick at the deadline; the responder is
      // a no-op if this client has gone.
      auto res = core->wait_for(
          m.ns, m.keys, deadline,
          [resp](std::vector<bool> committed) { resp.reply(rpc::encode(rpc::WaitForReply{std::move(committed)})); },
          now);
      if (!res) resp.fail(res.error());
      return;
    }
    case rpc::kStats: {
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
      return s.ok() ? resp.reply({}) : resp.fail(s);
    }
    default:
      rpc::fail_unknown_type(req, resp);
      return;
  }
}

CoordinatorServer::CoordinatorServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CoordinatorServer::~CoordinatorServer() { stop(); }

Result<std::unique_ptr<CoordinatorServer>> CoordinatorServer::start(const CoordinatorServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  auto core = CoordinatorCore::create(options.core);
  if (!core) return tl::unexpected(core.error());
  impl->core = std::move(*core);
  rpc::ServerOptions so;
  so.host = options.host;
  so.port = options.port;
  so.max_frame = options.max_frame;
  so.threads = options.threads;
  so.role = rpc::Role::kCoordinator;
  so.server_id = "coordinator";
  so.version = "kvpool 0.1.0";
  so.secret_file = options.secret_file;
  so.create_secret = options.create_secret;
  so.tls = options.control_tls;
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
}

}  // namespace kvpool::coordinator
