// Sharding with real processes and a real etcd: a shard map of two shards
// in etcd, a kvpool-coordinator leading each shard, agents assigned to
// shards (etcd://E/N), and a client given etcd://E that routes every key of
// a batch to its shard. Also: a coordinator refusing a key of another
// shard, and a missing or malformed shard map giving a clear error.

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "pool/slot_header.h"
#include "runtime/common/pattern.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/membership.h"
#include "runtime/etcd/shard_map.h"
#include "tests/common/etcd_cluster.h"
#include "tests/integration/pool_fixture.h"
#include "tests/integration/shard_fixture.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 64 << 10;


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

// A writer and a reader, each a client on etcd://E created before the
// change under test, running throughout: the writer puts batches of
// kLoadBatch blocks [0, limit), the reader gets random committed ones and
// checks every byte. A batch that fails is tried again (keys written
// already come back as exists).
struct Load {
  static constexpr int kLoadBatch = 16;
  std::unique_ptr<Client> writer, reader;
  NamespaceId wns = 0, rns = 0;
  std::mutex mu;
  std::vector<std::uint64_t> committed;  // ids whose put returned written or exists
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> next{0}, limit{0}, total{0};
  std::atomic<std::uint64_t> failed_batches{0}, longest_failure_run{0}, reads{0}, misses{0}, errors{0}, wrong{0};
  std::thread w, rd;

  void start(const std::string& endpoints, std::uint64_t total_blocks, std::uint64_t first_limit) {
    total = total_blocks;
    limit = first_limit;
    writer = connect("etcd://" + endpoints);
    reader = connect("etcd://" + endpoints);
    auto a = writer->register_namespace(test_namespace(kBlock, "load"));
    auto b = reader->register_namespace(test_namespace(kBlock, "load"));
    REQUIRE(a);
    REQUIRE(b);
    wns = *a;
    rns = *b;
    w = std::thread([this] { write(); });
    rd = std::thread([this] { read(); });
  }
  void write() {
    std::vector<std::byte> data(kLoadBatch * kBlock);
    std::uint64_t run = 0;
    while (!stop.load() && next.load() < total.load()) {
      const std::uint64_t first = next.load();
      if (first >= limit.load()) {
        std::this_thread::sleep_for(5ms);
        continue;
      }
      std::vector<Key128> keys;
      std::vector<std::span<const std::byte>> spans;
      for (int j = 0; j < kLoadBatch; ++j) {
        keys.push_back(key_of(first + j));
        fill_pattern(data.data() + j * kBlock, 0, kBlock, keys.back().lo);
        spans.emplace_back(data.data() + j * kBlock, kBlock);
      }
      auto r = writer->put(wns, keys, spans);
      bool all = r.has_value();
      {
        std::lock_guard lock(mu);
        for (int j = 0; r && j < kLoadBatch; ++j) {
          if (r->outcomes[j] == PutOutcome::kWritten || r->outcomes[j] == PutOutcome::kExists) {
            committed.push_back(first + j);
          } else {
            all = false;
          }
        }
      }
      if (all) {
        next = first + kLoadBatch;
        run = 0;
      } else {
        ++failed_batches;
        longest_failure_run = std::max(longest_failure_run.load(), ++run);
        std::this_thread::sleep_for(20ms);
      }
      std::this_thread::sleep_for(5ms);
    }
  }
  void read() {
    std::mt19937_64 rng(7);
    std::vector<std::byte> out(kBlock);
    while (!stop.load()) {
      std::uint64_t id = UINT64_MAX;
      {
        std::lock_guard lock(mu);
        if (!committed.empty()) id = committed[rng() % committed.size()];
      }
      if (id == UINT64_MAX) {
        std::this_thread::sleep_for(5ms);
        continue;
      }
      const Key128 k = key_of(id);
      std::span<std::byte> dst(out);
      std::fill(out.begin(), out.end(), std::byte{0});
      auto g = reader->get(rns, std::span<const Key128>(&k, 1), std::span<const std::span<std::byte>>(&dst, 1));
      ++reads;
      if (!g || g->loaded != 1) {
        // Not found: a committed block missed. Anything else: its shard
        // did not answer (a failover's gap).
        if (g && g->stopped.code() == StatusCode::kNotFound) {
          ++misses;
        } else {
          ++errors;
        }
        continue;
      }
      if (pattern_mismatches(out.data(), 0, kBlock, k.lo) != 0) ++wrong;
    }
  }
  void finish() {
    stop = true;
    if (w.joinable()) w.join();
    if (rd.joinable()) rd.join();
  }
  ~Load() { finish(); }
  std::string summary() {
    return std::to_string(reads.load()) + " reads of committed blocks, " + std::to_string(misses.load()) +
           " missed, " + std::to_string(errors.load()) + " failed, " + std::to_string(wrong.load()) + " wrong; " +
           std::to_string(failed_batches.load()) + " put batches retried (at most " +
           std::to_string(longest_failure_run.load()) + " in a row)";
  }
};

