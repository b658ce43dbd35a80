// pooltool against a real pool: kvpool-agent --standalone, this test writing
// blocks through libkvpool, pooltool run as a process with --json and its
// output parsed.

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "runtime/common/pattern.h"
#include "runtime/common/tenants.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/shard_map.h"
#include "tests/common/etcd_cluster.h"
#include "tests/integration/pool_fixture.h"
#include "tests/integration/shard_fixture.h"
#include "tests/pooltool/run_pooltool.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kBlock = 256 << 10;

using Run = PooltoolRun;

// Runs pooltool with `args`; collects stdout and the exit code.
Run pooltool(const std::vector<std::string>& args) { return run_pooltool(args); }

std::string hex(const Key128& k) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(k.hi),
                static_cast<unsigned long long>(k.lo));
  return buf;
}
std::string hex(NamespaceId id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

// A pool with `n` blocks of a 4-block token sequence written (tokens of
// block i are 16 * i .. 16 * i + 15).
struct Pool {
  std::unique_ptr<PoolProcess> process;
  std::unique_ptr<Client> client;
  NamespaceId ns = 0;
  std::vector<std::uint32_t> tokens;
  std::vector<Key128> keys;  // of all 4 blocks

  explicit Pool(int n) {
    process = start_standalone("64MiB");
    REQUIRE(process);
    ClientOptions co;
    co.coordinator = process->coordinator;
    auto c = Client::connect(co);
    REQUIRE(c);
    client = std::move(*c);
    auto id = client->register_namespace(test_namespace(kBlock, "pooltool-test-model"));
    REQUIRE(id);
    ns = *id;
    for (std::uint32_t i = 0; i < 64; ++i) tokens.push_back(i);
    keys = prefix_keys(ns, tokens, 16);
    std::vector<std::byte> bytes(n * kBlock);
    std::vector<std::span<const std::byte>> spans;
    for (int i = 0; i < n; ++i) {
      fill_pattern(bytes.data() + i * kBlock, 0, kBlock, keys[i].lo);
      spans.emplace_back(bytes.data() + i * kBlock, kBlock);
    }
    auto put = client->put(ns, std::span<const Key128>(keys.data(), n), spans);
    REQUIRE(put);
    REQUIRE(put->written == static_cast<std::size_t>(n));
  }
  std::vector<std::string> with(std::vector<std::string> args) const {
    args.insert(args.begin(), {"--coordinator", process->coordinator, "--json"});
    return args;
  }
};

}  // namespace

TEST_CASE("pooltool status --json counts the blocks put", "[pooltool]") {
  Pool pool(3);
  auto r = pooltool(pool.with({"status"}));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  REQUIRE(!r.doc.is_discarded());
  CHECK(r.doc["blocks"] == 3);
  CHECK(r.doc["agents_alive"] == 1);
  CHECK(r.doc["agents_dead"] == 0);
  CHECK(r.doc["namespaces"] == 1);
  CHECK(r.doc["live_bytes"] == 3 * kBlock);
  CHECK(r.doc["capacity_bytes"].get<std::uint64_t>() > 60u << 20);
  CHECK(r.doc["version"].get<std::string>().find("kvpool") != std::string::npos);
  CHECK(r.doc["uptime_seconds"].get<double>() > 0);
  CHECK(r.doc["hit_rate"].is_null());  // nothing looked up yet
  CHECK(r.doc["ha"].is_null());        // no etcd

  // The human form says the same.
  auto text = pooltool({"--coordinator", pool.process->coordinator, "status"});
  CHECK(text.rc == 0);
  CHECK(text.out.find("3 in 1 namespace") != std::string::npos);
}

