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
  rpc::ClientOptions ro;
  ro.host = hp->first;
  ro.port = hp->second;
  ro.role = rpc::Role::kAgent;
  ro.client_id = "agent-" + std::to_string(a->incarnation_);
  ro.secret_file = options.secret_file;
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

void Agent::stop() {
  std::lock_guard lock(stop_mu_);
  if (stopping_.exchange(true)) return;
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
    auto reply = rpc_->call(rpc::kHeartbeat, rpc::encode(hb), Deadline::after(heartbeat_interval_ * 2));
    if (!reply) logger()->warn("heartbeat: {}", reply.error().to_string());
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
  rpc::InvalidateMessage done;
  done.agent = id_;
  done.incarnation = incarnation_;
  for (const auto& slot : msg.slots) {
    if (slot.header_offset % pool::kSlotHeaderBytes != 0 ||
        slot.header_offset + pool::kSlotHeaderBytes > layout_.header_table_bytes) {
      logger()->warn("invalidate: header offset {} outside the header table", slot.header_offset);
      continue;
    }
    pool::invalidate(std::span<std::byte, pool::kSlotHeaderBytes>(region_->data() + slot.header_offset,
                                                                  pool::kSlotHeaderBytes));
    done.slots.push_back(slot);
  }
  invalidated_ += done.slots.size();
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
