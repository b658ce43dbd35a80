#include "coordinator/coordinator_core.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#include "coordinator/shard.h"
#include "tests/coordinator/core_fixture.h"

using namespace std::chrono_literals;
using kvpool::Key128;
using kvpool::StatusCode;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

static_assert(!std::is_copy_constructible_v<CoordinatorCore>);

namespace {

CoordinatorConfig exact_lru_config(double watermark = 1.0) {
  CoordinatorConfig c;
  c.high_watermark = watermark;
  c.low_watermark = watermark;
  return c;
}

// Committed blocks on an agent (AgentView::blocks also counts blocks whose
// eviction the agent has not acknowledged yet).
std::uint64_t blocks_on(Harness& h, AgentId a) {
  auto slots = h.core->slots(a);
  REQUIRE(slots);
  std::uint64_t n = 0;
  for (const SlotView& v : *slots) n += v.state == SlotState::kCommitted ? 1 : 0;
  return n;
}
// Blocks evicted so far, acknowledged or not.
std::uint64_t evicted(Harness& h) {
  const Stats st = h.core->stats();
  return st.evictions + st.evicting;
}

}  // namespace

TEST_CASE("registering a namespace is idempotent and unknown namespaces are refused", "[coordinator]") {
  Harness h;
  auto again = h.core->register_namespace(test_namespace());
  REQUIRE(again);
  CHECK(*again == h.ns);
  CHECK(*again == kvpool::namespace_id(test_namespace()));
  auto other = h.core->register_namespace(test_namespace(kBlock, "other-model"));
  REQUIRE(other);
  CHECK(*other != h.ns);
  CHECK(h.core->namespaces().size() == 2);

  auto bad = h.core->register_namespace(test_namespace(1000));
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == StatusCode::kInvalidArgument);

  h.add_agent("a", "h1", 4);
  const kvpool::NamespaceId unknown = 12345;
  BlockRequest req{key(1), kBlock};
  Key128 k = key(1);
  auto alloc = h.core->allocate(unknown, std::span<const BlockRequest>(&req, 1), {}, h.now);
  REQUIRE_FALSE(alloc);
  CHECK(alloc.error().code() == StatusCode::kNotFound);
  auto look = h.core->lookup(unknown, std::span<const Key128>(&k, 1), false, h.now);
  REQUIRE_FALSE(look);
  CHECK(look.error().code() == StatusCode::kNotFound);
  CHECK(h.core->contains(unknown, std::span<const Key128>(&k, 1), h.now).error().code() == StatusCode::kNotFound);
  CHECK(h.core->remove(unknown, std::span<const Key128>(&k, 1), h.now).error().code() == StatusCode::kNotFound);
  CHECK(h.core
            ->wait_for(
                unknown, std::span<const Key128>(&k, 1), h.now + 1s, [](std::vector<bool>) {}, h.now)
            .error()
            .code() == StatusCode::kNotFound);
}

TEST_CASE("a placed block is pending for other writers, visible after commit, then deduplicated", "[coordinator]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  const AllocateItem placed = h.alloc(1, "h1");
  REQUIRE(placed.outcome == AllocateOutcome::kPlaced);
  CHECK(placed.location.agent == a);
  CHECK(placed.location.incarnation == 1);
  CHECK(placed.location.length == kBlock);
  auto layout = kvpool::pool::RegionLayout::create(h.view(a).registration.region_bytes);
  REQUIRE(layout);
  CHECK(placed.location.payload_offset >= layout->payload_base);
  CHECK(placed.location.header_offset == layout->header_offset(placed.location.payload_offset - layout->payload_base));
  CHECK(placed.lease_deadline == h.now + 10s);

  CHECK(h.lookup({1}).empty());
  CHECK(h.alloc(1, "h2").outcome == AllocateOutcome::kPending);
  CHECK_FALSE(h.present(1));

  auto st = h.core->commit(std::span<const LeaseId>(&placed.lease, 1), h.now);
  REQUIRE(st[0].ok());
  auto found = h.lookup({1});
  REQUIRE(found.size() == 1);
  CHECK(found[0] == placed.location);

  const AllocateItem again = h.alloc(1, "h2");
  CHECK(again.outcome == AllocateOutcome::kExists);
  CHECK(again.location == placed.location);
  CHECK(h.view(a).blocks == 1);
  h.check();
}

