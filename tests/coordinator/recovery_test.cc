// Rebuilding the index from agents' scans: a coordinator restart, and an
// agent declared dead whose memory lived on (CoordinatorCore::rejoin_agent,
// recover_blocks, finish_recovery).

#include <catch2/catch.hpp>

#include "core_fixture.h"

namespace kvpool::coordinator::testing {
namespace {

using namespace std::chrono_literals;

// What an agent's scan would report for these committed locations.
std::vector<RecoveredBlock> scanned(const Harness& h, const std::vector<std::pair<std::uint64_t, Location>>& blocks) {
  std::vector<RecoveredBlock> out;
  for (const auto& [k, l] : blocks) {
    const auto layout = pool::RegionLayout::create(agent_reg("a", "h1", 8 * kBlock).region_bytes);
    REQUIRE(layout);
    out.push_back(RecoveredBlock{h.ns, key(k), l.payload_offset - layout->payload_base, l.length, l.generation});
  }
  return out;
}

CoordinatorConfig short_leases() {
  CoordinatorConfig c;
  c.write_lease_ttl = 1s;
  c.write_quarantine = 500ms;
  return c;
}

}  // namespace

TEST_CASE("a restarted coordinator takes back every scanned block and quarantines the rest", "[coordinator][recovery]") {
  Harness before;
  before.add_agent("a", "h1", 8);
  const Location l1 = before.put(1, "h1");
  const Location l2 = before.put(2, "h1");
  const Location l3 = before.put(3, "h1");

  // A new coordinator: same config, nothing known.
  auto c = CoordinatorCore::create(short_leases());
  REQUIRE(c);
  Harness after;
  after.core = std::move(*c);
  after.now = before.now + 1min;
  after.ns = before.ns;  // not registered with the new core yet

  auto rejoin = after.core->rejoin_agent(agent_reg("a", "h1", 8 * kBlock), after.now);
  REQUIRE(rejoin);
  CHECK(rejoin->send_blocks);
  const AgentId a = rejoin->id;
  // Not placeable while recovering.
  REQUIRE(after.core->register_namespace(test_namespace()));
  CHECK(after.alloc(9, "h1").outcome == AllocateOutcome::kError);

  const auto blocks = scanned(before, {{1, l1}, {2, l2}, {3, l3}});
  auto rec = after.core->recover_blocks(a, 1, blocks, after.now);
  REQUIRE(rec);
  CHECK(rec->adopted == 3);
  CHECK(rec->dropped == 0);
  // Sent again (the agent reconnected mid-scan): nothing changes.
  auto again = after.core->recover_blocks(a, 1, blocks, after.now);
  REQUIRE(again);
  CHECK(again->adopted == 0);
  CHECK(after.lookup({1, 2, 3}).size() == 3);
  CHECK(after.lookup({1, 2, 3}) == std::vector<Location>{l1, l2, l3});
  after.check();

  REQUIRE(after.core->finish_recovery(a, 1, after.now).ok());
  CHECK(after.core->recover_blocks(a, 1, blocks, after.now).error().code() == StatusCode::kFailedPrecondition);
  // The 5 blocks of space no header covered wait out a lease and a quarantine.
  CHECK(after.view(a).reclaiming_bytes == 5 * kBlock);
  CHECK(after.alloc(4, "h1").outcome == AllocateOutcome::kError);
  after.check();
  after.advance(1s);
  after.tick();
  CHECK(after.pending_slots() == 0);
  after.advance(600ms);
  after.tick();
  CHECK(after.pending_slots() > 0);
  after.ack_all();
  CHECK(after.view(a).reclaiming_bytes == 0);
  const AllocateItem fresh = after.alloc(4, "h1");
  REQUIRE(fresh.outcome == AllocateOutcome::kPlaced);
  CHECK(fresh.location.generation > std::max({l1.generation, l2.generation, l3.generation}));
  CHECK(after.alloc(1, "h1").outcome == AllocateOutcome::kExists);
  after.check();
}

TEST_CASE("recovered blocks of an unregistered namespace are readable, writes wait for its registration",
          "[coordinator][recovery]") {
  Harness before;
  before.add_agent("a", "h1", 8);
  const Location l1 = before.put(1, "h1");

  auto c = CoordinatorCore::create(short_leases());
  REQUIRE(c);
  auto& core = **c;
  const auto now = before.now;
  auto rejoin = core.rejoin_agent(agent_reg("a", "h1", 8 * kBlock), now);
  REQUIRE(rejoin);
  REQUIRE(core.recover_blocks(rejoin->id, 1, scanned(before, {{1, l1}}), now));
  REQUIRE(core.finish_recovery(rejoin->id, 1, now).ok());
  const Key128 k1 = key(1);
  auto found = core.lookup(before.ns, std::span<const Key128>(&k1, 1), false, now);
  REQUIRE(found);
  CHECK(found->locations.size() == 1);
  BlockRequest req{key(2), kBlock};
  auto w = core.allocate(before.ns, std::span<const BlockRequest>(&req, 1), WriterInfo{"c", "h1"}, now);
  REQUIRE_FALSE(w);
  CHECK(w.error().code() == StatusCode::kNotFound);
  REQUIRE(core.register_namespace(test_namespace()));
  auto w2 = core.allocate(before.ns, std::span<const BlockRequest>(&req, 1), WriterInfo{"c", "h1"}, now);
  REQUIRE(w2);
  CHECK(core.check_consistency().ok());
}

TEST_CASE("two valid slots of one key: the higher generation wins, the other is invalidated",
          "[coordinator][recovery]") {
  Harness h(short_leases());
  auto rejoin = h.core->rejoin_agent(agent_reg("a", "h1", 8 * kBlock), h.now);
  REQUIRE(rejoin);
  const AgentId a = rejoin->id;
  std::vector<RecoveredBlock> blocks{
      {h.ns, key(1), 0 * kBlock, kBlock, 100},
      {h.ns, key(1), 2 * kBlock, kBlock, 200},  // newer copy
      {h.ns, key(2), 4 * kBlock, kBlock, 50},
      {h.ns, key(2), 5 * kBlock, kBlock, 40},   // older copy, sent later
      {h.ns, key(3), 5 * kBlock, kBlock, 300},  // the same slot again: not accountable
      {h.ns, key(4), 7 * kBlock + pool::kGranule, kBlock, 1},  // runs past the end
  };
  auto rec = h.core->recover_blocks(a, 1, blocks, h.now);
  REQUIRE(rec);
  CHECK(rec->adopted == 3);  // key 1 twice (the second replaces the first), key 2 once
  CHECK(rec->dropped == 3);
  std::uint64_t invalidated = 0;
  for (const auto& inv : rec->invalidations) invalidated += inv.slots.size();
  CHECK(invalidated == 2);  // key 1 at generation 100, key 2 at generation 40
  auto found = h.lookup({1, 2});
  REQUIRE(found.size() == 2);
  CHECK(found[0].generation == 200);
  CHECK(found[1].generation == 50);
  h.check();
  REQUIRE(h.core->finish_recovery(a, 1, h.now).ok());
  h.check();
}

TEST_CASE("an agent declared dead while its process lived on rejoins with its blocks", "[coordinator][recovery]") {
  Harness h(short_leases());
  const AgentId a = h.add_agent("a", "h1", 8);
  const Location l1 = h.put(1, "h1");
  h.advance(4s);  // missed heartbeats
  CHECK(h.tick().dead_agents.size() == 1);
  CHECK(h.lookup({1}).empty());
  // A plain registration of the dead incarnation is refused; a rejoin is not.
  CHECK(h.core->register_agent(agent_reg("a", "h1", 8 * kBlock), h.now).error().code() ==
        StatusCode::kFailedPrecondition);
  auto rejoin = h.core->rejoin_agent(agent_reg("a", "h1", 8 * kBlock), h.now);
  REQUIRE(rejoin);
  CHECK(rejoin->id == a);
  CHECK(rejoin->send_blocks);
  REQUIRE(h.core->recover_blocks(a, 1, scanned(h, {{1, l1}}), h.now));
  REQUIRE(h.core->finish_recovery(a, 1, h.now).ok());
  CHECK(h.lookup({1}) == std::vector<Location>{l1});
  // The registration in force: a second rejoin asks for nothing.
  auto steady = h.core->rejoin_agent(agent_reg("a", "h1", 8 * kBlock), h.now);
  REQUIRE(steady);
  CHECK_FALSE(steady->send_blocks);
  h.check();
}

}  // namespace kvpool::coordinator::testing

