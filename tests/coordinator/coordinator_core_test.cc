// CoordinatorCore: namespaces, writes and commits, bad inputs, shards, stats.
// Reads, membership and eviction have their own files (core_*_test.cc).
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