TEST_CASE("a key repeated inside one allocate batch is pending the second time", "[coordinator]") {
  Harness h;
  h.add_agent("a", "h1", 10);
  std::vector<BlockRequest> reqs{{key(7), kBlock}, {key(7), kBlock}, {key(8), kBlock}};
  auto r = h.core->allocate(h.ns, reqs, {"c", "h1"}, h.now);
  REQUIRE(r);
  CHECK(r->items[0].outcome == AllocateOutcome::kPlaced);
  CHECK(r->items[1].outcome == AllocateOutcome::kPending);
  CHECK(r->items[2].outcome == AllocateOutcome::kPlaced);
  CHECK(r->items[0].location.payload_offset != r->items[2].location.payload_offset);
  CHECK(r->items[0].location.generation != r->items[2].location.generation);
}

TEST_CASE("commit reports each lease and makes the valid ones of a batch visible together", "[coordinator]") {
  Harness h;
  h.add_agent("a", "h1", 10);
  const AllocateItem a = h.alloc(1);
  const AllocateItem b = h.alloc(2);
  std::vector<LeaseId> batch{a.lease, LeaseId{424242}, b.lease, a.lease};
  auto st = h.core->commit(batch, h.now);
  REQUIRE(st.size() == 4);
  CHECK(st[0].ok());
  CHECK(st[1].code() == StatusCode::kNotFound);
  CHECK(st[2].ok());
  CHECK(st[3].code() == StatusCode::kNotFound);  // already committed
  CHECK(h.lookup({1, 2}).size() == 2);
}

TEST_CASE("concurrent readers never see a block before its commit, nor half of a committed batch", "[coordinator]") {
  Harness h;
  h.add_agent("a", "h1", 8192);
  constexpr int kPairs = 3000;
  std::vector<std::atomic<bool>> commit_started(2 * kPairs);
  std::atomic<int> committed_pairs{0};
  std::atomic<bool> done{false};
  std::atomic<long> violations{0};
  std::atomic<long> observations{0};

  std::thread reader([&] {
    std::uint64_t x = 1;
    while (!done.load()) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const int limit = committed_pairs.load() + 2;
      const std::uint64_t pair = (x >> 33) % static_cast<std::uint64_t>(std::min(limit, kPairs));
      std::vector<Key128> keys{key(2 * pair), key(2 * pair + 1)};
      auto r = h.core->lookup(h.ns, keys, false, h.now);
      if (!r) {
        ++violations;
        continue;
      }
      const std::size_t hits = r->locations.size();
      if (hits == 1) ++violations;  // half a batch
      if (hits > 0 && !commit_started[2 * pair].load()) ++violations;
      ++observations;
    }
  });

  for (int p = 0; p < kPairs; ++p) {
    // Let the reader in now and then (on two cores it may not run at all).
    while (p % 100 == 0 && observations.load() < p / 20) std::this_thread::yield();
    std::vector<BlockRequest> reqs{{key(2 * p), kBlock}, {key(2 * p + 1), kBlock}};
    auto r = h.core->allocate(h.ns, reqs, {"w", "h1"}, h.now);
    REQUIRE(r);
    REQUIRE(r->items[0].outcome == AllocateOutcome::kPlaced);
    REQUIRE(r->items[1].outcome == AllocateOutcome::kPlaced);
    std::vector<LeaseId> leases{r->items[0].lease, r->items[1].lease};
    commit_started[2 * p] = true;
    commit_started[2 * p + 1] = true;
    auto st = h.core->commit(leases, h.now);
    REQUIRE(st[0].ok());
    REQUIRE(st[1].ok());
    committed_pairs = p + 1;
  }
  done = true;
  reader.join();
  CHECK(observations.load() > 0);
  CHECK(violations.load() == 0);
}

