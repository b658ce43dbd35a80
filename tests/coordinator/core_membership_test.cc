// CoordinatorCore membership: missed heartbeats and restarts.
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
