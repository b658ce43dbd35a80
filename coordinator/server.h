#pragma once
// CoordinatorServer: the coordinator on the network. It wraps
// CoordinatorCore (the state machine) in the control protocol's server,
// performs the actions the core returns (invalidation requests pushed to
// agents, "agent down" pushed to workers) and runs the core's clock (tick).
//
// kvpool-coordinator runs one; `kvpool-agent --standalone` embeds one in the
// agent's process, same protocol, same port.
//
// Thread-safety: start/stop from one thread; everything else is internal.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "coordinator/coordinator_core.h"
#include "kvpool/status.h"
#include "runtime/metrics/registry.h"

namespace kvpool::coordinator {

struct CoordinatorServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 7400;  // 0: the OS picks (see port())
  CoordinatorConfig core;
  // How often the core's clock runs (lease expiry, agent timeouts, retries).
  std::chrono::milliseconds tick_interval{100};
  // What agents are told; the agent timeout (core.agent_timeout) should be
  // several intervals.
  std::chrono::milliseconds heartbeat_interval{1000};
  std::size_t max_frame = 16u << 20;
  // Open control connections at most (rpc::ServerOptions::max_connections).
  std::size_t max_connections = 16384;
  int threads = 1;
  // The cluster secret that authenticates every connection (SECURITY.md):
  // this file, or when empty KVPOOL_SECRET_FILE, else the default path
  // (runtime/common/secret.h).
  std::string secret_file;
  // Create a new secret there when none exists (logged at info with the
  // path), so a fresh single-machine pool needs no setup.
  bool create_secret = true;
  // Where the server's metrics go (kvpool_coordinator_*: requests, errors and
  // latency by operation, and gauges read from the core at scrape time).
  // Shared with the process's /metrics endpoint and, in `kvpool-agent
  // --standalone`, with the agent. Null: the server keeps a private one.
  std::shared_ptr<metrics::Registry> metrics;
  // Encrypt every control connection with TLS 1.3 keyed by the secret
  // (runtime/rpc/tls.h); clients follow automatically.
  bool control_tls = false;
  // High availability (coordinator/leader.h): asked before every request;
  // a request is refused with its status when it is not ok (a leader whose
  // etcd lease may have run out answers nothing). Null: always serve.
  std::function<Status()> fence;
  // The leadership this process holds (with `fence`): its shard, and its
  // epoch (LeaderElection::epoch), told to agents on registration and to
  // operators in Stats. 0: no etcd, no epoch.
  std::uint32_t shard = 0;
  std::uint64_t epoch = 0;
  // Tenants (runtime/common/tenants.h, SECURITY.md): clients that
  // authenticate with a tenant key and may use only their namespaces.
  // Empty: no tenants, only the cluster secret is accepted.
  std::string tenants_file;
};

class CoordinatorServer {
 public:
  // kUnavailable when the address cannot be bound; kInvalidArgument for a
  // bad core configuration; kFailedPrecondition for a missing (with
  // create_secret false) or unsafe secret file, or a bad tenants file.
  static Result<std::unique_ptr<CoordinatorServer>> start(const CoordinatorServerOptions& options);
  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  std::uint16_t port() const;
  CoordinatorCore& core();
  void stop();

  struct Impl;  // opaque

 private:
  explicit CoordinatorServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpool::coordinator