TEST_CASE("aborted space is reusable only after the agent acknowledges its invalidation", "[coordinator]") {
  Harness h(exact_lru_config());
  const AgentId a = h.add_agent("a", "h1", 1);
  const AllocateItem first = h.alloc(1);
  REQUIRE(first.outcome == AllocateOutcome::kPlaced);

  // The only slot is being written: nothing can be evicted.
  AllocateItem blocked = h.alloc(2);
  CHECK(blocked.outcome == AllocateOutcome::kError);
  CHECK(blocked.status.code() == StatusCode::kResourceExhausted);

  BatchResult ab = h.core->abort(std::span<const LeaseId>(&first.lease, 1), h.now);
  REQUIRE(ab.statuses[0].ok());
  REQUIRE(ab.invalidations.size() == 1);
  CHECK(ab.invalidations[0].agent == a);
  REQUIRE(ab.invalidations[0].slots.size() == 1);
  const SlotRef ref = ab.invalidations[0].slots[0];
  CHECK(ref.header_offset == first.location.header_offset);
  CHECK(ref.payload_offset == first.location.payload_offset);
  CHECK(ref.length == kBlock);
  CHECK(ref.generation == first.location.generation);
  CHECK(h.view(a).used_bytes == kBlock);
  CHECK(h.view(a).live_bytes == 0);

  AllocateItem waiting = h.alloc(2);
  CHECK(waiting.outcome == AllocateOutcome::kError);
  CHECK(waiting.status.code() == StatusCode::kUnavailable);

  REQUIRE(h.core->invalidated(a, 1, ab.invalidations[0].slots, h.now).ok());
  CHECK(h.view(a).used_bytes == 0);
  const AllocateItem reused = h.alloc(2);
  REQUIRE(reused.outcome == AllocateOutcome::kPlaced);
  CHECK(reused.location.payload_offset == first.location.payload_offset);
  CHECK(reused.location.generation > first.location.generation);
  h.check();
}

TEST_CASE("a write lease that expires goes through quarantine and invalidation before its space is reused",
          "[coordinator]") {
  CoordinatorConfig config;
  config.write_lease_ttl = 10s;
  config.write_quarantine = 5s;
  config.agent_timeout = 1h;
  Harness h(config);
  const AgentId a = h.add_agent("a", "h1", 4);
  h.put(1);
  h.put(2);
  const AllocateItem orphan = h.alloc(3);  // the worker dies mid-put
  REQUIRE(orphan.outcome == AllocateOutcome::kPlaced);

  h.advance(10s);  // at the deadline the lease still holds
  CHECK(h.tick().expired_write_leases == 0);
  h.advance(1ms);
  TickActions t = h.tick();
  CHECK(t.expired_write_leases == 1);
  CHECK(t.invalidations.empty());  // quarantined: a late put may still land
  auto slots = h.core->slots(a);
  REQUIRE(slots);
  REQUIRE(slots->size() == 3);
  CHECK(slots->at(2).state == SlotState::kQuarantined);
  CHECK(h.core->commit(std::span<const LeaseId>(&orphan.lease, 1), h.now)[0].code() == StatusCode::kNotFound);
  CHECK(h.alloc(3).outcome == AllocateOutcome::kPlaced);  // another writer may write the key now

  h.advance(5s);
  t = h.tick();
  REQUIRE(t.invalidations.size() == 1);
  REQUIRE(t.invalidations[0].slots.size() == 1);
  CHECK(t.invalidations[0].slots[0].payload_offset == orphan.location.payload_offset);
  CHECK(h.view(a).used_bytes == 4 * kBlock);
  h.ack_all();
  // Settled: used space is exactly the live blocks (2 committed + 1 being written).
  const AgentView v = h.view(a);
  CHECK(v.used_bytes == v.live_bytes);
  CHECK(v.used_bytes == 3 * kBlock);
  CHECK(v.reclaiming_bytes == 0);
  CHECK(h.core->stats().expired_write_leases == 1);
  h.check();
}

