// Slot format version 2: layer slices and their checksum table
// (pool/slot_header.h, "Layer slices"): which blocks get a table, how the
// block checksum is built from it, the hashers that compute it piece by
// piece, and what a scan does with sliced, damaged and older-format slots.
#include <xxhash.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "pool/slot_header.h"

namespace pool = kvpool::pool;
using kvpool::StatusCode;
using pool::kGranule;
using pool::kSlotHeaderBytes;
using pool::RegionLayout;
using pool::SlotHeader;

namespace {

std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

// The table and block checksum as a reader in any language computes them:
// XXH3-64 of each slice, then XXH3-64 of the table's little-endian bytes.
std::pair<std::vector<std::uint64_t>, std::uint64_t> reference(std::span<const std::byte> payload, std::uint32_t slices) {
  std::vector<std::uint64_t> table;
  std::vector<unsigned char> le;
  const std::size_t slice = payload.size() / slices;
  for (std::uint32_t s = 0; s < slices; ++s) {
    table.push_back(XXH3_64bits(payload.data() + s * slice, slice));
    for (int b = 0; b < 8; ++b) le.push_back(static_cast<unsigned char>(table.back() >> (8 * b)));
  }
  if (slices == 1) return {table, table[0]};
  return {table, XXH3_64bits(le.data(), le.size())};
}

// Writes payload, then table, then header for a block at granule `index`,
// as a writer does; returns its header.
SlotHeader write_sliced(std::vector<std::byte>& region, const RegionLayout& layout, std::uint64_t index,
                        std::uint64_t length, std::uint32_t slices, std::uint64_t seed) {
  const std::uint64_t p = index * kGranule;
  auto payload = random_bytes(length, seed);
  std::memcpy(region.data() + layout.payload_region_offset(p), payload.data(), length);
  std::vector<std::uint64_t> table(slices);
  SlotHeader h;
  h.namespace_id = 7;
  h.key = {seed, ~seed};
  h.payload_length = length;
  h.generation = seed;
  h.slices = slices;
  h.payload_checksum = pool::block_checksum(payload, slices, table.data());
  if (slices > 1) {
    pool::encode_table(table, std::span(region).subspan(layout.table_offset(p), pool::table_bytes(slices)));
  }
  pool::encode(h, std::span(region).subspan(layout.header_offset(p)).first<kSlotHeaderBytes>());
  return h;
}

}  // namespace

TEST_CASE("a block gets one slice per layer only when the layers divide it and the table fits", "[pool][slices]") {
  // Llama-3-8B at 16 tokens per block: 2 MiB, 32 granules, room for 248 entries.
  CHECK(pool::slices_for(2 << 20, 32) == 32);
  CHECK(pool::slices_for(2 << 20, 80) == 1);  // 80 does not divide 2 MiB
  CHECK(pool::slices_for(kGranule, 32) == 1);  // one granule: no spare header slot
  CHECK(pool::slices_for(2 * kGranule, 8) == 8);  // one spare slot: 8 entries
  CHECK(pool::slices_for(2 * kGranule, 16) == 1);  // ... not 16
  CHECK(pool::slices_for(5 * kGranule + 3, 5) == 1);  // does not divide
  CHECK(pool::slices_for(4 << 20, 1) == 1);
  CHECK(pool::slices_for(4 << 20, 0) == 1);
  CHECK(pool::table_bytes(1) == 0);
  CHECK(pool::table_bytes(32) == 256);
}

TEST_CASE("a sliced block's checksum is the XXH3-64 of its table of slice checksums", "[pool][slices]") {
  auto payload = random_bytes(1 << 20, 1);
  for (std::uint32_t slices : {1u, 2u, 16u, 32u}) {
    INFO("slices " << slices);
    const auto [table, sum] = reference(payload, slices);
    std::vector<std::uint64_t> got(slices);
    CHECK(pool::block_checksum(payload, slices, got.data()) == sum);
    CHECK(got == table);
    CHECK(pool::table_checksum(table) == sum);
    // Copy-and-hash, plain and streaming: the same sums, the bytes copied.
    std::vector<std::byte> dst(payload.size()), out(payload.size() + 3);
    std::vector<std::uint64_t> t1(slices), t2(slices);
    CHECK(pool::copy_payload_checksum(dst.data(), payload.data(), payload.size(), slices, t1.data()) == sum);
    CHECK(pool::stream_payload_checksum(out.data() + 3, payload.data(), payload.size(), slices, t2.data()) == sum);
    CHECK(dst == payload);
    CHECK(std::equal(payload.begin(), payload.end(), out.begin() + 3));
    CHECK(t1 == table);
    CHECK(t2 == table);
    // Fed in pieces that straddle slice boundaries.
    for (std::size_t piece : {std::size_t{1000}, std::size_t{40000}, std::size_t{300000}, payload.size()}) {
      pool::PayloadHasher h(payload.size(), slices);
      for (std::size_t at = 0; at < payload.size(); at += piece) {
        h.update(std::span<const std::byte>(payload).subspan(at, std::min(piece, payload.size() - at)));
      }
      CHECK(h.digest() == sum);
      if (slices > 1) CHECK(h.table() == table);
    }
  }
  // A table's bytes round-trip.
  const auto [table, sum] = reference(payload, 8);
  std::vector<std::byte> bytes(pool::table_bytes(8));
  pool::encode_table(table, bytes);
  CHECK(pool::decode_table(bytes) == table);
  CHECK(XXH3_64bits(bytes.data(), bytes.size()) == sum);
}