TEST_CASE("pooltool status shows the shard and epoch of a coordinator leading through etcd", "[pooltool][ha]") {
  if (!etcd_available()) {
    WARN("no " << kEtcdBinary << " (Debian's etcd-server): not testing");
    return;
  }
  auto etcd = EtcdCluster::start(1);
  REQUIRE(etcd);
  {
    // Shard 5 exists only in a shard map of six (without one, only shard 0 does).
    auto ec = etcd::Client::create(etcd->client_options());
    REQUIRE(ec);
    REQUIRE((*ec)->put("/kvpool/shardmap", R"({"version": 1, "shards": 6})"));
  }
  const std::string port_file = temp_path("pooltool-ha-port");
  auto p = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--etcd", etcd->endpoints(), "--shard", "5",
                              "--listen", "127.0.0.1:0", "--port-file", port_file, "--log-level", "warn"});
  REQUIRE(p);
  Subprocess coordinator = std::move(*p);
  const std::uint16_t port = read_port_file(port_file, Deadline::after(scaled(15s)));
  REQUIRE(port != 0);
  auto client = etcd::Client::create(etcd->client_options());
  REQUIRE(client);
  auto leader = etcd::find_leader(**client, 5);
  REQUIRE(leader);
  REQUIRE(leader->epoch > 0);

  // Both by its address and through etcd.
  for (const std::string& address : {"127.0.0.1:" + std::to_string(port), "etcd://" + etcd->endpoints() + "/5"}) {
    auto r = pooltool({"--coordinator", address, "--json", "status"});
    INFO(address << ": " << r.out);
    REQUIRE(r.rc == 0);
    REQUIRE(!r.doc.is_discarded());
    CHECK(r.doc["ha"]["leader"] == true);
    CHECK(r.doc["ha"]["shard"] == 5);
    CHECK(r.doc["ha"]["epoch"] == leader->epoch);
  }
  auto text = pooltool({"--coordinator", "127.0.0.1:" + std::to_string(port), "status"});
  INFO(text.out);
  CHECK(text.rc == 0);
  CHECK(text.out.find("leader of shard 5 (epoch " + std::to_string(leader->epoch) + ")") != std::string::npos);
  coordinator.kill(SIGTERM);
  (void)coordinator.wait(Deadline::after(scaled(10s)));
}

TEST_CASE("pooltool agents and namespaces --json describe the pool", "[pooltool]") {
  Pool pool(2);
  auto a = pooltool(pool.with({"agents"}));
  INFO(a.out);
  REQUIRE(a.rc == 0);
  REQUIRE(a.doc["agents"].size() == 1);
  const auto& agent = a.doc["agents"][0];
  CHECK(agent["id"] == 1);
  CHECK(agent["alive"] == true);
  CHECK(agent["blocks"] == 2);
  CHECK(agent["region_bytes"] == 64u << 20);
  CHECK(agent["heartbeat_age_seconds"].get<double>() < 3.0);

  auto n = pooltool(pool.with({"namespaces"}));
  INFO(n.out);
  REQUIRE(n.rc == 0);
  REQUIRE(n.doc["namespaces"].size() == 1);
  const auto& ns = n.doc["namespaces"][0];
  CHECK(ns["id"] == hex(pool.ns));
  CHECK(ns["model"] == "pooltool-test-model");
  CHECK(ns["block_bytes"] == kBlock);
  CHECK(ns["tokens_per_block"] == 16);
  CHECK(ns["blocks"] == 2);
  CHECK(ns["quota_blocks"] == 0);
  CHECK(ns["quota_used"].is_null());
  CHECK(agent["state"] == "up");
  // pooltool reached the agent over UCX, as a worker on this host would.
  CHECK(agent["reachable"] == true);
  CHECK_FALSE(agent["transports"].get<std::string>().empty());
}

TEST_CASE("pooltool usage --json splits bytes and blocks by namespace and agent", "[pooltool]") {
  Pool pool(3);
  auto r = pooltool(pool.with({"usage"}));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  REQUIRE(r.doc["by_namespace"].size() == 1);
  CHECK(r.doc["by_namespace"][0]["namespace"] == hex(pool.ns));
  CHECK(r.doc["by_namespace"][0]["blocks"] == 3);
  CHECK(r.doc["by_namespace"][0]["bytes"] == 3 * kBlock);
  REQUIRE(r.doc["by_agent"].size() == 1);
  CHECK(r.doc["by_agent"][0]["blocks"] == 3);

  SECTION("filtered by model name") {
    auto f = pooltool(pool.with({"usage", "--namespace", "pooltool-test-model"}));
    REQUIRE(f.rc == 0);
    CHECK(f.doc["by_namespace"][0]["blocks"] == 3);
  }
  SECTION("an unknown namespace fails with exit code 1") {
    auto f = pooltool(pool.with({"usage", "--namespace", "no-such-model"}));
    CHECK(f.rc == 1);
    CHECK(f.doc["error"]["code"] == "not_found");
  }
}

