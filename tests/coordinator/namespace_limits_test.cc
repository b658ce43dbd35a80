// Namespace registration limits per client and per tenant: one client or
// one tenant cannot take every namespace slot of the coordinator and lock
// everyone else out.

#include <catch2/catch.hpp>

#include "tests/coordinator/core_fixture.h"

using namespace kvpool;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

namespace {

NamespaceDescriptor model(int i) { return test_namespace(kBlock, "model-" + std::to_string(i)); }

}  // namespace

TEST_CASE("one client cannot register more namespaces than its limit, and others still can", "[coordinator]") {
  CoordinatorConfig config;
  config.max_namespaces = 100;
  config.max_namespaces_per_client = 10;
  Harness h(config);  // registers one namespace with no registrant
  const NamespaceRegistrant abuser{"abuser:1", ""};
  for (int i = 0; i < 10; ++i) REQUIRE(h.core->register_namespace(model(i), {}, abuser));
  auto over = h.core->register_namespace(model(10), {}, abuser);
  REQUIRE_FALSE(over);
  CHECK(over.error().code() == StatusCode::kResourceExhausted);
  CHECK(over.error().message().find("--max-namespaces-per-client") != std::string::npos);
  // Registering what exists again is idempotent and costs nothing.
  CHECK(h.core->register_namespace(model(3), {}, abuser));
  // Another client is not locked out.
  CHECK(h.core->register_namespace(model(10), {}, NamespaceRegistrant{"worker:2", ""}));
  CHECK(h.core->namespaces().size() == 12);
}

TEST_CASE("a tenant's clients together stay within the tenant's namespace limit", "[coordinator]") {
  CoordinatorConfig config;
  config.max_namespaces_per_client = 0;  // no per-client limit: only the tenant's
  config.max_namespaces_per_tenant = 4;
  Harness h(config);
  for (int i = 0; i < 4; ++i) {
    REQUIRE(h.core->register_namespace(model(i), {}, NamespaceRegistrant{"acme-" + std::to_string(i), "acme"}));
  }
  auto over = h.core->register_namespace(model(4), {}, NamespaceRegistrant{"acme-new", "acme"});
  REQUIRE_FALSE(over);
  CHECK(over.error().code() == StatusCode::kResourceExhausted);
  CHECK(over.error().message().find("tenant 'acme'") != std::string::npos);
  CHECK(h.core->register_namespace(model(4), {}, NamespaceRegistrant{"beta-1", "beta"}));
  CHECK(h.core->register_namespace(model(5), {}, NamespaceRegistrant{"operator", ""}));
}

TEST_CASE("the default limits keep one client from filling the coordinator", "[coordinator]") {
  CoordinatorConfig config;
  config.max_namespaces = 2000;
  Harness h(config);
  const NamespaceRegistrant abuser{"abuser:1", ""};
  std::uint32_t taken = 0;
  for (int i = 0; i < 2000 && h.core->register_namespace(model(i), {}, abuser); ++i) ++taken;
  CHECK(taken == CoordinatorConfig{}.max_namespaces_per_client);
  CHECK(h.core->register_namespace(model(5000), {}, NamespaceRegistrant{"worker:2", ""}));
}
