// The codec's field lists (runtime/common/codec.h): one function drives both
// directions, lists are bounded by the bytes left and by Reader::Limits, and
// enums out of range are refused.

#include "runtime/common/codec.h"

#include <catch2/catch.hpp>

namespace kvpool::codec_test {

enum class Colour : std::uint8_t { kRed = 0, kBlue = 1 };

struct Point {
  std::uint32_t x = 0;
  std::int64_t y = 0;
};
struct Shape {
  Colour colour = Colour::kRed;
  std::string name;
  std::vector<Point> points;
  StatusCode code = StatusCode::kOk;
};

template <class Io>
void fields(Io& io, Point& p) {
  io(p.x, p.y);
}
template <class Io>
void fields(Io& io, Shape& s) {
  io.enumeration(s.colour, Colour::kBlue, [](unsigned v) { return "unknown colour " + std::to_string(v); });
  io.bytes(s.name, 8);
  io.list(s.points);
  io(s.code);
}

TEST_CASE("a field list encodes and decodes the same fields", "[common][codec]") {
  const Shape s{Colour::kBlue, "tri", {{1, -2}, {3, 4}}, StatusCode::kNotFound};
  const std::string p = encode_fields(s);
  CHECK(p.size() == 1 + (4 + 3) + 4 + 2 * 12 + 2);
  Shape back{Colour::kRed, "stale", {{9, 9}}, StatusCode::kInternal};
  REQUIRE(decode_fields(p, back, "shape").ok());
  CHECK(back.colour == Colour::kBlue);
  CHECK(back.name == "tri");
  REQUIRE(back.points.size() == 2);
  CHECK(back.points[0].y == -2);
  CHECK(back.code == StatusCode::kNotFound);
  CHECK(Reader::min_wire_bytes<Point>() == 12);
  CHECK(Reader::min_wire_bytes<Shape>() == 1 + 4 + 4 + 2);
}

TEST_CASE("a field list refuses what the codec must not accept", "[common][codec]") {
  const std::string p = encode_fields(Shape{Colour::kBlue, "tri", {{1, 2}, {3, 4}}, StatusCode::kNotFound});
  Shape out;
  SECTION("an enum above its last value, with the reason") {
    std::string bad = p;
    bad[0] = 7;
    CHECK(decode_fields(bad, out, "shape").message() == "shape: unknown colour 7");
  }
  SECTION("a string over its own limit") {
    CHECK(!decode_fields(encode_fields(Shape{Colour::kRed, "ninechars", {}, {}}), out, "shape").ok());
  }
  SECTION("a count the remaining bytes cannot hold") {
    std::string bad = p;
    bad[8] = 3;  // the points' count, after the colour and "tri"
    CHECK(decode_fields(bad, out, "shape").message() == "shape: truncated or malformed payload");
  }
  SECTION("a count over the reader's limit, with the limit") {
    CHECK(decode_fields(p, out, "shape", Reader::Limits{SIZE_MAX, 1}).message() ==
          "shape: a batch of 2 items is over the limit of 1: split it");
  }
  SECTION("trailing bytes") { CHECK(decode_fields(p + "x", out, "shape").message() == "shape: trailing bytes"); }
  SECTION("a status code from a newer peer reads as kInternal") {
    std::string newer = p;
    newer[newer.size() - 2] = 99;
    REQUIRE(decode_fields(newer, out, "shape").ok());
    CHECK(out.code == StatusCode::kInternal);
  }
}

}  // namespace kvpool::codec_test
