// Adding a shard with an isolated tenant's blocks in the moving range (issue
// 9 x issue 5): the old shard's RangeMover copies them with the tenant's
// credential (the cluster secret is refused on an isolated tenant's
// namespace), into the tenant's isolated region on the new shard's agent.
// Real etcd, real coordinators and agents; both coordinators read the same
// tenants file.

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "runtime/common/pattern.h"
#include "runtime/common/secret.h"
#include "runtime/etcd/shard_map.h"
#include "tests/integration/pool_fixture.h"
#include "tests/integration/shard_fixture.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 64 << 10;

Key128 key_of(std::uint64_t tag, std::uint64_t i) { return Key128{i * 0x9e3779b97f4a7c15ull + 11, tag}; }

std::unique_ptr<Client> connect_with(const std::string& coordinator, const std::string& secret_file) {
  ClientOptions o;
  o.coordinator = coordinator;
  o.timeout = scaled(10s);
  o.secret_file = secret_file;
  auto c = Client::connect(o);
  REQUIRE(c);
  return std::move(*c);
}

// Live regions of `tenant` ("" for the shared pool), as the operator sees them.
std::vector<rpc::AgentStatsRecord> live_regions(rpc::Client& admin, const std::string& tenant) {
  std::vector<rpc::AgentStatsRecord> out;
  for (const auto& a : agent_stats(admin)) {
    if (a.alive && a.tenant == tenant) out.push_back(a);
  }
  return out;
}

std::uint64_t seed_of(std::uint64_t tag, std::uint64_t i) { return tag * 100000 + i; }

void put_blocks(Client& c, NamespaceId ns, std::uint64_t tag, std::size_t n) {
  std::vector<Key128> keys;
  std::vector<std::vector<std::byte>> blocks;
  std::vector<std::span<const std::byte>> spans;
  for (std::size_t i = 0; i < n; ++i) {
    keys.push_back(key_of(tag, i));
    blocks.emplace_back(kBlock);
    fill_pattern(blocks.back().data(), 0, kBlock, seed_of(tag, i));
  }
  for (const auto& b : blocks) spans.emplace_back(b);
  auto put = c.put(ns, keys, spans);
  REQUIRE(put);
  REQUIRE(put->written + put->deduplicated == n);
}

// Blocks [0, n) of `tag` that read back through `c` with every byte right.
std::size_t read_right(Client& c, NamespaceId ns, std::uint64_t tag, std::size_t n) {
  std::size_t right = 0;
  std::vector<std::byte> out(kBlock);
  for (std::size_t i = 0; i < n; ++i) {
    const Key128 k = key_of(tag, i);
    std::span<std::byte> dst(out);
    auto g = c.get(ns, std::span<const Key128>(&k, 1), std::span<const std::span<std::byte>>(&dst, 1));
    if (g && g->loaded == 1 && pattern_mismatches(out.data(), 0, kBlock, seed_of(tag, i)) == 0) ++right;
  }
  return right;
}

// The cluster secret (KVPOOL_SECRET_FILE, inherited by every process the
// test starts), tenant acme's credential, and a tenants file naming acme
// isolated (8 MiB regions) for the coordinators.
struct TenantFiles {
  std::string cluster, acme, tenants;
};
TenantFiles acme_files() {
  TenantFiles f;
  f.cluster = use_test_secret();
  const std::string own = make_secret_file();  // its directory holds the tenant's files
  const std::string dir = own.substr(0, own.rfind('/'));
  f.acme = dir + "/acme";
  f.tenants = dir + "/tenants";
  REQUIRE(create_tenant_secret_file(f.acme, "acme").ok());
  {
    std::ofstream out(f.tenants);
    out << "tenant acme " << load_secret(f.acme).value().key() << " namespaces=acme/* isolated=8MiB\n";
  }
  REQUIRE(::chmod(f.tenants.c_str(), 0600) == 0);
  return f;
}

