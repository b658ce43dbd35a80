// CoordinatorCore's drain: moves of a retiring agent's blocks to other
// agents, with the races a move can lose (remove, reads, a dead target, a
// source that never reports).

#include <catch2/catch.hpp>
#include <chrono>
#include <map>

#include "coordinator/coordinator_core.h"
#include "tests/coordinator/core_fixture.h"

using namespace std::chrono_literals;
using kvpool::Key128;
using kvpool::Status;
using kvpool::StatusCode;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

namespace {

std::vector<MoveOutcome> all_ok(const DrainStep& step) {
  std::vector<MoveOutcome> out;
  for (const auto& m : step.moves) out.push_back({m.id, Status()});
  return out;
}

}  // namespace

TEST_CASE("drain moves every block to other agents, which then hold them under a higher generation",
          "[coordinator][drain]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  const AgentId b = h.add_agent("b", "h2", 10);
  std::vector<Location> before;
  for (std::uint64_t k = 1; k <= 4; ++k) before.push_back(h.put(k, "h1"));
  for (const auto& l : before) REQUIRE(l.agent == a);

  auto step = h.core->drain(a, 64, h.now);
  REQUIRE(step);
  CHECK(step->moves.size() == 4);
  CHECK(step->blocks_left == 4);
  CHECK(step->in_flight == 4);
  CHECK_FALSE(step->drained);
  CHECK(h.view(a).draining);
  h.check();
  for (const auto& m : step->moves) {
    CHECK(m.from.agent == a);
    CHECK(m.to.agent == b);
    CHECK(m.to.generation > m.from.generation);
    CHECK(m.to.length == m.from.length);
  }
  // Still readable where it was while the copies are in flight.
  auto mid = h.lookup({1, 2, 3, 4});
  REQUIRE(mid.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) CHECK(mid[i] == before[i]);
  // A second call issues nothing new for blocks already moving.
  auto again = h.core->drain(a, 64, h.now);
  REQUIRE(again);
  CHECK(again->moves.empty());
  CHECK(again->in_flight == 4);

  auto done = h.core->finish_moves(a, 1, all_ok(*step), h.now);
  REQUIRE(done);
  for (const auto& st : done->statuses) CHECK(st.ok());
  std::uint64_t invalidated = 0;
  for (const auto& inv : done->invalidations) {
    CHECK(inv.agent == a);
    invalidated += inv.slots.size();
  }
  CHECK(invalidated == 4);
  h.pending = done->invalidations;
  h.check();
  auto after = h.lookup({1, 2, 3, 4});
  REQUIRE(after.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(after[i].agent == b);
    CHECK(after[i].generation > before[i].generation);
  }
  h.ack_all();
  auto last = h.core->drain(a, 64, h.now);
  REQUIRE(last);
  CHECK(last->drained);
  CHECK(last->moved == 4);
  CHECK(h.view(a).drained);
  CHECK(h.view(a).blocks == 0);
  CHECK(h.view(b).blocks == 4);
  // No new placements on a draining agent, even for a writer on its host.
  CHECK(h.alloc(10, "h1").location.agent == b);
  h.check();

  REQUIRE(h.core->undrain(a, h.now).ok());
  CHECK_FALSE(h.view(a).draining);
  CHECK(h.alloc(11, "h1").location.agent == a);
}

TEST_CASE("a block read during its move keeps its old slot until the read lease ends", "[coordinator][drain]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  h.add_agent("b", "h2", 10);
  const Location old = h.put(1, "h1");
  LeaseId lease{};
  REQUIRE(h.lookup({1}, true, &lease).size() == 1);
  auto step = h.core->drain(a, 64, h.now);
  REQUIRE(step);
  REQUIRE(step->moves.size() == 1);
  auto done = h.core->finish_moves(a, 1, all_ok(*step), h.now);
  REQUIRE(done);
  REQUIRE(done->statuses[0].ok());
  CHECK(done->invalidations.empty());  // the reader still holds the old slot
  CHECK(h.lookup({1})[0].agent != a);
  auto s = h.core->drain(a, 64, h.now);
  REQUIRE(s);
  CHECK_FALSE(s->drained);  // the old slot is still being read
  h.check();
  REQUIRE(h.core->release(lease, h.now).ok());
  auto t = h.tick();
  REQUIRE(h.pending_slots() == 1);
  CHECK(h.pending[0].slots[0].header_offset == old.header_offset);
  h.ack_all();
  auto e = h.core->drain(a, 64, h.now);
  REQUIRE(e);
  CHECK(e->drained);
  h.check();
}

TEST_CASE("a drain with no room elsewhere says so, moves nothing and keeps every block", "[coordinator][drain]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  const AgentId b = h.add_agent("b", "h2", 2);
  for (std::uint64_t k = 1; k <= 4; ++k) h.put(k, "h1");
  auto step = h.core->drain(a, 64, h.now);
  REQUIRE(step);
  // b takes what fits under its high watermark (95% of 2 blocks: 1 block).
  CHECK(step->moves.size() == 1);
  CHECK(step->unplaceable == 3);
  CHECK(step->placement.code() == StatusCode::kResourceExhausted);
  CHECK(h.view(a).draining);
  CHECK(h.lookup({1, 2, 3, 4}).size() == 4);
  h.check();
  (void)b;
}