// Every block of `ids` reads back through a new client on etcd://E with
// every byte right, and lies in the shard `map` gives it: per-shard counts.
void check_all_readable(const std::string& endpoints, const std::set<std::uint64_t>& ids, const etcd::ShardMap& map,
                        const std::vector<std::string>& shard_addresses) {
  auto fresh = connect("etcd://" + endpoints);
  auto ns = fresh->register_namespace(test_namespace(kBlock, "load"));
  REQUIRE(ns);
  std::uint64_t missing = 0, bad = 0;
  std::vector<std::size_t> per_shard(shard_addresses.size(), 0);
  std::vector<std::byte> out(kBlock);
  for (std::uint64_t id : ids) {
    const Key128 k = key_of(id);
    ++per_shard[map.shard_of(k)];
    std::span<std::byte> dst(out);
    auto g = fresh->get(*ns, std::span<const Key128>(&k, 1), std::span<const std::span<std::byte>>(&dst, 1));
    REQUIRE(g);
    if (g->loaded != 1) {
      ++missing;
      continue;
    }
    bad += pattern_mismatches(out.data(), 0, kBlock, k.lo) != 0;
  }
  CHECK(missing == 0);
  CHECK(bad == 0);
  for (std::size_t sh = 0; sh < shard_addresses.size(); ++sh) {
    auto raw = raw_client(shard_addresses[sh], rpc::Role::kTool);
    REQUIRE(raw);
    INFO("shard " << sh);
    CHECK(stats(*raw).blocks == per_shard[sh]);
  }
}

}  // namespace

TEST_CASE("two shards: a client given etcd://E puts and gets batches spanning both, every byte verified",
          "[integration][shard]") {
  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 2})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  const etcd::Client* ec = pool->client.get();
  Shard s0 = start_shard(E, 0);
  Shard s1 = start_shard(E, 1);

  auto client = connect("etcd://" + E);
  auto ns = client->register_namespace(test_namespace(kBlock, "shard"));
  REQUIRE(ns);
  auto map = etcd::read_shard_map(*ec);
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

