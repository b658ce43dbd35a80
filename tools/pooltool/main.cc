// pooltool: the operator's CLI for a kvpool pool. Human tables by default,
// --json for scripts; exit codes in --help (output.h). This file is the
// command line; the commands are in commands.h.

#include <cstdlib>

#include <CLI/CLI.hpp>

#include "runtime/common/logging.h"
#include "runtime/common/units.h"
#include "tools/pooltool/commands.h"
#include "tools/pooltool/output.h"
#include "tools/replay/replay.h"

using namespace kvpool;
using namespace kvpool::pooltool;

namespace {

constexpr const char* kExitCodes =
    "Exit codes:\n"
    "  0  ok\n"
    "  1  the operation failed (unknown namespace or agent, a key not removed, a failing doctor check,\n"
    "     a drain with blocks no other agent has room for, a replay with wrong bytes, ...)\n"
    "  2  usage error (unknown command or option, malformed key, size, duration or file)\n"
    "  3  the coordinator could not be reached, refused this client's secret, or went away mid-call\n"
    "With --json, an error that stops a command also prints {\"error\": {\"code\", \"message\"}} on stdout; messages go to stderr.\n";

// The subcommands and what their arguments are parsed into (CLI11 writes
// into these while parsing, so they live as long as the parse).
struct CommandLine {
  Globals g;

  CLI::App *status = nullptr, *agents = nullptr, *namespaces = nullptr, *usage = nullptr;
  bool agents_no_probe = false;
  std::string usage_ns;

  CLI::App *lookup = nullptr, *remove = nullptr, *evict = nullptr;
  std::string lookup_ns, tokens_file;
  std::vector<std::string> lookup_keys;
  std::string remove_ns;
  std::vector<std::string> remove_keys;
  std::string evict_ns;
  bool dry_run = false;
  std::string older_than;

  CLI::App *doctor = nullptr, *demo = nullptr, *bench = nullptr;
  bool no_probe = false;
  std::string max_skew = "500ms";
  std::string bench_block = "1MiB";
  std::uint32_t bench_blocks = 64, bench_rounds = 3;

  CLI::App *quota = nullptr, *replay_cmd = nullptr;
  std::string quota_ns, quota_size;
  std::string trace_file;
  replay::Options ro;
  std::size_t replay_requests = 0;

  CLI::App *drain = nullptr, *shards_add = nullptr;
  std::string drain_agent, drain_stall = "60s";
  bool undrain = false;
  std::uint32_t drain_in_flight = 256;
  std::uint32_t add_shard_id = 0;
  bool add_wait = false;
  std::string add_timeout = "300s";

