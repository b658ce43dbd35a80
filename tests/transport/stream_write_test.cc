// Streamed puts (transport::Peer::put_streamed): a client's bytes sent to the
// region's owner as active messages its handler copies into place, over TCP
// (where UCX emulates RMA), with two Transports in one process.

#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "runtime/common/pattern.h"
#include "tests/common/test_util.h"
#include "tests/transport/pair.h"
#include "transport/transport.h"

using namespace kvpool;
using namespace kvpool::transport;
using kvpool::testing::scaled;

namespace {

// ops of 256 KiB (the client's put pieces: two messages each), the last
// shorter, at `at` in the region.
std::vector<RmaOp> pieces(std::vector<std::byte>& payload, std::uint64_t at) {
  constexpr std::size_t kPiece = 256 << 10;
  std::vector<RmaOp> ops;
  for (std::size_t off = 0; off < payload.size(); off += kPiece) {
    ops.push_back({payload.data() + off, at + off, std::min(kPiece, payload.size() - off)});
  }
  return ops;
}

}  // namespace

TEST_CASE("a streamed put places every op's bytes, each op sent once ready, in order", "[transport][stream]") {
  auto p = make_pair("tcp", ErrorMode::kPeer, true);
  std::vector<std::byte> payload(8 * (256 << 10) - 1000);
  kvpool::fill_pattern(payload.data(), 0, payload.size(), 51);
  auto ops = pieces(payload, 8192);
  // Unregistered memory: nothing is read one-sided.
  std::vector<std::size_t> asked;
  std::vector<int> refusals(ops.size(), 0);
  auto ready = [&](std::size_t j) {
    asked.push_back(j);
    return ++refusals[j] > 2;
  };
  const auto before = p->owner->owner_write_stats();
  REQUIRE(p->peer->put_streamed(p->remote, ops, ready, Deadline::after(scaled(std::chrono::seconds(10))),
                                {.yield_when_idle = true})
              .ok());
  CHECK(kvpool::pattern_mismatches(p->region.data() + 8192, 0, payload.size(), 51) == 0);
  REQUIRE(asked.size() == 3 * ops.size());
  for (std::size_t k = 0; k < asked.size(); ++k) CHECK(asked[k] == k / 3);
  // Every byte went through the owner's handler (not UCX's put emulation).
  const auto after = p->owner->owner_write_stats();
  CHECK(after.requests == before.requests + 1);
  CHECK(after.bytes == before.bytes + payload.size());
  CHECK(after.errors == before.errors);
  // Many in a row on one peer (the ids and the owner's bookkeeping).
  for (int round = 0; round < 20; ++round) {
    kvpool::fill_pattern(payload.data(), 0, payload.size(), 60 + round);
    REQUIRE(p->peer->put_streamed(p->remote, ops, {}, Deadline::after(scaled(std::chrono::seconds(10)))).ok());
    CHECK(kvpool::pattern_mismatches(p->region.data() + 8192, 0, payload.size(), 60 + round) == 0);
  }
  CHECK(p->owner->owner_write_stats().requests == after.requests + 20);
  // Nothing to send: OK at once.
  CHECK(p->peer->put_streamed(p->remote, {}, {}, Deadline::after(std::chrono::seconds(1))).ok());
  // An op outside the remote region is refused before anything moves.
  RmaOp outside{payload.data(), p->region.size() - 100, 4096};
  CHECK(p->peer->put_streamed(p->remote, std::span(&outside, 1), {}, Deadline::after(std::chrono::seconds(5)))
            .code() == StatusCode::kInvalidArgument);
}