TEST_CASE("two shards: the mapped (zero-copy, GPU path) API through etcd://E, every byte verified",
          "[integration][shard][mapped]") {
  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 2})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  Shard s0 = start_shard(E, 0);
  Shard s1 = start_shard(E, 1);
  auto map = etcd::read_shard_map(*pool->client);
  REQUIRE(map);
  auto client = connect("etcd://" + E);
  auto ns = client->register_namespace(test_namespace(kBlock, "mapped"));
  REQUIRE(ns);

  // A mapped put of 64 keys spanning both shards: the slots come back in
  // the caller's order, each in its shard's agent's region.
  constexpr std::size_t kN = 64;
  std::vector<Key128> keys;
  std::size_t on_shard[2] = {0, 0};
  for (std::size_t j = 0; j < kN; ++j) {
    keys.push_back(key_of(5000 + j));
    ++on_shard[map->shard_of(keys.back())];
  }
  REQUIRE(on_shard[0] > 0);
  REQUIRE(on_shard[1] > 0);
  auto mp = client->begin_mapped_put(*ns, keys);
  REQUIRE(mp);
  REQUIRE(mp->outcomes.size() == kN);
  std::vector<std::uint64_t> sums(kN);
  std::set<std::byte*> regions;
  for (std::size_t j = 0; j < kN; ++j) {
    INFO("key " << j << ": " << mp->errors[j].to_string());
    REQUIRE(mp->outcomes[j] == PutOutcome::kWritten);
    REQUIRE(mp->slots[j].payload != nullptr);
    CHECK(mp->slots[j].payload + kBlock <= mp->slots[j].region + mp->slots[j].region_bytes);
    regions.insert(mp->slots[j].region);
    fill_pattern(mp->slots[j].payload, 0, kBlock, keys[j].lo);
    sums[j] = pool::payload_checksum(std::span<const std::byte>(mp->slots[j].payload, kBlock));
  }
  CHECK(regions.size() == 2);  // one agent per shard
  CHECK(client->lookup(*ns, keys).value() == 0);  // nothing is visible before the commit
  auto put = client->finish_mapped_put(*mp, sums);
  REQUIRE(put);
  CHECK(put->written == kN);
  CHECK(client->finish_mapped_put(*mp, sums).error().code() == StatusCode::kFailedPrecondition);  // once only
  for (std::uint32_t shard : {0u, 1u}) {
    auto raw = raw_client(shard == 0 ? s0.address : s1.address, rpc::Role::kTool);
    REQUIRE(raw);
    CHECK(stats(*raw).blocks == on_shard[shard]);
  }

  // Read back by get(): every byte.
  {
    std::vector<std::byte> out(kN * kBlock, std::byte{0xee});
    std::vector<std::span<std::byte>> bufs;
    for (std::size_t j = 0; j < kN; ++j) bufs.emplace_back(out.data() + j * kBlock, kBlock);
    auto g = client->get(*ns, keys, bufs);
    REQUIRE(g);
    CHECK(g->loaded == kN);
    std::uint64_t wrong = 0;
    for (std::size_t j = 0; j < kN; ++j) wrong += pattern_mismatches(out.data() + j * kBlock, 0, kBlock, keys[j].lo);
    CHECK(wrong == 0);
  }

  // A mapped get, with a missing key in the middle: the prefix ends there
  // across shards; every handed-out payload is the key's bytes and matches
  // its checksum.
  {
    std::vector<Key128> ks = keys;
    ks.insert(ks.begin() + 29, key_of(1u << 30));
    auto mg = client->begin_mapped_get(*ns, ks);
    REQUIRE(mg);
    CHECK(mg->found == 29);
    CHECK(mg->stopped.code() == StatusCode::kNotFound);
    REQUIRE(mg->slots.size() == 29);
    REQUIRE(mg->checksums.size() == 29);
    std::uint64_t wrong = 0, bad_sums = 0;
    for (std::size_t j = 0; j < 29; ++j) {
      wrong += pattern_mismatches(mg->slots[j].payload, 0, kBlock, ks[j].lo);
      bad_sums += pool::payload_checksum(std::span<const std::byte>(mg->slots[j].payload, kBlock)) != mg->checksums[j];
    }
    CHECK(wrong == 0);
    CHECK(bad_sums == 0);
    client->finish_mapped_get(*mg, mg->found);
    auto all = client->begin_mapped_get(*ns, keys);
    REQUIRE(all);
    CHECK(all->found == kN);
    CHECK(all->stopped.ok());
    for (std::size_t j = 0; j < all->found; ++j) wrong += pattern_mismatches(all->slots[j].payload, 0, kBlock, keys[j].lo);
    CHECK(wrong == 0);
    client->finish_mapped_get(*all, all->found);
  }

  // A put that exists already is deduplicated per shard; an aborted put
  // leaves nothing behind on either shard.
  {
    auto again = client->begin_mapped_put(*ns, keys);
    REQUIRE(again);
    for (auto o : again->outcomes) CHECK(o == PutOutcome::kExists);
    auto fin = client->finish_mapped_put(*again, sums);
    REQUIRE(fin);
    CHECK(fin->deduplicated == kN);
    std::vector<Key128> fresh;
    for (std::size_t j = 0; j < 32; ++j) fresh.push_back(key_of(9000 + j));
    auto ab = client->begin_mapped_put(*ns, fresh);
    REQUIRE(ab);
    for (auto o : ab->outcomes) CHECK(o == PutOutcome::kWritten);
    client->abort_mapped_put(*ab);
    CHECK(client->lookup(*ns, fresh).value() == 0);
    // The aborted keys can be written again at once (their leases were
    // given back on both shards, not left to run out).
    auto re = client->begin_mapped_put(*ns, fresh);
    REQUIRE(re);
    std::vector<std::uint64_t> fs(fresh.size());
    for (std::size_t j = 0; j < fresh.size(); ++j) {
      REQUIRE(re->outcomes[j] == PutOutcome::kWritten);
      fill_pattern(re->slots[j].payload, 0, kBlock, fresh[j].lo);
      fs[j] = pool::payload_checksum(std::span<const std::byte>(re->slots[j].payload, kBlock));
    }
    auto rf = client->finish_mapped_put(*re, fs);
    REQUIRE(rf);
    CHECK(rf->written == fresh.size());
    // A wrong number of checksums is refused.
    auto bad = client->begin_mapped_put(*ns, std::span<const Key128>(keys).subspan(0, 2));
    REQUIRE(bad);
    CHECK(client->finish_mapped_put(*bad, std::span<const std::uint64_t>(sums).subspan(0, 1)).error().code() ==
          StatusCode::kInvalidArgument);
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
  for (const std::string& bad : {std::string("not json"), std::string(R"({"version": 1})"),
                                std::string(R"({"version": 2, "ranges": [{"start": 0, "end": 100, "shard": 0}]})"),
                                std::string(R"({"version": 2, "ranges": [{"start": 0, "end": 4294967296, "shard": 0},
                                                 {"start": 5, "end": 4294967296, "shard": 1}]})")}) {
    INFO(bad);
    REQUIRE((*ec)->put(etcd::kShardMapKey, bad));
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

TEST_CASE("a third shard added under load: every committed block stays readable and ends in exactly one shard",
          "[integration][shard]") {
  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 2})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  const etcd::Client* ec = pool->client.get();
  std::vector<Shard> shards;
  shards.push_back(start_shard(E, 0));
  shards.push_back(start_shard(E, 1));
  // Shard 2 starts before the map names it: it leads, its agent joins, and
  // it refuses every key until a version gives it a range.
  shards.push_back(start_shard(E, 2));

  constexpr std::uint64_t kTotal = 640;
  Load load;
  load.start(E, kTotal, 192);  // the writer writes blocks [0, limit)
  REQUIRE(eventually([&] { return load.next.load() >= 192; }, scaled(30s)));
  // The operator adds shard 2: the upper half of the largest range moves to
  // it (version 2, moving), then shard 0 (its old owner) copies the blocks
  // over and publishes version 3 with the range no longer moving.
  auto map = etcd::read_shard_map(*ec);
  REQUIRE(map);
  auto grown = etcd::add_shard(*map, 2);
  REQUIRE(grown);
  const auto moved = grown->ranges[1];
  REQUIRE(moved.shard == 2);
  REQUIRE(moved.from.has_value());
  pool->put_map(etcd::encode_shard_map(*grown));
  const auto t0 = Clock::now();
  const std::uint64_t written_before = load.next.load();
  load.limit = 448;  // written while the range moves
  const auto final_map = pool->wait_for_map(grown->version + 1, scaled(60s));
  REQUIRE(final_map);
  const double move_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::uint64_t written_during = load.next.load() - written_before;
  CHECK(written_during > 0);
  load.limit = kTotal;  // and after
  for (const auto& r : final_map->ranges) CHECK_FALSE(r.from.has_value());
  REQUIRE(eventually([&] { return load.next.load() >= kTotal; }, scaled(60s)));
  load.finish();
  std::printf("shard added under load: move done in %.1f s, %llu blocks written meanwhile; %s\n", move_s,
              static_cast<unsigned long long>(written_during), load.summary().c_str());
  std::fflush(stdout);
  CHECK(load.reads.load() > 50);
  CHECK(load.misses.load() == 0);
  CHECK(load.errors.load() == 0);
  CHECK(load.wrong.load() == 0);

  // Every committed block reads back, through a client that knows only the
  // final map, and lies in exactly one shard: the one the map names, and
  // some of them in the range that moved.
  std::set<std::uint64_t> ids(load.committed.begin(), load.committed.end());
  CHECK(ids.size() == kTotal);
  std::uint64_t in_moved = 0;
  for (std::uint64_t id : ids) {
    const std::uint32_t p = etcd::key_point(key_of(id));
    if (p >= moved.start && p < moved.end) ++in_moved;
  }
  CHECK(in_moved > 0);
  check_all_readable(E, ids, *final_map, {shards[0].address, shards[1].address, shards[2].address});
}

