// OrderedHasher (runtime/client/ordered_hasher.h): the checksums a tcp put's
// slot headers carry, computed piece by piece as the pieces are posted.

#include "runtime/client/ordered_hasher.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <random>
#include <span>
#include <thread>
#include <vector>

using kvpool::detail::OrderedHasher;
using kvpool::pool::payload_checksum;

namespace {

struct Blocks {
  std::vector<std::vector<std::byte>> bytes;
  std::vector<std::span<const std::byte>> spans;
  Blocks(std::size_t n, std::size_t size) {
    std::mt19937_64 rng(n * 1000 + size);
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<std::byte> b(size);
      for (auto& x : b) x = static_cast<std::byte>(rng());
      bytes.push_back(std::move(b));
    }
    for (const auto& b : bytes) spans.emplace_back(b);
  }
};

std::vector<OrderedHasher::Piece> cut(const Blocks& b, std::size_t piece) {
  std::vector<OrderedHasher::Piece> out;
  for (std::size_t i = 0; i < b.spans.size(); ++i) {
    for (std::size_t at = 0; at < b.spans[i].size(); at += piece) {
      out.push_back({i, at, std::min(piece, b.spans[i].size() - at)});
    }
  }
  return out;
}

// The posting side of Peer::put_each: asks ready(j) until it says yes.
void post_all(OrderedHasher& h, std::size_t pieces) {
  for (std::size_t j = 0; j < pieces; ++j) {
    h.posted(j);
    while (!h.ready(j)) std::this_thread::yield();
  }
}

}  // namespace

TEST_CASE("an ordered hasher gives every block its payload checksum, whoever hashes each piece", "[put_pieces]") {
  // 700 KiB blocks in 256 KiB pieces: two whole pieces and a short one; a
  // piece the size of the block takes the one-shot path.
  for (std::size_t piece : {std::size_t{256} << 10, std::size_t{700} << 10}) {
    for (std::size_t lead : {std::size_t{0}, std::size_t{1}, std::size_t{4}}) {
      for (bool helper : {false, true}) {
        INFO("piece " << piece << " lead " << lead << (helper ? " with a helper" : " posting thread alone"));
        Blocks b(6, 700 << 10);
        std::vector<std::uint64_t> checksums(6, 0);
        std::vector<char> hashed(6, 0);
        hashed[4] = 1;  // hashed before: skipped
        checksums[4] = 42;
        const auto pieces = cut(b, piece);
        OrderedHasher h(pieces, b.spans, checksums, hashed, lead);
        std::thread t;
        if (helper) t = std::thread([&] { h.run_helper(); });
        post_all(h, pieces.size());
        h.stop();
        if (t.joinable()) t.join();
        for (std::size_t i = 0; i < 6; ++i) {
          INFO("block " << i);
          CHECK(checksums[i] == (i == 4 ? 42 : payload_checksum(b.spans[i])));
        }
      }
    }
  }
}

TEST_CASE("an ordered hasher's helper stays within its lead and leaves at stop", "[put_pieces]") {
  Blocks b(6, 256 << 10);
  std::vector<std::uint64_t> checksums(6, 0);
  std::vector<char> hashed(6, 0);
  const auto pieces = cut(b, 256 << 10);  // one piece per block
  OrderedHasher h(pieces, b.spans, checksums, hashed, 2);
  std::thread t([&] { h.run_helper(); });
  // Nothing posted: the helper may hash pieces 0 and 1, not 2.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (std::size_t j : {0, 1}) {
    while (!h.ready(j) && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(checksums[0] == payload_checksum(b.spans[0]));
  CHECK(checksums[1] == payload_checksum(b.spans[1]));
  CHECK(checksums[2] == 0);
  // Piece 0 posted: the helper goes on to piece 2, not 3.
  // (checksums[k] is read only once ready(k) said so, or where the helper
  // must not write it: no race unless the lead is broken.)
  h.posted(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(h.ready(2));
  CHECK(checksums[2] == payload_checksum(b.spans[2]));
  CHECK(checksums[3] == 0);
  // stop() with pieces left: the helper leaves and stop() returns.
  h.stop();
  t.join();
  CHECK(checksums[3] == 0);
  // A helper that starts after stop() touches nothing.
  OrderedHasher late(pieces, b.spans, checksums, hashed, 2);
  late.stop();
  late.run_helper();
  CHECK(checksums[3] == 0);
}
