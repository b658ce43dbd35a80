#include "pool/slot_header.h"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

using kvpool::Status;
using kvpool::StatusCode;
using kvpool::pool::decode;
using kvpool::pool::encode;
using kvpool::pool::invalidate;
using kvpool::pool::Key128;
using kvpool::pool::kGranule;
using kvpool::pool::kSlotFormatVersion;
using kvpool::pool::kSlotHeaderBytes;
using kvpool::pool::payload_checksum;
using kvpool::pool::RegionLayout;
using kvpool::pool::scan;
using kvpool::pool::ScannedBlock;
using kvpool::pool::SlotHeader;
using kvpool::pool::verify_payload;

namespace {

using HeaderBytes = std::array<std::byte, kSlotHeaderBytes>;

std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

SlotHeader sample_header(std::span<const std::byte> payload) {
  SlotHeader h;
  h.namespace_id = 0x0123456789abcdefULL;
  h.key = Key128{0x1122334455667788ULL, 0x99aabbccddeeff00ULL};
  h.payload_length = payload.size();
  h.generation = 42;
  h.payload_checksum = payload_checksum(payload);
  return h;
}

std::uint64_t load_u64(const HeaderBytes& bytes, std::size_t at) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v |= std::to_integer<std::uint64_t>(bytes[at + i]) << (8 * i);
  return v;
}

// Writes payload then header for a block at granule `index`, as a writer does.
SlotHeader write_block(std::vector<std::byte>& region, const RegionLayout& layout, std::uint64_t index,
                       std::uint64_t length, std::uint64_t seed) {
  const std::uint64_t payload_offset = index * kGranule;
  auto payload = random_bytes(length, seed);
  std::memcpy(region.data() + layout.payload_region_offset(payload_offset), payload.data(), length);
  SlotHeader h = sample_header(payload);
  h.key = Key128{seed, ~seed};
  h.generation = seed;
  encode(h, std::span(region).subspan(layout.header_offset(payload_offset)).first<kSlotHeaderBytes>());
  return h;
}

std::span<std::byte, kSlotHeaderBytes> header_at(std::vector<std::byte>& region, const RegionLayout& layout,
                                                 std::uint64_t index) {
  return std::span(region).subspan(layout.header_offset(index * kGranule)).first<kSlotHeaderBytes>();
}

}  // namespace

TEST_CASE("an encoded slot header decodes to the same fields", "[pool][slot_header]") {
  auto payload = random_bytes(3 * kGranule + 17, 1);
  const SlotHeader h = sample_header(payload);
  HeaderBytes bytes{};
  encode(h, bytes);
  auto decoded = decode(bytes);
  REQUIRE(decoded);
  CHECK(*decoded == h);
  CHECK(verify_payload(*decoded, payload).ok());
}

TEST_CASE("a slot header is laid out little-endian at its documented offsets", "[pool][slot_header]") {
  auto payload = random_bytes(1000, 2);
  const SlotHeader h = sample_header(payload);
  HeaderBytes bytes{};
  encode(h, bytes);
  CHECK(std::memcmp(bytes.data(), "KVPS", 4) == 0);
  CHECK(std::to_integer<int>(bytes[4]) == kSlotFormatVersion);
  CHECK(std::to_integer<int>(bytes[5]) == 0);
  CHECK(std::to_integer<int>(bytes[6]) == 1);  // slices: one, no table
  CHECK(std::to_integer<int>(bytes[7]) == 0);
  CHECK(std::to_integer<int>(bytes[8]) == 0xef);  // lowest byte of the namespace id first
  CHECK(load_u64(bytes, 8) == h.namespace_id);
  CHECK(load_u64(bytes, 16) == h.key.lo);
  CHECK(load_u64(bytes, 24) == h.key.hi);
  CHECK(load_u64(bytes, 32) == 1000);
  CHECK(load_u64(bytes, 40) == 42);
  CHECK(load_u64(bytes, 48) == XXH3_64bits(payload.data(), payload.size()));
  CHECK(load_u64(bytes, 56) == XXH3_64bits(bytes.data(), 56));
}