TEST_CASE("one shard to two under load: a worker connected under one shard follows the map, no block missed",
          "[integration][shard]") {
  // One shard in the map; shard 1 is started outside it (it leads and
  // refuses every key until the map names it).
  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 1})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  Shard s0 = start_shard(E, 0);
  Shard s1 = start_shard(E, 1);

  constexpr std::uint64_t kTotal = 512;
  Load load;
  load.start(E, kTotal, 192);
  REQUIRE(eventually([&] { return load.next.load() >= 192; }, scaled(30s)));
  // The workers connected under one shard; the operator adds shard 1 under
  // their load and waits for the move.
  const std::uint64_t written_before = load.next.load();
  load.limit = 384;
  const auto t0 = Clock::now();
  auto [rc, out] = run_shell(bin_dir() + "/pooltool --coordinator etcd://" + E + " shards add 1 --wait");
  const double move_s = std::chrono::duration<double>(Clock::now() - t0).count();
  INFO(out);
  REQUIRE(rc == 0);
  CHECK_THAT(out, Catch::Contains("moved in"));
  CHECK_THAT(out, !Catch::Contains("reconnect"));
  const std::uint64_t written_during = load.next.load() - written_before;
  load.limit = kTotal;
  REQUIRE(eventually([&] { return load.next.load() >= kTotal; }, scaled(60s)));
  load.finish();
  std::printf("one shard to two under load: pooltool shards add 1 --wait took %.1f s, %llu blocks written meanwhile; "
              "%s\n",
              move_s, static_cast<unsigned long long>(written_during), load.summary().c_str());
  std::fflush(stdout);
  CHECK(written_during > 0);
  CHECK(load.reads.load() > 50);
  CHECK(load.misses.load() == 0);
  CHECK(load.errors.load() == 0);
  CHECK(load.wrong.load() == 0);
  CHECK(load.longest_failure_run.load() <= 1);  // no failed call beyond a retry

  auto map = etcd::read_shard_map(*pool->client);
  REQUIRE(map);
  CHECK(map->shards().size() == 2);
  for (const auto& r : map->ranges) CHECK_FALSE(r.from.has_value());
  std::set<std::uint64_t> ids(load.committed.begin(), load.committed.end());
  CHECK(ids.size() == kTotal);
  check_all_readable(E, ids, *map, {s0.address, s1.address});
  // The worker's own client routes by the new map: both shards got writes
  // after the move.
  auto raw1 = raw_client(s1.address, rpc::Role::kTool);
  REQUIRE(raw1);
  CHECK(stats(*raw1).blocks > 0);
}

