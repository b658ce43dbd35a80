#pragma once
// MetricsServer: serves a Registry's exposition over HTTP/1.1 (Boost.Beast)
// at GET /metrics, on a thread of its own, so a slow or stuck scraper never
// delays the control protocol or the data path.
//
// Paths: /metrics (text/plain; version=0.0.4), / (a one-line index), anything
// else 404; methods other than GET and HEAD get 405. Connections are kept
// alive as the client asks; a connection idle for 30 s is closed.
//
// Lifetime: start() returns a running server; stop() (or the destructor)
// closes the listener and every connection and joins the thread. The
// Registry must outlive the server.

#include <cstdint>
#include <memory>
#include <string>

#include "kvpool/status.h"
#include "runtime/metrics/registry.h"

namespace kvpool::metrics {

class MetricsServer {
 public:
  // Binds host:port (port 0: the OS picks; see port()). kInvalidArgument for
  // a host that is not an address, kUnavailable when it cannot bind.
  static Result<std::unique_ptr<MetricsServer>> start(const std::string& host, std::uint16_t port,
                                                      std::shared_ptr<const Registry> registry);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  std::uint16_t port() const;
  // Idempotent.
  void stop();

  struct Impl;

 private:
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The `--metrics HOST:PORT` and `--metrics-port-file PATH` flags of
// kvpool-agent and kvpool-coordinator: starts the server when `listen` is
// not empty and writes the bound port to `port_file` when that is not empty.
// Returns nullptr (and ok) when `listen` is empty.
Result<std::unique_ptr<MetricsServer>> start_from_flags(const std::string& listen, const std::string& port_file,
                                                        std::shared_ptr<const Registry> registry);

}  // namespace kvpool::metrics