TEST_CASE("every single flipped bit of a slot header is detected", "[pool][slot_header]") {
  auto payload = random_bytes(kGranule, 3);
  HeaderBytes good{};
  encode(sample_header(payload), good);
  for (std::size_t bit = 0; bit < kSlotHeaderBytes * 8; ++bit) {
    HeaderBytes bad = good;
    bad[bit / 8] ^= static_cast<std::byte>(1u << (bit % 8));
    auto decoded = decode(bad);
    INFO("bit " << bit);
    REQUIRE_FALSE(decoded);
    CHECK(decoded.error().code() == StatusCode::kDataLoss);
  }
}

TEST_CASE("a flipped bit in the payload fails verification", "[pool][slot_header]") {
  auto payload = random_bytes(2 * kGranule + 5, 4);
  const SlotHeader h = sample_header(payload);
  for (std::size_t at : {std::size_t{0}, payload.size() / 2, payload.size() - 1}) {
    for (int bit : {0, 7}) {
      auto bad = payload;
      bad[at] ^= static_cast<std::byte>(1u << bit);
      INFO("byte " << at << " bit " << bit);
      Status st = verify_payload(h, bad);
      CHECK(st.code() == StatusCode::kDataLoss);
    }
  }
}

TEST_CASE("copy_payload_checksum and stream_payload_checksum copy the bytes and return their payload checksum",
          "[pool][slot_header]") {
  // Sizes around its 32 KiB pieces and XXH3's internal 1 KiB stripes and
  // 240-byte short-input limit: streamed and one-shot hashes must agree.
  for (std::size_t n : {std::size_t{1}, std::size_t{17}, std::size_t{240}, std::size_t{241}, std::size_t{1024},
                        std::size_t{32768}, std::size_t{32769}, std::size_t{65536}, std::size_t{100000},
                        std::size_t{2} << 20}) {
    INFO("n = " << n);
    auto src = random_bytes(n, n);
    std::vector<std::byte> dst(n);
    CHECK(kvpool::pool::copy_payload_checksum(dst.data(), src.data(), n, 1) == payload_checksum(src));
    CHECK(dst == src);
    // Streaming stores, to a destination aligned and not aligned to 16 bytes.
    for (std::size_t offset : {std::size_t{0}, std::size_t{3}}) {
      std::vector<std::byte> out(n + offset);
      CHECK(kvpool::pool::stream_payload_checksum(out.data() + offset, src.data(), n, 1) == payload_checksum(src));
      CHECK(std::equal(src.begin(), src.end(), out.begin() + offset));
    }
    // The plain XXH3-64 (seed 0) a reader in any language computes.
    CHECK(payload_checksum(src) == XXH3_64bits(src.data(), src.size()));
  }
}

TEST_CASE("a PayloadHasher fed a payload in pieces returns its payload checksum", "[pool][slot_header]") {
  // A put over tcp hashes each block piece by piece, each piece just before
  // it is sent: any cut must give the one-shot checksum, and a changed byte
  // in any piece a different one.
  auto src = random_bytes(std::size_t{2} << 20, 7);
  const std::span<const std::byte> all(src);
  for (std::size_t piece : {std::size_t{1000}, std::size_t{32768}, std::size_t{256} << 10, std::size_t{700000},
                            src.size()}) {
    INFO("piece = " << piece);
    kvpool::pool::PayloadHasher h;
    for (std::size_t at = 0; at < src.size(); at += piece) h.update(all.subspan(at, std::min(piece, src.size() - at)));
    CHECK(h.digest() == payload_checksum(all));
    auto changed = src;
    changed[src.size() / 2 + 1] ^= std::byte{1};
    kvpool::pool::PayloadHasher c;
    for (std::size_t at = 0; at < changed.size(); at += piece) {
      c.update(std::span<const std::byte>(changed).subspan(at, std::min(piece, changed.size() - at)));
    }
    CHECK(c.digest() != payload_checksum(all));
  }
  kvpool::pool::PayloadHasher empty;
  CHECK(empty.digest() == XXH3_64bits(nullptr, 0));
}

TEST_CASE("a payload shorter or longer than its header says fails verification", "[pool][slot_header]") {
  auto payload = random_bytes(5000, 5);
  const SlotHeader h = sample_header(payload);
  CHECK(verify_payload(h, std::span(payload).first(4999)).code() == StatusCode::kDataLoss);
  payload.push_back(std::byte{0});
  CHECK(verify_payload(h, payload).code() == StatusCode::kDataLoss);
}