namespace kvpool::coordinator::testing {

TEST_CASE("limits: namespaces and open write leases per writer", "[coordinator][limits]") {
  CoordinatorConfig config;
  config.max_namespaces = 2;
  config.max_write_leases_per_client = 3;
  Harness h(config);  // registers one namespace
  h.add_agent("a", "h1", 16);
  REQUIRE(h.core->register_namespace(test_namespace(kBlock, "second")));
  REQUIRE(h.core->register_namespace(test_namespace(kBlock, "second")));  // idempotent: no new one
  auto third = h.core->register_namespace(test_namespace(kBlock, "third"));
  REQUIRE_FALSE(third);
  CHECK(third.error().code() == StatusCode::kResourceExhausted);
  CHECK(third.error().message().find("limit is 2") != std::string::npos);

  std::vector<BlockRequest> reqs;
  for (std::uint64_t k = 1; k <= 5; ++k) reqs.push_back({key(k), kBlock});
  auto r = h.core->allocate(h.ns, reqs, WriterInfo{"greedy", "h1"}, h.now);
  REQUIRE(r);
  int placed = 0;
  std::vector<LeaseId> leases;
  for (const auto& item : r->items) {
    if (item.outcome == AllocateOutcome::kPlaced) {
      ++placed;
      leases.push_back(item.lease);
    } else {
      CHECK(item.status.code() == StatusCode::kResourceExhausted);
    }
  }
  CHECK(placed == 3);
  // Another writer is not held back by this one.
  BlockRequest other{key(9), kBlock};
  auto o = h.core->allocate(h.ns, std::span<const BlockRequest>(&other, 1), WriterInfo{"polite", "h1"}, h.now);
  REQUIRE(o);
  CHECK(o->items[0].outcome == AllocateOutcome::kPlaced);
  // Committing gives the writer its allowance back.
  for (const auto& st : h.core->commit(leases, h.now)) CHECK(st.ok());
  auto again = h.core->allocate(h.ns, std::span<const BlockRequest>(&reqs[3], 2), WriterInfo{"greedy", "h1"}, h.now);
  REQUIRE(again);
  CHECK(again->items[0].outcome == AllocateOutcome::kPlaced);
  CHECK(again->items[1].outcome == AllocateOutcome::kPlaced);
  h.check();
}

}  // namespace kvpool::coordinator::testing

