// kvpool-coordinator: the block index, placement, leases, eviction and agent
// membership of a pool, on the control protocol.

#include <cstdio>

#include <CLI/CLI.hpp>

#include "coordinator/server.h"
#include "coordinator/server_cli.h"
#include "runtime/common/json_config.h"
#include "runtime/common/logging.h"
#include "runtime/common/process_util.h"
#include "runtime/metrics/http_server.h"

using namespace kvpool;

int main(int argc, char** argv) {
  CLI::App app{"kvpool-coordinator: tracks where every KV block of the pool lives"};
  app.config_formatter(std::make_shared<JsonConfig>());
  app.set_config("--config", "", "JSON file; every flag has a key of the same name (\"listen\": \"0.0.0.0:7400\")");
  std::string listen = "127.0.0.1:7400", port_file, log_level = "info", metrics_listen, metrics_port_file;
  coordinator::CoordinatorFlags flags;
  app.add_option("--listen", listen, "HOST:PORT to serve on; port 0 lets the OS pick (see --port-file)")
      ->capture_default_str();
  app.add_option("--port-file", port_file, "Write the bound port here once listening");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.add_option("--metrics", metrics_listen,
                 "HOST:PORT to serve Prometheus metrics on (GET /metrics); port 0 lets the OS pick (see "
                 "--metrics-port-file); off when not given");
  app.add_option("--metrics-port-file", metrics_port_file, "Write the bound metrics port here once listening");
  flags.add_to(app);
  CLI11_PARSE(app, argc, argv);

  if (!log::set_log_level(log_level)) {
    std::fprintf(stderr, "--log-level: unknown level '%s'\n", log_level.c_str());
    return 2;
  }
  auto hp = parse_host_port(listen);
  if (!hp) {
    std::fprintf(stderr, "--listen: %s\n", hp.error().message().c_str());
    return 2;
  }
  auto options = flags.to_options(hp->first, hp->second);
  if (!options) {
    std::fprintf(stderr, "%s\n", options.error().message().c_str());
    return 2;
  }
  auto registry = std::make_shared<metrics::Registry>();
  options->metrics = registry;
  block_stop_signals();
  auto server = coordinator::CoordinatorServer::start(*options);
  if (!server) {
    std::fprintf(stderr, "kvpool-coordinator: %s\n", server.error().to_string().c_str());
    return 1;
  }
  if (!port_file.empty()) {
    if (Status s = write_port_file(port_file, (*server)->port()); !s.ok()) {
      std::fprintf(stderr, "kvpool-coordinator: %s\n", s.to_string().c_str());
      return 1;
    }
  }
  auto metrics_server = metrics::start_from_flags(metrics_listen, metrics_port_file, registry);
  if (!metrics_server) {
    std::fprintf(stderr, "kvpool-coordinator: %s\n", metrics_server.error().to_string().c_str());
    return 1;
  }
  int sig = wait_for_stop_signal();
  log::get("coordinator")->info("signal {}: stopping", sig);
  if (*metrics_server) (*metrics_server)->stop();
  (*server)->stop();
  return 0;
}