TEST_CASE("an invalidated or never-written slot header reads as empty", "[pool][slot_header]") {
  HeaderBytes zero{};
  CHECK(decode(zero).error().code() == StatusCode::kNotFound);

  auto payload = random_bytes(100, 6);
  HeaderBytes bytes{};
  encode(sample_header(payload), bytes);
  REQUIRE(decode(bytes));
  invalidate(bytes);
  CHECK(decode(bytes).error().code() == StatusCode::kNotFound);
}

TEST_CASE("a slot header of another format version is rejected", "[pool][slot_header]") {
  auto payload = random_bytes(100, 7);
  HeaderBytes bytes{};
  encode(sample_header(payload), bytes);
  bytes[4] = static_cast<std::byte>(kSlotFormatVersion + 1);
  // Reseal, so only the version is wrong.
  const std::uint64_t sum = XXH3_64bits(bytes.data(), 56);
  for (std::size_t i = 0; i < 8; ++i) bytes[56 + i] = static_cast<std::byte>(sum >> (8 * i));
  auto decoded = decode(bytes);
  REQUIRE_FALSE(decoded);
  CHECK(decoded.error().code() == StatusCode::kDataLoss);
  CHECK_THAT(decoded.error().message(), Catch::Contains("version"));
}

TEST_CASE("a slot header with a zero payload length is rejected", "[pool][slot_header]") {
  SlotHeader h = sample_header({});
  HeaderBytes bytes{};
  encode(h, bytes);
  auto decoded = decode(bytes);
  REQUIRE_FALSE(decoded);
  CHECK(decoded.error().code() == StatusCode::kDataLoss);
  CHECK_THAT(decoded.error().message(), Catch::Contains("length"));
}

TEST_CASE("a region layout puts a granule-rounded header table before the payload area", "[pool][layout]") {
  SECTION("1 GiB region") {
    auto layout = RegionLayout::create(1ULL << 30);
    REQUIRE(layout);
    // 16384 granules * 64 bytes = 1 MiB of headers, 1023 MiB of payload.
    CHECK(layout->header_table_bytes == (1ULL << 20));
    CHECK(layout->payload_base == (1ULL << 20));
    CHECK(layout->payload_bytes == (1ULL << 30) - (1ULL << 20));
    CHECK(layout->num_granules == 16368);
    CHECK(layout->header_offset(0) == 0);
    CHECK(layout->header_offset(5 * kGranule) == 5 * 64);
    CHECK(layout->payload_region_offset(5 * kGranule) == (1ULL << 20) + 5 * kGranule);
    CHECK(layout->header_offset(layout->payload_bytes - kGranule) + 64 <= layout->header_table_bytes);
  }
  SECTION("a size that is not a multiple of the granule leaves an unused tail") {
    const std::uint64_t r = 10 * kGranule + 1234;
    auto layout = RegionLayout::create(r);
    REQUIRE(layout);
    CHECK(layout->header_table_bytes == kGranule);
    CHECK(layout->num_granules == 9);
    CHECK(layout->payload_base + layout->payload_bytes <= r);
  }
  SECTION("the smallest region holds one granule") {
    auto layout = RegionLayout::create(2 * kGranule);
    REQUIRE(layout);
    CHECK(layout->num_granules == 1);
  }
}

