// pooltool drain against real processes: a standalone agent (agent +
// coordinator) and two more agents, a worker reading every block while one
// agent drains, then that agent killed with SIGKILL: every block must still
// be readable with the same bytes. And a drain that cannot place its blocks.

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <atomic>
#include <csignal>
#include <thread>

#include <nlohmann/json.hpp>

#include "runtime/common/pattern.h"
#include "tests/integration/pool_fixture.h"
#include "tests/pooltool/run_pooltool.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kBlock = 256 << 10;

using Run = PooltoolRun;

Run run_pooltool(const std::string& coordinator, std::vector<std::string> args) {
  args.insert(args.begin(), {"--coordinator", coordinator, "--json"});
  return testing::run_pooltool(args, 120s);
}

std::unique_ptr<Subprocess> named_agent(const std::string& coordinator, const std::string& size,
                                        const std::string& name) {
  auto p = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--coordinator", coordinator, "--pool-size", size, "--name",
                              name, "--log-level", "warn"});
  return p ? std::make_unique<Subprocess>(std::move(*p)) : nullptr;
}

// The agents as `pooltool agents --json` lists them, by address.
std::map<std::string, json> agents_by_address(const std::string& coordinator) {
  std::map<std::string, json> out;
  auto r = run_pooltool(coordinator, {"agents"});
  if (r.rc != 0 || r.doc.is_discarded()) return out;
  for (const auto& a : r.doc["agents"]) out[a["address"].get<std::string>()] = a;
  return out;
}

struct Blocks {
  NamespaceId ns = 0;
  std::string model;
  std::vector<Key128> keys;

  // A client learns a namespace's block size by registering it (idempotent).
  bool join(Client& client) const { return client.register_namespace(test_namespace(kBlock, model)).has_value(); }

  void write(Client& client, std::size_t n, const std::string& model) {
    this->model = model;
    auto id = client.register_namespace(test_namespace(kBlock, model));
    REQUIRE(id);
    ns = *id;
    std::vector<std::uint32_t> tokens(n * 16);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint32_t>(i);
    keys = prefix_keys(ns, tokens, 16);
    REQUIRE(keys.size() == n);
    std::vector<std::byte> bytes(kBlock);
    // One at a time: placement spreads them by how full each agent is.
    for (const Key128& k : keys) {
      fill_pattern(bytes.data(), 0, kBlock, k.lo);
      std::span<const std::byte> span(bytes);
      auto put = client.put(ns, std::span<const Key128>(&k, 1), std::span<const std::span<const std::byte>>(&span, 1));
      REQUIRE(put);
      REQUIRE(put->written == 1);
    }
  }

  // Reads block i; true when it came back with its own bytes.
  bool read_ok(Client& client, std::size_t i, std::vector<std::byte>& buf, std::string* why = nullptr) const {
    std::span<std::byte> span(buf);
    auto got = client.get(ns, std::span<const Key128>(&keys[i], 1), std::span<const std::span<std::byte>>(&span, 1));
    if (!got || got->loaded != 1) {
      if (why != nullptr) *why = "block " + std::to_string(i) + ": " + (got ? got->stopped.to_string() : got.error().to_string());
      return false;
    }
    if (pattern_mismatches(buf.data(), 0, kBlock, keys[i].lo) == 0) return true;
    if (why != nullptr) *why = "block " + std::to_string(i) + ": wrong bytes";
    return false;
  }
};

}  // namespace

