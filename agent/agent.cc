#include "agent/agent.h"

#include <unistd.h>

#include <algorithm>
#include <random>
#include <utility>

#include "runtime/common/logging.h"
#include "runtime/common/process_util.h"
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

Result<std::unique_ptr<Agent>> Agent::start(const AgentOptions& options) {
  auto hp = parse_host_port(options.coordinator);
  if (!hp) return tl::unexpected(hp.error());
  std::unique_ptr<Agent> a(new Agent());
  a->options_ = options;
  auto t = transport::Transport::create({.tls = options.tls, .serve_owner_reads = true});
  if (!t) return tl::unexpected(t.error());
  a->transport_ = std::move(*t);
  auto region = pool::PoolRegion::create(
      *a->transport_, {.size = options.pool_size, .huge_pages = options.huge_pages, .lock = options.lock});
  if (!region) return tl::unexpected(region.error());
  a->region_.emplace(std::move(*region));
  auto layout = pool::RegionLayout::create(a->region_->size());
  if (!layout) return tl::unexpected(layout.error());
  a->layout_ = *layout;
  if (auto rep = a->region_->report()) logger()->info("{}", rep->to_string());
  a->transport_->serve(a->region_->memory());
  if (Status s = a->transport_->start_progress_thread(options.progress); !s.ok()) return tl::unexpected(s);

  a->incarnation_ = new_incarnation();
  a->registry_ = options.metrics ? options.metrics : std::make_shared<metrics::Registry>();
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
  rec.control_address = options.name.empty() ? "agent-" + std::to_string(a->incarnation_) : options.name;
  if (Status s = a->join(/*rejoin=*/false, /*fresh=*/true, Deadline::after(options.connect_timeout)); !s.ok()) {
    return tl::unexpected(s);
  }
  logger()->info("agent {} (incarnation {:#x}) lends {} bytes, heartbeat every {} ms", a->id(), a->incarnation_,
                 a->region_->size(), a->heartbeat_interval_.count());
  Agent* raw = a.get();
  a->heartbeat_ = std::thread([raw] { raw->heartbeat_loop(); });
  return a;
}

std::shared_ptr<rpc::Client> Agent::rpc() const {
  std::lock_guard lock(rpc_mu_);
  return rpc_;
}

Status Agent::join(bool rejoin, bool fresh, Deadline deadline) {
  std::shared_ptr<rpc::Client> client = fresh ? nullptr : rpc();
  if (client == nullptr || !client->connected()) {
    auto hp = parse_host_port(options_.coordinator);
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
  id_ = rep.agent;
  if (rep.heartbeat_interval_ms > 0) heartbeat_interval_ = std::chrono::milliseconds(rep.heartbeat_interval_ms);
  if (rep.send_blocks) return send_scan(*client, deadline);
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
  });
}

void Agent::stop() {
  std::lock_guard lock(stop_mu_);
  if (stopping_.exchange(true)) return;
  if (registry_) registry_->remove_collector(collector_id_);
  if (heartbeat_.joinable()) heartbeat_.join();
  {
    std::lock_guard lock(rpc_mu_);
    rpc_.reset();
  }
  if (transport_) {
    transport_->stop_progress_thread();
    if (region_) transport_->stop_serving(region_->memory());
  }
  region_.reset();
  transport_.reset();
}

void Agent::heartbeat_loop() {
  constexpr std::chrono::milliseconds kFirstBackoff{50}, kMaxBackoff{2000};
  std::chrono::milliseconds backoff = kFirstBackoff;
  bool lost = false;  // the last heartbeat or rejoin failed
  while (!stopping_.load()) {
    auto wait = heartbeat_interval_;
    std::shared_ptr<rpc::Client> client = rpc();
    Status st;
    if (client != nullptr && client->connected()) {
      rpc::HeartbeatRequest hb{id(), incarnation_};
      const auto sent = Clock::now();
      auto reply = client->call(rpc::kHeartbeat, rpc::encode(hb), Deadline::after(heartbeat_interval_ * 2));
      heartbeat_seconds_->observe(std::chrono::duration<double>(Clock::now() - sent).count());
      st = reply ? Status() : reply.error();
    } else {
      st = Status(StatusCode::kUnavailable, "not connected to the coordinator");
    }
    if (!st.ok() && (st.code() == StatusCode::kNotFound || st.code() == StatusCode::kUnavailable)) {
      // kNotFound: the coordinator does not know this incarnation (it
      // restarted, or declared the agent dead); kUnavailable: the connection
      // is gone. Either way, rejoin: the region's blocks are still here.
      const bool fresh = st.code() == StatusCode::kUnavailable;
      if (!lost) logger()->warn("coordinator: {}; rejoining", st.to_string());
      st = join(/*rejoin=*/true, fresh, Deadline::after(std::max(heartbeat_interval_ * 2, options_.connect_timeout)));
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
  if (type == rpc::kPushRemoved) {
    // Bounded by the region: one entry per slot at most.
    std::lock_guard lock(removed_mu_);
    for (const auto& slot : msg.slots) removed_.emplace(slot.header_offset, slot.generation);
    return;
  }
  invalidate_requests_->inc();
  rpc::InvalidateMessage done;
  done.agent = id();
  done.incarnation = incarnation_;
  for (const auto& slot : msg.slots) {
    // Every header the slot covers, not only its first: a slot handed back
    // after a restart (space no valid header covered) may hold a late put's
    // header at any granule.
    const std::uint64_t headers = std::max<std::uint64_t>(1, slot.length / pool::kGranule);
    if (slot.header_offset % pool::kSlotHeaderBytes != 0 || slot.header_offset > layout_.header_table_bytes ||
        headers > (layout_.header_table_bytes - slot.header_offset) / pool::kSlotHeaderBytes) {
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

}  // namespace kvpool::agent
