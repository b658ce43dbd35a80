// Evictions are not observable before the owning agent has invalidated the
// slot header (issue 5: "evicted blocks do not come back" after a
// coordinator restart): the core keeps such blocks as "evicting", counts
// them in stats, and reports them to lookups that would miss on them.
#include <catch2/catch.hpp>

#include "core_fixture.h"

namespace kvpool::coordinator {
namespace {

using namespace std::chrono_literals;
using testing::Harness;
using testing::key;

CoordinatorConfig exact(double watermark) {
  CoordinatorConfig c;
  c.high_watermark = watermark;
  c.low_watermark = watermark;
  return c;
}

Result<LookupResult> lookup_keys(Harness& h, std::vector<std::uint64_t> ks, bool lease) {
  std::vector<Key128> keys;
  for (auto k : ks) keys.push_back(key(k));
  return h.core->lookup(h.ns, keys, lease, h.now, /*report_evicting=*/true);
}

std::vector<EvictingSlot> evicting_of(Harness& h, std::vector<std::uint64_t> ks) {
  std::vector<Key128> keys;
  for (auto k : ks) keys.push_back(key(k));
  return h.core->evicting(h.ns, keys);
}

TEST_CASE("an evicted block is evicting until its agent acknowledges: lookups report it, stats still count it",
          "[coordinator][evicting]") {
  Harness h(exact(0.75));
  const AgentId a = h.add_agent("a", "h1", 8);  // watermark: 6 blocks
  Location first;
  for (std::uint64_t k = 1; k <= 6; ++k) {
    Location l = h.put(k);
    if (k == 1) first = l;
  }
  h.put(7);  // evicts 1
  CHECK_FALSE(h.present(1));
  REQUIRE(h.pending_slots() == 1);

  // A lookup whose prefix would end at the evicting block says so instead:
  // no locations, no lease.
  auto r = lookup_keys(h, {2, 3, 1, 4}, true);
  REQUIRE(r);
  CHECK(r->locations.empty());
  CHECK(r->read_lease == LeaseId{});
  REQUIRE(r->evicting.size() == 1);
  CHECK(r->evicting[0].agent == a);
  CHECK(r->evicting[0].header_offset == first.header_offset);
  CHECK(r->evicting[0].generation == first.generation);
  CHECK(h.core->stats().read_leases == 0);
  CHECK(h.core->any_evicting(r->evicting));
  CHECK(evicting_of(h, {1, 2, 9}) == r->evicting);
  // Hits never meet it, nor do misses on keys that were never there.
  auto hits = lookup_keys(h, {2, 3, 4, 5, 6, 7, 9}, true);
  REQUIRE(hits);
  CHECK(hits->locations.size() == 6);
  CHECK(hits->evicting.empty());
  CHECK(hits->read_lease != LeaseId{});
  REQUIRE(h.core->release(hits->read_lease, h.now).ok());
  // Without report_evicting (the old behaviour) it is a plain miss.
  CHECK(h.lookup({1}).empty());

  // Stats and namespace listings count it until the acknowledgement.
  Stats st = h.core->stats();
  CHECK(st.blocks == 7);
  CHECK(st.evicting == 1);
  CHECK(st.evictions == 0);
  for (const auto& v : h.core->namespaces()) {
    if (v.id == h.ns) CHECK(v.blocks == 7);
  }
  h.check();

  h.ack_all();
  CHECK_FALSE(h.core->any_evicting(r->evicting));
  CHECK(evicting_of(h, {1}).empty());
  auto miss = lookup_keys(h, {1}, true);
  REQUIRE(miss);
  CHECK(miss->locations.empty());
  CHECK(miss->evicting.empty());
  st = h.core->stats();
  CHECK(st.blocks == 6);
  CHECK(st.evicting == 0);
  CHECK(st.evictions == 1);
  h.check();
}

TEST_CASE("a stale acknowledgement does not end an eviction, and a repeated one is harmless", "[coordinator][evicting]") {
  Harness h(exact(0.75));
  h.add_agent("a", "h1", 8);
  for (std::uint64_t k = 1; k <= 7; ++k) h.put(k);  // 7 evicts 1
  REQUIRE(h.pending.size() == 1);
  InvalidateRequest inv = h.pending[0];
  InvalidateRequest stale = inv;
  stale.slots[0].generation += 1;
  REQUIRE(h.core->invalidated(stale.agent, stale.incarnation, stale.slots, h.now).ok());
  CHECK(h.core->stats().evicting == 1);
  CHECK(lookup_keys(h, {1}, false)->evicting.size() == 1);
  REQUIRE(h.core->invalidated(inv.agent, inv.incarnation, inv.slots, h.now).ok());
  CHECK(h.core->stats().evicting == 0);
  REQUIRE(h.core->invalidated(inv.agent, inv.incarnation, inv.slots, h.now).ok());
  CHECK(h.core->stats().evicting == 0);
  CHECK(h.core->stats().evictions == 1);
  h.check();
}

TEST_CASE("an agent that dies or restarts ends its evictions (its blocks go anyway)", "[coordinator][evicting]") {
  CoordinatorConfig config = exact(0.75);
  config.agent_timeout = 3s;
  SECTION("death") {
    Harness h(config);
    h.add_agent("a", "h1", 8);
    for (std::uint64_t k = 1; k <= 8; ++k) h.put(k);  // 7 and 8 evict 1 and 2
    auto ev = evicting_of(h, {1, 2});
    REQUIRE(ev.size() == 2);
    CHECK(h.core->any_evicting(ev));
    h.advance(3s + 1ms);
    CHECK(h.tick().dead_agents.size() == 1);
    CHECK_FALSE(h.core->any_evicting(ev));
    CHECK(evicting_of(h, {1, 2}).empty());
    CHECK(h.core->stats().evicting == 0);
    h.check();
  }
  SECTION("restart") {
    Harness h(config);
    h.add_agent("a", "h1", 8);
    for (std::uint64_t k = 1; k <= 7; ++k) h.put(k);
    auto ev = evicting_of(h, {1});
    REQUIRE(ev.size() == 1);
    h.add_agent("a", "h1", 8, /*incarnation=*/2);
    CHECK_FALSE(h.core->any_evicting(ev));
    CHECK(h.core->stats().evicting == 0);
    h.check();
  }
}

TEST_CASE("a key written again while its old block is evicting", "[coordinator][evicting]") {
  Harness h(exact(0.75));
  h.add_agent("a", "h1", 8);
  for (std::uint64_t k = 1; k <= 7; ++k) h.put(k);  // 7 evicts 1
  // Being written again: the lookup still waits for the old block's eviction.
  AllocateItem again = h.alloc(1);
  REQUIRE(again.outcome == AllocateOutcome::kPlaced);  // 2 is evicted for it
  CHECK(lookup_keys(h, {1}, false)->evicting.size() == 1);
  REQUIRE(h.core->commit(std::span<const LeaseId>(&again.lease, 1), h.now)[0].ok());
  auto hit = lookup_keys(h, {1}, false);
  REQUIRE(hit);
  CHECK(hit->locations.size() == 1);
  CHECK(hit->evicting.empty());
  CHECK(h.core->stats().evicting == 2);  // the old 1 and 2
  h.check();
  h.ack_all();
  CHECK(h.core->stats().evicting == 0);
  CHECK(lookup_keys(h, {1}, false)->locations.size() == 1);
  h.check();
}

TEST_CASE("quota evictions are evicting too", "[coordinator][evicting]") {
  Harness h;
  h.add_agent("a", "h1", 20);
  for (std::uint64_t k = 1; k <= 10; ++k) h.put(k);
  auto r = h.core->set_quota(h.ns, 8, 0, h.now);  // evicts 1 and 2
  REQUIRE(r);
  for (auto& inv : r->invalidations) h.pending.push_back(inv);
  CHECK(evicting_of(h, {1, 2, 3}).size() == 2);
  CHECK(h.core->stats().blocks == 10);
  h.tick();
  h.ack_all();
  CHECK(evicting_of(h, {1, 2}).empty());
  CHECK(h.core->stats().blocks == 8);
  CHECK(h.core->stats().evictions == 2);
  h.check();
}

}  // namespace
}  // namespace kvpool::coordinator

