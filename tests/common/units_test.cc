#include <catch2/catch.hpp>

#include "runtime/common/units.h"

using namespace kvpool;

TEST_CASE("sizes parse as operators write them", "[common]") {
  CHECK(*parse_size("1048576") == 1048576u);
  CHECK(*parse_size("512MiB") == 512ull << 20);
  CHECK(*parse_size("4GiB") == 4ull << 30);
  CHECK(*parse_size("4gib") == 4ull << 30);
  CHECK(*parse_size("64K") == 64ull << 10);
  CHECK(*parse_size("2 MiB") == 2ull << 20);
  CHECK(*parse_size("1GB") == 1000000000ull);
}

TEST_CASE("bad sizes are refused with a reason", "[common]") {
  for (const char* bad : {"", "MiB", "12XB", "-1", "99999999999999999999", "17179869184TiB"}) {
    INFO(bad);
    auto r = parse_size(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("sizes format with the largest exact binary unit", "[common]") {
  CHECK(format_size(2ull << 20) == "2 MiB");
  CHECK(format_size(64ull << 10) == "64 KiB");
  CHECK(format_size(1000) == "1000 B");
  CHECK(format_size((1ull << 20) + 1) == "1.0 MiB");
}

TEST_CASE("durations parse with units, plain numbers are seconds", "[common]") {
  using namespace std::chrono;
  CHECK(*parse_duration("250ms") == milliseconds(250));
  CHECK(*parse_duration("3") == seconds(3));
  CHECK(*parse_duration("2m") == minutes(2));
  CHECK_FALSE(parse_duration("3 fortnights"));
}

TEST_CASE("a deadline expires", "[common]") {
  auto past = Deadline::after(std::chrono::nanoseconds(0));
  CHECK(past.expired());
  CHECK(past.remaining().count() == 0);
  CHECK_FALSE(Deadline::never().expired());
}
