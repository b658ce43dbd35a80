#include <catch2/catch.hpp>

#include "kvpool/status.h"

using kvpool::Result;
using kvpool::Status;
using kvpool::StatusCode;

namespace {
Result<int> half(int v) {
  if (v % 2 != 0) return kvpool::make_error(StatusCode::kInvalidArgument, "odd value " + std::to_string(v));
  return v / 2;
}
}  // namespace

TEST_CASE("a default Status is ok and an error carries code and message", "[common]") {
  Status ok;
  CHECK(ok.ok());
  CHECK(ok.to_string() == "ok");
  Status err(StatusCode::kUnavailable, "peer gone");
  CHECK_FALSE(err.ok());
  CHECK(err.code() == StatusCode::kUnavailable);
  CHECK(err.to_string() == "unavailable: peer gone");
}

TEST_CASE("Result holds either a value or the error that explains its absence", "[common]") {
  auto good = half(4);
  REQUIRE(good);
  CHECK(*good == 2);
  auto bad = half(3);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == StatusCode::kInvalidArgument);
  CHECK(bad.error().message() == "odd value 3");
}
