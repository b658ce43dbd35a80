// kvpool-agent: lends this host's DRAM to the pool. With --standalone it
// also runs the coordinator in-process: the embedded default for one machine
// (same protocol, same port).

#include <cstdio>

#include <CLI/CLI.hpp>

#include "agent/agent.h"
#include "coordinator/server.h"
#include "coordinator/server_cli.h"
#include "runtime/common/json_config.h"
#include "runtime/common/logging.h"
#include "runtime/common/process_util.h"
#include "runtime/common/units.h"
#include "runtime/metrics/http_server.h"

using namespace kvpool;

namespace {

// kvpool-agent's flags, added in the order --help lists them.
struct Args {
  std::string coordinator_addr = "127.0.0.1:7400", listen = "127.0.0.1:7400", pool_size = "1GiB", port_file,
              log_level = "info", progress = "event", lock = "try", huge = "try", tls, name, metrics_listen,
              metrics_port_file;
  bool standalone = false;
  std::int64_t membership_ttl = 3;
  coordinator::CoordinatorFlags flags;

  void add_to(CLI::App& app) {
    app.add_flag("--standalone", standalone, "Also run the coordinator in this process, on --listen");
    app.add_option("--coordinator", coordinator_addr,
                   "HOST:PORT of the coordinator, or etcd://HOST:PORT[,HOST:PORT...][/SHARD] to find the shard's "
                   "leader in etcd on every (re)dial (ignored with --standalone)")
        ->capture_default_str();
    app.add_option("--listen", listen,
                   "With --standalone: HOST:PORT the embedded coordinator serves on; port 0 lets the OS pick")
        ->capture_default_str();
    app.add_option("--pool-size", pool_size, "DRAM to lend: 512MiB, 4GiB or a byte count")->capture_default_str();
    app.add_option("--port-file", port_file, "With --standalone: write the bound port here once listening");
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
    app.add_option("--progress", progress,
                   "How the UCX progress thread waits: event (sleeps when idle) or poll (burns a core)")
        ->check(CLI::IsMember({"event", "poll"}))
        ->capture_default_str();
    app.add_option("--lock", lock, "mlock the pool: try (log and go on if refused), require, off")
        ->check(CLI::IsMember({"try", "require", "off"}))
        ->capture_default_str();
    app.add_option("--huge-pages", huge, "Ask for transparent huge pages: try, off")
        ->check(CLI::IsMember({"try", "off"}))
        ->capture_default_str();
    app.add_option("--tls", tls,
                   "UCX transports (UCX_TLS syntax); default: the environment's, else "
                   "^sysv (every transport UCX finds but sysv)");
    app.add_option("--name", name,
                   "Stable name of this agent (e.g. the host name): a restarted agent of the same name replaces its "
                   "old incarnation at once; default: a new identity per process");
    app.add_option("--metrics", metrics_listen,
                   "HOST:PORT to serve Prometheus metrics on (GET /metrics; with --standalone also the "
                   "coordinator's); port 0 lets the OS pick (see --metrics-port-file); off when not given");
    app.add_option("--metrics-port-file", metrics_port_file, "Write the bound metrics port here once listening");
    app.add_option("--membership-ttl", membership_ttl,
                   "With an etcd:// coordinator: seconds of the etcd lease of this agent's membership key "
                   "(/kvpool/agents/NAME); every coordinator shard drops a killed agent about this long after "
                   "(etcd raises it to its minimum); a clean stop revokes it at once")
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{600}))
        ->capture_default_str();
    flags.add_to(app);
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvpool-agent: lends this host's DRAM to the kvpool pool"};
  app.config_formatter(std::make_shared<JsonConfig>());
  app.set_config("--config", "", "JSON file; every flag has a key of the same name (\"pool-size\": \"4GiB\")");
  Args args;
  args.add_to(app);
  CLI11_PARSE(app, argc, argv);

  if (!log::set_log_level(args.log_level)) {
    std::fprintf(stderr, "--log-level: unknown level '%s'\n", args.log_level.c_str());
    return 2;
  }
  auto size = parse_size(args.pool_size);
  if (!size) {
    std::fprintf(stderr, "--pool-size: %s\n", size.error().message().c_str());
    return 2;
  }
  agent::AgentOptions ao;
  ao.coordinator = args.coordinator_addr;
  ao.pool_size = *size;
  ao.progress = args.progress == "poll" ? transport::ProgressMode::kPoll : transport::ProgressMode::kEvent;
  ao.lock = args.lock == "require" ? pool::Lock::kRequire : args.lock == "off" ? pool::Lock::kOff : pool::Lock::kTry;
  ao.huge_pages = args.huge == "off" ? pool::HugePages::kOff : pool::HugePages::kTry;
  ao.tls = args.tls;
  ao.name = args.name;
  ao.secret_file = args.flags.secret_file;
  ao.membership_ttl = std::chrono::seconds(args.membership_ttl);
  auto registry = std::make_shared<metrics::Registry>();
  ao.metrics = registry;

  block_stop_signals();
  std::unique_ptr<coordinator::CoordinatorServer> server;
  if (args.standalone) {
    auto hp = parse_host_port(args.listen);
    if (!hp) {
      std::fprintf(stderr, "--listen: %s\n", hp.error().message().c_str());
      return 2;
    }
    auto options = args.flags.to_options(hp->first, hp->second);
    if (!options) {
      std::fprintf(stderr, "%s\n", options.error().message().c_str());
      return 2;
    }
    options->metrics = registry;
    auto started = coordinator::CoordinatorServer::start(*options);
    if (!started) {
      std::fprintf(stderr, "kvpool-agent: coordinator: %s\n", started.error().to_string().c_str());
      return 1;
    }
    server = std::move(*started);
    ao.coordinator = (hp->first == "0.0.0.0" ? std::string("127.0.0.1") : hp->first) + ":" +
                     std::to_string(server->port());
  }
  auto agent = agent::Agent::start(ao);
  if (!agent) {
    std::fprintf(stderr, "kvpool-agent: %s\n", agent.error().to_string().c_str());
    return 1;
  }
  if (server && !args.port_file.empty()) {
    if (Status s = write_port_file(args.port_file, server->port()); !s.ok()) {
      std::fprintf(stderr, "kvpool-agent: %s\n", s.to_string().c_str());
      return 1;
    }
  }
  auto metrics_server = metrics::start_from_flags(args.metrics_listen, args.metrics_port_file, registry);
  if (!metrics_server) {
    std::fprintf(stderr, "kvpool-agent: %s\n", metrics_server.error().to_string().c_str());
    return 1;
  }
  int sig = wait_for_stop_signal();
  log::get("agent")->info("signal {}: stopping", sig);
  if (*metrics_server) (*metrics_server)->stop();
  (*agent)->stop();
  if (server) server->stop();
  return 0;
}
