#include "coordinator/reclaim_queue.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

using namespace std::chrono_literals;
using kvpool::Clock;
using kvpool::coordinator::ReclaimQueue;

TEST_CASE("reclaim queue sends ready slots, holds quarantined ones, and retries unacknowledged ones",
          "[coordinator][reclaim]") {
  ReclaimQueue q;
  const Clock::time_point t0 = Clock::time_point{} + 1h;
  q.add_ready(0, 16, 100);
  q.add_quarantined(16, 1, 101, t0 + 5s);
  CHECK(q.granules_total() == 17);

  std::vector<ReclaimQueue::Pending> out;
  q.collect_ready(t0, out);
  REQUIRE(out.size() == 1);
  CHECK(out[0].granule == 0);
  out.clear();
  q.collect_ready(t0, out);
  CHECK(out.empty());

  q.collect_due(t0 + 1s, 2s, out);
  CHECK(out.empty());  // sent at t0, retry after 2 s; the other is quarantined
  q.collect_due(t0 + 5s, 2s, out);
  REQUIRE(out.size() == 2);  // the retry and the end of quarantine

  CHECK_FALSE(q.acknowledge(0, 16, 999));  // wrong generation
  CHECK_FALSE(q.acknowledge(0, 8, 100));   // wrong length
  CHECK(q.acknowledge(0, 16, 100));
  CHECK_FALSE(q.acknowledge(0, 16, 100));  // a repeat
  CHECK(q.acknowledge(16, 1, 101));
  CHECK(q.empty());
  CHECK(q.granules_total() == 0);
}

TEST_CASE("reclaim queue never acknowledges a quarantined slot", "[coordinator][reclaim]") {
  ReclaimQueue q;
  const Clock::time_point t0 = Clock::time_point{} + 1h;
  q.add_quarantined(4, 2, 7, t0 + 5s);
  CHECK_FALSE(q.acknowledge(4, 2, 7));
  CHECK(q.size() == 1);
}
