// The core's key ranges from the shard map (CoordinatorConfig::owned_ranges,
// set_owned_ranges, list_keys): owned ranges are written and read; a range
// moving away is read (lookup, remove) but not written; list_keys finds a
// range's committed blocks.

#include <catch2/catch.hpp>

#include <set>

#include "runtime/etcd/shard_map.h"
#include "tests/coordinator/core_fixture.h"

using namespace kvpool;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

namespace {
bool in(const Key128& k, std::uint64_t start, std::uint64_t end) {
  const std::uint64_t p = etcd::key_point(k);
  return p >= start && p < end;
}
}  // namespace

TEST_CASE("owned, moving-away and foreign key ranges, and list_keys of a range", "[coordinator][shard]") {
  constexpr std::uint64_t kHalf = std::uint64_t{1} << 31, kQuarter = std::uint64_t{1} << 30;
  CoordinatorConfig config;
  config.owned_ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>{{0, kHalf}};
  Harness h(config);
  h.add_agent("a", "h1", 256);
  std::vector<std::uint64_t> low, high, foreign;  // [0, 1/4), [1/4, 1/2), [1/2, 1)
  for (std::uint64_t k = 0; k < 400; ++k) {
    if (in(key(k), 0, kQuarter)) low.push_back(k);
    else if (in(key(k), kQuarter, kHalf)) high.push_back(k);
    else foreign.push_back(k);
  }
  REQUIRE(low.size() > 10);
  REQUIRE(high.size() > 10);
  REQUIRE(foreign.size() > 10);
  for (std::size_t i = 0; i < 10; ++i) {
    h.put(low[i]);
    h.put(high[i]);
  }
  AllocateItem refused = h.alloc(foreign[0]);
  CHECK(refused.status.code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(refused.status.message(), Catch::Contains("is not in the key ranges of shard 0"));

  // list_keys pages through exactly the range's committed blocks.
  std::set<Key128> listed;
  std::uint32_t cursor = 0;
  do {
    auto l = h.core->list_keys(kQuarter, kHalf, cursor, 3);
    CHECK(l.keys.size() <= 3);
    for (const auto& [ns, k] : l.keys) {
      CHECK(ns == h.ns);
      listed.insert(k);
    }
    cursor = l.next;
  } while (cursor != 0);
  std::set<Key128> expected;
  for (std::size_t i = 0; i < 10; ++i) expected.insert(key(high[i]));
  CHECK(listed == expected);

  // [1/4, 1/2) moves away: read and removed here, not written.
  h.core->set_owned_ranges({{0, kQuarter}}, {{kQuarter, kHalf}});
  const Key128 moving = key(high[0]);
  auto l = h.core->lookup(h.ns, std::span<const Key128>(&moving, 1), false, h.now);
  REQUIRE(l);
  CHECK(l->locations.size() == 1);
  CHECK(h.alloc(high[11]).status.code() == StatusCode::kFailedPrecondition);
  CHECK(h.alloc(low[11]).outcome == AllocateOutcome::kPlaced);
  auto rm = h.core->remove(h.ns, std::span<const Key128>(&moving, 1), h.now);
  REQUIRE(rm);
  CHECK(rm->statuses[0].ok());
  // The move is over: the range is foreign now.
  h.core->set_owned_ranges({{0, kQuarter}}, {});
  const Key128 gone = key(high[1]);
  auto after = h.core->lookup(h.ns, std::span<const Key128>(&gone, 1), false, h.now);
  REQUIRE_FALSE(after);
  CHECK(after.error().code() == StatusCode::kFailedPrecondition);
}
