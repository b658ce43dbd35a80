#pragma once
// Helpers shared by tests. Tests that bound a time scale the bound with
// KVPOOL_TEST_TIME_SCALE (the sanitizer build sets 4), so a slow machine
// does not turn a bound into a flake.

#include <chrono>
#include <cstdint>

namespace kvpool::testing {

double time_scale();

template <typename Rep, typename Period>
std::chrono::milliseconds scaled(std::chrono::duration<Rep, Period> d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return std::chrono::milliseconds(static_cast<std::int64_t>(ms * time_scale()));
}

}  // namespace kvpool::testing