// Checks that `keys` of namespace `ns` lie in acme's one isolated region at
// the coordinator `address` (`admin` is an operator's connection to it), as
// the tenant looks them up; returns that region.
rpc::AgentStatsRecord expect_in_acme_region(rpc::Client& admin, const std::string& address,
                                            const std::string& acme, NamespaceId ns,
                                            const std::vector<Key128>& keys) {
  const auto regions = live_regions(admin, "acme");
  REQUIRE(regions.size() == 1);
  auto raw_tenant = raw_with(address, acme);
  REQUIRE(raw_tenant);
  rpc::LookupReply locs;
  REQUIRE(raw_call(*raw_tenant, rpc::kLookup, rpc::LookupRequest{ns, false, keys}, locs).ok());
  CHECK(locs.locations.size() == keys.size());
  for (const auto& l : locs.locations) {
    CHECK(l.agent == regions[0].agent);
    CHECK(l.payload_offset + l.length <= regions[0].region_bytes);
  }
  return regions[0];
}

}  // namespace

TEST_CASE("adding a shard moves an isolated tenant's blocks into its isolated region on the new shard",
          "[integration][shard][tenants][isolated]") {
  const TenantFiles files = acme_files();
  const std::string& cluster = files.cluster;
  const std::string& acme = files.acme;
  const std::string& tenants = files.tenants;

  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 1})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  // Shard 1 starts outside the map: it leads and refuses every key until a
  // map version gives it a range.
  Shard s0 = start_shard(E, 0, "64MiB", {}, {"--tenants", tenants});
  Shard s1 = start_shard(E, 1, "64MiB", {}, {"--tenants", tenants});
  auto admin0 = raw_with(s0.address, cluster, rpc::Role::kTool);
  auto admin1 = raw_with(s1.address, cluster, rpc::Role::kTool);
  REQUIRE(admin0);
  REQUIRE(admin1);
  // Each agent lends acme a region of its own once registered.
  REQUIRE(eventually([&] { return live_regions(*admin0, "acme").size() == 1; }, scaled(15s)));
  REQUIRE(eventually([&] { return live_regions(*admin1, "acme").size() == 1; }, scaled(15s)));

  // The tenant and a shared client, both on etcd://E, write their blocks
  // (all in shard 0 for now).
  constexpr std::size_t kTenantBlocks = 48, kSharedBlocks = 32;
  auto tenant = connect_with("etcd://" + E, acme);
  auto shared = connect_with("etcd://" + E, cluster);
  const NamespaceId tns = tenant->register_namespace(test_namespace(kBlock, "acme/model")).value();
  const NamespaceId sns = shared->register_namespace(test_namespace(kBlock, "shared/model")).value();
  put_blocks(*tenant, tns, 1, kTenantBlocks);
  put_blocks(*shared, sns, 2, kSharedBlocks);
  REQUIRE(read_right(*tenant, tns, 1, kTenantBlocks) == kTenantBlocks);
  REQUIRE(read_right(*shared, sns, 2, kSharedBlocks) == kSharedBlocks);

  // The operator adds shard 1: the upper half of the key space moves to it
  // (version 2, moving); shard 0's leader copies the blocks over and
  // publishes version 3 with the range no longer moving. Before the mover
  // copied isolated tenants' blocks with the tenant's credential, this never
  // happened: the cluster secret is refused on acme's namespace.
  auto map = etcd::read_shard_map(*pool->client);
  REQUIRE(map);
  auto grown = etcd::add_shard(*map, 1);
  REQUIRE(grown);
  etcd::ShardRange moved;
  for (const auto& r : grown->ranges) {
    if (r.from.has_value()) moved = r;
  }
  REQUIRE(moved.shard == 1);
  std::vector<std::size_t> tenant_moved;  // indices of acme's blocks in the moving range
  for (std::size_t i = 0; i < kTenantBlocks; ++i) {
    const std::uint32_t p = etcd::key_point(key_of(1, i));
    if (p >= moved.start && p < moved.end) tenant_moved.push_back(i);
  }
  REQUIRE(tenant_moved.size() > 0);
  REQUIRE(tenant_moved.size() < kTenantBlocks);
  pool->put_map(etcd::encode_shard_map(*grown));
  const auto t0 = Clock::now();
  const auto final_map = pool->wait_for_map(grown->version + 1, scaled(60s));
  const bool ended = final_map.has_value();
  const double move_s = std::chrono::duration<double>(Clock::now() - t0).count();
  INFO("the move did not end within 60 s: the map stayed at version " << grown->version << ", the range moving");
  REQUIRE(ended);
  std::printf("isolated tenant's range moved in %.1f s (%zu of %zu tenant blocks in the range)\n", move_s,
              tenant_moved.size(), kTenantBlocks);
  std::fflush(stdout);
  CHECK(final_map->version == grown->version + 1);
  for (const auto& r : final_map->ranges) CHECK_FALSE(r.from.has_value());

  // Every tenant block reads back with every byte right: through the
  // tenant's client from before the move, and through a fresh one.
  CHECK(read_right(*tenant, tns, 1, kTenantBlocks) == kTenantBlocks);
  auto fresh = connect_with("etcd://" + E, acme);
  REQUIRE(fresh->register_namespace(test_namespace(kBlock, "acme/model")).value() == tns);
  CHECK(read_right(*fresh, tns, 1, kTenantBlocks) == kTenantBlocks);
  CHECK(read_right(*shared, sns, 2, kSharedBlocks) == kSharedBlocks);

  // The moved ones lie in acme's isolated region of shard 1's agent, inside
  // the region, as the tenant sees it (lookup, ListAgents) and as the
  // operator does (the region's size).
  std::vector<Key128> moved_keys;
  for (std::size_t i : tenant_moved) moved_keys.push_back(key_of(1, i));
  const auto region = expect_in_acme_region(*admin1, s1.address, acme, tns, moved_keys);
  CHECK(region.region_bytes == (8u << 20));
  auto raw_tenant1 = raw_with(s1.address, acme);
  REQUIRE(raw_tenant1);
  auto agents = list_agents(*raw_tenant1);
  REQUIRE(agents.size() == 1);
  CHECK(agents[0].tenant == "acme");
  CHECK(agents[0].agent == region.agent);
  // Shard 1 holds exactly the moved tenant blocks plus the shared ones of
  // its range; shard 0 the rest: nothing is left behind or doubled.
  std::size_t shared_moved = 0;
  for (std::size_t i = 0; i < kSharedBlocks; ++i) shared_moved += final_map->shard_of(key_of(2, i)) == 1;
  CHECK(stats(*admin1).blocks == tenant_moved.size() + shared_moved);
  CHECK(stats(*admin0).blocks == kTenantBlocks - tenant_moved.size() + kSharedBlocks - shared_moved);

  // The cluster secret still cannot read the tenant's blocks, at the new
  // shard or through etcd://E.
  auto raw_shared1 = raw_with(s1.address, cluster);
  REQUIRE(raw_shared1);
  rpc::LookupReply denied;
  Status s = raw_call(*raw_shared1, rpc::kLookup, rpc::LookupRequest{tns, false, moved_keys}, denied);
  INFO(s.to_string());
  CHECK(s.code() == StatusCode::kPermissionDenied);
  CHECK(read_right(*shared, tns, 1, kTenantBlocks) == 0);
}

