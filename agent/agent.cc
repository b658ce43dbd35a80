#include "agent/agent.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <random>
#include <utility>

#include "runtime/common/logging.h"
#include "runtime/common/process_util.h"
#include "runtime/common/tenants.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/membership.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"

namespace kvpool::agent {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("agent");
  return l;
}


// A fresh incarnation per process: the region does not outlive it.
std::uint64_t new_incarnation() {
  std::random_device rd;
  std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ static_cast<std::uint64_t>(getpid());
  return v == 0 ? 1 : v;
}

}  // namespace

Result<std::unique_ptr<Agent>> Agent::open_region(std::shared_ptr<transport::Transport> transport,
                                                  const AgentOptions& options, Agent* parent, const std::string& tenant,
                                                  std::uint64_t bytes) {
  std::unique_ptr<Agent> a(new Agent());
  a->options_ = options;
  a->parent_ = parent;
  a->tenant_ = tenant;
  a->transport_ = std::move(transport);
  auto region = pool::PoolRegion::create(*a->transport_,
                                         {.size = bytes, .huge_pages = options.huge_pages, .lock = options.lock});
  if (!region) return tl::unexpected(region.error());
  a->region_.emplace(std::move(*region));
  auto layout = pool::RegionLayout::create(a->region_->size());
  if (!layout) return tl::unexpected(layout.error());
  a->layout_ = *layout;
  if (auto rep = a->region_->report()) {
    logger()->info("{}{}", tenant.empty() ? "" : "isolated tenant '" + tenant + "': ", rep->to_string());
  }
  // Served before describe(): owner reads are checked against the rkey
  // published for this region (transport.h).
  if (Status s = a->transport_->serve(a->region_->memory()); !s.ok()) return tl::unexpected(s);
  a->incarnation_ = new_incarnation();
  // A tenant region's instruments stay private: the process's registry has
  // one set of kvpool_agent_* series, the shared region's.
  a->registry_ = parent == nullptr && options.metrics ? options.metrics : std::make_shared<metrics::Registry>();
  a->init_metrics();
  auto info = a->transport_->describe(a->region_->memory());
  if (!info) return tl::unexpected(info.error());
  rpc::AgentRecord& rec = a->record_;
  rec.incarnation = a->incarnation_;
  rec.worker_address = info->worker_address;
  rec.packed_rkey = info->packed_rkey;
  rec.host_id = info->host_id;
  rec.region_base = info->base;
  rec.region_bytes = info->length;
  rec.tenant = tenant;
  if (parent != nullptr) {
    rec.control_address = parent->record_.control_address + "/" + tenant;
  } else {
    rec.control_address = options.name.empty() ? "agent-" + std::to_string(a->incarnation_) : options.name;
  }
  return a;
}

