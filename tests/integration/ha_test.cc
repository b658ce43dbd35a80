// High availability with real processes and a real etcd: two
// kvpool-coordinator processes campaign for shard 0's leadership, agents and
// a writer find the leader through etcd (etcd://...). The leader is killed
// (SIGKILL) or frozen (SIGSTOP) under load; the standby takes over, rebuilds
// the index from the agents' slot headers, and every committed block reads
// back with its bytes.

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <set>
#include <thread>

#include "runtime/common/pattern.h"
#include "runtime/etcd/leader_address.h"
#include "tests/common/etcd_cluster.h"
#include "tests/integration/pool_fixture.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 128 << 10;
constexpr int kBatch = 8;

struct Coordinator {
  std::unique_ptr<Subprocess> process;
  std::string port_file;
  std::string address;  // once leading
};

// etcd's minimum; longer under sanitizers, where a renewal can take a second.
std::string lease_ttl() { return time_scale() > 1 ? "4" : "2"; }

Coordinator start_coordinator(const std::string& endpoints) {
  Coordinator c;
  c.port_file = temp_path("ha-port");
  auto p = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--etcd", endpoints, "--listen",
                              "127.0.0.1:0", "--port-file", c.port_file, "--log-level", "warn", "--lease-ttl", lease_ttl(),
                              "--agent-timeout", "2s", "--heartbeat-interval", "200ms", "--write-lease", "2s",
                              "--write-quarantine", "1s"});
  REQUIRE(p);
  c.process = std::make_unique<Subprocess>(std::move(*p));
  return c;
}

// Whether `c` leads now (its port file appears only then).
bool leading(Coordinator& c, std::chrono::milliseconds within) {
  const std::uint16_t port = read_port_file(c.port_file, Deadline::after(within));
  if (port == 0) return false;
  c.address = "127.0.0.1:" + std::to_string(port);
  return true;
}

std::unique_ptr<Subprocess> start_agent_via_etcd(const std::string& endpoints, const std::string& name) {
  auto p = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--coordinator", "etcd://" + endpoints,
                              "--pool-size", "64MiB", "--log-level", "warn", "--name", name});
  if (!p) return nullptr;
  return std::make_unique<Subprocess>(std::move(*p));
}

std::unique_ptr<Client> connect_via_etcd(const std::string& endpoints) {
  ClientOptions options;
  options.coordinator = "etcd://" + endpoints;
  options.timeout = scaled(3s);
  auto c = Client::connect(options);
  REQUIRE(c);
  return std::move(*c);
}

Key128 block_key(std::uint64_t i) { return Key128{i * 0x9e3779b97f4a7c15ull + 23, 4242}; }

// Writes batches of blocks until stopped; remembers what was committed and
// when each successful put returned.
struct Writer {
  ~Writer() { join(); }
  void join() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
  std::thread thread;
  std::atomic<bool> stop{false};
  // Writes blocks [0, limit), then idles: over shared memory it would
  // otherwise fill the pool before the test gets to its kill.
  std::atomic<std::uint64_t> limit{0};
  std::atomic<std::uint64_t> done{0};
  std::unique_ptr<Client> client;
  NamespaceId ns = 0;
  std::mutex mu;
  std::set<std::uint64_t> written;          // guarded by mu
  std::vector<Clock::time_point> successes;  // guarded by mu
  std::uint64_t errors = 0;

  void run() {
    std::vector<std::byte> bytes(kBatch * kBlock);
    std::uint64_t next = 0;
    while (!stop.load()) {
      if (next >= limit.load()) {
        std::this_thread::sleep_for(5ms);
        continue;
      }
      std::vector<Key128> keys;
      std::vector<std::span<const std::byte>> spans;
      for (int j = 0; j < kBatch; ++j) {
        keys.push_back(block_key(next + j));
        fill_pattern(bytes.data() + j * kBlock, 0, kBlock, keys.back().lo);
        spans.emplace_back(bytes.data() + j * kBlock, kBlock);
      }
      auto r = client->put(ns, keys, spans);
      if (!r) {
        ++errors;
        std::this_thread::sleep_for(20ms);
        continue;
      }
      bool all = true;
      {
        std::lock_guard lock(mu);
        for (int j = 0; j < kBatch; ++j) {
          if (r->outcomes[j] == PutOutcome::kWritten) written.insert(next + j);
          all &= r->outcomes[j] != PutOutcome::kFailed;
        }
        if (all) successes.push_back(Clock::now());
      }
      if (all) {
        next += kBatch;
        done = next;
        // 2 agents x 64 MiB: stop short of eviction so every block stays.
        if (next >= 320) break;
      } else {
        ++errors;
        std::this_thread::sleep_for(20ms);
      }
    }
  }