TEST_CASE("a header's slice count round-trips, and a count that cannot fit its block is refused", "[pool][slices]") {
  SlotHeader h;
  h.namespace_id = 1;
  h.key = {2, 3};
  h.payload_length = 2 << 20;
  h.generation = 4;
  h.payload_checksum = 5;
  h.slices = 32;
  std::array<std::byte, kSlotHeaderBytes> bytes{};
  pool::encode(h, bytes);
  CHECK(std::to_integer<int>(bytes[4]) == 2);  // format version 2
  CHECK(std::to_integer<int>(bytes[6]) == 32);
  auto d = pool::decode(bytes);
  REQUIRE(d);
  CHECK(*d == h);
  for (std::uint32_t bad : {0u, 3u, 256u}) {  // zero; does not divide 2 MiB; 256 entries need 32 spare slots, 31 exist
    INFO("slices " << bad);
    h.slices = bad;
    pool::encode(h, bytes);
    auto r = pool::decode(bytes);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == StatusCode::kDataLoss);
    CHECK_THAT(r.error().message(), Catch::Contains("slice count"));
  }
}

TEST_CASE("verification names a damaged slice or table, and verify_payload needs no table", "[pool][slices]") {
  constexpr std::uint32_t kSlices = 8;
  auto payload = random_bytes(8 * kGranule, 2);
  std::vector<std::uint64_t> table(kSlices);
  SlotHeader h;
  h.payload_length = payload.size();
  h.slices = kSlices;
  h.payload_checksum = pool::block_checksum(payload, kSlices, table.data());
  std::vector<std::byte> stored(pool::table_bytes(kSlices));
  pool::encode_table(table, stored);
  CHECK(pool::verify_block(h, payload, stored).ok());
  CHECK(pool::verify_payload(h, payload).ok());

  auto torn = payload;
  torn[5 * kGranule + 100] ^= std::byte{1};  // in slice 5
  auto st = pool::verify_block(h, torn, stored);
  CHECK(st.code() == StatusCode::kDataLoss);
  CHECK_THAT(st.message(), Catch::Contains("layer slice 5"));
  CHECK(pool::verify_payload(h, torn).code() == StatusCode::kDataLoss);

  auto bad_table = stored;
  bad_table[3 * 8] ^= std::byte{1};  // entry 3
  st = pool::verify_block(h, payload, bad_table);
  CHECK(st.code() == StatusCode::kDataLoss);
  CHECK_THAT(st.message(), Catch::Contains("slice table"));
  // A table too short for the header's slices.
  CHECK(pool::verify_block(h, payload, std::span(stored).first(8)).code() == StatusCode::kDataLoss);
}

TEST_CASE("a scan keeps sliced blocks, drops one whose table is damaged, and never reads a table as a header",
          "[pool][slices][scan]") {
  auto layout = RegionLayout::create(64 * kGranule);
  REQUIRE(layout);
  std::vector<std::byte> region(layout->region_bytes);
  std::vector<pool::ScannedBlock> expected;
  // 32 slices of a 2 MiB block: the table fills 4 of its 31 spare slots.
  expected.push_back({0, write_sliced(region, *layout, 0, 2 << 20, 32, 1)});
  // A table that fills every spare slot: 3 granules, 16 entries.
  expected.push_back({32 * kGranule, write_sliced(region, *layout, 32, 3 * kGranule, 16, 2)});
  // Damaged table entry: the block is torn, and its table slots (read as
  // headers once the block is refused) are garbage, not blocks.
  write_sliced(region, *layout, 40, 4 * kGranule, 8, 3);
  region[layout->table_offset(40 * kGranule) + 2] ^= std::byte{0x40};
  expected.push_back({50 * kGranule, write_sliced(region, *layout, 50, kGranule, 1, 4)});

  auto result = pool::scan(region, *layout);
  REQUIRE(result);
  CHECK(result->blocks == expected);
  CHECK(result->torn_blocks == 1);
  CHECK(result->invalid_headers == 1);  // granule 41: the damaged block's table
  CHECK(result->old_version == 0);
}

TEST_CASE("slots of format version 1 are refused and counted, never read as blocks", "[pool][slices][scan]") {
  auto layout = RegionLayout::create(16 * kGranule);
  REQUIRE(layout);
  std::vector<std::byte> region(layout->region_bytes);
  for (std::uint64_t i : {0ull, 3ull, 7ull}) {
    write_sliced(region, *layout, i, kGranule, 1, i + 1);
    // Rewritten as version 1 wrote it: version 1, flags 0, resealed, so
    // the slot is valid in every way but its format.
    auto* h = region.data() + layout->header_offset(i * kGranule);
    h[4] = std::byte{1};
    h[5] = std::byte{0};
    h[6] = h[7] = std::byte{0};
    const std::uint64_t sum = XXH3_64bits(h, 56);
    for (int b = 0; b < 8; ++b) h[56 + b] = static_cast<std::byte>(sum >> (8 * b));
    auto d = pool::decode(std::span<const std::byte, kSlotHeaderBytes>(h, kSlotHeaderBytes));
    REQUIRE_FALSE(d);
    CHECK(d.error().code() == StatusCode::kDataLoss);
    CHECK_THAT(d.error().message(), Catch::Contains("unsupported version 1"));
    CHECK(pool::header_version(std::span<const std::byte, kSlotHeaderBytes>(h, kSlotHeaderBytes)) == 1);
  }
  auto result = pool::scan(region, *layout);
  REQUIRE(result);
  CHECK(result->blocks.empty());
  CHECK(result->old_version == 3);
  CHECK(result->invalid_headers == 3);
}