TEST_CASE("pooltool lookup gives the cached prefix length and where blocks live", "[pooltool]") {
  Pool pool(3);
  auto all = pooltool(
      pool.with({"lookup", hex(pool.ns), hex(pool.keys[0]), hex(pool.keys[1]), hex(pool.keys[2]), hex(pool.keys[3])}));
  INFO(all.out);
  REQUIRE(all.rc == 0);
  CHECK(all.doc["keys"] == 4);
  CHECK(all.doc["prefix_blocks"] == 3);
  CHECK(all.doc["cached_tokens"] == 48);
  REQUIRE(all.doc["blocks"].size() == 3);
  CHECK(all.doc["blocks"][1]["key"] == hex(pool.keys[1]));
  CHECK(all.doc["blocks"][1]["agent"] == 1);
  CHECK(all.doc["blocks"][1]["length"] == kBlock);

  SECTION("a missing first key means no prefix") {
    auto r = pooltool(pool.with({"lookup", hex(pool.ns), hex(pool.keys[3]), hex(pool.keys[0])}));
    REQUIRE(r.rc == 0);
    CHECK(r.doc["prefix_blocks"] == 0);
  }
  SECTION("tokens from a file are keyed like the runtime keys them") {
    std::string file = temp_path("tokens.txt");
    {
      std::ofstream out(file);
      for (auto t : pool.tokens) out << t << (t % 10 == 9 ? "\n" : " ");
      out << "64 65 66\n";  // a partial block: not keyed
    }
    auto r = pooltool(pool.with({"lookup", "pooltool-test-model", "--tokens", file}));
    std::remove(file.c_str());
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(r.doc["tokens"] == 67);
    CHECK(r.doc["keys"] == 4);
    CHECK(r.doc["prefix_blocks"] == 3);
    CHECK(r.doc["cached_tokens"] == 48);
  }
  SECTION("a malformed key is a usage error") {
    auto r = pooltool(pool.with({"lookup", hex(pool.ns), "xyz"}));
    CHECK(r.rc == 2);
  }
}

TEST_CASE("pooltool remove takes blocks out of lookups", "[pooltool]") {
  Pool pool(3);
  auto r = pooltool(pool.with({"remove", hex(pool.ns), hex(pool.keys[1])}));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.doc["removed"] == 1);
  CHECK(r.doc["results"][0]["status"] == "ok");
  auto l = pooltool(pool.with({"lookup", hex(pool.ns), hex(pool.keys[0]), hex(pool.keys[1]), hex(pool.keys[2])}));
  CHECK(l.doc["prefix_blocks"] == 1);

  // Removing it again: not found, exit code 1.
  auto again = pooltool(pool.with({"remove", hex(pool.ns), hex(pool.keys[1])}));
  CHECK(again.rc == 1);
  CHECK(again.doc["results"][0]["status"] == "not_found");

  auto first = pooltool(pool.with({"remove", hex(pool.ns), hex(pool.keys[0])}));
  CHECK(first.rc == 0);
  auto none = pooltool(pool.with({"lookup", hex(pool.ns), hex(pool.keys[0])}));
  CHECK(none.doc["prefix_blocks"] == 0);
  auto st = pooltool(pool.with({"status"}));
  CHECK(st.doc["blocks"] == 1);
}

TEST_CASE("pooltool evict --older-than removes only the blocks not used for that long", "[pooltool]") {
  Pool pool(4);
  // Nothing in this pool is an hour old.
  auto hour = pooltool(pool.with({"evict", "--namespace", hex(pool.ns), "--older-than", "1h"}));
  INFO(hour.out);
  REQUIRE(hour.rc == 0);
  CHECK(hour.doc["blocks"] == 0);
  CHECK(hour.doc["older_than_seconds"] == 3600.0);
  // Blocks 0 and 1 are looked up 6 s after the writes; with a 3 s cut only
  // 2 and 3 are old (the cut leaves 3 s for this test to reach pooltool).
  std::this_thread::sleep_for(6s);
  auto hits = pool.client->lookup(pool.ns, std::span<const Key128>(pool.keys.data(), 2));
  REQUIRE(hits);
  REQUIRE(*hits == 2);
  auto old = pooltool(pool.with({"evict", "--namespace", hex(pool.ns), "--older-than", "3s"}));
  INFO(old.out);
  REQUIRE(old.rc == 0);
  CHECK(old.doc["blocks"] == 2);
  CHECK(old.doc["removed"] == 2);
  auto look = pooltool(pool.with({"lookup", hex(pool.ns), hex(pool.keys[0]), hex(pool.keys[1])}));
  CHECK(look.doc["prefix_blocks"] == 2);
  CHECK(pooltool(pool.with({"status"})).doc["blocks"] == 2);
  CHECK(pooltool(pool.with({"evict", "--namespace", hex(pool.ns), "--older-than", "soon"})).rc == 2);
}

TEST_CASE("pooltool evict removes a namespace's blocks, or only counts them with --dry-run", "[pooltool]") {
  Pool pool(3);
  auto dry = pooltool(pool.with({"evict", "--namespace", hex(pool.ns), "--dry-run"}));
  INFO(dry.out);
  REQUIRE(dry.rc == 0);
  CHECK(dry.doc["dry_run"] == true);
  CHECK(dry.doc["blocks"] == 3);
  CHECK(dry.doc["bytes"] == 3 * kBlock);
  CHECK(dry.doc["removed"] == 0);
  CHECK(pooltool(pool.with({"status"})).doc["blocks"] == 3);

  auto real = pooltool(pool.with({"evict", "--namespace", "pooltool-test-model"}));
  INFO(real.out);
  REQUIRE(real.rc == 0);
  CHECK(real.doc["removed"] == 3);
  CHECK(real.doc["failed"] == 0);
  CHECK(pooltool(pool.with({"status"})).doc["blocks"] == 0);
  // The space comes back once the agent has invalidated the slots.
  CHECK(eventually([&] { return pooltool(pool.with({"status"})).doc["used_bytes"] == 0; }, scaled(5s)));
}

