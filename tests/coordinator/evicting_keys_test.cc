#include "coordinator/evicting_keys.h"

#include <catch2/catch.hpp>

namespace kvpool::coordinator {
namespace {

TEST_CASE("an evicting key lists its slots until each is forgotten", "[coordinator][evicting]") {
  EvictingKeys k;
  const Key128 key{1, 2};
  CHECK(k.empty());
  CHECK(k.of(0, key) == nullptr);
  const EvictingSlot first{AgentId{1}, 4096, 10};
  const EvictingSlot again{AgentId{2}, 8192, 11};  // written and evicted again elsewhere
  k.add(0, key, first, /*removal=*/false);
  k.add(0, key, again, /*removal=*/true);
  CHECK(k.of(1, key) == nullptr);  // another namespace
  REQUIRE(k.of(0, key) != nullptr);
  CHECK(k.of(0, key)->size() == 2);
  CHECK(k.count() == 2);
  CHECK(k.removing() == 1);
  CHECK(k.listed() == 2);
  k.forget(0, key, AgentId{1}, 10, /*removal=*/false);
  REQUIRE(k.of(0, key) != nullptr);
  CHECK(k.of(0, key)->front().agent == AgentId{2});
  CHECK(k.count() == 1);
  CHECK(k.removing() == 1);
  k.forget(0, key, AgentId{2}, 11, /*removal=*/true);
  CHECK(k.empty());
  CHECK(k.of(0, key) == nullptr);
  CHECK(k.count() == 0);
  CHECK(k.removing() == 0);
}

}  // namespace
}  // namespace kvpool::coordinator
