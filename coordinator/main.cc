// kvpool-coordinator: the block index, placement, leases, eviction and agent
// membership of a pool, on the control protocol.

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>

#include "coordinator/leader.h"
#include "coordinator/range_mover.h"
#include "coordinator/server.h"
#include "coordinator/server_cli.h"
#include "runtime/common/json_config.h"
#include "runtime/common/logging.h"
#include "runtime/common/process_util.h"
#include "runtime/etcd/membership.h"
#include "runtime/etcd/shard_map.h"
#include "runtime/metrics/http_server.h"

using namespace kvpool;

namespace {

using Ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

// The key-point ranges `shard` owns in `map`; nullopt: everything (one
// shard, nothing moving: exactly as without a map).
std::optional<Ranges> ranges_of(const etcd::ShardMap& map, std::uint32_t shard) {
  if (map.single() && map.ranges[0].shard == shard) return std::nullopt;
  Ranges out;
  for (const auto& r : map.owned_by(shard)) out.emplace_back(r.start, r.end);
  return out;
}

// Ranges moving away from `shard` (read here, written at their new owner).
std::vector<etcd::ShardRange> moving_from(const etcd::ShardMap& map, std::uint32_t shard) {
  std::vector<etcd::ShardRange> out;
  for (const auto& r : map.ranges) {
    if (r.from == shard) out.push_back(r);
  }
  return out;
}

// The leader's side of the moves away from its shard: one RangeMover per
// moving range, started when the map shows it, dropped when it no longer
// does (coordinator/range_mover.h).
struct Moves {
  coordinator::RangeMoverOptions base;
  std::mutex mu;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::unique_ptr<coordinator::RangeMover>> running;