  // The first successful put that returned after `t`.
  std::optional<Clock::time_point> first_success_after(Clock::time_point t) {
    std::lock_guard lock(mu);
    for (auto s : successes) {
      if (s > t) return s;
    }
    return std::nullopt;
  }
};

// Every committed block reads back with its bytes.
void check_all_readable(const std::string& endpoints, Writer& w) {
  auto reader = connect_via_etcd(endpoints);
  auto ns = reader->register_namespace(test_namespace(kBlock, "ha"));
  REQUIRE(ns);
  std::uint64_t checked = 0, wrong = 0, missing = 0;
  std::vector<std::byte> out(kBlock);
  std::lock_guard lock(w.mu);
  for (std::uint64_t i : w.written) {
    const Key128 k = block_key(i);
    std::span<std::byte> dst(out);
    auto got = reader->get(*ns, std::span<const Key128>(&k, 1), std::span<const std::span<std::byte>>(&dst, 1));
    REQUIRE(got);
    if (got->loaded != 1) {
      ++missing;
      continue;
    }
    wrong += pattern_mismatches(out.data(), 0, kBlock, k.lo);
    ++checked;
  }
  INFO(w.written.size() << " written, " << w.errors << " errors");
  CHECK(missing == 0);
  CHECK(wrong == 0);
  CHECK(checked >= 64);
}

}  // namespace

TEST_CASE("etcd losing one of three members and then the leader coordinator killed: a standby takes over and "
          "every committed block survives",
          "[integration][ha]") {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return;
  }
  auto etcd = EtcdCluster::start(3);
  REQUIRE(etcd);
  // The member killed below comes first in everyone's endpoint list (so
  // every client must move past it); not raft's leader, whose loss stalls
  // etcd itself for an election (1-2 s, close to the 2 s lease).
  int raft_leader = -1;
  REQUIRE(eventually([&] { return (raft_leader = etcd->raft_leader()) >= 0; }, scaled(5s)));
  const std::size_t victim = raft_leader == 0 ? 1 : 0;
  std::string endpoints = etcd->member(victim).endpoint();
  for (std::size_t i = 0; i < etcd->size(); ++i) {
    if (i != victim) endpoints += "," + etcd->member(i).endpoint();
  }
  auto a = start_coordinator(endpoints);
  REQUIRE(leading(a, scaled(15s)));
  auto b = start_coordinator(endpoints);
  // B stands by: it does not listen while A leads.
  CHECK_FALSE(leading(b, 1500ms));
  auto client = etcd::Client::create(etcd->client_options());
  REQUIRE(client);
  auto first = etcd::find_leader(**client, 0);
  REQUIRE(first);
  CHECK(first->address == a.address);

  auto a1 = start_agent_via_etcd(endpoints, "ha-a1");
  auto a2 = start_agent_via_etcd(endpoints, "ha-a2");
  REQUIRE(a1);
  REQUIRE(a2);
  {
    auto watcher = raw_client(a.address, rpc::Role::kTool);
    REQUIRE(watcher);
    REQUIRE(eventually([&] { return stats(*watcher).agents_alive == 2; }, scaled(10s)));
  }
  Writer w;
  w.client = connect_via_etcd(endpoints);
  auto ns = w.client->register_namespace(test_namespace(kBlock, "ha"));
  REQUIRE(ns);
  w.ns = *ns;
  w.thread = std::thread([&] { w.run(); });
  w.limit = 48;
  REQUIRE(eventually([&] { return w.done >= 48; }, scaled(20s)));

  // etcd loses a member: the pool keeps working (the leader keeps its lease
  // through the other two, the writer keeps writing).
  etcd->kill_member(victim);
  w.limit = 96;
  REQUIRE(eventually([&] { return w.done >= 96; }, scaled(20s)));
  CHECK_FALSE(a.process->wait(Deadline::after(0ms)));  // A still runs and leads

  w.limit = 320;  // writing while the leader dies
  const auto killed = Clock::now();
  a.process->kill(SIGKILL);
  REQUIRE(a.process->wait(Deadline::after(scaled(5s))));
  REQUIRE(leading(b, scaled(15s)));
  const auto took_over = Clock::now();
  auto second = etcd::find_leader(**client, 0);
  REQUIRE(second);
  CHECK(second->address == b.address);
  CHECK(second->epoch > first->epoch);
  // Writing goes on through the new leader.
  const std::uint64_t at_kill = w.done;
  REQUIRE(eventually([&] { return w.done >= at_kill + 64; }, scaled(30s)));
  auto resumed = w.first_success_after(killed);
  REQUIRE(resumed);
  const auto gap_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*resumed - killed).count();
  const auto elect_ms = std::chrono::duration_cast<std::chrono::milliseconds>(took_over - killed).count();
  std::printf("ha failover: leader killed -> standby leading %lld ms, -> first successful put %lld ms "
              "(lease TTL %s s, write lease 2 s + quarantine 1 s before unclaimed space is reused)\n",
              static_cast<long long>(elect_ms), static_cast<long long>(gap_ms), lease_ttl().c_str());
  std::fflush(stdout);
  CHECK(gap_ms < scaled(15s).count());
  w.join();
  {
    // The new leader rebuilt its index from both agents' slot headers.
    auto watcher = raw_client(b.address, rpc::Role::kTool);
    REQUIRE(watcher);
    CHECK(stats(*watcher).agents_alive == 2);
  }
  check_all_readable(endpoints, w);
}

