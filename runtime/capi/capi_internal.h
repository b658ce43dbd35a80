#pragma once
// What the C API's translation units (kvpool_c.cc, kvpool_c_gpu.cc) share:
// the per-thread last error, the guard that keeps C++ exceptions inside,
// and the struct_size rule's copy-in and copy-out (include/kvpool/kvpool.h).
// Internal: not installed.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "kvpool/client.h"
#include "kvpool/kvpool.h"
#include "kvpool/status.h"
#include "kvpool/types.h"

// The handle behind kvpool_client_t (the GPU calls reach its client too).
struct kvpool_client {
  std::unique_ptr<kvpool::Client> client;
};

namespace kvpool::capi {

// The calling thread's last status (kvpool_last_error_*); defined in kvpool_c.cc.
extern thread_local kvpool_status_t t_last_code;
extern thread_local std::string t_last_message;

using kvpool::StatusCode;

inline kvpool_status_t record(kvpool_status_t code, std::string_view message) noexcept {
  t_last_code = code;
  try {
    t_last_message.assign(message);
  } catch (...) {
    t_last_message.clear();  // out of memory for the message: the code still tells
  }
  return code;
}

inline kvpool_status_t to_c(StatusCode code) { return static_cast<kvpool_status_t>(static_cast<int>(code)); }

inline kvpool_status_t record(const kvpool::Status& s) noexcept { return record(to_c(s.code()), s.message()); }
inline kvpool_status_t ok() noexcept { return record(KVPOOL_OK, {}); }
inline kvpool_status_t invalid(std::string_view message) noexcept { return record(KVPOOL_INVALID_ARGUMENT, message); }

inline kvpool_status_t internal(const char* what, const char* detail) noexcept {
  try {
    return record(KVPOOL_INTERNAL, std::string(what) + ": " + detail);
  } catch (...) {
    return record(KVPOOL_INTERNAL, detail);  // no memory for the longer message
  }
}

// Runs `body`, turning any C++ exception into KVPOOL_INTERNAL.
template <typename Body>
kvpool_status_t guarded(const char* what, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return internal(what, "out of memory");
  } catch (const std::exception& e) {
    return internal(what, e.what());
  } catch (...) {
    return internal(what, "unknown exception");
  }
}

// Copies a caller's versioned struct into `out` (which holds the defaults):
// only the bytes the caller's struct_size covers, so fields appended later
// keep their defaults for an older caller.
template <typename T>
bool load_struct(const T* in, std::size_t min_size, T& out) {
  if (in == nullptr || in->struct_size < min_size) return false;
  std::memcpy(static_cast<void*>(&out), in, std::min(in->struct_size, sizeof(T)));
  out.struct_size = sizeof(T);
  return true;
}

// Writes `value` back into the caller's struct, no further than its
// struct_size.
template <typename T>
void store_struct(T* dst, T value) {
  value.struct_size = dst->struct_size;
  std::memcpy(static_cast<void*>(dst), &value, std::min(dst->struct_size, sizeof(T)));
}

inline std::string str_or_empty(const char* s) { return s == nullptr ? std::string() : std::string(s); }

inline std::vector<kvpool::Key128> to_keys(const kvpool_key_t* keys, std::size_t n) {
  std::vector<kvpool::Key128> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = kvpool::Key128{keys[i].lo, keys[i].hi};
  return out;
}

}  // namespace kvpool::capi
