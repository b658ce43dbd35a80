// CoordinatorCore::expire_agents: what the etcd membership watch calls when
// an agent's key goes or names a new incarnation (runtime/etcd/membership.h).

#include <catch2/catch.hpp>

#include "tests/coordinator/core_fixture.h"

using namespace kvpool;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

namespace {
AgentRegistration named(const std::string& control, std::uint64_t incarnation, const std::string& tenant = {}) {
  AgentRegistration r = agent_reg(control, "h1", 8 * kBlock, incarnation);
  r.control_address = control;
  r.worker_address = "ucx-" + control;
  r.tenant = tenant;
  return r;
}
}  // namespace

TEST_CASE("an agent whose etcd key goes is declared dead at once, with its tenant regions",
          "[coordinator][membership]") {
  CoordinatorConfig config;
  config.agent_timeout = std::chrono::seconds(60);
  Harness h(config);
  const AgentId a = h.core->register_agent(named("node-a", 5), h.now).value();
  const AgentId a_acme = h.core->register_agent(named("node-a/acme", 6, "acme"), h.now).value();
  const AgentId ab = h.core->register_agent(named("node-ab", 7), h.now).value();  // a longer name, not a's region
  const AgentId b = h.core->register_agent(named("node-b", 8), h.now).value();
  for (std::uint64_t k = 0; k < 8; ++k) h.put(k);
  h.tick();

  // The record naming the incarnation in force: nothing happens.
  CHECK(h.core->expire_agents("node-a", 5, "test", h.now) == 0);
  CHECK(h.view(a).alive);
  // An unknown name: nothing.
  CHECK(h.core->expire_agents("node-z", 0, "test", h.now) == 0);
  // The key goes: node-a and its tenant region, not node-ab or node-b, at
  // once (the heartbeat timeout is a minute away); the next tick reports both.
  const std::uint64_t before = h.core->stats().blocks;
  CHECK(h.core->expire_agents("node-a", 0, "its etcd membership key is gone", h.now) == 2);
  CHECK_FALSE(h.view(a).alive);
  CHECK_FALSE(h.view(a_acme).alive);
  CHECK(h.view(ab).alive);
  CHECK(h.view(b).alive);
  CHECK(h.core->stats().blocks <= before);
  for (const auto& l : h.lookup({0, 1, 2, 3, 4, 5, 6, 7})) CHECK(l.agent != a);
  TickActions t = h.tick();
  CHECK(t.dead_agents.size() == 2);
  CHECK(h.core->heartbeat(a, 5, h.now).code() == StatusCode::kNotFound);
  // Placements avoid it.
  for (std::uint64_t k = 100; k < 104; ++k) CHECK(h.put(k).agent != a);

  // A key naming a new incarnation drops the old one; the new one, once
  // registered, is kept by the same record.
  CHECK(h.core->expire_agents("node-b", 9, "etcd names a new incarnation", h.now) == 1);
  CHECK_FALSE(h.view(b).alive);
  REQUIRE(h.core->register_agent(named("node-b", 9), h.now));
  CHECK(h.core->expire_agents("node-b", 9, "test", h.now) == 0);
  CHECK(h.core->stats().agents_alive == 2);  // node-ab, node-b
  h.check();
}
