#include "coordinator/lease_table.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

namespace kvpool::coordinator {
namespace {

using namespace std::chrono_literals;

const Clock::time_point kStart = Clock::time_point{} + 1h;

struct TestLease {
  Clock::time_point deadline{};
  int tag = 0;
};

TEST_CASE("a lease is taken once, by id or by expiry", "[coordinator][leases]") {
  LeaseTable<TestLease> t;
  t.add(7, TestLease{kStart + 1s, 70});
  t.add(8, TestLease{kStart + 1s, 80});
  CHECK(t.size() == 2);
  auto l = t.take(7);
  REQUIRE(l);
  CHECK(l->tag == 70);
  CHECK_FALSE(t.take(7));
  CHECK_FALSE(t.take(9));
  // Good through its deadline: expires only once now is past it.
  CHECK_FALSE(t.take_expired(kStart + 1s));
  auto e = t.take_expired(kStart + 1s + 1ns);
  REQUIRE(e);
  CHECK(e->first == 8);
  CHECK(e->second.tag == 80);
  CHECK_FALSE(t.take_expired(kStart + 1h));  // 7's stale pair is skipped
  CHECK(t.size() == 0);
}

TEST_CASE("leases expire in deadline order", "[coordinator][leases]") {
  LeaseTable<TestLease> t;
  t.add(1, TestLease{kStart + 3s, 1});
  t.add(2, TestLease{kStart + 1s, 2});
  t.add(3, TestLease{kStart + 2s, 3});
  std::vector<std::uint64_t> order;
  while (auto e = t.take_expired(kStart + 10s)) order.push_back(e->first);
  CHECK(order == std::vector<std::uint64_t>{2, 3, 1});
}

TEST_CASE("many leases ended early leave the survivors expiring in order", "[coordinator][leases]") {
  // Past 1024 heap pairs with most leases gone, the heap is rebuilt.
  LeaseTable<TestLease> t;
  std::vector<std::uint64_t> kept;
  for (std::uint64_t id = 1; id <= 5000; ++id) {
    t.add(id, TestLease{kStart + std::chrono::milliseconds(5000 - id), 0});
    if (id % 500 == 0) {
      kept.push_back(id);
    } else {
      REQUIRE(t.take(id));
    }
  }
  CHECK(t.size() == kept.size());
  std::vector<std::uint64_t> order;
  while (auto e = t.take_expired(kStart + 1h)) order.push_back(e->first);
  CHECK(order == std::vector<std::uint64_t>(kept.rbegin(), kept.rend()));
}

}  // namespace
}  // namespace kvpool::coordinator
