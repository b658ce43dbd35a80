#include "agent/agent.h"

#include <unistd.h>

#include <random>

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
  rpc::ClientOptions ro;
  ro.host = hp->first;
  ro.port = hp->second;
  ro.role = rpc::Role::kAgent;
  ro.client_id = "agent-" + std::to_string(a->incarnation_);
  auto rc = rpc::Client::connect(ro, Deadline::after(options.connect_timeout));
  if (!rc) return tl::unexpected(rc.error());
  a->rpc_ = std::move(*rc);
  Agent* raw = a.get();
  a->rpc_->set_push_handler([raw](std::uint16_t type, std::string payload) { raw->on_push(type, payload); });

  auto info = a->transport_->describe(a->region_->memory());
  if (!info) return tl::unexpected(info.error());
  rpc::RegisterAgentRequest req;
  req.agent.incarnation = a->incarnation_;
  req.agent.worker_address = info->worker_address;
  req.agent.packed_rkey = info->packed_rkey;
  req.agent.host_id = info->host_id;
  req.agent.region_base = info->base;
  req.agent.region_bytes = info->length;
  req.agent.control_address = ro.client_id;
  auto reply = a->rpc_->call(rpc::kRegisterAgent, rpc::encode(req), Deadline::after(options.connect_timeout));
  if (!reply) return tl::unexpected(reply.error());
  rpc::RegisterAgentReply rep;
  if (Status s = rpc::decode(*reply, rep); !s.ok()) return tl::unexpected(s);
  a->id_ = rep.agent;
  if (rep.heartbeat_interval_ms > 0) a->heartbeat_interval_ = std::chrono::milliseconds(rep.heartbeat_interval_ms);
  logger()->info("agent {} (incarnation {:#x}) lends {} bytes, heartbeat every {} ms", a->id_, a->incarnation_,
                 a->region_->size(), a->heartbeat_interval_.count());
  a->heartbeat_ = std::thread([raw] { raw->heartbeat_loop(); });
  return a;
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
    c.gauge("kvpool_agent_id", "This agent's id at the coordinator (0 until registered)", {}, id_);
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
  rpc_.reset();
  if (transport_) {
    transport_->stop_progress_thread();
    if (region_) transport_->stop_serving(region_->memory());
  }
  region_.reset();
  transport_.reset();
}

void Agent::heartbeat_loop() {
  while (!stopping_.load()) {
    auto next = Clock::now() + heartbeat_interval_;
    rpc::HeartbeatRequest hb{id_, incarnation_};
    auto sent = Clock::now();
    auto reply = rpc_->call(rpc::kHeartbeat, rpc::encode(hb), Deadline::after(heartbeat_interval_ * 2));
    heartbeat_seconds_->observe(std::chrono::duration<double>(Clock::now() - sent).count());
    if (!reply) {
      heartbeat_failures_->inc();
      logger()->warn("heartbeat: {}", reply.error().to_string());
    }
    while (!stopping_.load() && Clock::now() < next) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void Agent::on_push(std::uint16_t type, const std::string& payload) {
  if (type != rpc::kPushInvalidate) {
    logger()->debug("ignoring push of type {}", type);
    return;
  }
  rpc::InvalidateMessage msg;
  if (Status s = rpc::decode(payload, msg); !s.ok()) {
    logger()->warn("invalidate request: {}", s.to_string());
    return;
  }
  if (msg.incarnation != incarnation_) return;  // meant for an earlier incarnation
  invalidate_requests_->inc();
  rpc::InvalidateMessage done;
  done.agent = id_;
  done.incarnation = incarnation_;
  for (const auto& slot : msg.slots) {
    if (slot.header_offset % pool::kSlotHeaderBytes != 0 ||
        slot.header_offset + pool::kSlotHeaderBytes > layout_.header_table_bytes) {
      logger()->warn("invalidate: header offset {} outside the header table", slot.header_offset);
      invalidate_rejected_->inc();
      continue;
    }
    pool::invalidate(std::span<std::byte, pool::kSlotHeaderBytes>(region_->data() + slot.header_offset,
                                                                  pool::kSlotHeaderBytes));
    done.slots.push_back(slot);
  }
  invalidated_ += done.slots.size();
  invalidated_slots_->inc(done.slots.size());
  // The ack is sent from another thread: a blocking call inside the push
  // handler would stall the connection's reader.
  rpc_->call_async(rpc::kInvalidateDone, rpc::encode(done), Deadline::after(std::chrono::seconds(10)),
                   [](Result<std::string> r) {
                     if (!r) logger()->warn("invalidate ack: {}", r.error().to_string());
                   });
}

Result<pool::ScanResult> Agent::scan() const {
  return pool::scan(std::span<const std::byte>(region_->data(), region_->size()), layout_);
}

}  // namespace kvpool::agent
