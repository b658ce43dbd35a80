// CoordinatorCore placement and eviction: watermarks, local-first and spread
// placement, size-aware eviction and its per-call bound.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <vector>

#include "coordinator/coordinator_core.h"
#include "tests/coordinator/core_fixture.h"

using namespace std::chrono_literals;
using kvpool::Key128;
using kvpool::StatusCode;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

TEST_CASE("eviction under pressure keeps the pool writable and never evicts leased blocks", "[coordinator]") {
  Harness h;  // default watermarks 0.95 / 0.90
  const AgentId a = h.add_agent("a", "h1", 40);
  std::vector<std::uint64_t> leased_keys;
  std::uint64_t unavailable = 0;
  for (std::uint64_t k = 1; k <= 400; ++k) {
    AllocateItem item = h.alloc(k, "h1");
    int tries = 0;
    while (item.outcome == AllocateOutcome::kError) {
      REQUIRE(item.status.code() == StatusCode::kUnavailable);
      ++unavailable;
      REQUIRE(++tries < 3);
      h.tick();
      h.ack_all();
      item = h.alloc(k, "h1");
    }
    REQUIRE(item.outcome == AllocateOutcome::kPlaced);
    REQUIRE(h.core->commit(std::span<const LeaseId>(&item.lease, 1), h.now)[0].ok());
    if (k % 40 == 0) {
      LeaseId lease{};
      REQUIRE(h.lookup({k}, true, &lease).size() == 1);
      leased_keys.push_back(k);
    }
    for (std::uint64_t lk : leased_keys) REQUIRE(h.present(lk));
    if (k % 7 == 0) h.ack_all();  // acknowledgements arrive in their own time
    const AgentView v = h.view(a);
    REQUIRE(v.live_bytes <= v.capacity_bytes * 95 / 100);
  }
  CHECK(leased_keys.size() == 10);
  CHECK(evicted(h) >= 400 - 40);
  h.check();
}

TEST_CASE("with high == low watermarks each allocation evicts exactly what it needs", "[coordinator]") {
  SECTION("with slack below the capacity, allocations place at once") {
    Harness h(exact_lru_config(0.75));
    const AgentId a = h.add_agent("a", "h1", 8);  // watermark: 6 blocks
    for (int k = 1; k <= 6; ++k) h.put(k);
    CHECK(evicted(h) == 0);
    h.put(7);
    CHECK(evicted(h) == 1);
    CHECK_FALSE(h.present(1));
    CHECK(blocks_on(h, a) == 6);
    REQUIRE(h.lookup({2}).size() == 1);  // 2 is now recently used: 3 goes next
    h.put(8);
    CHECK(evicted(h) == 2);
    CHECK(h.present(2));
    CHECK_FALSE(h.present(3));
    CHECK(blocks_on(h, a) == 6);
    // Both evicted slots await acknowledgement: no room until it comes.
    CHECK(h.alloc(9).status.code() == StatusCode::kUnavailable);
    CHECK(evicted(h) == 3);
    h.ack_all();
    h.put(9);
    CHECK(evicted(h) == 3);
    CHECK(blocks_on(h, a) == 6);
  }
  SECTION("at the full capacity, each allocation waits for its eviction's acknowledgement") {
    Harness h(exact_lru_config(1.0));
    const AgentId a = h.add_agent("a", "h1", 4);
    for (int k = 1; k <= 4; ++k) h.put(k);
    for (std::uint64_t k = 5; k <= 12; ++k) {
      CHECK(h.alloc(k).status.code() == StatusCode::kUnavailable);
      CHECK(evicted(h) == k - 4);
      CHECK(h.alloc(k).status.code() == StatusCode::kUnavailable);  // no second eviction while one is pending
      CHECK(evicted(h) == k - 4);
      h.ack_all();
      h.put(k);
      CHECK(blocks_on(h, a) == 4);
      CHECK_FALSE(h.present(k - 4));
    }
  }
}