TEST_CASE("the moving shard's leader killed mid-move: the standby finishes the move, no block lost, no wrong byte",
          "[integration][shard][failover]") {
  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 1})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  const etcd::Client* ec = pool->client.get();
  Shard s0 = start_shard(E, 0, "192MiB");
  Standby standby = start_standby(E, 0);
  Shard s1 = start_shard(E, 1, "192MiB");

  // Enough blocks that copying half of them takes a while.
  constexpr std::uint64_t kBefore = 1536, kTotal = 1792;
  Load load;
  load.start(E, kTotal, kBefore);
  REQUIRE(eventually([&] { return load.next.load() >= kBefore; }, scaled(90s)));

  auto raw1 = raw_client(s1.address, rpc::Role::kTool);
  REQUIRE(raw1);
  REQUIRE(stats(*raw1).blocks == 0);
  auto map = etcd::read_shard_map(*ec);
  REQUIRE(map);
  auto grown = etcd::add_shard(*map, 1);
  REQUIRE(grown);
  pool->put_map(etcd::encode_shard_map(*grown));
  // Shard 0's leader waits out the write lease, then copies: kill -9 it as
  // soon as the first copies show up at shard 1.
  for (auto d = Deadline::after(scaled(30s)); stats(*raw1).blocks == 0;) {
    REQUIRE_FALSE(d.expired());
    std::this_thread::sleep_for(1ms);
  }
  s0.coordinator->kill(SIGKILL);
  const auto t_kill = Clock::now();
  const std::uint64_t copied_at_kill = stats(*raw1).blocks;
  auto at_kill = etcd::read_shard_map(*ec);
  REQUIRE(at_kill);
  INFO("shard 1 held " << copied_at_kill << " blocks at the kill");
  REQUIRE(at_kill->version == grown->version);  // killed mid-move: the range still moving

  // The standby takes over and its mover ends the move.
  const std::uint16_t port = read_port_file(standby.port_file, Deadline::after(scaled(20s)));
  REQUIRE(port != 0);
  const double takeover_s = std::chrono::duration<double>(Clock::now() - t_kill).count();
  const std::string new0 = "127.0.0.1:" + std::to_string(port);
  const auto final_map = pool->wait_for_map(grown->version + 1, scaled(60s));
  REQUIRE(final_map);
  const double move_s = std::chrono::duration<double>(Clock::now() - t_kill).count();
  for (const auto& r : final_map->ranges) CHECK_FALSE(r.from.has_value());
  // Writes go on after the failover, to both shards.
  load.limit = kTotal;
  REQUIRE(eventually([&] { return load.next.load() >= kTotal; }, scaled(60s)));
  std::this_thread::sleep_for(scaled(500ms));
  load.finish();
  std::printf("leader of the moving shard killed mid-move (shard 1 held %llu copied blocks): standby leading after "
              "%.1f s, move done %.1f s after the kill; %s\n",
              static_cast<unsigned long long>(copied_at_kill), takeover_s, move_s, load.summary().c_str());
  std::fflush(stdout);
  CHECK(load.wrong.load() == 0);
  CHECK(load.reads.load() > 50);

  // No committed block lost: every one reads back with every byte right,
  // from the one shard the final map gives it.
  std::set<std::uint64_t> ids(load.committed.begin(), load.committed.end());
  CHECK(ids.size() == kTotal);
  check_all_readable(E, ids, *final_map, {new0, s1.address});
}