TEST_CASE("a frozen leader is replaced, refuses every request once thawed, and steps down by itself",
          "[integration][ha]") {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return;
  }
  auto etcd = EtcdCluster::start(1);
  REQUIRE(etcd);
  // The agent starts before any coordinator leads: it waits for one.
  auto a1 = start_agent_via_etcd(etcd->endpoints(), "freeze-a1");
  REQUIRE(a1);
  auto a = start_coordinator(etcd->endpoints());
  REQUIRE(leading(a, scaled(15s)));
  auto b = start_coordinator(etcd->endpoints());
  auto old_conn = raw_client(a.address, rpc::Role::kTool);  // stays open across the freeze
  REQUIRE(old_conn);
  REQUIRE(eventually([&] { return stats(*old_conn).agents_alive == 1; }, scaled(10s)));
  Writer w;
  w.client = connect_via_etcd(etcd->endpoints());
  auto ns = w.client->register_namespace(test_namespace(kBlock, "ha"));
  REQUIRE(ns);
  w.ns = *ns;
  w.thread = std::thread([&] { w.run(); });
  w.limit = 32;
  REQUIRE(eventually([&] { return w.done >= 32; }, scaled(20s)));

  w.limit = 320;  // writing while the leader freezes
  const auto frozen = Clock::now();
  a.process->kill(SIGSTOP);
  REQUIRE(leading(b, scaled(15s)));
  // The writer moves to the new leader while the old one is frozen.
  const std::uint64_t at_freeze = w.done;
  REQUIRE(eventually([&] { return w.done >= at_freeze + 32; }, scaled(30s)));
  auto resumed = w.first_success_after(frozen);
  REQUIRE(resumed);
  std::printf("ha freeze: leader stopped -> first successful put through the new leader %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(*resumed - frozen).count()));
  std::fflush(stdout);

  a.process->kill(SIGCONT);
  // Thawed, its lease is gone: it answers nothing (refused, or the process
  // has already exited) and exits by itself.
  auto reply = old_conn->call(rpc::kStats, std::string(), Deadline::after(scaled(3s)));
  CHECK_FALSE(reply);
  auto exited = a.process->wait(Deadline::after(scaled(10s)));
  REQUIRE(exited);
  CHECK(WIFEXITED(*exited));
  CHECK(WEXITSTATUS(*exited) == 3);

  w.join();
  auto watcher = raw_client(b.address, rpc::Role::kTool);
  REQUIRE(watcher);
  CHECK(stats(*watcher).agents_alive == 1);
  check_all_readable(etcd->endpoints(), w);
}