TEST_CASE("local-first placement prefers the writer's host and spills to the least-full remote", "[coordinator]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 4);
  const AgentId b = h.add_agent("b", "h2", 8);
  const AgentId c = h.add_agent("c", "h3", 8);
  std::vector<LeaseId> writing;
  for (int k = 1; k <= 4; ++k) {
    AllocateItem item = h.alloc(k, "h1");
    REQUIRE(item.outcome == AllocateOutcome::kPlaced);
    CHECK(item.location.agent == a);
    writing.push_back(item.lease);
  }
  // a is full of blocks being written: nothing to evict there.
  AllocateItem spill = h.alloc(5, "h1");
  REQUIRE(spill.outcome == AllocateOutcome::kPlaced);
  CHECK(spill.location.agent == b);  // b and c tie; the lower id wins
  spill = h.alloc(6, "h1");
  REQUIRE(spill.outcome == AllocateOutcome::kPlaced);
  CHECK(spill.location.agent == c);  // now the least full
  CHECK(h.alloc(7, "h3").location.agent == c);
  CHECK(h.alloc(8, "").location.agent == b);  // no host: least full
  CHECK(h.alloc(9, "h-unknown").location.agent == b);
}

TEST_CASE("local-first placement evicts on the writer's host rather than spilling when it can", "[coordinator]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 20);
  const AgentId b = h.add_agent("b", "h2", 20);
  for (int k = 1; k <= 60; ++k) {
    CHECK(h.put(k, "h1").agent == a);
    h.ack_all();  // the agent acknowledges invalidations promptly
  }
  CHECK(evicted(h) > 0);
  CHECK(blocks_on(h, b) == 0);
}

TEST_CASE("spread placement always takes the least-full agent", "[coordinator]") {
  CoordinatorConfig config;
  config.placement = PlacementPolicy::kSpread;
  Harness h(config);
  const AgentId a = h.add_agent("a", "h1", 4);
  const AgentId b = h.add_agent("b", "h2", 8);
  std::vector<AgentId> got;
  for (int k = 1; k <= 6; ++k) got.push_back(h.put(k, "h1").agent);
  CHECK(got == std::vector<AgentId>{a, b, b, a, b, b});  // by used fraction: 0/4 0/8, 1/4 0/8, 1/4 1/8, ...
}

TEST_CASE("eviction prefers a block of the requested size when free space is in crumbs", "[coordinator]") {
  Harness h(exact_lru_config());
  auto small_ns = h.core->register_namespace(test_namespace(64 * 1024, "small"));
  REQUIRE(small_ns);
  // 48 granules: one 16-granule block, then 32 one-granule blocks.
  const AgentId a = h.core->register_agent(agent_reg("a", "h1", 3 * kBlock), h.now).value();
  const Location big = h.put(1000);
  for (std::uint64_t k = 0; k < 32; ++k) {
    BlockRequest req{key(k), 64 * 1024};
    auto r = h.core->allocate(*small_ns, std::span<const BlockRequest>(&req, 1), {}, h.now);
    REQUIRE(r->items[0].outcome == AllocateOutcome::kPlaced);
    REQUIRE(h.core->commit(std::span<const LeaseId>(&r->items[0].lease, 1), h.now)[0].ok());
  }
  // Every other small block removed: 16 free granules, none adjacent.
  std::vector<Key128> odd;
  for (std::uint64_t k = 1; k < 32; k += 2) odd.push_back(key(k));
  auto removed = h.core->remove(*small_ns, odd, h.now);
  REQUIRE(removed);
  for (auto& inv : removed->invalidations) h.pending.push_back(inv);
  h.ack_all();
  REQUIRE(h.lookup({1000}).size() == 1);  // the big block is the most recently used

  CHECK(h.alloc(2000).status.code() == StatusCode::kUnavailable);
  CHECK(evicted(h) == 1);
  CHECK_FALSE(h.present(1000));
  h.ack_all();
  const AllocateItem placed = h.alloc(2000);
  REQUIRE(placed.outcome == AllocateOutcome::kPlaced);
  CHECK(placed.location.payload_offset == big.payload_offset);
  CHECK(h.view(a).blocks == 16);
  h.check();
}

