#include "runtime/common/units.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <limits>

namespace kvpool {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// Splits "512MiB" into 512 and "mib"; whitespace between is allowed.
bool split_number(std::string_view text, std::uint64_t& number, std::string& suffix) {
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, number);
  if (ec != std::errc() || ptr == begin) return false;
  std::string_view rest(ptr, end - ptr);
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  suffix = lower(rest);
  return true;
}

}  // namespace

Result<std::uint64_t> parse_size(std::string_view text) {
  std::uint64_t number = 0;
  std::string suffix;
  if (!split_number(text, number, suffix)) {
    return make_error(StatusCode::kInvalidArgument, "not a size: '" + std::string(text) + "' (try 512MiB, 4GiB or a byte count)");
  }
  std::uint64_t mult = 0;
  if (suffix.empty() || suffix == "b") mult = 1;
  else if (suffix == "k" || suffix == "kib") mult = 1ull << 10;
  else if (suffix == "m" || suffix == "mib") mult = 1ull << 20;
  else if (suffix == "g" || suffix == "gib") mult = 1ull << 30;
  else if (suffix == "t" || suffix == "tib") mult = 1ull << 40;
  else if (suffix == "kb") mult = 1000ull;
  else if (suffix == "mb") mult = 1000ull * 1000;
  else if (suffix == "gb") mult = 1000ull * 1000 * 1000;
  else if (suffix == "tb") mult = 1000ull * 1000 * 1000 * 1000;
  else return make_error(StatusCode::kInvalidArgument, "unknown size unit '" + suffix + "' in '" + std::string(text) + "'");
  if (number > std::numeric_limits<std::uint64_t>::max() / mult) {
    return make_error(StatusCode::kInvalidArgument, "size overflows 64 bits: '" + std::string(text) + "'");
  }
  return number * mult;
}

std::string format_size(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  std::uint64_t v = bytes;
  while (unit < 4 && v >= 1024 && v % 1024 == 0) {
    v /= 1024;
    ++unit;
  }
  if (unit > 0 || bytes < 1024) return std::to_string(v) + " " + kUnits[unit];
  double d = static_cast<double>(bytes);
  unit = 0;
  while (unit < 4 && d >= 1024) {
    d /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", d, kUnits[unit]);
  return buf;
}

Result<std::chrono::nanoseconds> parse_duration(std::string_view text) {
  std::uint64_t number = 0;
  std::string suffix;
  if (!split_number(text, number, suffix)) {
    return make_error(StatusCode::kInvalidArgument, "not a duration: '" + std::string(text) + "' (try 250ms or 3s)");
  }
  using namespace std::chrono;
  std::uint64_t ns_per = 0;
  if (suffix == "ns") ns_per = 1;
  else if (suffix == "us") ns_per = 1000;
  else if (suffix == "ms") ns_per = 1000 * 1000;
  else if (suffix.empty() || suffix == "s") ns_per = 1000 * 1000 * 1000;
  else if (suffix == "m") ns_per = 60ull * 1000 * 1000 * 1000;
  else if (suffix == "h") ns_per = 3600ull * 1000 * 1000 * 1000;
  else return make_error(StatusCode::kInvalidArgument, "unknown duration unit '" + suffix + "' in '" + std::string(text) + "'");
  if (number > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / ns_per) {
    return make_error(StatusCode::kInvalidArgument, "duration overflows: '" + std::string(text) + "'");
  }
  return nanoseconds(static_cast<std::int64_t>(number * ns_per));
}

}  // namespace kvpool