TEST_CASE("a commit after the lease deadline fails and its slot is quarantined", "[coordinator]") {
  CoordinatorConfig config;
  config.agent_timeout = 1h;
  Harness h(config);
  const AgentId a = h.add_agent("a", "h1", 4);
  const AllocateItem item = h.alloc(1);
  h.advance(10s + 1ns);
  auto st = h.core->commit(std::span<const LeaseId>(&item.lease, 1), h.now);
  CHECK(st[0].code() == StatusCode::kFailedPrecondition);
  CHECK_FALSE(h.present(1));
  auto slots = h.core->slots(a);
  REQUIRE(slots->size() == 1);
  CHECK(slots->at(0).state == SlotState::kQuarantined);
  h.check();
}

TEST_CASE("lookup returns the longest run of present leading keys with their locations", "[coordinator]") {
  Harness h;
  h.add_agent("a", "h1", 10);
  const Location l1 = h.put(1), l2 = h.put(2), l3 = h.put(3);
  h.put(5);
  auto found = h.lookup({1, 2, 3, 4, 5});
  REQUIRE(found.size() == 3);
  CHECK(found[0] == l1);
  CHECK(found[1] == l2);
  CHECK(found[2] == l3);
  CHECK(h.lookup({4, 1}).empty());
  CHECK(h.lookup({}).empty());
  const Stats st = h.core->stats();
  CHECK(st.lookup_hits == 3);
  CHECK(st.lookup_misses == 2 + 2);

  std::vector<Key128> keys{key(1), key(4), key(5)};
  auto c = h.core->contains(h.ns, keys, h.now);
  REQUIRE(c);
  CHECK(*c == std::vector<bool>{true, false, true});

  LeaseId none{};
  CHECK(h.lookup({9}, true, &none).empty());
  CHECK(none == LeaseId{});  // no hit, no lease
}

TEST_CASE("a read lease keeps its blocks from eviction until released", "[coordinator]") {
  Harness h(exact_lru_config());
  const AgentId a = h.add_agent("a", "h1", 4);
  for (int k = 1; k <= 4; ++k) h.put(k);
  LeaseId lease{};
  REQUIRE(h.lookup({1}, true, &lease).size() == 1);
  REQUIRE(lease != LeaseId{});

  // Key 1 is the least recently used but leased: key 2 goes instead.
  AllocateItem item = h.alloc(5);
  CHECK(item.status.code() == StatusCode::kUnavailable);
  CHECK(h.present(1));
  CHECK_FALSE(h.present(2));
  h.ack_all();
  REQUIRE(h.alloc(5).outcome == AllocateOutcome::kPlaced);

  REQUIRE(h.core->release(lease, h.now).ok());
  CHECK(h.core->release(lease, h.now).code() == StatusCode::kNotFound);
  // Released blocks count as just used: key 3 is now the oldest.
  CHECK(h.alloc(6).status.code() == StatusCode::kUnavailable);
  CHECK(h.present(1));
  CHECK_FALSE(h.present(3));
  CHECK(blocks_on(h, a) == 2);
  h.check();
}

TEST_CASE("an expired read lease stops protecting its blocks", "[coordinator]") {
  CoordinatorConfig config = exact_lru_config();
  config.read_lease_ttl = 30s;
  config.agent_timeout = 1h;
  Harness h(config);
  h.add_agent("a", "h1", 2);
  h.put(1);
  h.put(2);
  LeaseId lease{};
  REQUIRE(h.lookup({1, 2}, true, &lease).size() == 2);
  CHECK(h.alloc(3).status.code() == StatusCode::kResourceExhausted);
  h.advance(30s + 1ns);
  CHECK(h.tick().expired_read_leases == 1);
  CHECK(h.core->release(lease, h.now).code() == StatusCode::kNotFound);
  CHECK(h.alloc(3).status.code() == StatusCode::kUnavailable);  // evicts now
  CHECK(evicted(h) == 1);
}

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

