#pragma once
// Shared by the fuzz targets: a check that crashes (so libFuzzer keeps the
// input), a little-endian byte cursor over the fuzz input, and the quiet
// start every target needs.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "runtime/common/logging.h"

namespace kvpool::fuzz {

// A property failed: print where and why, then abort. libFuzzer turns the
// abort into a crash report and writes the input as crash-<sha1>.
[[noreturn]] inline void fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "fuzz check failed at %s:%d: %s\n", file, line, what);
  std::abort();
}

#define KVPOOL_FUZZ_CHECK(cond)                                   \
  do {                                                            \
    if (!(cond)) ::kvpool::fuzz::fail(__FILE__, __LINE__, #cond); \
  } while (0)

// Every decoder logs nothing it needs to; scan() logs a line per call, which
// would cost more than the work being fuzzed.
inline void quiet_logs() {
  if (!kvpool::log::set_log_level("off")) std::abort();
}

inline std::uint64_t load_le(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

inline void store_le(unsigned char* p, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
}

inline std::string_view as_chars(const std::uint8_t* data, std::size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace kvpool::fuzz
