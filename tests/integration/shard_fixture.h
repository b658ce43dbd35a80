#pragma once
// Sharded pools for tests (shard_test, pooltool_test [shard]): a real etcd
// holding a shard map, and per shard a leading kvpool-coordinator with an
// agent assigned to it (etcd://E/N).

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/shard_map.h"
#include "tests/common/etcd_cluster.h"
#include "tests/integration/pool_fixture.h"

namespace kvpool::testing {

// One etcd member with `map` at /kvpool/shardmap; null (with a WARN) when
// etcd-server is not installed.
struct ShardedEtcd {
  std::unique_ptr<EtcdCluster> cluster;
  std::string endpoints;
  std::unique_ptr<etcd::Client> client;
  void put_map(const std::string& value) const { REQUIRE(client->put(etcd::kShardMapKey, value)); }
  // The map once its version reaches `version` (a move has ended when the
  // mover publishes the next one); nullopt when the timeout passes first.
  std::optional<etcd::ShardMap> wait_for_map(std::int64_t version, std::chrono::milliseconds timeout) const {
    std::optional<etcd::ShardMap> out;
    eventually([&] {
      auto m = etcd::read_shard_map(*client);
      if (!m || m->version < version) return false;
      out = *m;
      return true;
    }, timeout);
    return out;
  }
};
inline std::unique_ptr<ShardedEtcd> start_sharded_etcd(const std::string& map) {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return nullptr;
  }
  auto e = std::make_unique<ShardedEtcd>();
  e->cluster = EtcdCluster::start(1);
  REQUIRE(e->cluster);
  e->endpoints = e->cluster->endpoints();
  auto c = etcd::Client::create(e->cluster->client_options());
  REQUIRE(c);
  e->client = std::move(*c);
  e->put_map(map);
  return e;
}

struct Shard {
  std::unique_ptr<Subprocess> coordinator;
  std::unique_ptr<Subprocess> agent;
  std::string address;  // the leader's HOST:PORT
};

// A kvpool-coordinator of `shard`: it writes `port_file` once it leads.
// A short write lease: moving a range waits one out before copying.
// `extra` goes after the fixed arguments (e.g. {"--tenants", FILE}).
inline std::vector<std::string> shard_coordinator_argv(const std::string& endpoints, std::uint32_t shard,
                                                       const std::string& port_file,
                                                       const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv{bin_dir() + "/kvpool-coordinator", "--etcd", endpoints, "--shard",
                                std::to_string(shard), "--listen", "127.0.0.1:0", "--port-file", port_file,
                                "--log-level", "warn", "--agent-timeout", "2s", "--heartbeat-interval", "200ms",
                                "--write-lease", "2s", "--write-quarantine", "1s"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

// A standby of `shard` (started after its leader): it campaigns and writes
// `port_file` when it takes over.
struct Standby {
  std::unique_ptr<Subprocess> coordinator;
  std::string port_file;
};
inline Standby start_standby(const std::string& endpoints, std::uint32_t shard) {
  Standby s;
  s.port_file = temp_path("standby-port");
  auto c = Subprocess::spawn(shard_coordinator_argv(endpoints, shard, s.port_file));
  REQUIRE(c);
  s.coordinator = std::make_unique<Subprocess>(std::move(*c));
  return s;
}

// The leader of `shard` (it leads once its port file appears), and with a
// non-empty `agent_pool` an agent of that size assigned to it, waited for.
// A short write lease: moving a range waits one out before copying.
// `coordinator_args` go to the coordinator (shard_coordinator_argv's extra).
inline Shard start_shard(const std::string& endpoints, std::uint32_t shard, const std::string& agent_pool = "64MiB",
                         const std::vector<std::string>& agent_args = {},
                         const std::vector<std::string>& coordinator_args = {}) {
  using namespace std::chrono_literals;
  Shard s;
  const std::string port_file = temp_path("shard-port");
  auto c = Subprocess::spawn(shard_coordinator_argv(endpoints, shard, port_file, coordinator_args));
  REQUIRE(c);
  s.coordinator = std::make_unique<Subprocess>(std::move(*c));
  const std::uint16_t port = read_port_file(port_file, Deadline::after(scaled(15s)));
  REQUIRE(port != 0);
  s.address = "127.0.0.1:" + std::to_string(port);
  if (!agent_pool.empty()) {
    std::vector<std::string> argv{bin_dir() + "/kvpool-agent", "--coordinator",
                                  "etcd://" + endpoints + "/" + std::to_string(shard), "--pool-size", agent_pool,
                                  "--log-level", "warn", "--name", "shard" + std::to_string(shard) + "-a"};
    argv.insert(argv.end(), agent_args.begin(), agent_args.end());
    auto a = Subprocess::spawn(argv);
    REQUIRE(a);
    s.agent = std::make_unique<Subprocess>(std::move(*a));
    auto watcher = raw_client(s.address, rpc::Role::kTool);
    REQUIRE(watcher);
    // At least: with isolated tenants (--tenants) the agent's regions count too.
    REQUIRE(eventually([&] { return stats(*watcher).agents_alive >= 1; }, scaled(10s)));
  }
  return s;
}

}  // namespace kvpool::testing
