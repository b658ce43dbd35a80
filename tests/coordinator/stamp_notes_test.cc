#include "coordinator/stamp_notes.h"

#include <catch2/catch.hpp>
#include <chrono>

namespace kvpool::coordinator {
namespace {

using namespace std::chrono_literals;

const Clock::time_point kStart = Clock::time_point{} + 1h;

TEST_CASE("stamp_at gives the stamp of the last note at or before a time", "[coordinator][stamps]") {
  StampNotes n;
  CHECK(n.stamp_at(kStart) == 0);
  n.note(kStart, 10);
  n.note(kStart + 500ms, 15);  // under a second after the last note: not taken
  n.note(kStart + 1s, 20);
  CHECK(n.stamp_at(kStart - 1ns) == 0);
  CHECK(n.stamp_at(kStart) == 10);
  CHECK(n.stamp_at(kStart + 999ms) == 10);
  CHECK(n.stamp_at(kStart + 1s) == 20);
  CHECK(n.stamp_at(kStart + 1h) == 20);
}

TEST_CASE("past kMaxNotes every other note goes and the answers coarsen", "[coordinator][stamps]") {
  StampNotes n;
  for (std::uint64_t i = 0; i < StampNotes::kMaxNotes; ++i) n.note(kStart + std::chrono::seconds(i), i + 1);
  CHECK(n.stamp_at(kStart + 1s) == 2);
  n.note(kStart + std::chrono::seconds(StampNotes::kMaxNotes), StampNotes::kMaxNotes + 1);
  // Notes at even seconds stay: second 1 now answers with second 0's stamp.
  CHECK(n.stamp_at(kStart) == 1);
  CHECK(n.stamp_at(kStart + 1s) == 1);
  CHECK(n.stamp_at(kStart + 2s) == 3);
  CHECK(n.stamp_at(kStart + std::chrono::seconds(StampNotes::kMaxNotes)) == StampNotes::kMaxNotes + 1);
}

}  // namespace
}  // namespace kvpool::coordinator
