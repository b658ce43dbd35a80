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

#include "pool/slot_header.h"
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

Coordinator start_coordinator(const std::string& endpoints, const std::string& write_lease = "2s") {
  Coordinator c;
  c.port_file = temp_path("ha-port");
  auto p = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--etcd", endpoints, "--listen",
                              "127.0.0.1:0", "--port-file", c.port_file, "--log-level", "warn", "--lease-ttl", lease_ttl(),
                              "--agent-timeout", "2s", "--heartbeat-interval", "200ms", "--write-lease", write_lease,
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

TEST_CASE("leases of a deposed leader: a commit under its epoch is refused by the new leader naming both epochs, "
          "and once thawed it is refused and its clients move to the new leader",
          "[integration][ha][epoch]") {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return;
  }
  auto etcd = EtcdCluster::start(1);
  REQUIRE(etcd);
  auto a1 = start_agent_via_etcd(etcd->endpoints(), "epoch-a1");
  REQUIRE(a1);
  // Write leases outlive the failover: the commit reaches the new leader
  // before the lease's own deadline would stop the client sending it. (The
  // new leader holds back space no valid header covers for as long, plus
  // the quarantine: the last put below waits that out.)
  const std::string write_lease = std::to_string(static_cast<long long>(15 * time_scale())) + "s";
  auto a = start_coordinator(etcd->endpoints(), write_lease);
  REQUIRE(leading(a, scaled(15s)));
  auto b = start_coordinator(etcd->endpoints(), write_lease);
  auto old_conn = raw_client(a.address, rpc::Role::kTool);
  REQUIRE(old_conn);
  REQUIRE(eventually([&] { return stats(*old_conn).agents_alive == 1; }, scaled(10s)));
  auto ec = etcd::Client::create(etcd->client_options());
  REQUIRE(ec);
  auto first = etcd::find_leader(**ec, 0);
  REQUIRE(first);
  const auto epoch_a = static_cast<std::uint64_t>(first->epoch);

  // Under leader A: a raw allocate (its reply carries A's epoch), a mapped
  // put begun and filled through libkvpool, and an idle client.
  const NamespaceDescriptor desc = test_namespace(kBlock, "epoch");
  auto raw_a = raw_client(a.address, rpc::Role::kWorker);
  REQUIRE(raw_a);
  rpc::RegisterNamespaceReply nsr;
  REQUIRE(raw_call(*raw_a, rpc::kRegisterNamespace, rpc::RegisterNamespaceRequest{desc}, nsr).ok());
  rpc::AllocateRequest areq;
  areq.ns = nsr.id;
  areq.items.push_back({block_key(1), kBlock});
  rpc::AllocateReply arep;
  REQUIRE(raw_call(*raw_a, rpc::kAllocate, areq, arep).ok());
  REQUIRE(arep.results.size() == 1);
  REQUIRE(arep.results[0].outcome == rpc::AllocateOutcome::kPlaced);
  CHECK(arep.epoch == epoch_a);

  auto mover = connect_via_etcd(etcd->endpoints());
  auto ns = mover->register_namespace(desc);
  REQUIRE(ns);
  const Key128 mk = block_key(2);
  auto mp = mover->begin_mapped_put(*ns, std::span<const Key128>(&mk, 1));
  REQUIRE(mp);
  REQUIRE(mp->outcomes[0] == PutOutcome::kWritten);
  fill_pattern(mp->slots[0].payload, 0, kBlock, mk.lo);
  const auto checksums = slice_sums(mp->slots[0].payload, kBlock, mp->slices);

  auto idle = connect_via_etcd(etcd->endpoints());
  auto idle_ns = idle->register_namespace(desc);
  REQUIRE(idle_ns);

  // A freezes; B takes over with a higher epoch.
  REQUIRE(freeze(a.process->pid()));
  REQUIRE(leading(b, scaled(15s)));
  auto second = etcd::find_leader(**ec, 0);
  REQUIRE(second);
  const auto epoch_b = static_cast<std::uint64_t>(second->epoch);
  CHECK(epoch_b > epoch_a);
  auto tool_b = raw_client(b.address, rpc::Role::kTool);
  REQUIRE(tool_b);
  REQUIRE(eventually([&] { return stats(*tool_b).agents_alive == 1; }, scaled(15s)));

  // The raw commit under A's epoch, sent to B: refused, naming both epochs.
  auto raw_b = raw_client(b.address, rpc::Role::kWorker);
  REQUIRE(raw_b);
  REQUIRE(raw_call(*raw_b, rpc::kRegisterNamespace, rpc::RegisterNamespaceRequest{desc}, nsr).ok());
  rpc::StatusBatch crep;
  Status refused = raw_call(*raw_b, rpc::kCommit, rpc::LeaseBatch{{arep.results[0].lease}, epoch_a}, crep);
  INFO(refused.to_string());
  CHECK(refused.code() == StatusCode::kFailedPrecondition);
  CHECK(refused.message().find("leader epoch " + std::to_string(epoch_a)) != std::string::npos);
  CHECK(refused.message().find("epoch is " + std::to_string(epoch_b)) != std::string::npos);
  // An abort and a release likewise.
  Status abort_refused = raw_call(*raw_b, rpc::kAbort, rpc::LeaseBatch{{arep.results[0].lease}, epoch_a}, crep);
  CHECK(abort_refused.code() == StatusCode::kFailedPrecondition);
  rpc::StatusBatch ignored;
  CHECK(raw_call(*raw_b, rpc::kRelease, rpc::ReleaseRequest{7, epoch_a}, ignored).code() ==
        StatusCode::kFailedPrecondition);
  // A call claiming a newer epoch than B's: B says it is the deposed one.
  Status newer = raw_call(*raw_b, rpc::kCommit, rpc::LeaseBatch{{1}, epoch_b + 5}, crep);
  CHECK(newer.code() == StatusCode::kUnavailable);
  CHECK(newer.message().find("deposed") != std::string::npos);

  // libkvpool surfaces the same refusal: the client finds B (its calls to
  // the frozen A time out and it looks the leader up again), and the commit
  // of the mapped put begun under A is refused there.
  REQUIRE(eventually([&] { return mover->lookup(*ns, std::span<const Key128>(&mk, 1)).has_value(); }, scaled(20s)));
  auto finished = mover->finish_mapped_put(*mp, checksums);
  REQUIRE(finished);
  CHECK(finished->failed == 1);
  INFO(finished->errors[0].to_string());
  CHECK(finished->errors[0].code() == StatusCode::kFailedPrecondition);
  CHECK(finished->errors[0].message().find("leader epoch " + std::to_string(epoch_a)) != std::string::npos);
  CHECK(finished->errors[0].message().find(std::to_string(epoch_b)) != std::string::npos);
  CHECK(mover->lookup(*ns, std::span<const Key128>(&mk, 1)).value_or(99) == 0);

  // Thawed, A refuses everything (its fence), commits under its own epoch
  // included, and exits by itself.
  a.process->kill(SIGCONT);
  Status thawed = raw_call(*raw_a, rpc::kCommit, rpc::LeaseBatch{{arep.results[0].lease}, epoch_a}, crep);
  CHECK_FALSE(thawed.ok());
  auto exited = a.process->wait(Deadline::after(scaled(10s)));
  REQUIRE(exited);
  CHECK(WIFEXITED(*exited));
  CHECK(WEXITSTATUS(*exited) == 3);

  // The client that was connected to A moves to B: its next puts go through
  // B, and read back.
  std::vector<std::byte> bytes(kBlock);
  const Key128 ik = block_key(3);
  fill_pattern(bytes.data(), 0, kBlock, ik.lo);
  std::span<const std::byte> span(bytes);
  REQUIRE(eventually(
      [&] {
        auto r = idle->put(*idle_ns, std::span<const Key128>(&ik, 1), std::span<const std::span<const std::byte>>(&span, 1));
        return r && r->written == 1;
      },
      scaled(40s)));
  std::vector<std::byte> back(kBlock);
  std::span<std::byte> dst(back);
  auto got = idle->get(*idle_ns, std::span<const Key128>(&ik, 1), std::span<const std::span<std::byte>>(&dst, 1));
  REQUIRE(got);
  CHECK(got->loaded == 1);
  CHECK(pattern_mismatches(back.data(), 0, kBlock, ik.lo) == 0);
  CHECK(stats(*tool_b).blocks >= 1);
}
