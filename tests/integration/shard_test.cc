// Sharding with real processes and a real etcd: a shard map of two shards
// in etcd, a kvpool-coordinator leading each shard, agents assigned to
// shards (etcd://E/N), and a client given etcd://E that routes every key of
// a batch to its shard. Also: a coordinator refusing a key of another
// shard, and a missing or malformed shard map giving a clear error.

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <set>

#include "runtime/common/pattern.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/shard_map.h"
#include "tests/common/etcd_cluster.h"
#include "tests/integration/pool_fixture.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 64 << 10;

struct Shard {
  std::unique_ptr<Subprocess> coordinator;
  std::unique_ptr<Subprocess> agent;
  std::string port_file;
  std::string address;
};

std::unique_ptr<Subprocess> spawn(const std::vector<std::string>& argv) {
  auto p = Subprocess::spawn(argv);
  REQUIRE(p);
  return std::make_unique<Subprocess>(std::move(*p));
}

// A leader of `shard` and one agent of 64 MiB assigned to it.
Shard start_shard(const std::string& endpoints, std::uint32_t shard, bool with_agent = true) {
  Shard s;
  s.port_file = temp_path("shard-port");
  s.coordinator = spawn({bin_dir() + "/kvpool-coordinator", "--etcd", endpoints, "--shard", std::to_string(shard),
                         "--listen", "127.0.0.1:0", "--port-file", s.port_file, "--log-level", "warn",
                         "--agent-timeout", "2s", "--heartbeat-interval", "200ms"});
  const std::uint16_t port = read_port_file(s.port_file, Deadline::after(scaled(15s)));
  REQUIRE(port != 0);
  s.address = "127.0.0.1:" + std::to_string(port);
  if (with_agent) {
    s.agent = spawn({bin_dir() + "/kvpool-agent", "--coordinator", "etcd://" + endpoints + "/" + std::to_string(shard),
                     "--pool-size", "64MiB", "--log-level", "warn", "--name", "shard" + std::to_string(shard) + "-a"});
    auto watcher = raw_client(s.address, rpc::Role::kTool);
    REQUIRE(watcher);
    REQUIRE(eventually([&] { return stats(*watcher).agents_alive == 1; }, scaled(10s)));
  }
  return s;
}

void put_map(const etcd::Client& etcd, const std::string& value) {
  REQUIRE(etcd.put(etcd::kShardMapKey, value));
}

std::unique_ptr<Client> connect(const std::string& coordinator) {
  ClientOptions o;
  o.coordinator = coordinator;
  o.timeout = scaled(5s);
  auto c = Client::connect(o);
  REQUIRE(c);
  return std::move(*c);
}

Key128 key_of(std::uint64_t i) { return Key128{i * 0x9e3779b97f4a7c15ull + 7, 0x5ade}; }

// Runs `command` through the shell with stderr joined to stdout; the exit
// status and everything it printed.
std::pair<int, std::string> run_shell(const std::string& command) {
  auto p = Subprocess::spawn({"/bin/sh", "-c", command + " 2>&1"});
  REQUIRE(p);
  std::string out;
  for (;;) {
    auto line = p->read_line(Deadline::after(scaled(20s)));
    if (!line) break;
    out += *line + "\n";
  }
  auto st = p->wait(Deadline::after(scaled(20s)));
  REQUIRE(st);
  return {WIFEXITED(*st) ? WEXITSTATUS(*st) : -1, out};
}

}  // namespace