TEST_CASE("a move that fails, loses its block, or is never reported leaves the block where it was",
          "[coordinator][drain]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  const AgentId b = h.add_agent("b", "h2", 10);
  const Location l1 = h.put(1, "h1");
  const Location l2 = h.put(2, "h1");
  h.put(3, "h1");
  auto step = h.core->drain(a, 64, h.now);
  REQUIRE(step);
  REQUIRE(step->moves.size() == 3);
  // Key 2 is removed while it moves: it must not come back on b.
  Key128 k2 = key(2);
  auto removed = h.core->remove(h.ns, std::span<const Key128>(&k2, 1), h.now);
  REQUIRE(removed);
  REQUIRE(removed->statuses[0].ok());
  std::vector<MoveOutcome> out;
  for (const auto& m : step->moves) {
    if (m.key == key(1)) out.insert(out.begin(), {m.id, Status(StatusCode::kUnavailable, "put failed")});
    if (m.key == key(2)) out.push_back({m.id, Status()});
  }
  auto done = h.core->finish_moves(a, 1, out, h.now);
  REQUIRE(done);
  REQUIRE(done->statuses.size() == 2);
  CHECK(done->statuses[0].code() == StatusCode::kUnavailable);
  CHECK(done->statuses[1].code() == StatusCode::kFailedPrecondition);
  CHECK(h.lookup({1})[0] == l1);
  CHECK_FALSE(h.present(2));
  (void)l2;
  h.check();
  // Key 3's report never comes: tick expires the move past its deadline.
  for (int i = 0; i < 11; ++i) {
    h.advance(1s);
    REQUIRE(h.core->heartbeat(a, 1, h.now).ok());
    REQUIRE(h.core->heartbeat(b, 1, h.now).ok());
    h.tick();
  }
  h.check();
  CHECK(h.lookup({3})[0].agent == a);
  auto next = h.core->drain(a, 64, h.now);
  REQUIRE(next);
  CHECK(next->failed == 3);
  CHECK(next->moves.size() == 2);  // keys 1 and 3 again
  // A report for an expired move is refused, not applied.
  auto late = h.core->finish_moves(a, 1, all_ok(*step), h.now);
  REQUIRE(late);
  for (const auto& st : late->statuses) CHECK(st.code() == StatusCode::kNotFound);
  h.check();
}

TEST_CASE("a move to an agent that died is not applied", "[coordinator][drain]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  const AgentId b = h.add_agent("b", "h2", 10);
  const Location l1 = h.put(1, "h1");
  auto step = h.core->drain(a, 64, h.now);
  REQUIRE(step);
  REQUIRE(step->moves.size() == 1);
  REQUIRE(step->moves[0].to.agent == b);
  // b restarts (new incarnation): its region, with the copy, is gone.
  h.core->register_agent(agent_reg("b", "h2", 10 * kBlock, 2), h.now).value();
  auto done = h.core->finish_moves(a, 1, all_ok(*step), h.now);
  REQUIRE(done);
  CHECK(done->statuses[0].code() == StatusCode::kUnavailable);
  CHECK(h.lookup({1})[0] == l1);
  h.check();
}

TEST_CASE("an agent that dies mid-drain loses only the blocks not yet moved", "[coordinator][drain]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  const AgentId b = h.add_agent("b", "h2", 10);
  for (std::uint64_t k = 1; k <= 4; ++k) h.put(k, "h1");
  auto step = h.core->drain(a, 2, h.now);  // two moves in flight at most
  REQUIRE(step);
  REQUIRE(step->moves.size() == 2);
  auto done = h.core->finish_moves(a, 1, all_ok(*step), h.now);
  REQUIRE(done);
  auto second = h.core->drain(a, 2, h.now);
  REQUIRE(second);
  REQUIRE(second->moves.size() == 2);
  // a restarts (new incarnation) with two moves in flight: those two blocks
  // are gone with its memory; the two moved ones stay on b.
  h.core->register_agent(agent_reg("a", "h1", 10 * kBlock, 2), h.now).value();
  std::size_t present = 0;
  for (std::uint64_t k = 1; k <= 4; ++k) present += h.present(k) ? 1 : 0;
  CHECK(present == 2);
  CHECK(h.view(b).blocks == 2);
  // Its late report names an incarnation that is gone.
  auto late = h.core->finish_moves(a, 1, all_ok(*second), h.now);
  REQUIRE_FALSE(late);
  CHECK(late.error().code() == StatusCode::kFailedPrecondition);
  // The reserved slots on b are released when the moves expire.
  for (int i = 0; i < 11; ++i) {
    h.advance(1s);
    REQUIRE(h.core->heartbeat(a, 2, h.now).ok());
    REQUIRE(h.core->heartbeat(b, 1, h.now).ok());
    h.tick();
  }
  h.check();
  CHECK_FALSE(h.view(a).draining);  // a new incarnation starts placeable
}

TEST_CASE("stamp_at tells the blocks used before a time from those used after it", "[coordinator][evict]") {
  Harness h;
  const AgentId a = h.add_agent("a", "h1", 10);
  CHECK(h.core->stamp_at(h.now) == 0);  // nothing noted yet
  h.put(1);
  h.put(2);
  h.tick();  // notes the clock
  const kvpool::Clock::time_point cut = h.now;
  h.advance(2s);
  REQUIRE(h.core->heartbeat(a, 1, h.now).ok());
  h.lookup({2});  // 2 is used after the cut
  h.put(3);
  h.tick();
  const std::uint64_t max_stamp = h.core->stamp_at(cut);
  std::map<std::uint64_t, std::uint64_t> stamp_of;  // key.lo -> stamp
  auto slots = h.core->slots(a);  // kept: a range-for over .value() of a temporary would dangle
  REQUIRE(slots);
  for (const auto& v : *slots) stamp_of[v.key.lo] = v.stamp;
  CHECK(stamp_of[key(1).lo] <= max_stamp);
  CHECK(stamp_of[key(2).lo] > max_stamp);
  CHECK(stamp_of[key(3).lo] > max_stamp);
  CHECK(h.core->stamp_at(cut - 1s) == 0);  // before the first note
}