TEST_CASE("an agent that misses heartbeats leaves lookups and placements and is reported dead", "[coordinator]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 8);
  const AgentId b = h.add_agent("b", "h2", 8);
  h.put(1, "h1");
  h.put(2, "h1");
  const AllocateItem writing = h.alloc(3, "h1");
  REQUIRE(writing.location.agent == a);
  const std::uint64_t epoch = h.core->membership_epoch();

  h.advance(2s);
  REQUIRE(h.core->heartbeat(a, 1, h.now).ok());
  REQUIRE(h.core->heartbeat(b, 1, h.now).ok());
  h.advance(2s);
  REQUIRE(h.core->heartbeat(b, 1, h.now).ok());
  h.advance(1500ms);                // a: 3.5 s since its heartbeat; b: 1.5 s
  CHECK(h.lookup({1, 2}).empty());  // before any tick
  CHECK(h.core->commit(std::span<const LeaseId>(&writing.lease, 1), h.now)[0].code() == StatusCode::kUnavailable);
  CHECK(h.put(4, "h1").agent == b);
  CHECK(h.core->membership_epoch() > epoch);

  TickActions t = h.tick();
  REQUIRE(t.dead_agents.size() == 1);
  CHECK(t.dead_agents[0].agent == a);
  CHECK(t.dead_agents[0].incarnation == 1);
  CHECK(h.tick().dead_agents.empty());
  CHECK(h.core->heartbeat(a, 1, h.now).code() == StatusCode::kNotFound);
  const AgentView va = h.view(a);
  CHECK_FALSE(va.alive);
  CHECK(va.blocks == 0);
  CHECK(h.core->stats().agents_alive == 1);
  CHECK(h.core->invalidated(a, 1, {}, h.now).code() == StatusCode::kNotFound);
  // The dead incarnation may not come back; a new one may.
  auto again = h.core->register_agent(agent_reg("a", "h1", 8 * kBlock, 1), h.now);
  REQUIRE_FALSE(again);
  CHECK(again.error().code() == StatusCode::kFailedPrecondition);
  auto fresh = h.core->register_agent(agent_reg("a", "h1", 8 * kBlock, 2), h.now);
  REQUIRE(fresh);
  CHECK(*fresh == a);
  CHECK(h.put(5, "h1").agent == a);
  h.check();
}

TEST_CASE("an agent that restarts with a new incarnation loses its old blocks at once", "[coordinator]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 8, /*incarnation=*/7);
  const Location l1 = h.put(1, "h1");
  h.put(2, "h1");
  const AllocateItem writing = h.alloc(3, "h1");
  LeaseId read{};
  REQUIRE(h.lookup({1}, true, &read).size() == 1);

  // Same incarnation again: idempotent.
  auto same = h.core->register_agent(agent_reg("a", "h1", 8 * kBlock, 7), h.now);
  REQUIRE(same);
  CHECK(*same == a);
  CHECK(h.present(1));

  auto restarted = h.core->register_agent(agent_reg("a", "h1", 8 * kBlock, 8), h.now);
  REQUIRE(restarted);
  CHECK(*restarted == a);
  CHECK_FALSE(h.present(1));
  CHECK_FALSE(h.present(2));
  CHECK(h.core->commit(std::span<const LeaseId>(&writing.lease, 1), h.now)[0].code() == StatusCode::kUnavailable);
  CHECK(h.core->release(read, h.now).ok());  // harmless after the restart
  TickActions t = h.tick();
  REQUIRE(t.dead_agents.size() == 1);
  CHECK(t.dead_agents[0].incarnation == 7);
  CHECK(t.invalidations.empty());  // the old region's slots went with it
  const AgentView v = h.view(a);
  CHECK(v.alive);
  CHECK(v.incarnation == 8);
  CHECK(v.used_bytes == 0);

  const Location fresh = h.put(1, "h1");
  CHECK(fresh.incarnation == 8);
  CHECK(fresh.payload_offset == l1.payload_offset);  // the new region starts empty
  CHECK(h.core->invalidated(a, 7, {}, h.now).code() == StatusCode::kFailedPrecondition);
  CHECK(h.core->heartbeat(a, 7, h.now).code() == StatusCode::kNotFound);
  auto wrong_size = h.core->register_agent(agent_reg("a", "h1", 4 * kBlock, 8), h.now);
  REQUIRE_FALSE(wrong_size);
  CHECK(wrong_size.error().code() == StatusCode::kFailedPrecondition);
  h.check();
}