TEST_CASE("pooltool doctor passes on a healthy pool and names the fix when it cannot reach it", "[pooltool]") {
  Pool pool(1);
  // The agent's clock is known from its first heartbeat on.
  REQUIRE(eventually([&] { return !pooltool(pool.with({"agents"})).doc["agents"][0]["clock_offset_ms"].is_null(); },
                     scaled(10s)));
  auto r = pooltool(pool.with({"doctor"}));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.doc["ok"] == true);
  std::map<std::string, std::string> status;
  for (const auto& c : r.doc["checks"]) status[c["name"]] = c["status"];
  CHECK(status["coordinator"] == "ok");
  CHECK(status["agents"] == "ok");
  CHECK(status["probe put/get"] == "ok");
  CHECK(status.count("UCX") == 1);
  CHECK(status.count("locked memory (RLIMIT_MEMLOCK)") == 1);
  CHECK(status.count("transparent huge pages") == 1);
  CHECK(status.count("RDMA devices") == 1);
  // No RDMA NIC here: doctor says so and does not fail for it.
  CHECK(status["RDMA devices"] == "info");
  // The coordinator and the agent run on this host's clock.
  CHECK(status["clock skew: coordinator"] == "ok");
  bool agent_clock = false;
  for (const auto& [name, st] : status) {
    if (name.rfind("clock skew: agent 1", 0) == 0) agent_clock = st == "ok";
  }
  CHECK(agent_clock);
  bool agent_reached = false;
  for (const auto& [name, st] : status) {
    if (name.rfind("agent 1 (", 0) == 0 && name.find("over UCX") != std::string::npos) agent_reached = st == "ok";
  }
  CHECK(agent_reached);

  auto down = pooltool({"--coordinator", "127.0.0.1:1", "--json", "--timeout", "2s", "doctor"});
  INFO(down.out);
  CHECK(down.rc == 1);
  CHECK(down.doc["ok"] == false);
  bool named_fix = false;
  for (const auto& c : down.doc["checks"]) {
    if (c["name"] == "coordinator") named_fix = c["status"] == "fail" && !c["fix"].get<std::string>().empty();
  }
  CHECK(named_fix);
}

TEST_CASE("pooltool bench moves blocks through the live pool and leaves nothing behind", "[pooltool]") {
  Pool pool(0);
  auto r = pooltool(pool.with({"bench", "--block", "256KiB", "--blocks", "4", "--rounds", "1"}));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.doc["put_gbps"].get<double>() > 0);
  CHECK(r.doc["get_gbps"].get<double>() > 0);
  CHECK(r.doc["verify_failures"] == 0);
  CHECK(pooltool(pool.with({"status"})).doc["blocks"] == 0);
}

TEST_CASE("pooltool exits 2 on usage errors and 3 when unreachable, and demo runs kvpool-demo", "[pooltool]") {
  CHECK(pooltool({}).rc == 2);
  CHECK(pooltool({"no-such-command"}).rc == 2);
  CHECK(pooltool({"--secret-file", "/nonexistent/secret", "status"}).rc == 2);
  auto unreachable = pooltool({"--coordinator", "127.0.0.1:1", "--json", "status"});
  CHECK(unreachable.rc == 3);
  CHECK(unreachable.doc["error"]["code"] == "unavailable");
  auto help = pooltool({"--help"});
  CHECK(help.rc == 0);
  CHECK(help.out.find("Exit codes:") != std::string::npos);
  auto demo = pooltool({"demo", "--help"});
  CHECK(demo.rc == 0);
  CHECK(demo.out.find("kvpool-demo") != std::string::npos);

  SECTION("--secret-file is sent: a wrong secret cannot reach the pool") {
    Pool pool(0);
    std::string secret = temp_path("secret");
    REQUIRE(pooltool({"secret", "new", secret}).rc == 0);
    auto r = pooltool({"--coordinator", pool.process->coordinator, "--secret-file", secret, "--json", "status"});
    std::remove(secret.c_str());
    CHECK(r.rc == 3);
  }
}

