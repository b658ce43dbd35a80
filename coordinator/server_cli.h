#pragma once
// The coordinator's command-line flags, shared by kvpool-coordinator and
// `kvpool-agent --standalone` (which embeds a coordinator): one definition,
// so both programs take the same flags and config keys.

#include <string>

#include <CLI/CLI.hpp>

#include "coordinator/server.h"
#include "runtime/common/units.h"

namespace kvpool::coordinator {

struct CoordinatorFlags {
  std::string agent_timeout = "3s";
  std::string heartbeat_interval = "1s";
  std::string write_lease = "10s";
  std::string read_lease = "30s";
  std::string write_quarantine = "5s";
  std::string placement = "local-first";
  double high_watermark = 0.95;
  double low_watermark = 0.90;
  std::uint32_t max_namespaces = CoordinatorConfig{}.max_namespaces;
  std::size_t max_connections = CoordinatorServerOptions{}.max_connections;
  std::uint64_t max_write_leases_per_client = CoordinatorConfig{}.max_write_leases_per_client;
  std::uint32_t max_namespaces_per_client = CoordinatorConfig{}.max_namespaces_per_client;
  std::uint32_t max_namespaces_per_tenant = CoordinatorConfig{}.max_namespaces_per_tenant;
  std::string secret_file;
  bool control_tls = false;
  std::string tenants_file;

  void add_to(CLI::App& app) {
    app.add_option("--secret-file", secret_file,
                   "Cluster secret (mode 0600) that authenticates every control connection; default: "
                   "$KVPOOL_SECRET_FILE, else /etc/kvpool/secret for root, ~/.config/kvpool/secret otherwise. "
                   "A coordinator creates it there if missing; copy it to every host (SECURITY.md)");
    app.add_flag("--control-tls", control_tls,
                 "Coordinator: encrypt every control connection (TLS 1.3 keyed by the secret; clients follow)");
    app.add_option("--tenants", tenants_file,
                   "Coordinator: tenants file (mode 0600; lines `tenant NAME KEY namespaces=PATTERN,...`): clients "
                   "with a tenant credential may use only their namespaces (SECURITY.md)");
    app.add_option("--agent-timeout", agent_timeout,
                   "An agent silent this long is declared dead: its blocks leave lookups, workers are told")
        ->capture_default_str();
    app.add_option("--heartbeat-interval", heartbeat_interval, "How often agents are asked to heartbeat")
        ->capture_default_str();
    app.add_option("--write-lease", write_lease, "A writer must commit within this long")->capture_default_str();
    app.add_option("--read-lease", read_lease, "How long a lookup protects its blocks from eviction")
        ->capture_default_str();
    app.add_option("--write-quarantine", write_quarantine,
                   "How long the space of an expired write lease waits for late puts before reuse")
        ->capture_default_str();
    app.add_option("--placement", placement, "local-first (the writer's host, then least full) or spread")
        ->check(CLI::IsMember({"local-first", "spread"}))
        ->capture_default_str();
    app.add_option("--high-watermark", high_watermark, "Evict when an agent's live bytes would pass this fraction")
        ->check(CLI::Range(0.01, 1.0))
        ->capture_default_str();
    app.add_option("--low-watermark", low_watermark, "...down to this fraction (equal to high: evict exactly "
                                                     "what each allocation needs)")
        ->check(CLI::Range(0.01, 1.0))
        ->capture_default_str();
    app.add_option("--max-connections", max_connections,
                   "Open control connections the coordinator accepts; one more is told 'too many connections'")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
        ->capture_default_str();
    app.add_option("--max-namespaces", max_namespaces, "Namespaces the coordinator accepts")
        ->check(CLI::Range(1u, 1u << 30))
        ->capture_default_str();
    app.add_option("--max-namespaces-per-client", max_namespaces_per_client,
                   "Namespaces one client (client id) may add; 0: no limit other than --max-namespaces")
        ->capture_default_str();
    app.add_option("--max-namespaces-per-tenant", max_namespaces_per_tenant,
                   "Namespaces one tenant's clients may add together; 0: no limit other than --max-namespaces")
        ->capture_default_str();
    app.add_option("--max-write-leases-per-client", max_write_leases_per_client,
                   "Write leases one client may hold open at once (blocks allocated and not yet committed)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40))
        ->capture_default_str();
  }

  // kInvalidArgument naming the bad flag.
  Result<CoordinatorServerOptions> to_options(const std::string& host, std::uint16_t port) const {
    CoordinatorServerOptions o;
    o.host = host;
    o.port = port;
    struct D {
      const char* flag;
      const std::string& text;
      std::chrono::nanoseconds* out;
    };
    std::chrono::nanoseconds hb{};
    for (const D& d : {D{"--agent-timeout", agent_timeout, &o.core.agent_timeout},
                       D{"--write-lease", write_lease, &o.core.write_lease_ttl},
                       D{"--read-lease", read_lease, &o.core.read_lease_ttl},
                       D{"--write-quarantine", write_quarantine, &o.core.write_quarantine},
                       D{"--heartbeat-interval", heartbeat_interval, &hb}}) {
      auto v = parse_duration(d.text);
      if (!v) return make_error(StatusCode::kInvalidArgument, std::string(d.flag) + ": " + v.error().message());
      *d.out = *v;
    }
    o.heartbeat_interval = std::chrono::duration_cast<std::chrono::milliseconds>(hb);
    if (o.heartbeat_interval.count() <= 0 || o.heartbeat_interval >= o.core.agent_timeout) {
      return make_error(StatusCode::kInvalidArgument, "--heartbeat-interval must be positive and below --agent-timeout");
    }
    o.core.placement = placement == "spread" ? PlacementPolicy::kSpread : PlacementPolicy::kLocalFirst;
    o.core.high_watermark = high_watermark;
    o.core.low_watermark = low_watermark;
    o.core.max_namespaces = max_namespaces;
    o.max_connections = max_connections;
    o.core.max_write_leases_per_client = max_write_leases_per_client;
    o.core.max_namespaces_per_client = max_namespaces_per_client;
    o.core.max_namespaces_per_tenant = max_namespaces_per_tenant;
    o.secret_file = secret_file;
    o.control_tls = control_tls;
    o.tenants_file = tenants_file;
    return o;
  }
};

}  // namespace kvpool::coordinator
