// The shard map (runtime/etcd/shard_map.h): its JSON forms, the checks that
// make a malformed map a clear error, equal ranges agreeing with the
// coordinator's shard_of(), and reading it from a real etcd.

#include <catch2/catch.hpp>

#include "coordinator/shard.h"
#include "runtime/etcd/shard_map.h"
#include "tests/common/etcd_cluster.h"

using namespace kvpool;
using namespace kvpool::etcd;

TEST_CASE("shard map: the short and the full form, and equal ranges agree with shard_of", "[etcd][shardmap]") {
  auto m = parse_shard_map(R"({"version": 4, "shards": 3})");
  REQUIRE(m);
  CHECK(m->version == 4);
  REQUIRE(m->ranges.size() == 3);
  CHECK(m->ranges.front().start == 0);
  CHECK(m->ranges.back().end == kPointSpace);
  CHECK(m->shards() == std::vector<std::uint32_t>{0, 1, 2});
  for (std::uint32_t count : {1u, 2u, 3u, 4u, 7u, 16u}) {
    const ShardMap e = ShardMap::equal(count);
    for (std::uint64_t i = 0; i < 20000; ++i) {
      const Key128 k{i * 0x9e3779b97f4a7c15ull + 1, i ^ 0xabcdef};
      REQUIRE(e.shard_of(k) == coordinator::shard_of(k, count));
    }
  }
  // The full form round-trips, with a moving range.
  ShardMap moving = ShardMap::equal(2, 7);
  moving.ranges.insert(moving.ranges.begin() + 1, ShardRange{1u << 30, 1u << 31, 2, 0});
  moving.ranges[0].end = 1u << 30;
  auto back = parse_shard_map(encode_shard_map(moving));
  REQUIRE(back);
  CHECK(back->ranges == moving.ranges);
  CHECK(back->version == 7);
  CHECK(back->shards() == std::vector<std::uint32_t>{0, 1, 2});
  CHECK(back->owned_by(0).size() == 1);
  CHECK(back->range_of((1u << 30) + 5).shard == 2);
  CHECK(*back->range_of((1u << 30) + 5).from == 0);
  CHECK_FALSE(back->single());
  CHECK(ShardMap::equal(1).single());

  // Adding a shard: the upper half of the largest range moves to it.
  auto added = add_shard(ShardMap::equal(2, 5), 2);
  REQUIRE(added);
  CHECK(added->version == 6);
  REQUIRE(added->ranges.size() == 3);
  CHECK(added->ranges[0] == ShardRange{0, 1u << 30, 0, std::nullopt});
  CHECK(added->ranges[1] == ShardRange{1u << 30, 1u << 31, 2, 0});
  CHECK(added->ranges[2] == ShardRange{1u << 31, kPointSpace, 1, std::nullopt});
  CHECK(parse_shard_map(encode_shard_map(*added)));
  CHECK_FALSE(add_shard(*added, 1));
}

TEST_CASE("shard map: malformed maps are refused naming the problem", "[etcd][shardmap]") {
  struct Case {
    const char* json;
    const char* says;
  };
  for (const Case& c : {Case{"[]", "not a JSON object"}, Case{"{", "not a JSON object"},
                        Case{R"({"shards": 2})", "'version' is missing"},
                        Case{R"({"version": -1, "shards": 2})", "'version' is not a non-negative integer"},
                        Case{R"({"version": 1})", "exactly one of 'shards'"},
                        Case{R"({"version": 1, "shards": 0})", "at least 1"},
                        Case{R"({"version": 1, "ranges": []})", "non-empty array"},
                        Case{R"({"version": 1, "ranges": [{"start": 0, "end": 10, "shard": 0}]})", "not 4294967296"},
                        Case{R"({"version": 1, "ranges": [{"start": 0, "end": 10, "shard": 0},
                              {"start": 11, "end": 4294967296, "shard": 1}]})",
                             "starts at 11 where 10 was expected"},
                        Case{R"({"version": 1, "ranges": [{"start": 0, "end": 4294967296, "shard": 1, "from": 1}]})",
                             "to itself"},
                        Case{R"({"version": 1, "ranges": [{"start": 0, "end": 4294967297, "shard": 0}]})", "above"},
                        Case{R"({"version": 1, "ranges": [{"start": 0, "end": 4294967296}]})", "'shard' is missing"}}) {
    INFO(c.json);
    auto m = parse_shard_map(c.json);
    REQUIRE_FALSE(m);
    CHECK(m.error().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(m.error().message(), Catch::Contains(c.says));
  }
}

TEST_CASE("shard map in etcd: none is one shard at version 0, a malformed one kFailedPrecondition", "[etcd][shardmap]") {
  if (!testing::etcd_available()) {
    WARN("etcd-server is not installed: skipped");
    return;
  }
  auto etcd = testing::EtcdCluster::start(1);
  REQUIRE(etcd);
  auto c = Client::create(etcd->client_options());
  REQUIRE(c);
  auto none = read_shard_map(**c);
  REQUIRE(none);
  CHECK(none->version == 0);
  CHECK(none->single());
  REQUIRE((*c)->put(kShardMapKey, R"({"version": 3, "shards": 4})"));
  auto four = read_shard_map(**c);
  REQUIRE(four);
  CHECK(four->version == 3);
  CHECK(four->shards().size() == 4);
  REQUIRE((*c)->put(kShardMapKey, "garbage"));
  auto bad = read_shard_map(**c);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(bad.error().message(), Catch::Contains("/kvpool/shardmap is malformed"));
}