TEST_CASE("pooltool quota evicts a namespace down to its budget and keeps it there", "[pooltool]") {
  Pool pool(4);
  auto r = pooltool(pool.with({"quota", hex(pool.ns), "2blocks"}));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.doc["quota_blocks"] == 2);
  auto status = pooltool(pool.with({"status"}));
  CHECK(status.doc["blocks"] == 2);
  // namespaces shows the quota and the use against it, in JSON and in the table.
  auto ns = pooltool(pool.with({"namespaces"}));
  INFO(ns.out);
  REQUIRE(ns.doc["namespaces"].size() == 1);
  CHECK(ns.doc["namespaces"][0]["quota_blocks"] == 2);
  CHECK(ns.doc["namespaces"][0]["quota_bytes"] == 0);
  CHECK(ns.doc["namespaces"][0]["live_blocks"] == 2);
  CHECK(ns.doc["namespaces"][0]["live_bytes"] == 2 * kBlock);
  CHECK(ns.doc["namespaces"][0]["quota_used"].get<double>() == Approx(1.0));
  auto table = pooltool({"--coordinator", pool.process->coordinator, "namespaces"});
  CHECK(table.out.find("2 of 2 blocks (100.0%)") != std::string::npos);
  // A byte quota, then none; a bad size is a usage error.
  CHECK(pooltool(pool.with({"quota", hex(pool.ns), "256KiB"})).rc == 0);
  CHECK(pooltool(pool.with({"status"})).doc["blocks"] == 1);
  CHECK(pooltool(pool.with({"quota", hex(pool.ns), "0"})).rc == 0);
  CHECK(pooltool(pool.with({"quota", hex(pool.ns), "lots"})).rc == 2);
  CHECK(pooltool(pool.with({"quota", "no-such-model", "1blocks"})).rc == 1);
}

TEST_CASE("pooltool replay reports hit rates that follow the trace", "[pooltool]") {
  // Request 2 repeats request 1's prefix: 2 of its 3 blocks hit.
  const std::string trace = temp_path("trace.jsonl");
  {
    std::ofstream f(trace);
    f << R"({"timestamp": 0, "input_length": 1024, "hash_ids": [1, 2]})" << "\n";
    f << R"({"timestamp": 5, "input_length": 1500, "hash_ids": [1, 2, 3]})" << "\n";
    f << R"({"timestamp": 9, "input_length": 512, "hash_ids": [4]})" << "\n";
  }
  auto process = start_standalone("64MiB");
  REQUIRE(process);
  auto r = pooltool({"--coordinator", process->coordinator, "--json", "replay", trace, "--workers", "1"});
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.doc["requests"] == 3);
  CHECK(r.doc["blocks"] == 6);
  CHECK(r.doc["hit_blocks"] == 2);
  CHECK(r.doc["block_hit_rate"].get<double>() == Approx(2.0 / 6));
  CHECK(r.doc["token_hit_rate"].get<double>() == Approx(1024.0 / (1024 + 1500 + 512)));
  CHECK(r.doc["wrong_bytes"] == 0);
  CHECK(r.doc["bytes_moved"] == 6 * 64 * 1024);  // 4 new blocks put, 2 got
  CHECK(r.doc["latency_ms"]["p99"].get<double>() > 0);
  // --capacity-blocks 3: the fourth request's prefix was evicted by the
  // third one (exact LRU), so it misses; without the quota it hits.
  {
    std::ofstream f(trace, std::ios::app);
    f << R"({"timestamp": 12, "input_length": 1024, "hash_ids": [1, 2]})" << "\n";
  }
  auto tight = pooltool({"--coordinator", process->coordinator, "--json", "replay", trace, "--workers", "1",
                         "--capacity-blocks", "3", "--model", "tight"});
  INFO(tight.out);
  CHECK(tight.rc == 0);
  CHECK(tight.doc["hit_blocks"] == 2);
  auto loose = pooltool({"--coordinator", process->coordinator, "--json", "replay", trace, "--workers", "1",
                         "--model", "loose"});
  CHECK(loose.doc["hit_blocks"] == 4);
  CHECK(pooltool({"--coordinator", process->coordinator, "replay", trace + ".missing"}).rc == 2);
  std::remove(trace.c_str());
}