  void follow(const etcd::ShardMap& map) {
    std::lock_guard lock(mu);
    auto now = moving_from(map, base.shard);
    for (auto it = running.begin(); it != running.end();) {
      bool still = false;
      for (const auto& r : now) still |= it->second->range() == r;
      if (!still) {
        it->second->stop();
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& r : now) {
      if (running.contains({r.start, r.end})) continue;
      auto o = base;
      o.range = r;
      running[{r.start, r.end}] = std::make_unique<coordinator::RangeMover>(o);
    }
  }
  void stop() {
    std::lock_guard lock(mu);
    running.clear();
  }
};

std::string ranges_text(const std::optional<Ranges>& ranges) {
  if (!ranges) return "every key";
  if (ranges->empty()) return "no key range";
  std::string out;
  for (const auto& [a, b] : *ranges) out += (out.empty() ? "" : ", ") + ("[" + std::to_string(a) + ", " + std::to_string(b) + ")");
  return out;
}

// Reads the shard map (waiting out an etcd that does not answer, logged):
// the ranges `shard` owns. kFailedPrecondition for a malformed map, or a
// shard other than 0 with no map at all.
Result<etcd::ShardMap> read_map(const std::vector<etcd::Endpoint>& eps, std::uint32_t shard,
                                const std::atomic<bool>& stop, std::int64_t* revision) {
  auto client = etcd::Client::create({eps, std::chrono::milliseconds(2000)});
  if (!client) return tl::unexpected(client.error());
  for (;;) {
    auto map = etcd::read_shard_map(**client, revision);
    if (map) {
      if (map->version == 0 && shard != 0) {
        return make_error(StatusCode::kFailedPrecondition,
                          "--shard " + std::to_string(shard) + ": etcd has no shard map (" + etcd::kShardMapKey +
                              "), so there is only shard 0; put one first, e.g. etcdctl put " + etcd::kShardMapKey +
                              " '{\"version\": 1, \"shards\": 2}'");
      }
      auto ranges = ranges_of(*map, shard);
      if (ranges && ranges->empty() && moving_from(*map, shard).empty()) {
        log::get("coordinator")->warn("shard {}: the shard map ({}) gives this shard no key range yet: every key is "
                                      "refused until it does",
                                      shard, map->describe());
      } else {
        log::get("coordinator")->info("shard {}: owns {} (shard map version {})", shard, ranges_text(ranges),
                                      map->version);
      }
      return map;
    }
    if (map.error().code() == StatusCode::kFailedPrecondition) return tl::unexpected(map.error());
    log::get("coordinator")->warn("shard {}: reading the shard map: {}; trying again", shard, map.error().to_string());
    if (stop.load()) return tl::unexpected(map.error());
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

void apply_map(coordinator::CoordinatorCore& core, std::uint32_t shard, const etcd::ShardMap& map) {
  auto ranges = ranges_of(map, shard);
  Ranges readable;
  for (const auto& r : moving_from(map, shard)) readable.emplace_back(r.start, r.end);
  core.set_owned_ranges(ranges ? std::move(*ranges) : Ranges{{0, etcd::kPointSpace}}, std::move(readable));
}

void apply_map_event(coordinator::CoordinatorCore& core, std::uint32_t shard, const etcd::WatchEvent& ev,
                     Moves& moves) {
  auto log = log::get("coordinator");
  if (ev.type == etcd::WatchEvent::Type::kDelete) {
    log->warn("shard {}: the shard map was deleted from etcd; keeping the key ranges this shard has", shard);
    return;
  }
  auto map = etcd::parse_shard_map(ev.kv.value);
  if (!map) {
    log->error("shard {}: ignoring a malformed shard map: {}", shard, map.error().message());
    return;
  }
  log->info("shard {}: shard map version {}: this shard owns {}{}", shard, map->version,
            ranges_text(ranges_of(*map, shard)),
            moving_from(*map, shard).empty() ? "" : ", and reads ranges moving away");
  apply_map(core, shard, *map);
  moves.follow(*map);
}

// Agent membership in etcd (runtime/etcd/membership.h): a key under
// /kvpool/agents/ that goes (the agent's lease expired after a kill -9, or
// was revoked on a clean exit) or that names a new incarnation drops that
// agent at once, like a heartbeat timeout: its blocks leave lookups,
// placements avoid it, and the next tick tells the workers.
void apply_member_event(coordinator::CoordinatorCore& core, std::uint32_t shard, const etcd::WatchEvent& ev) {
  auto log = log::get("coordinator");
  const std::string prefix = etcd::kAgentsPrefix;
  if (ev.kv.key.size() <= prefix.size()) return;
  const std::string name = ev.kv.key.substr(prefix.size());
  const auto now = Clock::now();
  if (ev.type == etcd::WatchEvent::Type::kDelete) {
    std::size_t n = core.expire_agents(name, 0, "its etcd membership key is gone (lease expired or revoked)", now);
    if (n > 0) log->warn("shard {}: agent '{}' left etcd: {} record(s) declared dead", shard, name, n);
    return;
  }
  auto m = etcd::decode_member(ev.kv.value);
  if (!m) {
    log->error("shard {}: ignoring {}: {}", shard, ev.kv.key, m.error().message());
    return;
  }
  if (m->shard != shard) return;  // another shard's agent
  std::size_t n = core.expire_agents(name, m->incarnation, "etcd names a new incarnation of it", now);
  if (n > 0) {
    log->warn("shard {}: agent '{}' restarted (incarnation {:#x} in etcd): {} old record(s) declared dead", shard,
              name, m->incarnation, n);
  }
}

// The members as this leader takes over, and the revision its watch
// goes on from (nothing in between is missed).
void log_members(const std::vector<etcd::Endpoint>& eps, std::uint32_t shard, std::int64_t* members_revision) {
  auto ec = etcd::Client::create({eps, std::chrono::milliseconds(2000)});
  std::vector<std::string> malformed;
  auto members = ec ? etcd::list_members(**ec, members_revision, &malformed)
                    : Result<std::vector<etcd::MemberInfo>>(tl::unexpected(ec.error()));
  if (!members) {
    log::get("coordinator")
        ->warn("shard {}: reading agent members from etcd: {} (watching from now on)", shard,
               members.error().to_string());
  } else {
    std::string names;
    for (const auto& m : *members) {
      if (m.shard == shard) names += (names.empty() ? "" : ", ") + m.name;
    }
    log::get("coordinator")
        ->info("shard {}: {} agent(s) of this shard are members in etcd{}{}", shard,
               std::count_if(members->begin(), members->end(), [&](const auto& m) { return m.shard == shard; }),
               names.empty() ? "" : ": ", names);
    for (const auto& k : malformed) log::get("coordinator")->warn("shard {}: malformed member record {}", shard, k);
  }
}

// kvpool-coordinator's flags, added in the order --help lists them.
struct Args {
  std::string listen = "127.0.0.1:7400", port_file, log_level = "info", metrics_listen, metrics_port_file;
  coordinator::CoordinatorFlags flags;
  std::string etcd_endpoints, advertise;
  std::uint32_t shard = 0;
  std::int64_t lease_ttl = 2;

  void add_to(CLI::App& app) {
    app.add_option("--listen", listen, "HOST:PORT to serve on; port 0 lets the OS pick (see --port-file)")
        ->capture_default_str();
    app.add_option("--port-file", port_file, "Write the bound port here once listening");
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
    app.add_option("--metrics", metrics_listen,
                   "HOST:PORT to serve Prometheus metrics on (GET /metrics); port 0 lets the OS pick (see "
                   "--metrics-port-file); off when not given");
    app.add_option("--metrics-port-file", metrics_port_file, "Write the bound metrics port here once listening");
    flags.add_to(app);
    app.add_option("--etcd", etcd_endpoints,
                   "High availability: etcd endpoints (HOST:PORT,...); campaign for the shard's leadership and serve "
                   "only while leading (coordinator/README.md)");
    app.add_option("--shard", shard, "With --etcd: the coordinator shard this process leads or stands by for")
        ->capture_default_str();
    app.add_option("--lease-ttl", lease_ttl,
                   "With --etcd: seconds of the leadership lease (a dead leader is replaced after about this long; "
                   "etcd raises it to its minimum)")
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{600}))
        ->capture_default_str();
    app.add_option("--advertise", advertise,
                   "With --etcd: the host clients dial, published in etcd (default: the --listen host)");
  }
};

// With --etcd: the election, the thread that waits for a stop signal, and
// what etcd said before this process led.
struct Leadership {
  std::unique_ptr<coordinator::LeaderElection> election;
  std::atomic<bool> stop_campaign{false};
  std::thread signal_waiter;
  int stop_signal = 0;
  std::int64_t map_revision = 0;
  std::int64_t members_revision = 0;
  etcd::ShardMap initial_map;