TEST_CASE("an agent rejoining the new leader late keeps a move from ending until its blocks are copied",
          "[integration][shard][failover]") {
  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 1})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  const etcd::Client* ec = pool->client.get();
  // The agent's membership in etcd outlives the freeze below (TTL 60 s): it
  // is frozen, not dead, and its record is what keeps the move open.
  Shard s0 = start_shard(E, 0, "128MiB", {"--membership-ttl", "60"});
  Standby standby = start_standby(E, 0);
  Shard s1 = start_shard(E, 1, "128MiB");

  std::uint64_t incarnation = 0;
  {
    auto raw = raw_client(s0.address, rpc::Role::kTool);
    REQUIRE(raw);
    rpc::ListAgentsReply rep;
    auto reply = raw->call(rpc::kListAgents, std::string(), Deadline::after(scaled(10s)));
    REQUIRE(reply);
    REQUIRE(rpc::decode(*reply, rep).ok());
    REQUIRE(rep.agents.size() == 1);
    incarnation = rep.agents[0].incarnation;
  }
  REQUIRE(eventually([&] {
    auto members = etcd::list_members(*ec);
    if (!members) return false;
    for (const auto& m : *members) {
      if (m.name == "shard0-a" && m.shard == 0 && m.incarnation == incarnation) return true;
    }
    return false;
  }, scaled(10s)));

  constexpr std::uint64_t kBlocks = 512;
  Load load;
  load.start(E, kBlocks, kBlocks);
  REQUIRE(eventually([&] { return load.next.load() >= kBlocks; }, scaled(60s)));
  auto map = etcd::read_shard_map(*ec);
  REQUIRE(map);
  auto grown = etcd::add_shard(*map, 1);
  REQUIRE(grown);
  pool->put_map(etcd::encode_shard_map(*grown));
  std::this_thread::sleep_for(300ms);
  // Mid-move (shard 0's leader waits out the write lease before copying):
  // the agent stops answering and the leader dies.
  REQUIRE(freeze(s0.agent->pid()));
  s0.coordinator->kill(SIGKILL);
  const std::uint16_t port = read_port_file(standby.port_file, Deadline::after(scaled(20s)));
  REQUIRE(port != 0);
  // The new leader's mover finds nothing of the range in its index (the
  // agent has not rejoined) past the write lease and the agent timeout: the
  // agent's membership keeps the move open.
  std::this_thread::sleep_for(4s);
  auto held = etcd::read_shard_map(*ec);
  REQUIRE(held);
  CHECK(held->version == grown->version);
  s0.agent->kill(SIGCONT);
  const auto final_map = pool->wait_for_map(grown->version + 1, scaled(60s));
  REQUIRE(final_map);
  load.finish();
  std::printf("an agent rejoining late: %s\n", load.summary().c_str());
  std::fflush(stdout);
  CHECK(load.wrong.load() == 0);
  std::set<std::uint64_t> ids(load.committed.begin(), load.committed.end());
  CHECK(ids.size() == kBlocks);
  check_all_readable(E, ids, *final_map, {"127.0.0.1:" + std::to_string(port), s1.address});
}