TEST_CASE("pooltool replay reaches a coordinator through etcd, quota included", "[pooltool][ha]") {
  if (!etcd_available()) {
    WARN("no " << kEtcdBinary << " (Debian's etcd-server): not testing");
    return;
  }
  auto etcd = EtcdCluster::start(1);
  REQUIRE(etcd);
  const std::string port_file = temp_path("replay-etcd-port");
  auto p = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--etcd", etcd->endpoints(), "--shard", "0",
                              "--listen", "127.0.0.1:0", "--port-file", port_file, "--log-level", "warn"});
  REQUIRE(p);
  Subprocess coordinator = std::move(*p);
  REQUIRE(read_port_file(port_file, Deadline::after(scaled(15s))) != 0);
  const std::string via_etcd = "etcd://" + etcd->endpoints();
  auto agent = start_agent(via_etcd + "/0", "64MiB");
  REQUIRE(agent);
  const std::string trace = temp_path("trace-etcd.jsonl");
  {
    std::ofstream f(trace);
    f << R"({"timestamp": 0, "input_length": 1024, "hash_ids": [1, 2]})" << "\n";
    f << R"({"timestamp": 5, "input_length": 1500, "hash_ids": [1, 2, 3]})" << "\n";
    f << R"({"timestamp": 9, "input_length": 512, "hash_ids": [4]})" << "\n";
    f << R"({"timestamp": 12, "input_length": 1024, "hash_ids": [1, 2]})" << "\n";
  }
  // Once an agent is up, as the tight replay above: 2 hits under a 3-block
  // quota, which goes to the leader etcd names (with or without /SHARD:
  // the map has one shard).
  for (const std::string& address : {via_etcd + "/0", via_etcd}) {
    bool replayed = false;
    for (auto d = Deadline::after(scaled(15s)); !replayed && !d.expired();) {
      auto r = pooltool({"--coordinator", address, "--json", "replay", trace, "--workers", "1", "--capacity-blocks",
                         "3", "--model", "etcd-" + std::to_string(address.size())});
      INFO(address << ": " << r.out);
      replayed = r.rc == 0 && r.doc["hit_blocks"] == 2 && r.doc["wrong_bytes"] == 0;
      if (!replayed) std::this_thread::sleep_for(200ms);
    }
    CHECK(replayed);
  }
  // A map of two shards: a quota on each would not be one LRU.
  {
    auto ec = etcd::Client::create(etcd->client_options());
    REQUIRE(ec);
    REQUIRE((*ec)->put("/kvpool/shardmap", R"({"version": 1, "shards": 2})"));
  }
  auto two =
      pooltool({"--coordinator", via_etcd, "--json", "replay", trace, "--workers", "1", "--capacity-blocks", "3"});
  INFO(two.out);
  CHECK(two.rc != 0);
  CHECK(two.doc["error"]["message"].get<std::string>().find("shard map has 2 shards") != std::string::npos);
  std::remove(trace.c_str());
  agent->kill(SIGTERM);
  coordinator.kill(SIGTERM);
  (void)coordinator.wait(Deadline::after(scaled(10s)));
}

TEST_CASE("pooltool secret new writes a 0600 secret a pool accepts, and never overwrites one", "[pooltool]") {
  const std::string path = temp_path("secret");
  auto r = pooltool({"--json", "secret", "new", path});
  REQUIRE(r.rc == 0);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(pooltool({"secret", "new", path}).rc == 1);
  auto process = start_standalone("64MiB", {"--secret-file", path});
  REQUIRE(process);
  CHECK(pooltool({"--coordinator", process->coordinator, "--secret-file", path, "--json", "status"}).rc == 0);
  const std::string other = temp_path("other-secret");
  REQUIRE(pooltool({"secret", "new", other}).rc == 0);
  CHECK(pooltool({"--coordinator", process->coordinator, "--secret-file", other, "--json", "status"}).rc == 3);
  std::remove(path.c_str());
  std::remove(other.c_str());
}