TEST_CASE("two shards: a client given etcd://E puts and gets batches spanning both, every byte verified",
          "[integration][shard]") {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return;
  }
  auto etcd = EtcdCluster::start(1);
  REQUIRE(etcd);
  const std::string E = etcd->endpoints();
  auto ec = etcd::Client::create(etcd->client_options());
  REQUIRE(ec);
  put_map(**ec, R"({"version": 1, "shards": 2})");
  Shard s0 = start_shard(E, 0);
  Shard s1 = start_shard(E, 1);

  auto client = connect("etcd://" + E);
  auto ns = client->register_namespace(test_namespace(kBlock, "shard"));
  REQUIRE(ns);
  auto map = etcd::read_shard_map(**ec);
  REQUIRE(map);
  REQUIRE(map->ranges.size() == 2);

  // 8 batches of 64 keys: every batch has keys of both shards.
  constexpr int kBatches = 8, kBatch = 64;
  std::vector<std::byte> data(kBatch * kBlock);
  std::size_t on_shard[2] = {0, 0};
  for (int b = 0; b < kBatches; ++b) {
    std::vector<Key128> keys;
    std::vector<std::span<const std::byte>> spans;
    std::size_t here[2] = {0, 0};
    for (int j = 0; j < kBatch; ++j) {
      keys.push_back(key_of(b * kBatch + j));
      ++here[map->shard_of(keys.back())];
      fill_pattern(data.data() + j * kBlock, 0, kBlock, keys.back().lo);
      spans.emplace_back(data.data() + j * kBlock, kBlock);
    }
    REQUIRE(here[0] > 0);
    REQUIRE(here[1] > 0);
    on_shard[0] += here[0];
    on_shard[1] += here[1];
    auto r = client->put(*ns, keys, spans);
    REQUIRE(r);
    CHECK(r->written == static_cast<std::size_t>(kBatch));
    for (const auto& e : r->errors) CHECK(e.ok());
  }

  // Read back batch by batch into poisoned buffers: every byte.
  std::uint64_t wrong = 0;
  for (int b = 0; b < kBatches; ++b) {
    std::vector<Key128> keys;
    std::vector<std::span<std::byte>> bufs;
    std::fill(data.begin(), data.end(), std::byte{0xee});
    for (int j = 0; j < kBatch; ++j) {
      keys.push_back(key_of(b * kBatch + j));
      bufs.emplace_back(data.data() + j * kBlock, kBlock);
    }
    auto g = client->get(*ns, keys, bufs);
    REQUIRE(g);
    CHECK(g->loaded == static_cast<std::size_t>(kBatch));
    for (int j = 0; j < kBatch; ++j) wrong += pattern_mismatches(data.data() + j * kBlock, 0, kBlock, keys[j].lo);
    auto l = client->lookup(*ns, keys);
    REQUIRE(l);
    CHECK(*l == static_cast<std::size_t>(kBatch));
  }
  CHECK(wrong == 0);

  // Each shard's index holds exactly its keys, on its own agent.
  for (std::uint32_t shard : {0u, 1u}) {
    auto raw = raw_client(shard == 0 ? s0.address : s1.address, rpc::Role::kTool);
    REQUIRE(raw);
    auto st = stats(*raw);
    CHECK(st.blocks == on_shard[shard]);
    CHECK(st.shard == shard);
  }

  // Prefix semantics across shards: a missing key in the middle ends the
  // prefix there, whichever shard the keys after it belong to.
  {
    std::vector<Key128> keys;
    for (int j = 0; j < 40; ++j) keys.push_back(key_of(j));
    const Key128 missing = key_of(1u << 30);
    keys.insert(keys.begin() + 17, missing);
    auto l = client->lookup(*ns, keys);
    REQUIRE(l);
    CHECK(*l == 17);
    std::vector<std::byte> out(keys.size() * kBlock);
    std::vector<std::span<std::byte>> bufs;
    for (std::size_t j = 0; j < keys.size(); ++j) bufs.emplace_back(out.data() + j * kBlock, kBlock);
    auto g = client->get(*ns, keys, bufs);
    REQUIRE(g);
    CHECK(g->loaded == 17);
    CHECK(g->stopped.code() == StatusCode::kNotFound);
    std::uint64_t bad = 0;
    for (std::size_t j = 0; j < 17; ++j) bad += pattern_mismatches(out.data() + j * kBlock, 0, kBlock, keys[j].lo);
    CHECK(bad == 0);
  }

  // Remove spans both shards too; the removed keys are gone from both.
  {
    std::vector<Key128> keys;
    for (int j = 0; j < kBatch; ++j) keys.push_back(key_of((kBatches - 1) * kBatch + j));
    auto rm = client->remove(*ns, keys);
    REQUIRE(rm);
    for (const auto& s : *rm) CHECK(s.ok());
    auto l = client->lookup(*ns, std::span<const Key128>(keys).subspan(0, 1));
    REQUIRE(l);
    CHECK(*l == 0);
  }

  // A client given one shard's leader reaches only that shard: the other
  // shard's keys are refused with a clear error.
  {
    auto only0 = connect("etcd://" + E + "/0");
    auto ns0 = only0->register_namespace(test_namespace(kBlock, "shard"));
    REQUIRE(ns0);
    Key128 foreign{};
    for (std::uint64_t i = 0;; ++i) {
      if (map->shard_of(key_of(i)) == 1) {
        foreign = key_of(i);
        break;
      }
    }
    auto l = only0->lookup(*ns0, std::span<const Key128>(&foreign, 1));
    REQUIRE_FALSE(l);
    CHECK(l.error().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(l.error().message(), Catch::Contains("is not in the key ranges of shard 0"));
    std::vector<std::byte> one(kBlock);
    std::span<const std::byte> span(one);
    auto p = only0->put(*ns0, std::span<const Key128>(&foreign, 1), std::span<const std::span<const std::byte>>(&span, 1));
    REQUIRE(p);
    CHECK(p->failed == 1);
    CHECK(p->errors[0].code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(p->errors[0].message(), Catch::Contains("shard map"));
  }
}

TEST_CASE("a missing or malformed shard map gives a clear error", "[integration][shard]") {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return;
  }
  auto etcd = EtcdCluster::start(1);
  REQUIRE(etcd);
  const std::string E = etcd->endpoints();
  auto ec = etcd::Client::create(etcd->client_options());
  REQUIRE(ec);
  const std::string coord = bin_dir() + "/kvpool-coordinator --etcd " + E + " --listen 127.0.0.1:0 --log-level warn";

  // No map: shard 0 alone is fine (as before sharding); shard 1 is refused.
  {
    auto [code, out] = run_shell(coord + " --shard 1");
    CHECK(code == 2);
    CHECK_THAT(out, Catch::Contains("etcd has no shard map (/kvpool/shardmap), so there is only shard 0"));
  }
  // A malformed map: coordinators and clients refuse to start, naming it.
  for (const std::string bad : {std::string("not json"), std::string(R"({"version": 1})"),
                                std::string(R"({"version": 2, "ranges": [{"start": 0, "end": 100, "shard": 0}]})"),
                                std::string(R"({"version": 2, "ranges": [{"start": 0, "end": 4294967296, "shard": 0},
                                                 {"start": 5, "end": 4294967296, "shard": 1}]})")}) {
    INFO(bad);
    put_map(**ec, bad);
    auto [code, out] = run_shell(coord + " --shard 0");
    CHECK(code == 2);
    CHECK_THAT(out, Catch::Contains("etcd key /kvpool/shardmap is malformed: shard map:"));
    ClientOptions o;
    o.coordinator = "etcd://" + E;
    o.timeout = scaled(3s);
    auto c = Client::connect(o);
    REQUIRE_FALSE(c);
    CHECK(c.error().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(c.error().message(), Catch::Contains("/kvpool/shardmap is malformed"));
  }
}