namespace kvpool::coordinator {
namespace {

TEST_CASE("a removed unleased block is tracked like an eviction until acknowledged", "[coordinator][evicting]") {
  Harness h(exact(0.75));
  h.add_agent("a", "h1", 8);
  for (std::uint64_t k = 1; k <= 3; ++k) h.put(k);
  LeaseId lease{};
  REQUIRE(h.lookup({3}, true, &lease).size() == 1);
  std::vector<Key128> keys = {key(1), key(3)};
  auto r = h.core->remove(h.ns, keys, h.now);
  REQUIRE(r);
  REQUIRE(r->removed.size() == 1);         // 1: unleased
  REQUIRE(r->removed_leased.size() == 1);  // 3: read-leased, its header stays until the lease ends
  for (auto& inv : r->invalidations) h.pending.push_back(inv);
  // 1 waits for its acknowledgement; 3 misses at once (its agent is told
  // to leave it out of scans: server.cc, kPushRemoved).
  auto one = lookup_keys(h, {1}, false);
  REQUIRE(one);
  REQUIRE(one->evicting.size() == 1);
  CHECK(one->evicting[0].header_offset == r->removed[0].header_offset);
  CHECK(lookup_keys(h, {3}, false)->evicting.empty());
  Stats st = h.core->stats();
  CHECK(st.removing == 1);
  CHECK(st.evicting == 0);
  CHECK(st.evictions == 0);
  CHECK(st.blocks == 2);  // 2, and 1 until acknowledged
  h.check();
  h.ack_all();
  CHECK(lookup_keys(h, {1}, false)->evicting.empty());
  st = h.core->stats();
  CHECK(st.removing == 0);
  CHECK(st.blocks == 1);
  CHECK(st.removals == 2);
  h.check();
}

}  // namespace
}  // namespace kvpool::coordinator
