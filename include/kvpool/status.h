#pragma once
// Status and Result: how every kvpool call reports an expected failure.
//
// A Status is a code plus a human message. Pick the code by what the caller
// should do next (STYLE.md): kUnavailable means retry this call,
// kResourceExhausted means the pool is full (evict or back off),
// kFailedPrecondition means don't retry until some state changes.
// Result<T> is a [[nodiscard]] tl::expected<T, Status>; it becomes
// std::expected with C++23.

#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <tl/expected.hpp>

namespace kvpool {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kResourceExhausted,
  kUnavailable,
  kDeadlineExceeded,
  kCancelled,
  kDataLoss,  // bytes failed verification (checksum, torn block)
  kUnimplemented,
  kInternal,
  // The peer did not prove it knows the cluster secret (or we could not
  // prove it to the peer): fix the secret file, then retry. SECURITY.md.
  kPermissionDenied,
};
// The highest code this build knows; a code above it from a peer reads as
// kInternal.
inline constexpr StatusCode kLastStatusCode = StatusCode::kPermissionDenied;

// Stable lower-case name of a code ("unavailable"), for logs and --json.
std::string_view code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "unavailable: peer 127.0.0.1 closed the connection"
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// A value or the Status saying why not: tl::expected<T, Status>, and
// [[nodiscard]] as Status is, so no caller drops a failure without saying so
// (a `(void)` cast).
template <typename T>
class [[nodiscard]] Result : public tl::expected<T, Status> {
 public:
  using Base = tl::expected<T, Status>;
  using Base::Base;
  Result() = default;
  Result(const Base& b) : Base(b) {}             // NOLINT: as implicit as expected's own
  Result(Base&& b) noexcept(std::is_nothrow_move_constructible_v<Base>) : Base(std::move(b)) {}  // NOLINT
};

inline tl::unexpected<Status> make_error(StatusCode code, std::string message) {
  return tl::unexpected<Status>(Status(code, std::move(message)));
}

}  // namespace kvpool