TEST_CASE("wait_for fires on commit, and at the deadline with partial results", "[coordinator]") {
  Harness h;
  h.add_agent("a", "h1", 16);

  SECTION("fires when the last key commits, outside the core's lock") {
    std::vector<Key128> keys{key(1), key(2)};
    int fired = 0;
    std::vector<bool> got;
    auto id = h.core->wait_for(
        h.ns, keys, h.now + 5s,
        [&](std::vector<bool> committed) {
          ++fired;
          got = committed;
          // Calling back into the core would deadlock under its lock.
          auto r = h.core->contains(h.ns, keys, h.now);
          REQUIRE(r);
        },
        h.now);
    REQUIRE(id);
    const AllocateItem i1 = h.alloc(1), i2 = h.alloc(2);
    REQUIRE(h.core->commit(std::span<const LeaseId>(&i1.lease, 1), h.now)[0].ok());
    CHECK(fired == 0);
    REQUIRE(h.core->commit(std::span<const LeaseId>(&i2.lease, 1), h.now)[0].ok());
    CHECK(fired == 1);
    CHECK(got == std::vector<bool>{true, true});
    h.advance(10s);
    h.tick();
    CHECK(fired == 1);
    CHECK_FALSE(h.core->cancel_wait(*id));
  }
  SECTION("fires at the deadline with the keys that committed") {
    std::vector<Key128> keys{key(3), key(4), key(3)};
    std::vector<bool> got;
    int fired = 0;
    REQUIRE(h.core->wait_for(
        h.ns, keys, h.now + 1s,
        [&](std::vector<bool> committed) {
          ++fired;
          got = committed;
        },
        h.now));
    h.put(3);
    CHECK(fired == 0);
    h.advance(1s);
    TickActions t = h.tick();
    CHECK(t.fired_waiters == 1);
    CHECK(fired == 1);
    CHECK(got == std::vector<bool>{true, false, true});
    CHECK(h.core->stats().waiters == 0);
  }
  SECTION("fires at once when every key is already committed") {
    h.put(5);
    Key128 k = key(5);
    int fired = 0;
    REQUIRE(h.core->wait_for(
        h.ns, std::span<const Key128>(&k, 1), h.now + 1s, [&](std::vector<bool> c) { fired += c[0] ? 1 : 100; },
        h.now));
    CHECK(fired == 1);
  }
  SECTION("a cancelled waiter never fires") {
    Key128 k = key(6);
    int fired = 0;
    auto id = h.core->wait_for(
        h.ns, std::span<const Key128>(&k, 1), h.now + 1s, [&](std::vector<bool>) { ++fired; }, h.now);
    REQUIRE(id);
    CHECK(h.core->cancel_wait(*id));
    h.put(6);
    h.advance(2s);
    h.tick();
    CHECK(fired == 0);
  }
}

TEST_CASE("remove hides a block at once and frees its space only after its read lease ends and the agent acknowledges",
          "[coordinator]") {
  Harness h(exact_lru_config());
  const AgentId a = h.add_agent("a", "h1", 2);
  const Location l1 = h.put(1);
  h.put(2);
  LeaseId lease{};
  REQUIRE(h.lookup({1, 2}, true, &lease).size() == 2);

  Key128 k1 = key(1);
  auto removed = h.core->remove(h.ns, std::span<const Key128>(&k1, 1), h.now);
  REQUIRE(removed);
  CHECK(removed->statuses[0].ok());
  CHECK(removed->invalidations.empty());  // a reader still holds it
  CHECK(removed->removed.empty());
  // ...so the server tells the agent to keep it out of a restart's scan.
  REQUIRE(removed->removed_leased.size() == 1);
  CHECK(removed->removed_leased[0] == l1);
  CHECK_FALSE(h.present(1));
  CHECK(h.lookup({1}).empty());
  auto slots = h.core->slots(a);
  CHECK(slots->at(0).state == SlotState::kRemovedLeased);
  CHECK(h.alloc(3).status.code() == StatusCode::kResourceExhausted);  // everything is leased
  CHECK(h.tick().invalidations.empty());

  REQUIRE(h.core->release(lease, h.now).ok());
  TickActions t = h.tick();
  REQUIRE(t.invalidations.size() == 1);
  REQUIRE(t.invalidations[0].slots.size() == 1);
  CHECK(t.invalidations[0].slots[0].payload_offset == l1.payload_offset);
  // The space is coming back: no eviction of key 2 to make room.
  CHECK(h.alloc(3).status.code() == StatusCode::kUnavailable);
  CHECK(h.present(2));
  h.ack_all();
  const AllocateItem placed = h.alloc(3);
  REQUIRE(placed.outcome == AllocateOutcome::kPlaced);
  CHECK(placed.location.payload_offset == l1.payload_offset);
  CHECK(h.present(2));
  CHECK(h.core->stats().removals == 1);

  SECTION("an unleased block's space goes to invalidation at once") {
    Key128 k2 = key(2);
    auto r = h.core->remove(h.ns, std::span<const Key128>(&k2, 1), h.now);
    REQUIRE(r);
    REQUIRE(r->invalidations.size() == 1);
    CHECK(r->invalidations[0].slots.size() == 1);
  }
  SECTION("absent and uncommitted keys are refused per key") {
    std::vector<Key128> keys{key(99), key(3)};
    auto r = h.core->remove(h.ns, keys, h.now);
    REQUIRE(r);
    CHECK(r->statuses[0].code() == StatusCode::kNotFound);
    CHECK(r->statuses[1].code() == StatusCode::kFailedPrecondition);
  }
  h.check();
}