TEST_CASE("the owner places a streamed put only in the served region whose rkey it carries",
          "[transport][stream][tenants]") {
  // As for owner reads (transport_test.cc): two served regions, an isolated
  // tenant's beside the shared one; a writer holding the first's rkey cannot
  // write the second, nor outside every served region.
  auto p = make_pair("posix,tcp", ErrorMode::kNone, true);
  auto second = p->owner->allocate(1 << 20);
  REQUIRE(second);
  REQUIRE(p->owner->serve(*second).ok());
  auto first_info = p->owner->describe(p->region);
  auto second_info = p->owner->describe(*second);
  REQUIRE(first_info);
  REQUIRE(second_info);
  std::memset(second->data(), 0, second->size());
  std::vector<std::byte> payload(1 << 20);
  kvpool::fill_pattern(payload.data(), 0, payload.size(), 71);
  auto ops = pieces(payload, 0);
  transport::RegionInfo forged = *second_info;
  forged.packed_rkey = first_info->packed_rkey;  // the second region's address, the first's rkey
  auto wrong = p->peer->import_region(forged);
  REQUIRE(wrong);
  const auto before = p->owner->owner_write_stats();
  CHECK(p->peer->put_streamed(*wrong, ops, {}, Deadline::after(scaled(std::chrono::seconds(10)))).code() ==
        StatusCode::kInvalidArgument);
  std::vector<std::byte> zeros(second->size());
  CHECK(std::memcmp(second->data(), zeros.data(), zeros.size()) == 0);
  // A descriptor that lies about the length: past the served range.
  auto lying_info = *first_info;
  lying_info.length *= 4;
  auto lying = p->peer->import_region(lying_info);
  REQUIRE(lying);
  RmaOp past{payload.data(), p->region.size() * 2, 4096};
  CHECK(p->peer->put_streamed(*lying, std::span(&past, 1), {}, Deadline::after(scaled(std::chrono::seconds(10))))
            .code() == StatusCode::kInvalidArgument);
  CHECK(p->owner->owner_write_stats().errors == before.errors + 2);
  // The owner keeps serving, and the right rkey writes.
  auto right = p->peer->import_region(*second_info);
  REQUIRE(right);
  REQUIRE(p->peer->put_streamed(*right, ops, {}, Deadline::after(scaled(std::chrono::seconds(10)))).ok());
  CHECK(kvpool::pattern_mismatches(second->data(), 0, payload.size(), 71) == 0);
  p->owner->stop_serving(*second);
}

TEST_CASE("a streamed put ends at its deadline and sends nothing after it", "[transport][stream]") {
  auto p = make_pair("tcp", ErrorMode::kPeer, true);
  std::memset(p->region.data(), 0, p->region.size());
  std::vector<std::byte> payload(8 * (256 << 10));
  kvpool::fill_pattern(payload.data(), 0, payload.size(), 81);
  auto ops = pieces(payload, 0);
  // Op 3 never gets ready: the call ends at the deadline, and neither it nor
  // any op after it is sent.
  auto t0 = Clock::now();
  auto st = p->peer->put_streamed(
      p->remote, ops, [](std::size_t j) { return j < 3; }, Deadline::after(std::chrono::milliseconds(300)));
  CHECK(st.code() == StatusCode::kDeadlineExceeded);
  CHECK(Clock::now() - t0 < scaled(std::chrono::seconds(3)));
  // A later streamed put over the same endpoint is answered after the owner
  // placed whatever was sent before it (0-2): one eager lane, in order.
  std::uint64_t word = 7;
  RmaOp tail{&word, p->region.size() - 8, sizeof(word)};
  REQUIRE(p->peer->put_streamed(p->remote, std::span(&tail, 1), {}, Deadline::after(scaled(std::chrono::seconds(10))))
              .ok());
  CHECK(kvpool::pattern_mismatches(p->region.data(), 0, 3 * (256 << 10), 81) == 0);
  std::vector<std::byte> zeros(payload.size() - 3 * (256 << 10));
  CHECK(std::memcmp(p->region.data() + 3 * (256 << 10), zeros.data(), zeros.size()) == 0);
  // An owner that never progresses: the reply never comes, the call ends at
  // its deadline rather than hang.
  p->owner->stop_progress_thread();
  t0 = Clock::now();
  st = p->peer->put_streamed(p->remote, ops, {}, Deadline::after(std::chrono::milliseconds(300)));
  CHECK(st.code() == StatusCode::kDeadlineExceeded);
  CHECK(Clock::now() - t0 < scaled(std::chrono::seconds(3)));
}