TEST_CASE("a region too small for a header table and one granule is rejected", "[pool][layout]") {
  for (std::uint64_t r : {std::uint64_t{0}, std::uint64_t{4096}, kGranule, 2 * kGranule - 1}) {
    INFO("region bytes " << r);
    auto layout = RegionLayout::create(r);
    REQUIRE_FALSE(layout);
    CHECK(layout.error().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("a scan returns exactly the valid blocks and skips torn, invalidated and garbage slots",
          "[pool][scan]") {
  // 128 granules: a 64 KiB header table and 127 granules of payload.
  auto layout = RegionLayout::create(128 * kGranule);
  REQUIRE(layout);
  REQUIRE(layout->num_granules == 127);
  std::vector<std::byte> region(layout->region_bytes);

  std::vector<ScannedBlock> expected;
  auto valid = [&](std::uint64_t index, std::uint64_t length, std::uint64_t seed) {
    expected.push_back({index * kGranule, write_block(region, *layout, index, length, seed)});
  };
  // A block written and later overwritten by a larger one: its stale header
  // lies inside the new block and must not be read.
  write_block(region, *layout, 7, kGranule, 100);
  valid(0, 100 * 1024, 1);                          // granules 0-1
  valid(2, kGranule, 2);                            // granule 2 (exact fit)
  valid(5, (1 << 20) + 1, 3);                       // granules 5-21
  write_block(region, *layout, 30, 200 * 1024, 4);  // torn: payload changed after the header
  region[layout->payload_region_offset(30 * kGranule) + 1000] ^= std::byte{0x10};
  write_block(region, *layout, 40, kGranule, 5);  // removed: invalidated
  invalidate(header_at(region, *layout, 40));
  valid(50, 3 << 20, 6);                             // granules 50-97
  auto garbage = random_bytes(kSlotHeaderBytes, 7);  // granule 100: random bytes
  std::memcpy(header_at(region, *layout, 100).data(), garbage.data(), kSlotHeaderBytes);
  // Granule 120 claims 1 MiB (16 granules) but only 7 remain before the end.
  write_block(region, *layout, 120, 6 * kGranule, 8);
  {
    auto h = decode(header_at(region, *layout, 120));
    REQUIRE(h);
    h->payload_length = 1 << 20;
    encode(*h, header_at(region, *layout, 120));
  }
  valid(126, kGranule, 9);  // the last granule: ends exactly at the end of the area

  auto result = scan(region, *layout);
  REQUIRE(result);
  CHECK(result->blocks == expected);
  CHECK(result->torn_blocks == 1);
  CHECK(result->invalid_headers == 2);  // garbage at 100, overrun at 120
  // 127 granules - 69 inside valid blocks (2+1+17+48+1) - 3 counted above.
  CHECK(result->empty_slots == 55);
}

TEST_CASE("a scan rejects a header whose length runs past the end of the region", "[pool][scan]") {
  auto layout = RegionLayout::create(16 * kGranule);
  REQUIRE(layout);
  std::vector<std::byte> region(layout->region_bytes);
  const std::uint64_t last = layout->num_granules - 1;
  write_block(region, *layout, last, kGranule, 1);
  auto h = decode(header_at(region, *layout, last));
  REQUIRE(h);
  SECTION("by one byte") { h->payload_length = kGranule + 1; }
  SECTION("by an amount that would overflow offset arithmetic") { h->payload_length = ~std::uint64_t{0}; }
  encode(*h, header_at(region, *layout, last));
  auto result = scan(region, *layout);
  REQUIRE(result);
  CHECK(result->blocks.empty());
  CHECK(result->invalid_headers == 1);
}

TEST_CASE("a scan of a buffer smaller than its layout is rejected", "[pool][scan]") {
  auto layout = RegionLayout::create(16 * kGranule);
  REQUIRE(layout);
  std::vector<std::byte> region(layout->region_bytes - 1);
  auto result = scan(region, *layout);
  REQUIRE_FALSE(result);
  CHECK(result.error().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("holds_headers keeps headers inside the table for any offset and count", "[pool][slot_header]") {
  auto layout = RegionLayout::create(64ULL << 20);
  REQUIRE(layout);
  const std::uint64_t table = layout->header_table_bytes;
  const std::uint64_t last = table - kSlotHeaderBytes;
  CHECK(layout->holds_headers(0, 1));
  CHECK(layout->holds_headers(last, 1));
  CHECK(layout->holds_headers(0, table / kSlotHeaderBytes));
  CHECK_FALSE(layout->holds_headers(0, table / kSlotHeaderBytes + 1));
  CHECK_FALSE(layout->holds_headers(table, 1));
  CHECK_FALSE(layout->holds_headers(last + 1, 1));  // not aligned to a header
  // Values a peer could send: none may wrap past 2^64 into the table.
  const std::uint64_t top = ~std::uint64_t{0} - kSlotHeaderBytes + 1;
  CHECK_FALSE(layout->holds_headers(top, 1));
  CHECK_FALSE(layout->holds_headers(last, ~std::uint64_t{0}));
  CHECK_FALSE(layout->holds_headers(0, ~std::uint64_t{0} / kSlotHeaderBytes + 1));
}
