// CoordinatorCore reads: lookups and read leases, wait_for, remove, and the
// invalidation acknowledgements that return space.
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