TEST_CASE("a stale or repeated invalidation acknowledgement frees nothing", "[coordinator]") {
  CoordinatorConfig config = exact_lru_config();
  config.invalidation_retry = 2s;
  config.agent_timeout = 1h;
  Harness h(config);
  const AgentId a = h.add_agent("a", "h1", 1);
  h.put(1);
  CHECK(h.alloc(2).status.code() == StatusCode::kUnavailable);  // evicts 1
  REQUIRE(h.pending.size() == 1);
  SlotRef ref = h.pending[0].slots[0];

  SlotRef wrong_generation = ref;
  wrong_generation.generation += 1;
  REQUIRE(h.core->invalidated(a, 1, std::span<const SlotRef>(&wrong_generation, 1), h.now).ok());
  SlotRef wrong_header = ref;
  wrong_header.header_offset += 64;
  REQUIRE(h.core->invalidated(a, 1, std::span<const SlotRef>(&wrong_header, 1), h.now).ok());
  CHECK(h.view(a).used_bytes == kBlock);

  // Not acknowledged: sent again after the retry interval, not before.
  h.advance(1s);
  CHECK(h.tick().invalidations.empty());
  h.advance(1s);
  TickActions t = h.tick();
  REQUIRE(t.invalidations.size() == 1);
  CHECK(t.invalidations[0].slots[0] == ref);

  REQUIRE(h.core->invalidated(a, 1, std::span<const SlotRef>(&ref, 1), h.now).ok());
  CHECK(h.view(a).used_bytes == 0);
  h.put(2);
  // A late repeat of the first acknowledgement must not free block 2's slot.
  REQUIRE(h.core->invalidated(a, 1, std::span<const SlotRef>(&ref, 1), h.now).ok());
  CHECK(h.view(a).used_bytes == kBlock);
  h.check();
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

TEST_CASE("bad inputs get clear errors", "[coordinator]") {
  Harness h;
  SECTION("allocate with no agent") {
    AllocateItem item = h.alloc(1);
    CHECK(item.outcome == AllocateOutcome::kError);
    CHECK(item.status.code() == StatusCode::kResourceExhausted);
  }
  h.add_agent("a", "h1", 4);
  SECTION("lengths") {
    CHECK(h.alloc(1, "", 0).status.code() == StatusCode::kInvalidArgument);
    CHECK(h.alloc(1, "", kBlock + 1).status.code() == StatusCode::kInvalidArgument);
    CHECK(h.alloc(1, "", kBlock + 1).status.message().find("block size") != std::string::npos);
    CHECK(h.alloc(1, "", 1).outcome == AllocateOutcome::kPlaced);  // short blocks are fine
  }
  SECTION("unknown leases") {
    LeaseId bogus{987654321};
    CHECK(h.core->commit(std::span<const LeaseId>(&bogus, 1), h.now)[0].code() == StatusCode::kNotFound);
    CHECK(h.core->abort(std::span<const LeaseId>(&bogus, 1), h.now).statuses[0].code() == StatusCode::kNotFound);
    CHECK(h.core->release(bogus, h.now).code() == StatusCode::kNotFound);
  }
  SECTION("agents") {
    AgentRegistration tiny = agent_reg("t", "h", kBlock);
    tiny.region_bytes = 1000;
    CHECK(h.core->register_agent(tiny, h.now).error().code() == StatusCode::kInvalidArgument);
    AgentRegistration anonymous = agent_reg("n", "h", kBlock);
    anonymous.control_address.clear();
    anonymous.worker_address.clear();
    CHECK(h.core->register_agent(anonymous, h.now).error().code() == StatusCode::kInvalidArgument);
    CHECK(h.core->heartbeat(AgentId{77}, 1, h.now).code() == StatusCode::kNotFound);
    CHECK(h.core->heartbeat(AgentId{0}, 1, h.now).code() == StatusCode::kNotFound);
    CHECK(h.core->invalidated(AgentId{77}, 1, {}, h.now).code() == StatusCode::kNotFound);
    CHECK_FALSE(h.core->slots(AgentId{77}));
  }
  SECTION("wait_for without a callback") {
    Key128 k = key(1);
    CHECK(h.core->wait_for(h.ns, std::span<const Key128>(&k, 1), h.now, {}, h.now).error().code() ==
          StatusCode::kInvalidArgument);
  }
  SECTION("config") {
    CoordinatorConfig c;
    c.low_watermark = 0.96;
    CHECK(CoordinatorCore::create(c).error().code() == StatusCode::kInvalidArgument);
    c = {};
    c.high_watermark = 1.5;
    CHECK_FALSE(CoordinatorCore::create(c));
    c = {};
    c.write_lease_ttl = 0s;
    CHECK_FALSE(CoordinatorCore::create(c));
    c = {};
    c.shard_index = 1;
    CHECK_FALSE(CoordinatorCore::create(c));
  }
}

TEST_CASE("keys of another shard are refused", "[coordinator]") {
  CoordinatorConfig config;
  config.shard_count = 4;
  config.shard_index = 2;
  Harness h(config);
  h.add_agent("a", "h1", 64);
  std::uint64_t mine = 0, other = 0;
  for (std::uint64_t k = 0; k < 64; ++k) {
    if (shard_of(key(k), 4) == 2) {
      mine = k;
    } else {
      other = k;
    }
  }
  CHECK(h.alloc(mine).outcome == AllocateOutcome::kPlaced);
  AllocateItem refused = h.alloc(other);
  CHECK(refused.status.code() == StatusCode::kFailedPrecondition);
  Key128 k = key(other);
  CHECK(h.core->lookup(h.ns, std::span<const Key128>(&k, 1), false, h.now).error().code() ==
        StatusCode::kFailedPrecondition);
}

TEST_CASE("stats account for blocks, bytes and leases", "[coordinator]") {
  Harness h;
  h.add_agent("a", "h1", 8);
  h.add_agent("b", "h2", 8);
  h.put(1, "h1");
  h.put(2, "h2");
  h.alloc(3, "h2");
  LeaseId lease{};
  REQUIRE(h.lookup({1, 2}, true, &lease).size() == 2);
  const Stats st = h.core->stats();
  CHECK(st.blocks == 2);
  CHECK(st.agents_alive == 2);
  CHECK(st.capacity_bytes == 16 * kBlock);
  CHECK(st.used_bytes == 3 * kBlock);
  CHECK(st.live_bytes == 3 * kBlock);
  CHECK(st.write_leases == 1);
  CHECK(st.read_leases == 1);
  CHECK(st.namespaces == 1);
  REQUIRE(st.agents.size() == 2);
  CHECK(st.agents[0].blocks == 1);
  CHECK(h.core->namespaces()[0].blocks == 2);
  const MemoryFootprint m = h.core->memory();
  CHECK(m.entries == 3);
}
