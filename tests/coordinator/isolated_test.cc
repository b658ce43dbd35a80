// Isolated tenants in the coordinator core: a namespace registered for an
// isolated tenant is placed only in regions registered for that tenant,
// everyone else's only in the shared regions, drains stay within the
// tenant's regions, and blocks recovered from a tenant region give their
// namespace to that tenant.

#include <catch2/catch.hpp>
#include <set>

#include "tests/coordinator/core_fixture.h"

using namespace kvpool;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

namespace {

AgentRegistration tenant_reg(const std::string& name, const std::string& host, std::uint64_t blocks,
                             const std::string& tenant, std::uint64_t incarnation = 1) {
  AgentRegistration r = agent_reg(name, host, blocks * kBlock, incarnation);
  r.tenant = tenant;
  return r;
}

}  // namespace

TEST_CASE("a namespace's blocks go only to the regions of its tenant", "[coordinator][tenants][isolated]") {
  Harness h;  // h.ns: a shared namespace
  const AgentId shared_a = h.add_agent("a", "h1", 8);
  const AgentId acme_a = h.core->register_agent(tenant_reg("a/acme", "h1", 8, "acme"), h.now).value();
  const AgentId acme_b = h.core->register_agent(tenant_reg("b/acme", "h2", 8, "acme"), h.now).value();
  const AgentId beta_b = h.core->register_agent(tenant_reg("b/beta", "h2", 8, "beta"), h.now).value();
  const NamespaceId acme_ns = h.core->register_namespace(test_namespace(kBlock, "acme/m"), "acme").value();
  CHECK(h.core->namespace_tenant(acme_ns).value() == "acme");
  CHECK(h.core->namespace_tenant(h.ns).value().empty());

  // Shared blocks: the shared region only, even when tenant regions are emptier.
  for (std::uint64_t k = 0; k < 6; ++k) CHECK(h.put(k, "h2").agent == shared_a);

  // acme's blocks: acme's regions only, local-first among them.
  std::set<AgentId> used;
  for (std::uint64_t k = 0; k < 12; ++k) {
    BlockRequest req{key(100 + k), kBlock};
    auto r = h.core->allocate(acme_ns, std::span<const BlockRequest>(&req, 1), WriterInfo{"w", "h1"}, h.now);
    REQUIRE(r);
    REQUIRE(r->items[0].outcome == AllocateOutcome::kPlaced);
    const AgentId at = r->items[0].location.agent;
    CHECK((at == acme_a || at == acme_b));
    used.insert(at);
    REQUIRE(h.core->commit(std::span<const LeaseId>(&r->items[0].lease, 1), h.now)[0].ok());
  }
  CHECK(used.size() == 2);
  CHECK(h.view(beta_b).blocks == 0);

  // A tenant with no live region gets a clear error, not the shared pool.
  const NamespaceId gamma_ns = h.core->register_namespace(test_namespace(kBlock, "gamma/m"), "gamma").value();
  BlockRequest req{key(999), kBlock};
  auto r = h.core->allocate(gamma_ns, std::span<const BlockRequest>(&req, 1), WriterInfo{"w", "h1"}, h.now);
  REQUIRE(r);
  CHECK(r->items[0].outcome == AllocateOutcome::kError);
  CHECK(r->items[0].status.code() == StatusCode::kResourceExhausted);
  CHECK(r->items[0].status.message().find("isolated tenant 'gamma'") != std::string::npos);

  // A drain of an acme region moves its blocks to the other acme region only.
  auto step = h.core->drain(acme_a, 64, h.now);
  REQUIRE(step);
  for (const BlockMove& m : step->moves) CHECK(m.to.agent == acme_b);
  h.check();
}

TEST_CASE("blocks recovered from a tenant region give their namespace to that tenant",
          "[coordinator][tenants][isolated][recovery]") {
  Harness h;
  const auto reg = tenant_reg("a/acme", "h1", 8, "acme");
  auto rejoin = h.core->rejoin_agent(reg, h.now);
  REQUIRE(rejoin);
  REQUIRE(rejoin->send_blocks);
  const NamespaceId acme_ns = namespace_id(test_namespace(kBlock, "acme/m"));
  std::vector<RecoveredBlock> blocks = {{acme_ns, key(1), 0, kBlock, 10},
                                        // a block of a shared namespace in acme's region: not taken
                                        {h.ns, key(2), kBlock, kBlock, 11}};
  auto rec = h.core->recover_blocks(rejoin->id, 1, blocks, h.now);
  REQUIRE(rec);
  CHECK(rec->adopted == 1);
  CHECK(rec->dropped == 1);
  CHECK(h.core->namespace_tenant(acme_ns).value() == "acme");
  REQUIRE(h.core->finish_recovery(rejoin->id, 1, h.now).ok());
  h.check();
}
