// StreamedChunk: how a streamed get's pieces are placed and checksummed.

#include <catch2/catch.hpp>

#include <vector>

#include "pool/slot_header.h"
#include "runtime/client/streamed_chunk.h"
#include "runtime/common/pattern.h"

using kvpool::detail::StreamedChunk;

TEST_CASE("a streamed chunk places every piece and checksums payloads that arrive in order", "[stream]") {
  constexpr std::size_t kBlock = 96 << 10;
  std::vector<std::byte> source(2 * kBlock + 64);
  kvpool::fill_pattern(source.data(), 0, source.size(), 7);
  std::vector<std::byte> a(kBlock), b(kBlock), header(64);
  StreamedChunk chunk({{a.data(), 0, kBlock}, {b.data(), kBlock, kBlock}, {header.data(), 2 * kBlock, 64}}, 2, 1);
  auto piece = [&](std::size_t op, std::uint64_t src, std::uint64_t offset, std::size_t n) {
    chunk.place(op, offset, std::span<const std::byte>(source.data() + src + offset, n));
  };
  // Block 0 in order, in uneven pieces; block 1 with two pieces swapped.
  piece(0, 0, 0, 1000);
  piece(0, 0, 1000, 40000);
  piece(0, 0, 41000, kBlock - 41000);
  piece(1, kBlock, 0, 32 << 10);
  piece(1, kBlock, 64 << 10, 32 << 10);
  piece(1, kBlock, 32 << 10, 32 << 10);
  piece(2, 2 * kBlock, 0, 64);
  CHECK(kvpool::pattern_mismatches(a.data(), 0, kBlock, 7) == 0);
  CHECK(kvpool::pattern_mismatches(b.data(), kBlock, kBlock, 7) == 0);
  CHECK(kvpool::pattern_mismatches(header.data(), 2 * kBlock, 64, 7) == 0);
  REQUIRE(chunk.digest(0).has_value());
  CHECK(*chunk.digest(0) == kvpool::pool::payload_checksum(a));
  // Out of order: no digest, so the caller hashes the (whole, right) buffer.
  CHECK_FALSE(chunk.digest(1).has_value());
}

TEST_CASE("a streamed chunk's digest tells a changed piece from the block it was put as", "[stream]") {
  constexpr std::size_t kBlock = 64 << 10;
  std::vector<std::byte> source(kBlock), out(kBlock);
  kvpool::fill_pattern(source.data(), 0, kBlock, 9);
  const std::uint64_t put_as = kvpool::pool::payload_checksum(source);
  source[40000] ^= std::byte{1};  // torn while it was sent
  StreamedChunk chunk({{out.data(), 0, kBlock}}, 1, 1);
  chunk.place(0, 0, std::span<const std::byte>(source.data(), 32 << 10));
  chunk.place(0, 32 << 10, std::span<const std::byte>(source.data() + (32 << 10), 32 << 10));
  REQUIRE(chunk.digest(0).has_value());
  CHECK(*chunk.digest(0) != put_as);
  CHECK(*chunk.digest(0) == kvpool::pool::payload_checksum(out));
}
