#pragma once
// Sizes and durations as operators write them on command lines and in
// config files: "512MiB", "4GiB", "1048576", "250ms", "3s".

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "kvpool/status.h"

namespace kvpool {

// Accepts a plain byte count or a number with a suffix: K/KiB, M/MiB, G/GiB,
// T/TiB (powers of 1024; KB/MB/GB are powers of 1000). Case-insensitive
// suffix. kInvalidArgument on anything else or on overflow.
Result<std::uint64_t> parse_size(std::string_view text);

// "2 MiB", "64 KiB", "1000 B": the largest binary unit that divides exactly,
// else one decimal.
std::string format_size(std::uint64_t bytes);

// Accepts "<n>ns|us|ms|s|m|h"; a plain number is seconds.
Result<std::chrono::nanoseconds> parse_duration(std::string_view text);

using Clock = std::chrono::steady_clock;

// A point in time after which a wait gives up with kDeadlineExceeded.
class Deadline {
 public:
  static Deadline after(std::chrono::nanoseconds d) { return Deadline(Clock::now() + d); }
  static Deadline never() { return Deadline(Clock::time_point::max()); }
  explicit Deadline(Clock::time_point at) : at_(at) {}
  bool expired() const { return Clock::now() >= at_; }
  Clock::time_point at() const { return at_; }
  std::chrono::nanoseconds remaining() const {
    auto now = Clock::now();
    return now >= at_ ? std::chrono::nanoseconds(0) : at_ - now;
  }

 private:
  Clock::time_point at_;
};

}  // namespace kvpool