TEST_CASE("pooltool secret new --tenant writes a credential and adds the tenant to the tenants file", "[pooltool][tenants]") {
  const std::string cluster = temp_path("cluster");
  const std::string tenants = temp_path("tenants");
  const std::string cred = temp_path("acme");
  REQUIRE(pooltool({"secret", "new", cluster}).rc == 0);
  auto r = pooltool({"--json", "secret", "new", cred, "--tenant", "acme", "--namespaces", "acme/*", "--tenants",
                     tenants});
  REQUIRE(r.rc == 0);
  for (const std::string& p : {cred, tenants}) {
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
  }
  // The same tenant again is refused, and leaves no credential behind.
  const std::string again = temp_path("acme-again");
  CHECK(pooltool({"secret", "new", again, "--tenant", "acme", "--namespaces", "x", "--tenants", tenants}).rc != 0);
  struct stat st {};
  CHECK(::stat(again.c_str(), &st) != 0);
  CHECK(pooltool({"secret", "new", again, "--tenant", "beta"}).rc == 2);
  CHECK(pooltool({"secret", "new", again, "--isolated", "4MiB"}).rc == 2);
  CHECK(pooltool({"secret", "new", again, "--tenant", "beta", "--namespaces", "b/*", "--tenants", tenants,
                  "--isolated", "lots"})
            .rc == 2);
  // An isolated tenant: its line carries the size of its region.
  const std::string isolated = temp_path("gamma");
  REQUIRE(pooltool({"secret", "new", isolated, "--tenant", "gamma", "--namespaces", "gamma/*", "--tenants", tenants,
                    "--isolated", "4MiB"})
              .rc == 0);
  auto table = TenantTable::load(tenants);
  REQUIRE(table);
  CHECK(table->find("gamma")->isolated_bytes == (4u << 20));
  CHECK(!table->find("acme")->isolated());

  auto process = start_standalone("64MiB", {"--secret-file", cluster, "--tenants", tenants});
  REQUIRE(process);
  // The tenant reaches the pool with its credential; set-quota is the operator's.
  CHECK(pooltool({"--coordinator", process->coordinator, "--secret-file", cred, "--json", "status"}).rc == 0);
  auto ns = pooltool({"--coordinator", process->coordinator, "--secret-file", cred, "--json", "namespaces"});
  CHECK(ns.rc == 0);
  // Each tenant's agents list shows the regions it may reach: acme the
  // shared one, gamma its own 4 MiB region; the operator both.
  auto regions = [&](const std::string& secret) {
    std::vector<std::uint64_t> sizes;
    auto a = pooltool({"--coordinator", process->coordinator, "--secret-file", secret, "--json", "agents"});
    INFO(a.out);
    if (a.rc != 0) return sizes;
    for (const auto& agent : a.doc["agents"]) sizes.push_back(agent["region_bytes"].get<std::uint64_t>());
    std::sort(sizes.begin(), sizes.end());
    return sizes;
  };
  REQUIRE(eventually([&] { return regions(cluster).size() == 2; }, scaled(10s)));
  CHECK(regions(cluster) == std::vector<std::uint64_t>{4u << 20, 64u << 20});
  CHECK(regions(cred) == std::vector<std::uint64_t>{64u << 20});
  CHECK(regions(isolated) == std::vector<std::uint64_t>{4u << 20});
  for (const std::string& p : {cluster, tenants, cred, isolated}) std::remove(p.c_str());
}