  // Stands by until this process leads the shard, then fences `options`
  // with the leadership. The exit code when it must not serve (2: a bad
  // flag or etcd setting, 0: stopped before leading); nullopt once leading.
  std::optional<int> campaign(Args& args, const std::string& listen_host,
                              coordinator::CoordinatorServerOptions& options) {
    const std::uint32_t shard = args.shard;
    auto eps = etcd::parse_endpoints(args.etcd_endpoints);
    if (!eps) {
      std::fprintf(stderr, "--etcd: %s\n", eps.error().message().c_str());
      return 2;
    }
    if (args.advertise.empty()) args.advertise = listen_host;
    if (args.advertise == "0.0.0.0" || args.advertise == "::") {
      std::fprintf(stderr, "--advertise: give the address clients dial when listening on %s\n", listen_host.c_str());
      return 2;
    }
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    auto e = coordinator::LeaderElection::create({{*eps, std::chrono::milliseconds(2000)},
                                                  shard,
                                                  std::string(host) + ":" + std::to_string(::getpid()),
                                                  args.lease_ttl});
    if (!e) {
      std::fprintf(stderr, "kvpool-coordinator: %s\n", e.error().to_string().c_str());
      return 2;
    }
    election = std::move(*e);
    // A stop signal while standing by ends the campaign.
    signal_waiter = std::thread([this] {
      stop_signal = wait_for_stop_signal();
      stop_campaign = true;
    });
    // The shard map says which keys this shard owns; read before
    // campaigning, so a misconfigured shard fails at once.
    auto map = read_map(*eps, shard, stop_campaign, &map_revision);
    if (!map) {
      std::fprintf(stderr, "kvpool-coordinator: %s\n", map.error().to_string().c_str());
      if (signal_waiter.joinable()) signal_waiter.detach();
      return 2;
    }
    initial_map = *map;
    options.core.owned_ranges = ranges_of(*map, shard);
    for (const auto& r : moving_from(*map, shard)) options.core.readable_ranges.emplace_back(r.start, r.end);
    log::get("coordinator")->info("shard {}: campaigning for leadership through etcd {}", shard, args.etcd_endpoints);
    auto epoch = election->campaign(stop_campaign);
    if (!epoch) {
      signal_waiter.join();
      log::get("coordinator")->info("signal {}: stopping before leading", stop_signal);
      return 0;
    }
    log_members(*eps, shard, &members_revision);
    coordinator::LeaderElection* raw = election.get();
    options.fence = [raw] { return raw->fence(); };
    options.shard = shard;
    options.epoch = static_cast<std::uint64_t>(*epoch);
    return std::nullopt;
  }