  CLI::App* secret_new = nullptr;
  std::string secret_path, secret_tenant, secret_namespaces, secret_tenants_file, secret_isolated;
};

void add_global_options(CLI::App& app, Globals& g) {
  if (const char* env = std::getenv("KVPOOL_COORDINATOR")) g.coordinator = env;
  app.add_option("--coordinator", g.coordinator,
                 "HOST:PORT of the coordinator, or etcd://HOST:PORT[,...][/SHARD]: the shard's leader "
                 "(default: $KVPOOL_COORDINATOR, else 127.0.0.1:7400)")
      ->capture_default_str();
  app.add_flag("--json", g.json, "Print JSON (for scripts) instead of tables");
  app.add_option("--timeout", g.timeout, "Deadline of each coordinator call")->capture_default_str();
  app.add_option("--secret-file", g.secret_file,
                 "The cluster secret file (default: $KVPOOL_SECRET_FILE, else /etc/kvpool/secret for root, "
                 "~/.config/kvpool/secret otherwise; SECURITY.md)")
      ->check(CLI::ExistingFile);
}

// status, agents, namespaces, usage, lookup, remove, evict.
void add_inspect_commands(CLI::App& app, CommandLine& cl) {
  cl.status = app.add_subcommand("status", "Agents up and down, capacity, use, blocks, hit rate, uptime");
  cl.agents = app.add_subcommand(
      "agents", "One row per agent: address, UCX transports from this host, region, use, blocks, state, heartbeat age");
  cl.agents->add_flag("--no-probe", cl.agents_no_probe,
                      "Do not reach each agent over UCX (its TRANSPORTS column then shows -)");
  cl.namespaces = app.add_subcommand("namespaces", "Registered namespaces: model, layout, block size, blocks");
  cl.usage = app.add_subcommand("usage", "Bytes and blocks by namespace and by agent");
  cl.usage->add_option("--namespace,-n", cl.usage_ns, "Only this namespace (id or model)");

  cl.lookup = app.add_subcommand("lookup", "Where blocks live and how long a prefix is cached");
  cl.lookup->add_option("namespace", cl.lookup_ns, "Namespace id (hex) or model id")->required();
  cl.lookup->add_option("keys", cl.lookup_keys, "Block keys, 32 hex digits each, in prefix order");
  cl.lookup->add_option("--tokens", cl.tokens_file,
                        "File of token ids (whitespace/comma separated, or a JSON array): keyed with the "
                        "runtime's prefix_keys");

  cl.remove = app.add_subcommand("remove", "Remove blocks by key");
  cl.remove->add_option("namespace", cl.remove_ns, "Namespace id (hex) or model id")->required();
  cl.remove->add_option("keys", cl.remove_keys, "Block keys, 32 hex digits each")->required();

  cl.evict = app.add_subcommand("evict", "Remove every block of a namespace");
  cl.evict->add_option("--namespace,-n", cl.evict_ns, "Namespace id (hex) or model id")->required();
  cl.evict->add_flag("--dry-run", cl.dry_run, "Only count what would be removed");
  cl.evict->add_option("--older-than", cl.older_than,
                       "Only blocks not written or looked up for this long (30m, 2h; to about a second)");
}

// doctor, demo, bench.
void add_run_commands(CLI::App& app, CommandLine& cl) {
  cl.doctor = app.add_subcommand("doctor", "Check this host and the pool; print a fix for each problem");
  cl.doctor->add_flag("--no-probe", cl.no_probe, "Skip the put/get probe through libkvpool");
  cl.doctor
      ->add_option("--max-clock-skew", cl.max_skew, "Warn when the coordinator's or an agent's clock is further off")
      ->capture_default_str();

  cl.demo = app.add_subcommand("demo", "Run the pool demo (kvpool-demo; extra arguments go to it)");
  cl.demo->allow_extras();
  cl.demo->prefix_command();

  cl.bench = app.add_subcommand("bench", "Put, get and lookup throughput through the live pool (libkvpool)");
  cl.bench->add_option("--block", cl.bench_block, "Block size")->capture_default_str();
  cl.bench->add_option("--blocks", cl.bench_blocks, "Blocks per batch")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  cl.bench->add_option("--rounds", cl.bench_rounds, "Rounds (the best is reported)")
      ->check(CLI::Range(1u, 100u))
      ->capture_default_str();
}

// quota, replay.
void add_quota_replay_commands(CLI::App& app, CommandLine& cl) {
  cl.quota = app.add_subcommand("quota",
                                "Set a namespace's budget: a write over it evicts that namespace's "
                                "least recently used unleased blocks, exactly");
  cl.quota->add_option("namespace", cl.quota_ns, "Namespace id (hex) or model id")->required();
  cl.quota->add_option("size", cl.quota_size, "Bytes (4GiB), blocks (10000blocks), or 0 to lift it")->required();

  auto* r = app.add_subcommand("replay", "Replay a Mooncake-format request trace against the live pool");
  cl.replay_cmd = r;
  r->add_option("trace", cl.trace_file, "JSON-lines trace (../shared/traces/README.md)")->required();
  r->add_option("--workers", cl.ro.workers, "Concurrent workers, each with its own client")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  r->add_option("--requests", cl.replay_requests, "Replay only the first N requests (0: all)");
  r->add_option("--bytes-per-token", cl.ro.bytes_per_token,
                "KV bytes per token (a 512-token block must be 64 KiB..256 MiB)")
      ->capture_default_str();
  r->add_option("--capacity-blocks", cl.ro.capacity_blocks,
                "Quota of the run's namespace in blocks, exact LRU (0: the pool's watermarks decide)");
  r->add_option("--speed", cl.ro.speed, "X times real time by the trace's timestamps; 0: as fast as possible")
      ->capture_default_str();
  r->add_option("--model", cl.ro.model, "Model id of the run's namespace")->capture_default_str();
}

// drain, shards add.
void add_drain_shards_commands(CLI::App& app, CommandLine& cl) {
  cl.drain = app.add_subcommand(
      "drain",
      "Move an agent's blocks to the other agents (agent to agent), then mark it drained: it takes no new "
      "blocks and can stop without losing one");
  cl.drain->add_option("agent", cl.drain_agent, "Agent id or address (pooltool agents)")->required();
  cl.drain->add_flag("--undrain", cl.undrain, "Bring a draining or drained agent back: it takes new blocks again");
  cl.drain->add_option("--in-flight", cl.drain_in_flight, "Blocks being copied at once")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  cl.drain->add_option("--stall-timeout", cl.drain_stall, "Give up when no block moved for this long")
      ->capture_default_str();

  auto* shards_cmd = app.add_subcommand("shards", "The shard map in etcd (--coordinator etcd://HOST:PORT,...)");
  shards_cmd->require_subcommand(1);
  cl.shards_add = shards_cmd->add_subcommand(
      "add",
      "Add a shard: the upper half of the largest key range moves to it, its old owner copies the blocks over "
      "(start the shard's coordinators and agents first; coordinator/README.md, \"Adding a shard\")");
  cl.shards_add->add_option("shard", cl.add_shard_id, "The new shard's number")->required();
  cl.shards_add->add_flag("--wait", cl.add_wait, "Wait until the move is over");
  cl.shards_add->add_option("--timeout-move", cl.add_timeout, "With --wait: give up after this long")
      ->capture_default_str();
}

// secret new.
void add_secret_commands(CLI::App& app, CommandLine& cl) {
  auto* secret = app.add_subcommand("secret", "The cluster secret file");
  secret->require_subcommand(1);
  auto* s = secret->add_subcommand("new", "Create a new secret file (mode 0600); never overwrites one");
  cl.secret_new = s;
  s->add_option("path", cl.secret_path, "Where to write it")->required();
  s->add_option("--tenant", cl.secret_tenant,
                "Write a tenant credential for this tenant instead of a cluster secret (SECURITY.md)");
  s->add_option("--namespaces", cl.secret_namespaces,
                "With --tenant: the namespaces it may use, comma-separated model-id globs or 16-hex-digit ids");
  s->add_option("--tenants", cl.secret_tenants_file,
                "With --tenant: the coordinator's tenants file to add the tenant to (created 0600)");
  s->add_option("--isolated", cl.secret_isolated,
                "With --tenant: give the tenant a region of its own of this size on every agent (4GiB; "
                "SECURITY.md, \"Isolated tenants\")");
}

// Runs the one command parsed.
int dispatch(const CommandLine& cl) {
  const Globals& g = cl.g;
  if (*cl.status) return cmd_status(g);
  if (*cl.agents) return cmd_agents(g, !cl.agents_no_probe);
  if (*cl.namespaces) return cmd_namespaces(g);
  if (*cl.usage) return cmd_usage(g, cl.usage_ns);
  if (*cl.lookup) return cmd_lookup(g, cl.lookup_ns, cl.lookup_keys, cl.tokens_file);
  if (*cl.remove) return cmd_remove(g, cl.remove_ns, cl.remove_keys);
  if (*cl.evict) return cmd_evict(g, cl.evict_ns, cl.dry_run, cl.older_than);
  if (*cl.doctor) return cmd_doctor(g, cl.no_probe, cl.max_skew);
  if (*cl.demo) return cmd_demo(cl.demo->remaining());
  if (*cl.bench) return cmd_bench(g, cl.bench_block, cl.bench_blocks, cl.bench_rounds);
  if (*cl.quota) return cmd_quota(g, cl.quota_ns, cl.quota_size);
  if (*cl.replay_cmd) return cmd_replay(g, cl.trace_file, cl.replay_requests, cl.ro);
  if (*cl.secret_new) {
    return cmd_secret_new(g, cl.secret_path, cl.secret_tenant, cl.secret_namespaces, cl.secret_tenants_file,
                          cl.secret_isolated);
  }
  if (*cl.drain) return cmd_drain(g, cl.drain_agent, cl.undrain, cl.drain_in_flight, cl.drain_stall);
  if (*cl.shards_add) return cmd_shards_add(g, cl.add_shard_id, cl.add_wait, cl.add_timeout);
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pooltool: inspect and operate a kvpool pool"};
  app.footer(kExitCodes);
  app.require_subcommand(1);
  app.fallthrough();
  CommandLine cl;
  add_global_options(app, cl.g);
  // In this order: it is the order --help lists them in.
  add_inspect_commands(app, cl);
  add_run_commands(app, cl);
  add_quota_replay_commands(app, cl);
  add_drain_shards_commands(app, cl);
  add_secret_commands(app, cl);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  // Library logs (UCX fallbacks, client retries) would garble tables:
  // warnings and errors only, unless KVPOOL_LOG_LEVEL asks for more.
  if (std::getenv("KVPOOL_LOG_LEVEL") == nullptr) (void)log::set_log_level("warn");
  auto t = parse_duration(cl.g.timeout);
  if (!t || t->count() <= 0) {
    return fail(cl.g, Status(StatusCode::kInvalidArgument, "--timeout: not a positive duration"), kExitUsage);
  }
  cl.g.timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*t);
  return dispatch(cl);
}