TEST_CASE("pooltool status and doctor show every shard, its leader and epoch, and etcd's health", "[pooltool][shard]") {
  // Three shards in the map; shards 0 and 1 are led, 0 has an agent, 2 has no
  // coordinator at all.
  auto pool = start_sharded_etcd(R"({"version": 4, "shards": 3})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  const etcd::Client* ec = pool->client.get();
  auto& etcd = pool->cluster;
  Shard s0 = start_shard(E, 0, "32MiB");
  Shard s1 = start_shard(E, 1, "");
  auto l0 = etcd::find_leader(*ec, 0);
  auto l1 = etcd::find_leader(*ec, 1);
  REQUIRE(l0);
  REQUIRE(l1);
  REQUIRE(eventually([&] {
    auto r = pooltool({"--coordinator", "etcd://" + E, "--json", "status"});
    return r.rc == 0 && r.doc["etcd"]["shards"][0]["agents_alive"] == 1;
  }, scaled(10s)));

  auto r = pooltool({"--coordinator", "etcd://" + E, "--json", "status"});
  INFO(r.out);
  REQUIRE(r.rc == 0);
  const json& e = r.doc["etcd"];
  CHECK(e["healthy"] == 1);
  CHECK(e["endpoints"][0]["healthy"] == true);
  CHECK(e["endpoints"][0]["raft_leader"] == true);
  CHECK(e["raft_leader"] == e["endpoints"][0]["member_id"]);
  CHECK(e["shard_map"]["version"] == 4);
  REQUIRE(e["shards"].size() == 3);
  CHECK(e["shards"][0]["leader"]["address"] == l0->address);
  CHECK(e["shards"][0]["leader"]["epoch"] == l0->epoch);
  CHECK(e["shards"][1]["leader"]["epoch"] == l1->epoch);
  CHECK(e["shards"][1]["agents_alive"] == 0);
  CHECK(e["shards"][2]["leader"].is_null());
  CHECK(e["shards"][2]["error"].get<std::string>().find("has no leader") != std::string::npos);
  CHECK(std::abs(e["shards"][0]["key_fraction"].get<double>() - 1.0 / 3) < 1e-6);

  auto text = pooltool({"--coordinator", "etcd://" + E, "status"});
  INFO(text.out);
  CHECK(text.rc == 0);
  CHECK(text.out.find("shard map  version 4, 3 shards") != std::string::npos);
  CHECK(text.out.find(l0->address) != std::string::npos);
  CHECK(text.out.find(l1->address) != std::string::npos);
  CHECK(text.out.find("1 endpoint, 1 healthy; raft leader") != std::string::npos);

  // doctor: etcd fine, shard 1 without agents and shard 2 without a leader fail.
  auto doc = pooltool({"--coordinator", "etcd://" + E, "--json", "doctor", "--no-probe"});
  INFO(doc.out);
  CHECK(doc.rc == 1);
  std::map<std::string, json> checks;
  for (const auto& c : doc.doc["checks"]) checks[c["name"].get<std::string>()] = c;
  CHECK(checks["etcd members"]["status"] == "ok");
  CHECK(checks["etcd raft leader"]["status"] == "ok");
  CHECK(checks["shard map"]["status"] == "ok");
  CHECK(checks["shard 0"]["status"] == "ok");
  CHECK(checks["shard 1"]["status"] == "fail");
  CHECK(checks["shard 1"]["fix"].get<std::string>().find("kvpool-agent --coordinator etcd://" + E + "/1") !=
        std::string::npos);
  CHECK(checks["shard 2"]["status"] == "fail");
  CHECK(checks["shard 2"]["fix"].get<std::string>().find("--shard 2") != std::string::npos);

  // A malformed map and a dead etcd are named too.
  pool->put_map("{broken");
  auto bad = pooltool({"--coordinator", "etcd://" + E, "--json", "doctor", "--no-probe"});
  INFO(bad.out);
  checks.clear();
  for (const auto& c : bad.doc["checks"]) checks[c["name"].get<std::string>()] = c;
  CHECK(checks["shard map"]["status"] == "fail");
  CHECK(checks["shard map"]["detail"].get<std::string>().find("/kvpool/shardmap is malformed") != std::string::npos);
  etcd->kill_member(0);
  auto dead = pooltool({"--coordinator", "etcd://" + E, "--json", "--timeout", "2s", "doctor", "--no-probe"});
  INFO(dead.out);
  CHECK(dead.rc == 1);
  checks.clear();
  for (const auto& c : dead.doc["checks"]) checks[c["name"].get<std::string>()] = c;
  CHECK(checks["etcd members"]["status"] == "fail");
  CHECK(checks["etcd members"]["detail"].get<std::string>().find("0 of 1 endpoints healthy") != std::string::npos);
}

TEST_CASE("pooltool shards add moves half a range to a new shard and waits for the move", "[pooltool][shard]") {
  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 2})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  std::vector<Shard> shards;
  for (std::uint32_t shard : {0u, 1u, 2u}) shards.push_back(start_shard(E, shard, "32MiB"));
  // Blocks in both shards before the move.
  ClientOptions co;
  co.coordinator = "etcd://" + E;
  co.timeout = scaled(5s);
  std::unique_ptr<Client> client;
  REQUIRE(eventually([&] {
    auto c = Client::connect(co);
    if (!c) return false;
    client = std::move(*c);
    return true;
  }, scaled(10s)));
  auto ns = client->register_namespace(test_namespace(64 << 10, "shards-add"));
  REQUIRE(ns);
  std::vector<Key128> keys;
  std::vector<std::byte> data(128 * (64 << 10));
  std::vector<std::span<const std::byte>> spans;
  for (int i = 0; i < 128; ++i) {
    keys.push_back(Key128{static_cast<std::uint64_t>(i) * 0x9e3779b97f4a7c15ull + 3, 77});
    fill_pattern(data.data() + i * (64 << 10), 0, 64 << 10, keys.back().lo);
    spans.emplace_back(data.data() + i * (64 << 10), 64 << 10);
  }
  REQUIRE(eventually([&] {
    auto r = client->put(*ns, keys, spans);
    return r && r->failed == 0;
  }, scaled(10s)));

  auto r = pooltool({"--coordinator", "etcd://" + E, "--json", "shards", "add", "2", "--wait"});
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.doc["version"] == 2);
  CHECK(r.doc["from"] == 0);
  CHECK(r.doc["to"] == 2);
  CHECK(r.doc["done"] == true);
  auto map = etcd::read_shard_map(*pool->client);
  REQUIRE(map);
  CHECK(map->version == 3);
  CHECK(map->shards() == std::vector<std::uint32_t>{0, 1, 2});
  // Every block reads back, wherever it lies now.
  std::vector<std::byte> out(data.size(), std::byte{0});
  std::vector<std::span<std::byte>> bufs;
  for (int i = 0; i < 128; ++i) bufs.emplace_back(out.data() + i * (64 << 10), 64 << 10);
  auto g = client->get(*ns, keys, bufs);
  REQUIRE(g);
  CHECK(g->loaded == 128);
  CHECK(out == data);

  // Refusals: a shard in the map already, and one with no leader.
  auto again = pooltool({"--coordinator", "etcd://" + E, "shards", "add", "2"});
  CHECK(again.rc == 1);
  auto none = run_pooltool({"--coordinator", "etcd://" + E, "--json", "shards", "add", "7"});
  CHECK(none.rc == 1);
  CHECK(none.doc["error"]["message"].get<std::string>().find("shard 7 has no leader") != std::string::npos);
  auto plain = pooltool({"--coordinator", "127.0.0.1:1", "shards", "add", "3"});
  CHECK(plain.rc == 2);
}