  // Publishes this leader's `address` in etcd.
  void publish(const std::string& address) {
    // Leadership lost (lease expired, etcd unreachable past it): stop at
    // once, before a standby can serve; a supervisor restarts this process
    // as a standby. The fence already refuses every request by then.
    Status published = election->publish(address, [](const Status& why) {
      log::get("coordinator")->error("exiting: {}", why.to_string());
      log::get("coordinator")->flush();
      std::_Exit(3);
    });
    if (!published.ok()) {
      std::fprintf(stderr, "kvpool-coordinator: %s\n", published.to_string().c_str());
      std::_Exit(3);
    }
  }
};

// The leader's watches of etcd and the moves they drive.
struct ShardFollower {
  Moves moves;  // before the watch that feeds it: the watch stops first
  std::unique_ptr<etcd::Watch> map_watch;
  std::unique_ptr<etcd::Watch> member_watch;

  // False (printed) when a tenants file or a watch fails.
  bool start(const Args& args, const coordinator::CoordinatorServerOptions& options, coordinator::CoordinatorCore* core,
             const Leadership& lead) {
    const std::uint32_t shard = args.shard;
    auto eps = etcd::parse_endpoints(args.etcd_endpoints);
    moves.base.etcd_endpoints = args.etcd_endpoints;
    moves.base.shard = shard;
    moves.base.secret_file = args.flags.secret_file;
    // Isolated tenants' blocks are copied with their own credential
    // (range_mover.h); the server read this file at start already.
    if (!options.tenants_file.empty()) {
      auto table = TenantTable::load(options.tenants_file);
      if (!table) {
        std::fprintf(stderr, "kvpool-coordinator: %s\n", table.error().to_string().c_str());
        return false;
      }
      moves.base.tenants = std::make_shared<const TenantTable>(std::move(*table));
    }
    moves.base.core = core;
    moves.base.settle = std::chrono::duration_cast<std::chrono::milliseconds>(options.core.write_lease_ttl) +
                        std::chrono::milliseconds(500);
    moves.base.rejoin_wait = std::chrono::duration_cast<std::chrono::milliseconds>(options.core.agent_timeout);
    moves.follow(lead.initial_map);
    Moves* mv = &moves;
    auto w = etcd::Watch::start({*eps, std::chrono::milliseconds(2000)}, etcd::kShardMapKey, false,
                                lead.map_revision + 1, [core, shard, mv](const std::vector<etcd::WatchEvent>& events) {
                                  for (const auto& ev : events) apply_map_event(*core, shard, ev, *mv);
                                });
    if (!w) {
      std::fprintf(stderr, "kvpool-coordinator: watching the shard map: %s\n", w.error().to_string().c_str());
      return false;
    }
    map_watch = std::move(*w);
    auto mw = etcd::Watch::start({*eps, std::chrono::milliseconds(2000)}, etcd::kAgentsPrefix, true,
                                 lead.members_revision > 0 ? lead.members_revision + 1 : 0,
                                 [core, shard](const std::vector<etcd::WatchEvent>& events) {
                                   for (const auto& ev : events) apply_member_event(*core, shard, ev);
                                 });
    if (!mw) {
      std::fprintf(stderr, "kvpool-coordinator: watching agent members: %s\n", mw.error().to_string().c_str());
      return false;
    }
    member_watch = std::move(*mw);
    return true;
  }