TEST_CASE("eviction for a large block among small ones frees one window, not the whole pool", "[coordinator]") {
  Harness h(exact_lru_config());
  auto small_ns = h.core->register_namespace(test_namespace(64 * 1024, "small"));
  REQUIRE(small_ns);
  const AgentId a = h.core->register_agent(agent_reg("a", "h1", 64 * kBlock), h.now).value();  // 1024 granules
  for (std::uint64_t k = 0; k < 1024; ++k) {
    BlockRequest req{key(k), 64 * 1024};
    auto r = h.core->allocate(*small_ns, std::span<const BlockRequest>(&req, 1), {}, h.now);
    REQUIRE(r->items[0].outcome == AllocateOutcome::kPlaced);
    REQUIRE(h.core->commit(std::span<const LeaseId>(&r->items[0].lease, 1), h.now)[0].ok());
  }
  // Use them in a scattered order, so LRU order is unrelated to placement.
  std::vector<std::uint64_t> order(1024);
  for (std::uint64_t k = 0; k < 1024; ++k) order[k] = (k * 389) % 1024;
  for (std::uint64_t k : order) {
    Key128 kk = key(k);
    REQUIRE(h.core->lookup(*small_ns, std::span<const Key128>(&kk, 1), false, h.now)->locations.size() == 1);
  }
  AllocateItem item = h.alloc(5000);
  CHECK(item.status.code() == StatusCode::kUnavailable);
  h.ack_all();
  item = h.alloc(5000);
  REQUIRE(item.outcome == AllocateOutcome::kPlaced);
  const std::uint64_t n_evicted = evicted(h);
  CHECK(n_evicted >= 16);
  CHECK(n_evicted <= 40);  // 16 by LRU for the bytes, at most ~16 more for a contiguous window
  CHECK(h.view(a).blocks == 1024 - n_evicted);
  h.check();
}

TEST_CASE("eviction work per call is bounded and still makes progress across calls", "[coordinator]") {
  CoordinatorConfig config = exact_lru_config();
  config.max_evictions_per_call = 4;
  Harness h(config);
  auto small_ns = h.core->register_namespace(test_namespace(64 * 1024, "small"));
  REQUIRE(small_ns);
  const AgentId a = h.core->register_agent(agent_reg("a", "h1", 4 * kBlock), h.now).value();  // 64 granules
  for (std::uint64_t k = 0; k < 64; ++k) {
    BlockRequest req{key(k), 64 * 1024};
    auto r = h.core->allocate(*small_ns, std::span<const BlockRequest>(&req, 1), {}, h.now);
    REQUIRE(h.core->commit(std::span<const LeaseId>(&r->items[0].lease, 1), h.now)[0].ok());
  }
  for (std::uint64_t k = 0; k < 64; ++k) {  // scattered LRU order
    Key128 kk = key((k * 37) % 64);
    REQUIRE(h.core->lookup(*small_ns, std::span<const Key128>(&kk, 1), false, h.now)->locations.size() == 1);
  }
  int calls = 0;
  std::uint64_t last_evictions = 0;
  AllocateItem item = h.alloc(9000);
  while (item.outcome != AllocateOutcome::kPlaced) {
    REQUIRE(item.status.code() == StatusCode::kUnavailable);
    const std::uint64_t evictions = evicted(h);
    CHECK(evictions - last_evictions <= 4);
    last_evictions = evictions;
    REQUIRE(++calls < 30);
    h.tick();
    h.ack_all();
    item = h.alloc(9000);
  }
  CHECK(evicted(h) <= 40);
  CHECK(h.view(a).blocks == 64 - evicted(h));
  h.check();
}
