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
// Lifetime: start() returns a running agent; the destructor (or stop())
// stops heartbeats, leaves the coordinator connection, then frees the region
// before the transport.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "kvpool/status.h"
#include "pool/pool_region.h"
#include "pool/slot_header.h"
#include "runtime/metrics/registry.h"
#include "transport/transport.h"

namespace kvpool::rpc {
class Client;
}

namespace kvpool::agent {

struct AgentOptions {
  std::string coordinator = "127.0.0.1:7400";  // host:port
  std::uint64_t pool_size = 1ull << 30;
  pool::HugePages huge_pages = pool::HugePages::kTry;
  pool::Lock lock = pool::Lock::kTry;
  transport::ProgressMode progress = transport::ProgressMode::kEvent;
  std::string tls;  // UCX_TLS; empty: environment or kvpool's default
  std::chrono::milliseconds connect_timeout{10000};
  // Where the agent's metrics go (kvpool_agent_*: region, invalidations,
  // heartbeats, owner reads). Shared with the process's /metrics endpoint
  // and, with --standalone, with the embedded coordinator. Null: a private one.
  std::shared_ptr<metrics::Registry> metrics;
};

class Agent {
 public:
  static Result<std::unique_ptr<Agent>> start(const AgentOptions& options);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  void stop();

  std::uint32_t id() const { return id_; }
  std::uint64_t incarnation() const { return incarnation_; }
  const pool::PoolRegion& region() const { return *region_; }
  const pool::RegionLayout& layout() const { return layout_; }
  // The blocks the region's valid headers describe (torn and invalidated
  // slots skipped): what a restarted coordinator rebuilds its index from.
  Result<pool::ScanResult> scan() const;
  // Invalidations applied so far (for tests and status).
  std::uint64_t invalidated_slots() const { return invalidated_.load(); }

 private:
  Agent() = default;
  void on_push(std::uint16_t type, const std::string& payload);
  void heartbeat_loop();

  // Destruction order matters: threads and the RPC client go first, then the
  // region (unmapped through UCX), then the transport.
  std::unique_ptr<transport::Transport> transport_;
  std::optional<pool::PoolRegion> region_;
  pool::RegionLayout layout_;
  std::unique_ptr<rpc::Client> rpc_;
  AgentOptions options_;
  std::uint32_t id_ = 0;
  std::uint64_t incarnation_ = 0;
  std::chrono::milliseconds heartbeat_interval_{1000};
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;
  std::thread heartbeat_;
  std::atomic<std::uint64_t> invalidated_{0};

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