namespace kvpool::coordinator::testing {

TEST_CASE("a namespace quota evicts exactly its least recently used unleased blocks", "[coordinator][quota]") {
  Harness h;
  h.add_agent("a", "h1", 16);
  auto other = h.core->register_namespace(test_namespace(kBlock, "other"));
  REQUIRE(other);
  // A block of another namespace is never evicted for this one's quota.
  BlockRequest foreign{key(100), kBlock};
  auto f = h.core->allocate(*other, std::span<const BlockRequest>(&foreign, 1), WriterInfo{"c", "h1"}, h.now);
  REQUIRE(f);
  REQUIRE(h.core->commit(std::span<const LeaseId>(&f->items[0].lease, 1), h.now)[0].ok());

  for (std::uint64_t k = 1; k <= 5; ++k) h.put(k);
  auto quota = h.core->set_quota(h.ns, 3, 0, h.now);  // evicts 1 and 2 at once
  REQUIRE(quota);
  for (auto& inv : quota->invalidations) h.pending.push_back(inv);
  CHECK_FALSE(h.present(1));
  CHECK_FALSE(h.present(2));
  CHECK(h.present(3));
  h.lookup({3});  // 3 is now the most recently used: 4 is the oldest
  LeaseId lease{};
  REQUIRE(h.lookup({4}, true, &lease).size() == 1);  // and 4 is read-leased
  h.put(6);  // over quota: 4 is leased, so 5 goes
  CHECK(h.present(4));
  CHECK_FALSE(h.present(5));
  CHECK(h.present(3));
  CHECK(h.present(6));
  // Until the agent acknowledges, the evicted blocks (1, 2, 5) still count.
  for (const auto& v : h.core->namespaces()) {
    if (v.id == h.ns) CHECK(v.blocks == 6);
  }
  CHECK(h.core->stats().evicting == 3);
  h.ack_all();
  CHECK(h.core->stats().evicting == 0);
  CHECK(h.core->stats().evictions == 3);
  for (const auto& v : h.core->namespaces()) {
    if (v.id == h.ns) {
      CHECK(v.blocks == 3);
      CHECK(v.quota_blocks == 3);
    }
  }
  BlockRequest r{key(100), kBlock};
  auto still = h.core->contains(*other, std::span<const Key128>(&r.key, 1), h.now);
  REQUIRE(still);
  CHECK((*still)[0]);
  h.check();

  // Every block leased: the write fails instead of passing the quota.
  LeaseId all{};
  REQUIRE(h.lookup({3, 4, 6}, true, &all).size() == 3);
  const AllocateItem refused = h.alloc(7);
  CHECK(refused.outcome == AllocateOutcome::kError);
  CHECK(refused.status.code() == StatusCode::kResourceExhausted);
  // A byte quota works the same way; 0 and 0 lift it.
  REQUIRE(h.core->release(all, h.now).ok());
  REQUIRE(h.core->release(lease, h.now).ok());
  REQUIRE(h.core->set_quota(h.ns, 0, 2 * kBlock, h.now));
  CHECK(h.lookup({3, 4, 6}).size() < 3);
  REQUIRE(h.core->set_quota(h.ns, 0, 0, h.now));
  h.put(8);
  h.put(9);
  h.put(10);
  CHECK(h.present(8));
  h.check();
}

}  // namespace kvpool::coordinator::testing

namespace kvpool::coordinator::testing {

TEST_CASE("a write lease from before an agent's rejoin commits nothing and says why", "[coordinator][recovery]") {
  CoordinatorConfig config;
  config.write_lease_ttl = 60s;  // still open when the agent comes back
  Harness h(config);
  const AgentId a = h.add_agent("a", "h1", 8);
  const AllocateItem writing = h.alloc(1, "h1");
  REQUIRE(writing.outcome == AllocateOutcome::kPlaced);
  h.advance(4s);  // declared dead with the lease open
  h.tick();
  auto rejoin = h.core->rejoin_agent(agent_reg("a", "h1", 8 * kBlock), h.now);
  REQUIRE(rejoin);
  REQUIRE(h.core->finish_recovery(a, 1, h.now).ok());
  auto st = h.core->commit(std::span<const LeaseId>(&writing.lease, 1), h.now);
  REQUIRE(st.size() == 1);
  CHECK(st[0].code() == StatusCode::kUnavailable);
  CHECK_FALSE(h.present(1));
  h.check();
}

}  // namespace kvpool::coordinator::testing
