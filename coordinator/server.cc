#include "coordinator/server.h"

#include <cstdio>

#include "coordinator/server_impl.h"

namespace kvpool::coordinator {
namespace server_detail {

std::int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string ns_label(NamespaceId id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

}  // namespace server_detail

using server_detail::logger;

// Every request goes through the same steps before its handler: metered
// from here on, refused by a fenced leader, worker connections noted (for
// kPushAgentDown), refused by the tenant gate; then the handler decodes.
void CoordinatorServer::Impl::handle(rpc::Request req, rpc::Responder raw_resp) {
  const auto now = Clock::now();
  auto route = routes.find(req.type);
  OpMetrics& om = route == routes.end() ? unknown_op : route->second.metrics;
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
      logger()->warn("{} from {} refused: {}", om.name, req.peer_id, s.message());
      return resp.fail(s);
    }
  }
  if (route == routes.end()) {
    om.errors[static_cast<std::size_t>(StatusCode::kUnimplemented)]->inc();
    rpc::fail_unknown_type(req, resp.raw());
    return;
  }
  route->second.run(Call{req, resp, now});
}

void CoordinatorServer::Impl::add_route(rpc::MessageType type, const char* name, std::function<void(const Call&)> run) {
  Route& r = routes[type];
  r.metrics.name = name;
  r.run = std::move(run);
  route_order.push_back(type);
}

void CoordinatorServer::Impl::add_routes() {
  on(rpc::kRegisterNamespace, "register_namespace", &Impl::register_namespace);
  on(rpc::kRegisterAgent, "register_agent", &Impl::register_agent);
  on(rpc::kHeartbeat, "heartbeat", &Impl::heartbeat);
  on(rpc::kListAgents, "list_agents", &Impl::list_agents);
  on(rpc::kAllocate, "allocate", &Impl::allocate);
  on(rpc::kCommit, "commit", &Impl::commit_leases);
  on(rpc::kAbort, "abort", &Impl::abort_leases);
  on(rpc::kLookup, "lookup", &Impl::lookup);
  on(rpc::kRelease, "release", &Impl::release);
  on(rpc::kRemove, "remove", &Impl::remove_blocks);
  on(rpc::kWaitFor, "wait_for", &Impl::wait_for);
  on(rpc::kStats, "stats", &Impl::stats);
  on(rpc::kListNamespaces, "list_namespaces", &Impl::list_namespaces);
  on(rpc::kUsage, "usage", &Impl::usage);
  on(rpc::kEvictNamespace, "evict_namespace", &Impl::evict_namespace);
  on(rpc::kAgentStats, "agent_stats", &Impl::agent_stats);
  on(rpc::kInvalidateDone, "invalidate_done", &Impl::invalidate_done);
  on(rpc::kRemovedDone, "removed_done", &Impl::removed_done);
  on(rpc::kDrain, "drain", &Impl::drain);
  on(rpc::kDrainCopied, "drain_copied", &Impl::drain_copied);
  on(rpc::kSetQuota, "set_quota", &Impl::set_quota);
  on(rpc::kRecoverBlocks, "recover_blocks", &Impl::recover_blocks);
  unknown_op.name = "unknown";
}

void CoordinatorServer::Impl::tick_loop() {
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
  impl->add_routes();
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
  auto server = rpc::Server::start(
      so, [raw](rpc::Request req, rpc::Responder resp) { raw->handle(std::move(req), std::move(resp)); });
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
