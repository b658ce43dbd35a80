#pragma once
// pooltool's commands, one function each: main.cc parses the command line
// and calls one of them, which prints its tables (or JSON with --json) and
// returns the exit code (output.h). The commands live by what they are
// about: cmd_cluster.cc (status, shards add), cmd_agents.cc (agents,
// drain), cmd_blocks.cc (namespaces, usage, lookup, remove, evict, quota),
// cmd_run.cc (doctor, bench, replay, demo), cmd_secret.cc (secret new).

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvpool/status.h"
#include "tools/pooltool/admin.h"
#include "tools/replay/replay.h"

namespace kvpool::pooltool {

using json = nlohmann::json;

// The options every command takes (before its name on the command line).
struct Globals {
  std::string coordinator = "127.0.0.1:7400";
  bool json = false;
  std::string timeout = "10s";
  std::string secret_file;
  std::chrono::milliseconds timeout_ms{10000};
};

void print_json(const json& j);

// Reports an error on stderr (and as {"error": ...} on stdout with --json);
// returns the exit code.
int fail(const Globals& g, const Status& s, int code);
int fail(const Globals& g, const Status& s);
// A malformed --coordinator is a usage error; anything else is unreachable.
int fail_connect(const Globals& g, const Status& s);

// The coordinator named by --coordinator; kUnavailable naming it when it
// cannot be reached, kInvalidArgument for a malformed address.
Result<std::unique_ptr<AdminClient>> connect(const Globals& g);

// A progress bar on stderr when it is a terminal (never with --json):
// "[#####.....] 120/400 label".
void progress_bar(std::uint64_t done, std::uint64_t total, const std::string& label);

int cmd_status(const Globals& g);
int cmd_shards_add(const Globals& g, std::uint32_t shard, bool wait, const std::string& wait_for);

int cmd_agents(const Globals& g, bool probe);
int cmd_drain(const Globals& g, const std::string& agent_text, bool undrain, std::uint32_t in_flight,
              const std::string& stall_text);

int cmd_namespaces(const Globals& g);
int cmd_usage(const Globals& g, const std::string& ns_text);
int cmd_lookup(const Globals& g, const std::string& ns_text, const std::vector<std::string>& hex,
               const std::string& tokens_file);
int cmd_remove(const Globals& g, const std::string& ns_text, const std::vector<std::string>& hex);
int cmd_evict(const Globals& g, const std::string& ns_text, bool dry_run, const std::string& older_than);
int cmd_quota(const Globals& g, const std::string& ns_text, const std::string& size_text);

int cmd_doctor(const Globals& g, bool no_probe, const std::string& max_skew);
int cmd_bench(const Globals& g, const std::string& block, std::uint32_t blocks, std::uint32_t rounds);
int cmd_replay(const Globals& g, const std::string& path, std::size_t max_requests, replay::Options o);
// Replaces pooltool with kvpool-demo (returns only when that fails).
int cmd_demo(const std::vector<std::string>& args);

int cmd_secret_new(const Globals& g, const std::string& path, const std::string& tenant, const std::string& namespaces,
                   const std::string& tenants_file, const std::string& isolated);

}  // namespace kvpool::pooltool