Result<std::unique_ptr<Agent>> Agent::start(const AgentOptions& options) {
  if (etcd::is_etcd_address(options.coordinator)) {
    if (auto e = etcd::parse_etcd_address(options.coordinator); !e) return tl::unexpected(e.error());
  } else if (auto hp = parse_host_port(options.coordinator); !hp) {
    return tl::unexpected(hp.error());
  }
  auto t = transport::Transport::create({.tls = options.tls, .serve_owner_reads = true});
  if (!t) return tl::unexpected(t.error());
  std::shared_ptr<transport::Transport> transport(std::move(*t));
  auto opened = open_region(transport, options, nullptr, {}, options.pool_size);
  if (!opened) return tl::unexpected(opened.error());
  std::unique_ptr<Agent> a = std::move(*opened);
  if (Status s = a->transport_->start_progress_thread(options.progress); !s.ok()) return tl::unexpected(s);
  if (etcd::is_etcd_address(options.coordinator)) {
    // A member in etcd before the first registration: a coordinator that
    // sees the key go (this process dead) drops the agent at once.
    auto addr = etcd::parse_etcd_address(options.coordinator);
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    etcd::MemberInfo me;
    me.name = a->record_.control_address;
    me.host = host;
    me.incarnation = a->incarnation_;
    me.shard = addr->shard;
    me.address = a->record_.control_address;
    me.region_bytes = a->region_->size();
    // etcd still starting is waited out, like a leader not yet elected.
    const Deadline member_by = Deadline::after(options.connect_timeout);
    auto m = etcd::MembershipLease::start(
        {addr->endpoints, std::min<std::chrono::milliseconds>(options.connect_timeout, std::chrono::seconds(3))}, me,
        std::max<std::int64_t>(1, options.membership_ttl.count()));
    while (!m && (m.error().code() == StatusCode::kUnavailable || m.error().code() == StatusCode::kDeadlineExceeded) &&
           !member_by.expired()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      m = etcd::MembershipLease::start(
          {addr->endpoints, std::min<std::chrono::milliseconds>(options.connect_timeout, std::chrono::seconds(3))}, me,
          std::max<std::int64_t>(1, options.membership_ttl.count()));
    }
    if (!m) {
      return make_error(m.error().code(), "etcd membership (" + etcd::member_key(me.name) + "): " + m.error().message());
    }
    a->membership_ = std::move(*m);
    logger()->info("agent '{}' is a member in etcd ({}, lease {}, TTL {} s)", me.name, etcd::member_key(me.name),
                   a->membership_->lease(), a->membership_->ttl());
  }
  // Behind etcd an election may be in progress (no leader published yet):
  // look again until the connect timeout.
  const Deadline joined_by = Deadline::after(options.connect_timeout);
  for (;;) {
    Status s = a->join(/*rejoin=*/false, /*fresh=*/true, joined_by);
    if (s.ok()) break;
    const bool retry = s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded;
    if (!etcd::is_etcd_address(options.coordinator) || !retry || joined_by.expired()) {
      return tl::unexpected(s);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  logger()->info("agent {} (incarnation {:#x}) lends {} bytes, heartbeat every {} ms", a->id(), a->incarnation_,
                 a->region_->size(), a->heartbeat_interval_.count());
  a->start_threads();
  return a;
}

void Agent::start_threads() {
  heartbeat_ = std::thread([this] { heartbeat_loop(); });
  drain_thread_ = std::thread([this] { drain_loop(); });
}

void Agent::open_tenant_regions(const std::vector<rpc::IsolatedRegionWire>& isolated, Deadline deadline) {
  for (const auto& want : isolated) {
    {
      std::lock_guard lock(tenants_mu_);
      if (tenant_regions_.count(want.tenant) != 0) continue;
    }
    if (!valid_tenant_name(want.tenant) || want.region_bytes == 0) {
      logger()->warn("coordinator asked for an isolated region of {} bytes for tenant '{}': refused",
                     want.region_bytes, want.tenant);
      continue;
    }
    auto sub = open_region(transport_, options_, this, want.tenant, want.region_bytes);
    Status s = sub ? (*sub)->join(/*rejoin=*/false, /*fresh=*/true, deadline) : sub.error();
    if (!s.ok()) {
      // Tried again on the next registration of the shared region (a rejoin).
      logger()->error("isolated region of {} bytes for tenant '{}': {}", want.region_bytes, want.tenant,
                      s.to_string());
      if (sub) transport_->stop_serving((*sub)->region_->memory());
      continue;  // the region is unmapped here, with `sub`
    }
    logger()->info("agent {} lends {} bytes to isolated tenant '{}' (its own region and rkey)", (*sub)->id(),
                   (*sub)->region_->size(), want.tenant);
    (*sub)->start_threads();
    std::lock_guard lock(tenants_mu_);
    tenant_regions_.emplace(want.tenant, std::move(*sub));
  }
  std::lock_guard lock(tenants_mu_);
  for (const auto& [name, sub] : tenant_regions_) {
    bool listed = false;
    for (const auto& want : isolated) listed = listed || want.tenant == name;
    if (!listed) {
      // Its blocks may still be wanted if the coordinator's tenants file
      // comes back: kept until this agent restarts.
      logger()->warn("tenant '{}' is no longer isolated at the coordinator: its region stays until this agent "
                     "restarts, unused",
                     name);
    }
  }
}

std::int64_t Agent::membership_lease() const { return membership_ ? membership_->lease() : 0; }

const Agent* Agent::tenant_region(std::string_view tenant) const {
  std::lock_guard lock(tenants_mu_);
  auto it = tenant_regions_.find(std::string(tenant));
  return it == tenant_regions_.end() ? nullptr : it->second.get();
}

std::vector<std::string> Agent::tenant_names() const {
  std::lock_guard lock(tenants_mu_);
  std::vector<std::string> out;
  for (const auto& [name, sub] : tenant_regions_) out.push_back(name);
  return out;
}

std::shared_ptr<rpc::Client> Agent::rpc() const {
  std::lock_guard lock(rpc_mu_);
  return rpc_;
}

Status Agent::join(bool rejoin, bool fresh, Deadline deadline) {
  std::shared_ptr<rpc::Client> client = fresh ? nullptr : rpc();
  if (client == nullptr || !client->connected()) {
    // An etcd:// address names the shard's current leader.
    auto target = etcd::resolve_coordinator(
        options_.coordinator, std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::min<Clock::duration>(deadline.remaining(), std::chrono::seconds(2))));
    if (!target) return target.error();
    auto hp = parse_host_port(*target);
    if (!hp) return hp.error();
    rpc::ClientOptions ro;
    ro.host = hp->first;
    ro.port = hp->second;
    ro.role = rpc::Role::kAgent;
    ro.client_id = record_.control_address;
    ro.secret_file = options_.secret_file;
    auto rc = rpc::Client::connect(ro, deadline);
    if (!rc) return rc.error();
    client = std::shared_ptr<rpc::Client>(std::move(*rc));
    rpc::Client* from = client.get();
    client->set_push_handler(
        [this, from](std::uint16_t type, std::string payload) { on_push(from, type, payload); });
    std::shared_ptr<rpc::Client> old;
    {
      std::lock_guard lock(rpc_mu_);
      old = std::exchange(rpc_, client);
    }
    // `old` is destroyed here, on this thread, never on its own io thread.
  }
  rpc::RegisterAgentRequest req{record_, rejoin};
  auto reply = client->call(rpc::kRegisterAgent, rpc::encode(req), deadline);
  if (!reply) return reply.error();
  rpc::RegisterAgentReply rep;
  if (Status s = rpc::decode(*reply, rep); !s.ok()) return s;
  // A leader deposed while frozen or partitioned may still answer until its
  // fence closes; once a newer leader has taken this agent, never go back to
  // it: drop the connection and look the leader up again.
  const std::uint64_t seen = leader_epoch_.load();
  if (rep.epoch != 0 && rep.epoch < seen) {
    ++stale_leader_refusals_;
    logger()->warn("coordinator at {} answered with leader epoch {}, older than epoch {} seen before: a deposed "
                   "leader; disconnecting",
                   options_.coordinator, rep.epoch, seen);
    {
      std::lock_guard lock(rpc_mu_);
      if (rpc_ == client) rpc_.reset();
    }
    return Status(StatusCode::kUnavailable, "coordinator's leader epoch " + std::to_string(rep.epoch) +
                                                " is older than " + std::to_string(seen) + " (a deposed leader)");
  }
  if (rep.epoch > seen) leader_epoch_ = rep.epoch;
  id_ = rep.agent;
  if (rep.heartbeat_interval_ms > 0) heartbeat_interval_ = std::chrono::milliseconds(rep.heartbeat_interval_ms);
  if (rep.send_blocks) {
    if (Status s = send_scan(*client, deadline); !s.ok()) return s;
  }
  // The shared region's registration says which isolated tenants exist;
  // each gets its own region, registered on its own connection (its own
  // heartbeats, rejoins and scans).
  if (parent_ == nullptr) open_tenant_regions(rep.isolated, deadline);
  return Status();
}

Status Agent::send_scan(rpc::Client& client, Deadline deadline) {
  auto scanned = scan();
  if (!scanned) return scanned.error();
  rpc::RecoverBlocksRequest req;
  req.agent = id();
  req.incarnation = incarnation_;
  std::uint64_t adopted = 0, dropped = 0;
  std::size_t next = 0;
  do {
    const std::size_t n = std::min<std::size_t>(scanned->blocks.size() - next, rpc::kMaxBatch);
    req.blocks.clear();
    for (std::size_t i = next; i < next + n; ++i) {
      const auto& b = scanned->blocks[i];
      req.blocks.push_back({b.header.namespace_id, b.header.key, b.payload_offset, b.header.payload_length,
                            b.header.generation});
    }
    next += n;
    req.last = next == scanned->blocks.size();
    auto reply = client.call(rpc::kRecoverBlocks, rpc::encode(req), deadline);
    if (!reply) return reply.error();
    rpc::RecoverBlocksReply rep;
    if (Status s = rpc::decode(*reply, rep); !s.ok()) return s;
    adopted += rep.adopted;
    dropped += rep.dropped;
  } while (!req.last);
  logger()->info("agent {}: the coordinator took back {} blocks of the region's scan ({} dropped, {} torn, {} bad "
                 "headers)",
                 id(), adopted, dropped, scanned->torn_blocks, scanned->invalid_headers);
  return Status();
}

Agent::~Agent() { stop(); }

void Agent::init_metrics() {
  metrics::Registry& r = *registry_;
  heartbeat_seconds_ =
      &r.histogram("kvpool_agent_heartbeat_duration_seconds", "Round trip of the agent's heartbeats to the coordinator",
                   metrics::latency_buckets());
  heartbeat_failures_ =
      &r.counter("kvpool_agent_heartbeat_failures_total", "Heartbeats that failed or were refused by the coordinator");
  invalidated_slots_ =
      &r.counter("kvpool_agent_invalidated_slots_total", "Slot headers invalidated at the coordinator's request");
  invalidate_requests_ =
      &r.counter("kvpool_agent_invalidate_requests_total", "Invalidation requests received from the coordinator");
  invalidate_rejected_ = &r.counter("kvpool_agent_invalidate_rejected_slots_total",
                                    "Slots of invalidation requests refused (header offset outside the table)");
  r.gauge("kvpool_build_info", "kvpool version of this process", {{"version", "0.1.0"}}).set(1);
  r.gauge("kvpool_agent_region_bytes", "Bytes of the region this agent lends (header table and payload)")
      .set(static_cast<double>(region_->size()));
  r.gauge("kvpool_agent_payload_bytes", "Payload bytes of the region (what blocks can use)")
      .set(static_cast<double>(layout_.payload_bytes));
  collector_id_ = r.add_collector([this](metrics::Collector& c) {
    c.gauge("kvpool_agent_id", "This agent's id at the coordinator (0 until registered)", {}, id_.load());
    c.counter("kvpool_agent_rejoins_total",
              "Rejoins after losing the coordinator (its restart, or a partition past the agent timeout)", {},
              rejoins_.load());
    c.gauge("kvpool_agent_leader_epoch", "Highest coordinator leader epoch seen (etcd; 0: none)", {},
            leader_epoch_.load());
    c.counter("kvpool_agent_stale_push_refusals_total",
              "Pushes (invalidations, removals, drain copies) refused because their leader epoch was older than the "
              "highest this agent registered with",
              {}, stale_push_refusals_.load());
    c.counter("kvpool_agent_stale_leader_refusals_total",
              "Registrations refused because the coordinator's leader epoch was older than one seen", {},
              stale_leader_refusals_.load());
    if (auto rep = region_->report()) {
      c.gauge("kvpool_agent_region_resident_bytes", "Resident bytes of the region (smaps Rss)", {}, rep->rss_bytes);
      c.gauge("kvpool_agent_region_huge_page_bytes", "Bytes of the region mapped by huge pages", {},
              rep->huge_page_bytes);
      c.gauge("kvpool_agent_region_locked_bytes", "Bytes of the region locked in memory (mlock)", {},
              rep->locked_bytes);
    }
    auto reads = transport_->owner_read_stats();
    c.counter("kvpool_agent_owner_reads_total", "Owner reads served (the agent puts into a reader's buffer)", {},
              reads.requests);
    c.counter("kvpool_agent_owner_read_bytes_total", "Bytes moved by owner reads", {}, reads.bytes);
    c.counter("kvpool_agent_owner_read_errors_total", "Owner reads refused or failed", {}, reads.errors);
    auto writes = transport_->owner_write_stats();
    c.counter("kvpool_agent_streamed_puts_total",
              "Streamed puts placed (tcp: a client's payloads sent as messages the agent copies into its slots)", {},
              writes.requests);
    c.counter("kvpool_agent_streamed_put_bytes_total", "Bytes placed by streamed puts", {}, writes.bytes);
    c.counter("kvpool_agent_streamed_put_errors_total", "Streamed puts refused (outside a served region, wrong rkey)",
              {}, writes.errors);
    // Isolated tenants' regions (their own instruments are private): what
    // each lends and holds, labelled with the tenant.
    std::lock_guard lock(tenants_mu_);
    for (const auto& [name, sub] : tenant_regions_) {
      const metrics::Labels l = {{"tenant", name}};
      c.gauge("kvpool_agent_tenant_region_bytes", "Bytes of an isolated tenant's region on this agent", l,
              static_cast<double>(sub->region_->size()));
      c.gauge("kvpool_agent_tenant_region_id", "The tenant region's id at the coordinator (0 until registered)", l,
              sub->id());
      c.counter("kvpool_agent_tenant_region_rejoins_total", "Rejoins of the tenant region after losing the coordinator",
                l, sub->rejoins());
      c.counter("kvpool_agent_tenant_region_invalidated_slots_total",
                "Slot headers of the tenant region invalidated at the coordinator's request", l,
                sub->invalidated_slots());
    }
  });
}

void Agent::stop() {
  std::lock_guard lock(stop_mu_);
  if (stopping_.exchange(true)) return;
  if (registry_) registry_->remove_collector(collector_id_);
  if (heartbeat_.joinable()) heartbeat_.join();
  // After the heartbeats (no rejoin once the coordinators drop this agent):
  // the key goes now, not a TTL later.
  if (membership_) membership_->stop(/*revoke=*/true);
  {
    std::lock_guard lock(drain_mu_);
    drain_queue_.clear();
  }
  drain_cv_.notify_all();
  if (drain_thread_.joinable()) drain_thread_.join();
  drain_peers_.clear();  // endpoints to other agents go before the transport
  {
    std::lock_guard lock(rpc_mu_);
    rpc_.reset();
  }
  // A tenant region's parent unmaps it, once the shared progress thread is
  // stopped.
  if (parent_ != nullptr) return;
  std::map<std::string, std::unique_ptr<Agent>> tenants;
  {
    std::lock_guard lock(tenants_mu_);
    tenants.swap(tenant_regions_);
  }
  for (auto& [name, sub] : tenants) sub->stop();
  if (transport_) {
    transport_->stop_progress_thread();
    if (region_) transport_->stop_serving(region_->memory());
    for (auto& [name, sub] : tenants) {
      if (sub->region_) transport_->stop_serving(sub->region_->memory());
    }
  }
  tenants.clear();  // their regions go before the transport
  region_.reset();
  transport_.reset();
}

void Agent::heartbeat_loop() {
  constexpr std::chrono::milliseconds kFirstBackoff{50};
  // Behind etcd a new leader is up within about a lease TTL: look again soon.
  const std::chrono::milliseconds kMaxBackoff{etcd::is_etcd_address(options_.coordinator) ? 500 : 2000};
  std::chrono::milliseconds backoff = kFirstBackoff;
  bool lost = false;  // the last heartbeat or rejoin failed
  while (!stopping_.load()) {
    auto wait = heartbeat_interval_;
    std::shared_ptr<rpc::Client> client = rpc();
    Status st;
    if (client != nullptr && client->connected()) {
      rpc::HeartbeatRequest hb{id(), incarnation_,
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count()};
      const auto sent = Clock::now();
      auto reply = client->call(rpc::kHeartbeat, rpc::encode(hb), Deadline::after(heartbeat_interval_ * 2));
      heartbeat_seconds_->observe(std::chrono::duration<double>(Clock::now() - sent).count());
      st = reply ? Status() : reply.error();
    } else {
      st = Status(StatusCode::kUnavailable, "not connected to the coordinator");
    }
    // Behind etcd, a coordinator that stopped answering may have been
    // replaced (frozen, partitioned): look the leader up again.
    if (!st.ok() && st.code() == StatusCode::kDeadlineExceeded && etcd::is_etcd_address(options_.coordinator)) {
      st = Status(StatusCode::kUnavailable, st.message());
    }
    if (!st.ok() && (st.code() == StatusCode::kNotFound || st.code() == StatusCode::kUnavailable)) {
      // kNotFound: the coordinator does not know this incarnation (it
      // restarted, or declared the agent dead); kUnavailable: the connection
      // is gone. Either way, rejoin: the region's blocks are still here.
      const bool fresh = st.code() == StatusCode::kUnavailable;
      if (!lost) logger()->warn("coordinator: {}; rejoining", st.to_string());
      // Behind etcd the leader looked up may be the frozen or dead old one
      // until its lease runs out: give up on it sooner and look again.
      const auto patience = etcd::is_etcd_address(options_.coordinator)
                                ? std::chrono::milliseconds(2000)
                                : options_.connect_timeout;
      st = join(/*rejoin=*/true, fresh, Deadline::after(std::max(heartbeat_interval_ * 2, patience)));
      if (st.ok()) {
        ++rejoins_;
        logger()->info("agent {} rejoined the coordinator at {}", id(), options_.coordinator);
      }
    }
    if (st.ok()) {
      lost = false;
      backoff = kFirstBackoff;
    } else {
      heartbeat_failures_->inc();
      if (!lost) logger()->warn("coordinator: {}; retrying with backoff", st.to_string());
      lost = true;
      wait = backoff;
      backoff = std::min(backoff * 2, kMaxBackoff);
    }
    const auto until = Clock::now() + wait;
    while (!stopping_.load() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void Agent::on_push(rpc::Client* from, std::uint16_t type, const std::string& payload) {
  if (type == rpc::kPushDrainCopy) {
    queue_drain_copy(payload);
    return;
  }
  if (type != rpc::kPushInvalidate && type != rpc::kPushRemoved) {
    logger()->debug("ignoring push of type {}", type);
    return;
  }
  rpc::InvalidateMessage msg;
  if (Status s = rpc::decode(payload, msg); !s.ok()) {
    logger()->warn("{} request: {}", type == rpc::kPushRemoved ? "removed" : "invalidate", s.to_string());
    return;
  }
  if (msg.incarnation != incarnation_) return;  // meant for an earlier incarnation
  if (!push_epoch_ok(type == rpc::kPushRemoved ? "removed" : "invalidate", msg.epoch)) return;
  if (type == rpc::kPushRemoved) {
    note_removed(from, msg);
    return;
  }
  invalidate(from, msg);
}

void Agent::queue_drain_copy(const std::string& payload) {
  rpc::DrainCopyMessage msg;
  if (Status s = rpc::decode(payload, msg); !s.ok()) {
    logger()->warn("drain copy request: {}", s.to_string());
    return;
  }
  if (msg.incarnation != incarnation_) return;  // meant for an earlier incarnation
  if (!push_epoch_ok("drain copy", msg.epoch)) return;
  {
    std::lock_guard lock(drain_mu_);
    drain_queue_.push_back(std::move(msg));
  }
  drain_cv_.notify_one();
}

void Agent::note_removed(rpc::Client* from, const rpc::InvalidateMessage& msg) {
  {
    // Bounded by the region: one entry per slot at most.
    std::lock_guard lock(removed_mu_);
    for (const auto& slot : msg.slots) removed_.emplace(slot.header_offset, slot.generation);
  }
  // Acknowledged once noted: the coordinator answers the remove then, so
  // a coordinator restart after the answer cannot bring the blocks back.
  rpc::InvalidateMessage noted = msg;
  noted.agent = id();
  from->call_async(rpc::kRemovedDone, rpc::encode(noted), Deadline::after(std::chrono::seconds(10)),
                   [](Result<std::string> r) {
                     if (!r) logger()->warn("removed ack: {}", r.error().to_string());
                   });
}

void Agent::invalidate(rpc::Client* from, const rpc::InvalidateMessage& msg) {
  invalidate_requests_->inc();
  rpc::InvalidateMessage done;
  done.agent = id();
  done.incarnation = incarnation_;
  done.epoch = msg.epoch;
  for (const auto& slot : msg.slots) {
    // Every header the slot covers, not only its first: a slot handed back
    // after a restart (space no valid header covered) may hold a late put's
    // header at any granule, and a block's slice table lies in the headers
    // of its granules 2..g.
    const std::uint64_t headers =
        std::max<std::uint64_t>(1, slot.length / pool::kGranule + (slot.length % pool::kGranule != 0));
    if (!layout_.holds_headers(slot.header_offset, headers)) {
      logger()->warn("invalidate: headers at {} ({} of them) outside the header table", slot.header_offset, headers);
      invalidate_rejected_->inc();
      continue;
    }
    for (std::uint64_t h = 0; h < headers; ++h) {
      pool::invalidate(std::span<std::byte, pool::kSlotHeaderBytes>(
          region_->data() + slot.header_offset + h * pool::kSlotHeaderBytes, pool::kSlotHeaderBytes));
    }
    done.slots.push_back(slot);
  }
  {
    std::lock_guard lock(removed_mu_);
    for (const auto& slot : done.slots) {
      auto it = removed_.lower_bound({slot.header_offset, 0});
      while (it != removed_.end() && it->first == slot.header_offset) it = removed_.erase(it);
    }
  }
  invalidated_ += done.slots.size();
  invalidated_slots_->inc(done.slots.size());
  // The ack is sent from another thread: a blocking call inside the push
  // handler would stall the connection's reader.
  from->call_async(rpc::kInvalidateDone, rpc::encode(done), Deadline::after(std::chrono::seconds(10)),
                   [](Result<std::string> r) {
                     if (!r) logger()->warn("invalidate ack: {}", r.error().to_string());
                   });
}

bool Agent::push_epoch_ok(const char* what, std::uint64_t epoch) {
  const std::uint64_t seen = leader_epoch_.load();
  if (epoch >= seen) return true;
  ++stale_push_refusals_;
  logger()->warn("{} push stamped with leader epoch {}, older than epoch {} this agent registered with: refused (a "
                 "deposed leader)",
                 what, epoch, seen);
  return false;
}

Result<pool::ScanResult> Agent::scan() const {
  auto r = pool::scan(std::span<const std::byte>(region_->data(), region_->size()), layout_);
  if (!r) return r;
  std::lock_guard lock(removed_mu_);
  if (!removed_.empty()) {
    // A removed block's header is still valid (a reader may hold it); the
    // scan must not bring it back. Its space is then covered by no block,
    // so the coordinator quarantines and invalidates it like any other.
    std::erase_if(r->blocks, [&](const pool::ScannedBlock& b) {
      return removed_.count({layout_.header_offset(b.payload_offset), b.header.generation}) != 0;
    });
  }
  return r;
}

void Agent::drain_loop() {
  for (;;) {
    rpc::DrainCopyMessage msg;
    {
      std::unique_lock lock(drain_mu_);
      drain_cv_.wait(lock, [&] { return stopping_.load() || !drain_queue_.empty(); });
      if (stopping_.load()) return;
      msg = std::move(drain_queue_.front());
      drain_queue_.pop_front();
    }
    rpc::DrainCopiedRequest done;
    done.agent = id();
    done.incarnation = incarnation_;
    done.results = copy_moves(msg);
    std::size_t ok = 0;
    for (const auto& r : done.results) ok += r.status.code == StatusCode::kOk ? 1 : 0;
    drain_copies_ += ok;
    logger()->debug("drain: copied {} of {} blocks to other agents", ok, done.results.size());
    std::shared_ptr<rpc::Client> client = rpc();
    if (client == nullptr) continue;  // the coordinator expires the moves
    auto reply = client->call(rpc::kDrainCopied, rpc::encode(done), Deadline::after(std::chrono::seconds(10)));
    if (!reply) logger()->warn("drain: reporting {} moves: {}", done.results.size(), reply.error().to_string());
  }
}

std::vector<rpc::MoveResultWire> Agent::copy_moves(const rpc::DrainCopyMessage& msg) {
  // Within the coordinator's move deadline (its write-lease ttl, 10 s by
  // default), with room for the report.
  const Deadline deadline = Deadline::after(std::chrono::seconds(5));
  std::vector<rpc::MoveResultWire> results(msg.moves.size());
  for (std::size_t i = 0; i < msg.moves.size(); ++i) results[i].id = msg.moves[i].id;
  auto fail = [&](std::size_t i, const Status& s) { results[i].status = rpc::StatusWire::from(s); };

  // Headers of the copies: the same block under the move's generation.
  DrainCopies copies;
  copies.headers.resize(msg.moves.size());
  copies.slices.resize(msg.moves.size(), 1);
  std::map<std::uint32_t, std::vector<std::size_t>> by_target;
  for (std::size_t i = 0; i < msg.moves.size(); ++i) {
    if (Status s = prepare_copy(msg.moves[i], copies.headers[i], copies.slices[i]); !s.ok()) {
      fail(i, s);
      continue;
    }
    by_target[msg.moves[i].to.agent].push_back(i);
  }

  for (auto& [target, moves] : by_target) {
    const rpc::DrainTarget* t = nullptr;
    for (const auto& cand : msg.targets) {
      if (cand.agent == target) t = &cand;
    }
    auto fail_all = [&](const Status& s) {
      for (std::size_t i : moves) fail(i, s);
    };
    if (t == nullptr) {
      fail_all(Status(StatusCode::kInvalidArgument, "no address for target agent " + std::to_string(target)));
      continue;
    }
    auto it = drain_peer(*t);
    if (!it) {
      fail_all(it.error());
      continue;
    }
    DrainPeer& dp = (*it)->second;
    Status s = put_copies(dp, msg, moves, copies, deadline);
    if (!s.ok()) {
      logger()->warn("drain: copying {} blocks to agent {}: {}", moves.size(), target, s.to_string());
      fail_all(s);
      if (!dp.peer->health().ok() || s.code() == StatusCode::kDeadlineExceeded) drain_peers_.erase(*it);
    }
  }
  return results;
}

Status Agent::prepare_copy(const rpc::MoveWire& m, std::array<std::byte, pool::kSlotHeaderBytes>& copy_header,
                           std::uint32_t& slices) const {
  const rpc::LocationWire& f = m.from;
  if (!layout_.holds_headers(f.header_offset, 1) || f.payload_offset < layout_.payload_base || f.length == 0 || f.payload_offset > region_->size() ||
      f.length > region_->size() - f.payload_offset) {
    return Status(StatusCode::kInvalidArgument, "move source outside this agent's region");
  }
  auto header = pool::decode(
      std::span<const std::byte, pool::kSlotHeaderBytes>(region_->data() + f.header_offset, pool::kSlotHeaderBytes));
  if (!header) return header.error();
  if (header->namespace_id != m.ns || header->key != m.key || header->payload_length != f.length ||
      header->generation != f.generation) {
    return Status(StatusCode::kFailedPrecondition, "the slot holds another block than the move names");
  }
  // The slice table travels with the block (the copy's readers verify
  // layers by it): checked here with the payload, copied with it below.
  const std::uint64_t table = pool::table_bytes(header->slices);
  if (table > layout_.header_table_bytes - f.header_offset - pool::kSlotHeaderBytes) {
    return Status(StatusCode::kInvalidArgument, "move's slice table outside the header table");
  }
  if (Status s = pool::verify_block(
          *header, std::span<const std::byte>(region_->data() + f.payload_offset, f.length),
          std::span<const std::byte>(region_->data() + f.header_offset + pool::kSlotHeaderBytes, table));
      !s.ok()) {
    return s;
  }
  pool::SlotHeader copy = *header;
  copy.generation = m.to.generation;
  slices = header->slices;
  pool::encode(copy, std::span<std::byte, pool::kSlotHeaderBytes>(copy_header));
  return Status();
}

Result<Agent::DrainPeers::iterator> Agent::drain_peer(const rpc::DrainTarget& t) {
  const auto peer_key = std::make_pair(t.agent, t.incarnation);
  auto it = drain_peers_.find(peer_key);
  if (it != drain_peers_.end()) return it;
  // An earlier incarnation of the target is gone for good.
  std::erase_if(drain_peers_, [&](const auto& kv) { return kv.first.first == t.agent; });
  auto peer = transport_->connect(t.worker_address, transport::ErrorMode::kAuto, t.host_id);
  if (!peer) return tl::unexpected(peer.error());
  auto region = (*peer)->import_region(
      transport::RegionInfo{t.worker_address, t.packed_rkey, t.region_base, t.region_bytes, t.host_id});
  if (!region) return tl::unexpected(region.error());
  DrainPeer dp;
  dp.peer = std::move(*peer);
  dp.region = std::move(*region);
  return drain_peers_.emplace(peer_key, std::move(dp)).first;
}

Status Agent::put_copies(DrainPeer& dp, const rpc::DrainCopyMessage& msg, const std::vector<std::size_t>& moves,
                         DrainCopies& copies, Deadline deadline) {
  std::vector<transport::RmaOp> payloads, heads;
  for (std::size_t i : moves) {
    const rpc::MoveWire& m = msg.moves[i];
    payloads.push_back({region_->data() + m.from.payload_offset, m.to.payload_offset, m.from.length});
    if (const std::uint64_t table = pool::table_bytes(copies.slices[i]); table > 0) {
      payloads.push_back({region_->data() + m.from.header_offset + pool::kSlotHeaderBytes,
                          m.to.header_offset + pool::kSlotHeaderBytes, table});
    }
    heads.push_back({copies.headers[i].data(), m.to.header_offset, pool::kSlotHeaderBytes});
  }
  // Payloads complete at the target before any header is put (put()
  // returns after a flush), so a valid header there means a whole copy.
  transport::BatchOptions local;
  local.local = &region_->memory();
  Status s = dp.peer->put(dp.region, payloads, deadline, local);
  if (s.ok()) s = dp.peer->put(dp.region, heads, deadline);
  return s;
}

}  // namespace kvpool::agent
