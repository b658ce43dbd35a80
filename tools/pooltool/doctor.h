#pragma once
// pooltool doctor and bench: what runs through libkvpool (the data path) and
// what inspects the host.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "runtime/rpc/messages.h"

namespace kvpool::pooltool {

enum class CheckLevel { kOk, kInfo, kWarn, kFail };
const char* level_name(CheckLevel level);

struct Check {
  std::string name;
  CheckLevel level = CheckLevel::kOk;
  std::string detail;  // what was found
  std::string fix;     // what to do about it (empty when nothing)
};

struct DoctorOptions {
  std::string coordinator;
  std::chrono::milliseconds timeout{10000};
  bool probe = true;  // put, get and remove one block through libkvpool
  std::string secret_file;
  // Clocks (coordinator's, agents') further from this host's than this warn.
  std::int64_t max_clock_skew_ms = 500;
};

// Host checks (THP, RLIMIT_MEMLOCK, UCX, RDMA devices and their ports),
// then the coordinator's reachability, live agents, clock skew of the
// coordinator and of every live agent against this host, then the probes:
// every live agent reached over UCX (probe_agents), and a put/get/verify/
// remove of one block through libkvpool.
std::vector<Check> run_doctor(const DoctorOptions& options);

// One agent reached from this host the way a worker reaches it: a UCX
// endpoint to its worker, its region's rkey, and a 64-byte get of the
// region's first header (read-only).
struct AgentProbe {
  std::uint32_t agent = 0;
  Status status;           // ok, or why the agent could not be reached
  std::string transports;  // UCX transports of the endpoint's RMA lanes ("posix", "tcp", "rc_mlx5")
  double get_us = 0;       // the get's round trip
};

// Probes every live agent of `agents` (kListAgents) from one UCX context.
// An empty result with a status when UCX itself cannot start here.
Result<std::vector<AgentProbe>> probe_agents(const std::vector<rpc::AgentRecord>& agents,
                                             std::chrono::milliseconds timeout);

struct BenchOptions {
  std::string coordinator;
  std::chrono::milliseconds timeout{10000};
  std::uint64_t block_bytes = 1 << 20;
  std::uint32_t blocks = 64;  // per batch
  std::uint32_t rounds = 3;
  std::string secret_file;
  // Called after each round (rounds done, rounds in all); may be empty.
  std::function<void(std::uint32_t, std::uint32_t)> progress;
};

struct BenchResult {
  std::uint64_t block_bytes = 0;
  std::uint32_t blocks = 0;
  std::uint32_t rounds = 0;
  double put_gbps = 0;     // best round
  double get_gbps = 0;     // best round, verified
  double lookup_us = 0;    // best round, one lookup of the whole batch
  std::string transports;  // what libkvpool moved bytes over
  std::uint64_t verify_failures = 0;
};

// Writes rounds x blocks fresh blocks into the live pool (namespace
// "pooltool-bench"), reads them back, looks them up, and removes them.
// Errors: the coordinator's, or kDataLoss when a block read back differs.
Result<BenchResult> run_bench(const BenchOptions& options);

}  // namespace kvpool::pooltool