  void stop() {
    if (map_watch) map_watch->stop();
    if (member_watch) member_watch->stop();
    moves.stop();
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvpool-coordinator: tracks where every KV block of the pool lives"};
  app.config_formatter(std::make_shared<JsonConfig>());
  app.set_config("--config", "", "JSON file; every flag has a key of the same name (\"listen\": \"0.0.0.0:7400\")");
  Args args;
  args.add_to(app);
  CLI11_PARSE(app, argc, argv);

  if (!log::set_log_level(args.log_level)) {
    std::fprintf(stderr, "--log-level: unknown level '%s'\n", args.log_level.c_str());
    return 2;
  }
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
  auto registry = std::make_shared<metrics::Registry>();
  options->metrics = registry;
  block_stop_signals();

  // High availability: stand by until this process leads the shard.
  Leadership lead;
  if (!args.etcd_endpoints.empty()) {
    if (auto code = lead.campaign(args, hp->first, *options)) return *code;
  }
  // Error paths below leave with the signal thread still waiting.
  auto quit = [&](int code) {
    if (lead.signal_waiter.joinable()) lead.signal_waiter.detach();
    if (lead.election) lead.election->resign();
    return code;
  };
  auto server = coordinator::CoordinatorServer::start(*options);
  if (!server) {
    std::fprintf(stderr, "kvpool-coordinator: %s\n", server.error().to_string().c_str());
    return quit(1);
  }
  // Published before the port file is written: whoever reads the port file
  // finds this leader in etcd too.
  if (lead.election) lead.publish(args.advertise + ":" + std::to_string((*server)->port()));
  if (!args.port_file.empty()) {
    if (Status s = write_port_file(args.port_file, (*server)->port()); !s.ok()) {
      std::fprintf(stderr, "kvpool-coordinator: %s\n", s.to_string().c_str());
      return quit(1);
    }
  }
  // Follows the shard map: a range given to or taken from this shard changes
  // what it serves at once.
  ShardFollower follower;
  if (lead.election && !follower.start(args, *options, &(*server)->core(), lead)) return quit(1);
  auto metrics_server = metrics::start_from_flags(args.metrics_listen, args.metrics_port_file, registry);
  if (!metrics_server) {
    std::fprintf(stderr, "kvpool-coordinator: %s\n", metrics_server.error().to_string().c_str());
    return quit(1);
  }
  int sig = 0;
  if (lead.signal_waiter.joinable()) {
    lead.signal_waiter.join();
    sig = lead.stop_signal;
  } else {
    sig = wait_for_stop_signal();
  }
  log::get("coordinator")->info("signal {}: stopping", sig);
  if (*metrics_server) (*metrics_server)->stop();
  follower.stop();
  (*server)->stop();
  // After the server: a standby may serve the moment the lease goes.
  if (lead.election) lead.election->resign();
  return 0;
}
