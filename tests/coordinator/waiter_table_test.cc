#include "coordinator/waiter_table.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <vector>

namespace kvpool::coordinator {
namespace {

using namespace std::chrono_literals;

const Clock::time_point kStart = Clock::time_point{} + 1h;

Key128 key(std::uint64_t n) { return Key128{n + 1, n}; }

// A waiter for `keys` of namespace 0, none committed yet, whose callback
// stores what it was given in `got`.
Waiter waiter_for(std::vector<Key128> keys, Clock::time_point deadline, std::optional<std::vector<bool>>& got) {
  Waiter w;
  w.keys = std::move(keys);
  w.committed.assign(w.keys.size(), false);
  w.remaining = w.keys.size();
  w.deadline = deadline;
  w.done = [&got](std::vector<bool> committed) { got = std::move(committed); };
  return w;
}

TEST_CASE("a waiter finishes once every one of its keys is committed", "[coordinator][waiters]") {
  WaiterTable t;
  std::optional<std::vector<bool>> got;
  const std::uint64_t id = t.next_id();
  t.add(id, waiter_for({key(1), key(2)}, kStart + 1s, got));
  ReadyCallbacks ready;
  t.notify_committed(0, key(1), ready);
  t.notify_committed(1, key(2), ready);  // another namespace
  CHECK(ready.empty());
  CHECK(t.contains(id));
  t.notify_committed(0, key(1), ready);  // again: nothing new
  CHECK(ready.empty());
  t.notify_committed(0, key(2), ready);
  REQUIRE(ready.size() == 1);
  CHECK_FALSE(t.contains(id));
  CHECK(t.size() == 0);
  run_callbacks(ready);
  REQUIRE(got);
  CHECK(*got == std::vector<bool>{true, true});
  CHECK(t.fire_due(kStart + 1h, ready) == 0);  // its deadline went with it
}

TEST_CASE("a key repeated in one waiter is satisfied by one commit", "[coordinator][waiters]") {
  WaiterTable t;
  std::optional<std::vector<bool>> got;
  t.add(t.next_id(), waiter_for({key(1), key(1)}, kStart + 1s, got));
  ReadyCallbacks ready;
  t.notify_committed(0, key(1), ready);
  REQUIRE(ready.size() == 1);
  run_callbacks(ready);
  CHECK(*got == std::vector<bool>{true, true});
}

TEST_CASE("waiters past their deadline fire with what was committed, in deadline order", "[coordinator][waiters]") {
  WaiterTable t;
  std::optional<std::vector<bool>> early, late;
  t.add(t.next_id(), waiter_for({key(1), key(2)}, kStart + 2s, late));
  t.add(t.next_id(), waiter_for({key(1), key(3)}, kStart + 1s, early));
  ReadyCallbacks ready;
  t.notify_committed(0, key(1), ready);
  CHECK(ready.empty());
  CHECK(t.fire_due(kStart + 1s - 1ns, ready) == 0);
  CHECK(t.fire_due(kStart + 1s, ready) == 1);  // a deadline equal to now fires
  CHECK(t.size() == 1);
  CHECK(t.fire_due(kStart + 5s, ready) == 1);
  run_callbacks(ready);
  CHECK(*early == std::vector<bool>{true, false});
  CHECK(*late == std::vector<bool>{true, false});
  // Their keys are forgotten: a commit now finds no one.
  t.notify_committed(0, key(2), ready);
  CHECK(ready.size() == 2);
}

TEST_CASE("a cancelled waiter never calls back", "[coordinator][waiters]") {
  WaiterTable t;
  std::optional<std::vector<bool>> got;
  const std::uint64_t id = t.next_id();
  CHECK(t.next_id() == id + 1);  // ids are not reused
  t.add(id, waiter_for({key(1)}, kStart + 1s, got));
  t.finish(id, nullptr);
  CHECK_FALSE(t.contains(id));
  ReadyCallbacks ready;
  t.notify_committed(0, key(1), ready);
  CHECK(t.fire_due(kStart + 1h, ready) == 0);
  CHECK(ready.empty());
  t.finish(id, &ready);  // unknown by now: nothing
  CHECK(ready.empty());
}

}  // namespace
}  // namespace kvpool::coordinator
