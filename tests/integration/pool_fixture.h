#pragma once
// Starts real kvpool processes for integration tests: a standalone agent
// (agent + embedded coordinator) on a port the OS picks, more agents joining
// it, and raw control-protocol clients for protocol-level steps.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvpool/client.h"
#include "pool/slot_header.h"
#include "runtime/common/process_util.h"
#include "runtime/common/subprocess.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"
#include "tests/common/test_util.h"

namespace kvpool::testing {

// Four layers: blocks of two granules or more carry a slice table (format
// version 2), so every integration test runs the layer-slice verifiers
// (puts, gets, mapped paths, drain copies, restart scans); 64 KiB blocks
// have one slice.
inline NamespaceDescriptor test_namespace(std::uint64_t block_bytes = 256 << 10, const std::string& model = "test") {
  NamespaceDescriptor d;
  d.model_id = model;
  d.dtype = "bf16";
  d.num_layers = 4;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = 16;
  d.layout = "test";
  d.block_bytes = block_bytes;
  return d;
}

// The checksums finish_mapped_put takes for one filled slot: one per layer
// slice (MappedPut::slices), as the GPU path computes them.
inline std::vector<std::uint64_t> slice_sums(const std::byte* payload, std::uint64_t bytes, std::uint32_t slices) {
  std::vector<std::uint64_t> table(slices);
  (void)pool::block_checksum(std::span<const std::byte>(payload, bytes), slices, table.data());
  return table;
}

// A fresh path under /tmp, removed when the test process exits. A random
// part as well as the pid: pids come round again (pid_max is 32768 here),
// and a port file left by a killed run would hand a later test a dead port.
inline std::string temp_path(const std::string& name) {
  struct Made {
    std::mutex mu;
    std::vector<std::string> paths;
    ~Made() {
      std::error_code ec;
      for (const auto& p : paths) std::filesystem::remove_all(p, ec);
    }
  };
  static Made made;
  static const std::string nonce = [] {
    std::random_device rd;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%08x%08x", rd(), rd());
    return std::string(hex);
  }();
  std::lock_guard lock(made.mu);
  std::string path = "/tmp/kvpool-test-" + std::to_string(getpid()) + "-" + nonce + "-" +
                     std::to_string(made.paths.size() + 1) + "-" + name;
  made.paths.push_back(path);
  return path;
}

struct PoolProcess {
  Subprocess process;
  std::string coordinator;  // host:port of the (embedded) coordinator
};

// kvpool-agent --standalone with `extra` flags; REQUIREs that it starts.
inline std::unique_ptr<PoolProcess> start_standalone(const std::string& pool_size,
                                                     const std::vector<std::string>& extra = {},
                                                     const std::map<std::string, std::string>& env = {}) {
  std::string port_file = temp_path("port");
  std::vector<std::string> argv = {bin_dir() + "/kvpool-agent", "--standalone", "--listen", "127.0.0.1:0",
                                   "--port-file", port_file, "--pool-size", pool_size, "--log-level", "warn"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto p = Subprocess::spawn(argv, env);
  if (!p) return nullptr;
  std::uint16_t port = read_port_file(port_file, Deadline::after(scaled(std::chrono::seconds(30))));
  std::remove(port_file.c_str());
  if (port == 0) return nullptr;
  return std::unique_ptr<PoolProcess>(new PoolProcess{std::move(*p), "127.0.0.1:" + std::to_string(port)});
}

// Another agent joining `coordinator`.
inline std::unique_ptr<Subprocess> start_agent(const std::string& coordinator, const std::string& pool_size,
                                               const std::map<std::string, std::string>& env = {}) {
  auto p = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--coordinator", coordinator, "--pool-size", pool_size,
                              "--log-level", "warn"},
                             env);
  if (!p) return nullptr;
  return std::make_unique<Subprocess>(std::move(*p));
}

// A control connection speaking raw messages; `secret_file` empty: the
// environment's secret (KVPOOL_SECRET_FILE or the default path).
inline std::unique_ptr<rpc::Client> raw_client(const std::string& coordinator, rpc::Role role = rpc::Role::kWorker,
                                               const std::string& secret_file = "") {
  auto hp = parse_host_port(coordinator);
  if (!hp) return nullptr;
  rpc::ClientOptions o;
  o.host = hp->first;
  o.port = hp->second;
  o.role = role;
  o.client_id = "raw-test-client";
  o.secret_file = secret_file;
  auto c = rpc::Client::connect(o, Deadline::after(scaled(std::chrono::seconds(10))));
  return c ? std::move(*c) : nullptr;
}
// The same, authenticated with `secret_file` (a tenant's credential or a
// cluster secret).
inline std::unique_ptr<rpc::Client> raw_with(const std::string& coordinator, const std::string& secret_file,
                                             rpc::Role role = rpc::Role::kWorker) {
  return raw_client(coordinator, role, secret_file);
}

template <typename Req, typename Rep>
Status raw_call(rpc::Client& c, std::uint16_t type, const Req& req, Rep& rep) {
  auto reply = c.call(type, rpc::encode(req), Deadline::after(scaled(std::chrono::seconds(10))));
  if (!reply) return reply.error();
  return rpc::decode(*reply, rep);
}

inline rpc::StatsReply stats(rpc::Client& c) {
  rpc::StatsReply s;
  auto reply = c.call(rpc::kStats, std::string(), Deadline::after(scaled(std::chrono::seconds(10))));
  if (reply) (void)rpc::decode(*reply, s);
  return s;
}

// The coordinator's agent list and per-agent stats as `c` may see them
// (empty on an error).
inline std::vector<rpc::AgentRecord> list_agents(rpc::Client& c) {
  rpc::ListAgentsReply rep;
  auto reply = c.call(rpc::kListAgents, std::string(), Deadline::after(scaled(std::chrono::seconds(10))));
  if (reply) (void)rpc::decode(*reply, rep);
  return rep.agents;
}

inline std::vector<rpc::AgentStatsRecord> agent_stats(rpc::Client& c) {
  rpc::AgentStatsReply rep;
  auto reply = c.call(rpc::kAgentStats, std::string(), Deadline::after(scaled(std::chrono::seconds(10))));
  if (reply) (void)rpc::decode(*reply, rep);
  return rep.agents;
}

// Polls `pred` until it holds or `timeout` passes; returns whether it held.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  auto d = Deadline::after(timeout);
  while (!d.expired()) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

}  // namespace kvpool::testing