TEST_CASE("a new shard without the isolated tenant: the shared blocks move, the tenant's wait until its "
          "coordinator has the tenants file",
          "[integration][shard][tenants][isolated]") {
  const TenantFiles files = acme_files();
  const std::string& cluster = files.cluster;
  const std::string& acme = files.acme;
  const std::string& tenants = files.tenants;

  auto pool = start_sharded_etcd(R"({"version": 1, "shards": 1})");
  if (!pool) return;
  const std::string E = pool->endpoints;
  Shard s0 = start_shard(E, 0, "64MiB", {}, {"--tenants", tenants});
  Shard s1 = start_shard(E, 1, "64MiB");  // no --tenants: it knows no tenant
  auto admin0 = raw_with(s0.address, cluster, rpc::Role::kTool);
  REQUIRE(admin0);
  REQUIRE(eventually([&] { return live_regions(*admin0, "acme").size() == 1; }, scaled(15s)));

  constexpr std::size_t kTenantBlocks = 32, kSharedBlocks = 32;
  auto tenant = connect_with("etcd://" + E, acme);
  auto shared = connect_with("etcd://" + E, cluster);
  const NamespaceId tns = tenant->register_namespace(test_namespace(kBlock, "acme/model")).value();
  const NamespaceId sns = shared->register_namespace(test_namespace(kBlock, "shared/model")).value();
  put_blocks(*tenant, tns, 1, kTenantBlocks);
  put_blocks(*shared, sns, 2, kSharedBlocks);

  auto map = etcd::read_shard_map(*pool->client);
  REQUIRE(map);
  auto grown = etcd::add_shard(*map, 1);
  REQUIRE(grown);
  std::size_t tenant_moved = 0, shared_moved = 0;
  for (std::size_t i = 0; i < kTenantBlocks; ++i) tenant_moved += grown->shard_of(key_of(1, i)) == 1;
  for (std::size_t i = 0; i < kSharedBlocks; ++i) shared_moved += grown->shard_of(key_of(2, i)) == 1;
  REQUIRE(tenant_moved > 0);
  REQUIRE(shared_moved > 0);
  pool->put_map(etcd::encode_shard_map(*grown));

  // The shared blocks of the range move; the tenant's cannot (shard 1
  // refuses the tenant's credential), so they stay at shard 0 and the range
  // keeps moving.
  auto admin1 = raw_with(s1.address, cluster, rpc::Role::kTool);
  REQUIRE(admin1);
  REQUIRE(eventually([&] { return stats(*admin1).blocks == shared_moved; }, scaled(30s)));
  std::this_thread::sleep_for(scaled(3s));  // a few more rounds of the mover
  auto held = etcd::read_shard_map(*pool->client);
  REQUIRE(held);
  CHECK(held->version == grown->version);
  CHECK(stats(*admin0).blocks == kTenantBlocks + kSharedBlocks - shared_moved);
  CHECK(stats(*admin1).blocks == shared_moved);

  // Shard 1's coordinator restarted with the tenants file: its agent rejoins
  // and lends acme a region; the mover, trying each round, moves the
  // tenant's blocks there and ends the move.
  admin1.reset();
  s1.coordinator->kill(SIGTERM);
  REQUIRE(s1.coordinator->wait(Deadline::after(scaled(15s))));
  const std::string port_file = temp_path("shard1-port");
  auto c = Subprocess::spawn(shard_coordinator_argv(E, 1, port_file, {"--tenants", tenants}));
  REQUIRE(c);
  s1.coordinator = std::make_unique<Subprocess>(std::move(*c));
  const std::uint16_t port = read_port_file(port_file, Deadline::after(scaled(30s)));
  REQUIRE(port != 0);
  s1.address = "127.0.0.1:" + std::to_string(port);
  admin1 = raw_with(s1.address, cluster, rpc::Role::kTool);
  REQUIRE(admin1);
  const auto final_map = pool->wait_for_map(grown->version + 1, scaled(60s));
  INFO("the move did not end within 60 s of shard 1 getting the tenants file");
  REQUIRE(final_map.has_value());
  CHECK(final_map->version == grown->version + 1);
  auto fresh = connect_with("etcd://" + E, acme);
  REQUIRE(fresh->register_namespace(test_namespace(kBlock, "acme/model")).value() == tns);
  CHECK(read_right(*fresh, tns, 1, kTenantBlocks) == kTenantBlocks);
  CHECK(read_right(*shared, sns, 2, kSharedBlocks) == kSharedBlocks);
  std::vector<Key128> moved_keys;
  for (std::size_t i = 0; i < kTenantBlocks; ++i) {
    if (grown->shard_of(key_of(1, i)) == 1) moved_keys.push_back(key_of(1, i));
  }
  CHECK(moved_keys.size() == tenant_moved);
  expect_in_acme_region(*admin1, s1.address, acme, tns, moved_keys);
  CHECK(stats(*admin0).blocks == kTenantBlocks - tenant_moved + kSharedBlocks - shared_moved);
}