TEST_CASE("pooltool drain moves an agent's blocks while they are read, and the pool survives its SIGKILL",
          "[pooltool][drain]") {
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto b = named_agent(pool->coordinator, "64MiB", "drain-b");
  auto c = named_agent(pool->coordinator, "64MiB", "drain-c");
  REQUIRE(b);
  REQUIRE(c);
  REQUIRE(eventually([&] { return agents_by_address(pool->coordinator).size() == 3; }, scaled(30s)));

  ClientOptions co;
  co.coordinator = pool->coordinator;
  auto client = Client::connect(co);
  REQUIRE(client);
  Blocks blocks;
  blocks.write(**client, 90, "drain-test-model");
  auto before = agents_by_address(pool->coordinator);
  REQUIRE(before.size() == 3);
  for (const auto& [address, a] : before) {
    INFO(address);
    CHECK(a["blocks"].get<std::uint64_t>() > 0);  // blocks in all three
  }
  const std::uint64_t on_b = before["drain-b"]["blocks"].get<std::uint64_t>();
  REQUIRE(on_b > 0);

  // A worker keeps reading every block, its own client, through the drain.
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> reads{0}, bad_reads{0};
  std::string first_bad;  // written by the reader, read after join
  std::thread reader([&] {
    auto rc = Client::connect(co);
    if (!rc || !blocks.join(**rc)) {
      bad_reads = 1000000;
      return;
    }
    std::vector<std::byte> buf(kBlock);
    while (!stop.load()) {
      for (std::size_t i = 0; i < blocks.keys.size() && !stop.load(); ++i) {
        std::string why;
        if (!blocks.read_ok(**rc, i, buf, &why) && bad_reads++ == 0) first_bad = why;
        ++reads;
      }
    }
  });
  // The reader is going (a pass over every block) before the drain starts,
  // and the drain copies one block at a time, so they overlap.
  REQUIRE(eventually([&] { return reads.load() >= blocks.keys.size(); }, scaled(30s)));
  const std::uint64_t reads_before = reads.load();
  auto drain = run_pooltool(pool->coordinator, {"drain", "drain-b", "--in-flight", "1"});
  const std::uint64_t reads_during = reads.load() - reads_before;
  stop = true;
  reader.join();
  INFO(drain.out);
  REQUIRE(drain.rc == 0);
  REQUIRE_FALSE(drain.doc.is_discarded());
  CHECK(drain.doc["drained"] == true);
  CHECK(drain.doc["moved"].get<std::uint64_t>() == on_b);
  CHECK(drain.doc["blocks_left"] == 0);
  INFO(first_bad);
  CHECK(bad_reads.load() == 0);
  CHECK(reads.load() > 0);
  WARN("reads during the drain: " << reads_during << ", moved " << on_b << " blocks");

  auto after = agents_by_address(pool->coordinator);
  CHECK(after["drain-b"]["state"] == "drained");
  CHECK(after["drain-b"]["blocks"] == 0);
  std::uint64_t total = 0;
  for (const auto& [address, a] : after) total += a["blocks"].get<std::uint64_t>();
  CHECK(total == blocks.keys.size());

  // The drained agent dies hard: nothing of it was needed.
  b->kill(SIGKILL);
  REQUIRE(eventually(
      [&] {
        auto now = agents_by_address(pool->coordinator);
        return now.count("drain-b") && now["drain-b"]["alive"] == false;
      },
      scaled(30s)));
  auto fresh = Client::connect(co);
  REQUIRE(fresh);
  REQUIRE(blocks.join(**fresh));
  std::vector<std::byte> buf(kBlock);
  std::size_t readable = 0;
  std::string why;
  for (std::size_t i = 0; i < blocks.keys.size(); ++i) readable += blocks.read_ok(**fresh, i, buf, &why) ? 1 : 0;
  INFO(why);
  CHECK(readable == blocks.keys.size());
  // The copies carry their slice tables (test_namespace's four layers): a
  // mapped get checks each moved block's table against its header, as the
  // GPU path's layer-by-layer verification will.
  {
    auto mg = (*fresh)->begin_mapped_get(blocks.ns, blocks.keys);
    REQUIRE(mg);
    INFO(mg->stopped.to_string());
    CHECK(mg->slices == 4);
    CHECK(mg->found == blocks.keys.size());
    CHECK(mg->checksums.size() == mg->found * 4);
    for (std::size_t i = 0; i < mg->found; ++i) {
      const auto table = slice_sums(mg->slots[i].payload, kBlock, 4);
      CHECK(std::equal(table.begin(), table.end(), mg->checksums.begin() + i * 4));
    }
    (*fresh)->finish_mapped_get(*mg, mg->found);
  }
  // The client that read during the drain too (it had endpoints to the dead agent).
  readable = 0;
  for (std::size_t i = 0; i < blocks.keys.size(); ++i) readable += blocks.read_ok(**client, i, buf) ? 1 : 0;
  CHECK(readable == blocks.keys.size());
  auto st = run_pooltool(pool->coordinator, {"status"});
  REQUIRE(st.rc == 0);
  CHECK(st.doc["blocks"] == blocks.keys.size());
  CHECK(st.doc["agents_dead"] == 1);
}

TEST_CASE("pooltool drain with no room elsewhere fails clearly, keeps every block, and undrain brings it back",
          "[pooltool][drain]") {
  auto pool = start_standalone("4MiB");
  REQUIRE(pool);
  auto b = named_agent(pool->coordinator, "16MiB", "full-b");
  REQUIRE(b);
  REQUIRE(eventually([&] { return agents_by_address(pool->coordinator).size() == 2; }, scaled(30s)));
  ClientOptions co;
  co.coordinator = pool->coordinator;
  auto client = Client::connect(co);
  REQUIRE(client);
  Blocks blocks;
  blocks.write(**client, 40, "drain-full-model");
  auto before = agents_by_address(pool->coordinator);
  REQUIRE(before["full-b"]["blocks"].get<std::uint64_t>() > 20);

  auto drain = run_pooltool(pool->coordinator, {"drain", "full-b"});
  INFO(drain.out);
  CHECK(drain.rc == 1);
  REQUIRE_FALSE(drain.doc.is_discarded());
  CHECK(drain.doc["drained"] == false);
  CHECK(drain.doc["unplaceable"].get<std::uint64_t>() > 0);
  CHECK(drain.doc["error"]["code"] == "resource_exhausted");
  auto mid = agents_by_address(pool->coordinator);
  CHECK(mid["full-b"]["state"] == "draining");
  std::vector<std::byte> buf(kBlock);
  std::size_t readable = 0;
  for (std::size_t i = 0; i < blocks.keys.size(); ++i) readable += blocks.read_ok(**client, i, buf) ? 1 : 0;
  CHECK(readable == blocks.keys.size());

  auto undrain = run_pooltool(pool->coordinator, {"drain", "--undrain", "full-b"});
  INFO(undrain.out);
  CHECK(undrain.rc == 0);
  CHECK(agents_by_address(pool->coordinator)["full-b"]["state"] == "up");
  // Unknown agents are a clear error.
  auto unknown = run_pooltool(pool->coordinator, {"drain", "no-such-agent"});
  CHECK(unknown.rc == 1);
  CHECK(unknown.doc["error"]["code"] == "not_found");
}
