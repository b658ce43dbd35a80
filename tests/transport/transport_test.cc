// Transport behaviour that needs no second process: the owner-read wire
// format, region descriptors, argument checks and deadlines, with two
// Transports in one process.

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

#include "runtime/common/pattern.h"
#include "tests/common/test_util.h"
#include "transport/internal.h"
#include "transport/rendezvous.h"
#include "transport/transport.h"
#include "tests/transport/pair.h"

using namespace kvpool;
using namespace kvpool::transport;
using kvpool::testing::scaled;

static_assert(!std::is_copy_constructible_v<MemoryRegion>);
static_assert(std::is_nothrow_move_constructible_v<MemoryRegion>);
static_assert(!std::is_copy_constructible_v<RemoteRegion>);
static_assert(!std::is_copy_constructible_v<Peer>);
static_assert(!std::is_copy_constructible_v<Transport>);

TEST_CASE("UCX errors map to the code that says what to do next, with UCX's message", "[transport]") {
  Status dead = to_status(UCS_ERR_CONNECTION_RESET, "put to agent 3");
  CHECK(dead.code() == StatusCode::kUnavailable);
  CHECK(dead.message().find("put to agent 3") != std::string::npos);
  CHECK(dead.message().find(ucs_status_string(UCS_ERR_CONNECTION_RESET)) != std::string::npos);
  CHECK(to_status(UCS_ERR_ENDPOINT_TIMEOUT, "x").code() == StatusCode::kUnavailable);
  CHECK(to_status(UCS_ERR_NO_MEMORY, "x").code() == StatusCode::kResourceExhausted);
  CHECK(to_status(UCS_ERR_INVALID_PARAM, "x").code() == StatusCode::kInvalidArgument);
  CHECK(to_status(UCS_ERR_UNSUPPORTED, "x").code() == StatusCode::kFailedPrecondition);
  CHECK(to_status(UCS_OK, "x").ok());
}

TEST_CASE("owner read requests round trip and malformed ones are refused", "[transport]") {
  ReadRequest req;
  req.id = 42;
  req.reader_address = "reader-address";
  req.reader_peer_errors = true;
  req.rkeys = {std::string("\x01\x02\x03", 3), "second"};
  req.ops = {{0x1000, 0x2000, 64, 0}, {0x3000, 0x4000, 128, 1}};
  req.source_rkey = "owner-rkey";
  std::string wire = encode_read_request(req);
  auto back = decode_read_request(wire.data(), wire.size());
  REQUIRE(back);
  CHECK(back->id == 42);
  CHECK(back->rkeys == req.rkeys);
  CHECK(back->ops[1].rkey == 1);
  CHECK(back->reader_address == req.reader_address);
  CHECK(back->reader_peer_errors);
  REQUIRE(back->ops.size() == 2);
  CHECK(back->ops[1].src == 0x3000);
  CHECK(back->ops[1].length == 128);
  CHECK(back->source_rkey == "owner-rkey");

  SECTION("every truncation is refused") {
    for (std::size_t n = 0; n < wire.size(); ++n) {
      INFO("length " << n);
      auto r = decode_read_request(wire.data(), n);
      REQUIRE_FALSE(r);
      CHECK(r.error().code() == StatusCode::kInvalidArgument);
    }
  }
  SECTION("a trailing byte is refused") {
    std::string longer = wire + "x";
    CHECK_FALSE(decode_read_request(longer.data(), longer.size()));
  }
  SECTION("a length field past the message is refused") {
    std::string bad = wire;
    bad[12] = '\xff';  // the reader address length
    bad[13] = '\xff';
    CHECK_FALSE(decode_read_request(bad.data(), bad.size()));
  }
  SECTION("an op naming an rkey that is not there is refused") {
    ReadRequest bad = req;
    bad.ops[1].rkey = 2;
    std::string w = encode_read_request(bad);
    CHECK_FALSE(decode_read_request(w.data(), w.size()));
  }
  SECTION("a bad magic is refused") {
    std::string bad = wire;
    bad[0] ^= 1;
    CHECK_FALSE(decode_read_request(bad.data(), bad.size()));
  }
  SECTION("a streamed read names no reader rkeys, any other at least one") {
    ReadRequest stream = req;
    stream.stream = true;
    stream.rkeys.clear();
    stream.ops = {{0x1000, 0, 1 << 20, 0}, {0x3000, 0, 64, 0}};
    std::string w = encode_read_request(stream);
    auto s2 = decode_read_request(w.data(), w.size());
    REQUIRE(s2);
    CHECK(s2->stream);
    CHECK(s2->rkeys.empty());
    CHECK(s2->ops.size() == 2);
    CHECK(s2->ops[0].length == 1 << 20);
    stream.rkeys = req.rkeys;  // a stream with rkeys
    w = encode_read_request(stream);
    CHECK_FALSE(decode_read_request(w.data(), w.size()));
    ReadRequest puts = req;  // puts without rkeys
    puts.rkeys.clear();
    puts.ops.clear();
    w = encode_read_request(puts);
    CHECK_FALSE(decode_read_request(w.data(), w.size()));
  }
}

// Captured from the hand-written codec before issue 17's shared field lists:
// a change here is a wire change that old peers would misread.
TEST_CASE("owner read requests and region info keep their wire bytes", "[transport][golden]") {
  auto hex = [](std::string_view b) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : b) {
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 15]);
    }
    return out;
  };
  ReadRequest req;
  req.id = 0x0102030405060708ull;
  req.reader_address = "reader-address";
  req.reader_peer_errors = true;
  req.rkeys = {"rkey-one", "rkey-two"};
  req.ops = {{0x1000, 0x2000, 64, 0}, {0x3000, 0x4000, 128, 1}};
  req.source_rkey = "owner-rkey";
  CHECK(hex(encode_read_request(req)) ==
        "4b564f5208070605040302010e0000007265616465722d61646472657373010000000200000008000000726b65792d6f6e65"
        "08000000726b65792d74776f0200000000100000000000000020000000000000400000000000000000000000003000000000"
        "000000400000000000008000000000000000010000000a0000006f776e65722d726b6579");
  ReadRequest stream = req;
  stream.stream = true;
  stream.reader_peer_errors = false;
  stream.rkeys.clear();
  stream.ops = {{0x1000, 0, 1 << 20, 0}, {0x3000, 0, 64, 0}};
  CHECK(hex(encode_read_request(stream)) ==
        "4b564f5208070605040302010e0000007265616465722d616464726573730200000000000000020000000010000000000000"
        "0000000000000000000010000000000000000000003000000000000000000000000000004000000000000000000000000a00"
        "00006f776e65722d726b6579");
  RegionInfo info{"worker-address", "rkey", 0x7f0000000000ull, 1ull << 30, "boot-id"};
  CHECK(hex(encode_region_info(info)) ==
        "0e000000776f726b65722d6164647265737304000000726b657900000000007f0000000000400000000007000000626f6f74"
        "2d6964");
}

TEST_CASE("region info survives the rendezvous encoding and garbage does not decode", "[transport]") {
  RegionInfo info{"addr\0ess", "rkey", 0x7f0000000000ull, 1ull << 30, "boot-id"};
  auto back = decode_region_info(encode_region_info(info));
  REQUIRE(back);
  CHECK(back->worker_address == info.worker_address);
  CHECK(back->packed_rkey == info.packed_rkey);
  CHECK(back->base == info.base);
  CHECK(back->length == info.length);
  CHECK(back->host_id == info.host_id);
  std::string wire = encode_region_info(info);
  CHECK_FALSE(decode_region_info(wire.substr(0, wire.size() - 1)));
  CHECK_FALSE(decode_region_info(wire + "z"));
}

TEST_CASE("a rendezvous channel carries messages and refuses oversized lengths", "[transport]") {
  auto listener = Listener::listen("127.0.0.1", 0);
  REQUIRE(listener);
  REQUIRE(listener->port() != 0);
  auto client = Channel::connect("127.0.0.1", listener->port(), Deadline::after(std::chrono::seconds(5)));
  REQUIRE(client);
  auto server = listener->accept(Deadline::after(std::chrono::seconds(5)));
  REQUIRE(server);
  REQUIRE(client->send("hello").ok());
  auto got = server->receive(Deadline::after(std::chrono::seconds(5)));
  REQUIRE(got);
  CHECK(*got == "hello");
  auto nothing = server->receive(Deadline::after(std::chrono::milliseconds(50)));
  REQUIRE_FALSE(nothing);
  CHECK(nothing.error().code() == StatusCode::kDeadlineExceeded);
}


TEST_CASE("an allocated region is mapped into a same-host peer", "[transport]") {
  auto p = make_pair("posix,self", ErrorMode::kNone, false);
  CHECK(p->region.ucx_allocated());
  auto mapped = p->remote.mapped();
  REQUIRE(mapped);
  kvpool::fill_pattern(p->region.data(), 0, 4096, 5);
  CHECK(kvpool::pattern_mismatches(*mapped, 0, 4096, 5) == 0);
}

TEST_CASE("ops outside the remote region are refused before anything moves", "[transport]") {
  auto p = make_pair("posix,self", ErrorMode::kNone, false);
  std::vector<std::byte> buf(4096);
  RmaOp past_end{buf.data(), p->remote.length() - 100, 4096};
  auto st = p->peer->put(p->remote, std::span(&past_end, 1), Deadline::after(std::chrono::seconds(5)));
  CHECK(st.code() == StatusCode::kInvalidArgument);
  RmaOp wraps{buf.data(), ~0ull - 10, 4096};
  CHECK(p->peer->get(p->remote, std::span(&wraps, 1), Deadline::after(std::chrono::seconds(5))).code() ==
        StatusCode::kInvalidArgument);
}

TEST_CASE("an owner refuses to read outside the regions it serves", "[transport]") {
  auto p = make_pair("tcp", ErrorMode::kPeer, true);
  auto info = p->owner->describe(p->region);
  REQUIRE(info);
  info->length *= 4;  // a lying descriptor: the client-side check passes
  auto lying = p->peer->import_region(*info);
  REQUIRE(lying);
  std::vector<std::byte> buf(1 << 20);
  auto local = p->client->register_memory(buf.data(), buf.size());
  REQUIRE(local);
  RmaOp outside{buf.data(), p->region.size() * 2, 1 << 20};
  auto st = p->peer->read_by_owner(*lying, std::span(&outside, 1), *local,
                                   Deadline::after(scaled(std::chrono::seconds(10))));
  CHECK(st.code() == StatusCode::kInvalidArgument);
  // The owner keeps serving valid reads.
  kvpool::fill_pattern(p->region.data(), 0, 1 << 20, 9);
  RmaOp inside{buf.data(), 0, 1 << 20};
  REQUIRE(p->peer->read_by_owner(p->remote, std::span(&inside, 1), *local,
                                 Deadline::after(scaled(std::chrono::seconds(10))))
              .ok());
  CHECK(kvpool::pattern_mismatches(buf.data(), 0, 1 << 20, 9) == 0);
}

TEST_CASE("an owner read must present the rkey of the served region it reads", "[transport][stream][tenants]") {
  // Two served regions, as an agent with an isolated tenant's region has:
  // a reader holding the first region's rkey cannot have the owner read
  // the second (the NIC would refuse the RMA get too). Over shared memory
  // and TCP: over TCP alone there are no memory keys, and every region's
  // packed rkey is the same bytes (SECURITY.md: TCP enforces nothing).
  auto p = make_pair("posix,tcp", ErrorMode::kNone, true);
  auto second = p->owner->allocate(1 << 20);
  REQUIRE(second);
  REQUIRE(p->owner->serve(*second).ok());
  auto first_info = p->owner->describe(p->region);
  auto second_info = p->owner->describe(*second);
  REQUIRE(first_info);
  REQUIRE(second_info);
  CHECK(first_info->packed_rkey != second_info->packed_rkey);
  kvpool::fill_pattern(second->data(), 0, 1 << 20, 5);
  std::vector<std::byte> buf(1 << 20);
  auto local = p->client->register_memory(buf.data(), buf.size());
  REQUIRE(local);
  RmaOp all{buf.data(), 0, 1 << 20};
  transport::RegionInfo forged = *second_info;
  forged.packed_rkey = first_info->packed_rkey;  // the second region's address, the first's rkey
  auto wrong = p->peer->import_region(forged);
  REQUIRE(wrong);
  auto st = p->peer->read_by_owner(*wrong, std::span(&all, 1), *local,
                                   Deadline::after(scaled(std::chrono::seconds(10))));
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK(kvpool::pattern_mismatches(buf.data(), 0, 1 << 20, 5) != 0);
  auto right = p->peer->import_region(*second_info);
  REQUIRE(right);
  REQUIRE(p->peer->read_by_owner(*right, std::span(&all, 1), *local, Deadline::after(scaled(std::chrono::seconds(10))))
              .ok());
  CHECK(kvpool::pattern_mismatches(buf.data(), 0, 1 << 20, 5) == 0);

  // The same for a streamed read (no registered memory involved).
  std::vector<std::byte> streamed(1 << 20);
  RmaOp into{streamed.data(), 0, 1 << 20};
  auto refused = p->peer->start_stream_by_owner(*wrong, std::span(&into, 1));
  REQUIRE(refused);
  CHECK(refused->wait(Deadline::after(scaled(std::chrono::seconds(10)))).code() == StatusCode::kInvalidArgument);
  CHECK(kvpool::pattern_mismatches(streamed.data(), 0, 1 << 20, 5) != 0);
  auto served = p->peer->start_stream_by_owner(*right, std::span(&into, 1));
  REQUIRE(served);
  REQUIRE(served->wait(Deadline::after(scaled(std::chrono::seconds(10)))).ok());
  CHECK(kvpool::pattern_mismatches(streamed.data(), 0, 1 << 20, 5) == 0);
  p->owner->stop_serving(*second);
}

TEST_CASE("a put over tcp to an owner that never progresses ends at its deadline", "[transport]") {
  // No progress thread on the owner: TCP emulates RMA in software, so the
  // put cannot complete, and the wait must end at the deadline, not hang.
  auto p = make_pair("tcp", ErrorMode::kPeer, false);
  std::vector<std::byte> buf(4 << 20, std::byte{3});
  RmaOp op{buf.data(), 0, buf.size()};
  auto t0 = Clock::now();
  auto st = p->peer->put(p->remote, std::span(&op, 1), Deadline::after(std::chrono::milliseconds(300)));
  auto took = Clock::now() - t0;
  CHECK(st.code() == StatusCode::kDeadlineExceeded);
  CHECK(took < scaled(std::chrono::seconds(2)));
  // Once the owner progresses, the same peer works again.
  REQUIRE(p->owner->start_progress_thread(ProgressMode::kEvent).ok());
  CHECK(p->peer->put(p->remote, std::span(&op, 1), Deadline::after(scaled(std::chrono::seconds(10)))).ok());
}

TEST_CASE("an ordered put lands both lists and an owner read fills two local regions at once", "[transport]") {
  auto p = make_pair("tcp", ErrorMode::kPeer, true);
  std::vector<std::byte> payload(1 << 20), header(64);
  kvpool::fill_pattern(payload.data(), 4096, payload.size(), 21);
  kvpool::fill_pattern(header.data(), 0, header.size(), 22);
  RmaOp first{payload.data(), 4096, payload.size()};
  RmaOp then{header.data(), 0, header.size()};
  REQUIRE(p->peer
              ->put_ordered(p->remote, std::span(&first, 1), std::span(&then, 1),
                            Deadline::after(scaled(std::chrono::seconds(10))))
              .ok());
  CHECK(kvpool::pattern_mismatches(p->region.data() + 4096, 4096, payload.size(), 21) == 0);
  CHECK(kvpool::pattern_mismatches(p->region.data(), 0, header.size(), 22) == 0);

  std::vector<std::byte> back_payload(1 << 20), back_header(64);
  auto r1 = p->client->register_memory(back_payload.data(), back_payload.size());
  auto r2 = p->client->register_memory(back_header.data(), back_header.size());
  REQUIRE(r1);
  REQUIRE(r2);
  const MemoryRegion* locals[] = {&*r1, &*r2};
  RmaOp reads[] = {{back_payload.data(), 4096, back_payload.size()}, {back_header.data(), 0, back_header.size()}};
  REQUIRE(p->peer->read_by_owner(p->remote, reads, locals, Deadline::after(scaled(std::chrono::seconds(10)))).ok());
  CHECK(kvpool::pattern_mismatches(back_payload.data(), 4096, back_payload.size(), 21) == 0);
  CHECK(kvpool::pattern_mismatches(back_header.data(), 0, back_header.size(), 22) == 0);
  // An op outside every local region is refused before anything is sent.
  std::vector<std::byte> stray(64);
  RmaOp bad{stray.data(), 0, 64};
  CHECK(p->peer->read_by_owner(p->remote, std::span(&bad, 1), locals, Deadline::after(std::chrono::seconds(5)))
            .code() == StatusCode::kInvalidArgument);
}

TEST_CASE("put_each posts its ops in order, each once ready, and posts nothing after its deadline", "[transport]") {
  auto p = make_pair("tcp", ErrorMode::kPeer, true);
  constexpr std::size_t kPiece = 256 << 10, kOps = 8;
  std::vector<std::byte> payload(kPiece * kOps - 1000);  // the last op is shorter
  kvpool::fill_pattern(payload.data(), 0, payload.size(), 31);
  std::vector<RmaOp> ops;
  for (std::size_t at = 0; at < payload.size(); at += kPiece) {
    ops.push_back({payload.data() + at, 8192 + at, std::min(kPiece, payload.size() - at)});
  }
  REQUIRE(ops.size() == kOps);
  auto local = p->client->register_memory(payload.data(), payload.size());
  REQUIRE(local);
  // ready(j) says "not yet" twice per op (the worker progresses meanwhile),
  // and is never asked about op j + 1 before op j is posted.
  std::vector<std::size_t> asked;
  std::vector<int> refusals(kOps, 0);
  auto ready = [&](std::size_t j) {
    asked.push_back(j);
    return ++refusals[j] > 2;
  };
  REQUIRE(p->peer->put_each(p->remote, ops, ready, Deadline::after(scaled(std::chrono::seconds(10))),
                            {.local = &*local, .yield_when_idle = true})
              .ok());
  CHECK(kvpool::pattern_mismatches(p->region.data() + 8192, 0, payload.size(), 31) == 0);
  REQUIRE(asked.size() == 3 * kOps);
  for (std::size_t k = 0; k < asked.size(); ++k) CHECK(asked[k] == k / 3);
  // A wider window (for real RMA) asks and posts in the same order.
  kvpool::fill_pattern(payload.data(), 0, payload.size(), 33);
  asked.clear();
  std::fill(refusals.begin(), refusals.end(), 0);
  REQUIRE(p->peer->put_each(p->remote, ops, ready, Deadline::after(scaled(std::chrono::seconds(10))),
                            {.local = &*local}, 4)
              .ok());
  CHECK(kvpool::pattern_mismatches(p->region.data() + 8192, 0, payload.size(), 33) == 0);
  REQUIRE(asked.size() == 3 * kOps);
  for (std::size_t k = 0; k < asked.size(); ++k) CHECK(asked[k] == k / 3);

  // An op that never gets ready: the call ends at its deadline, and neither
  // it nor any op after it is posted (their bytes never land).
  std::memset(p->region.data(), 0, p->region.size());
  kvpool::fill_pattern(payload.data(), 0, payload.size(), 32);
  auto t0 = Clock::now();
  auto st = p->peer->put_each(
      p->remote, ops, [](std::size_t j) { return j < 3; }, Deadline::after(std::chrono::milliseconds(300)),
      {.local = &*local});
  CHECK(st.code() == StatusCode::kDeadlineExceeded);
  CHECK(Clock::now() - t0 < scaled(std::chrono::seconds(3)));
  // A later put's flush completes the ops that were posted (0-2).
  std::uint64_t word = 7;
  RmaOp tail{&word, 0, sizeof(word)};
  REQUIRE(p->peer->put(p->remote, std::span(&tail, 1), Deadline::after(scaled(std::chrono::seconds(10)))).ok());
  CHECK(kvpool::pattern_mismatches(p->region.data() + 8192, 0, 3 * kPiece, 32) == 0);
  std::vector<std::byte> zeros(payload.size() - 3 * kPiece);
  CHECK(std::memcmp(p->region.data() + 8192 + 3 * kPiece, zeros.data(), zeros.size()) == 0);

  // An op outside the remote region is refused before anything moves.
  RmaOp outside{payload.data(), p->region.size() - 100, 4096};
  CHECK(p->peer->put_each(p->remote, std::span(&outside, 1), {}, Deadline::after(std::chrono::seconds(5)))
            .code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a streamed owner read places every op's bytes in order and the owner refuses what it does not serve",
          "[transport][stream]") {
  auto p = make_pair("tcp", ErrorMode::kPeer, true);
  kvpool::fill_pattern(p->region.data(), 0, p->region.size(), 41);
  // Unregistered memory: the sink copies, nothing is written one-sided.
  const std::uint64_t big = 2 * kStreamPieceBytes + 16;  // the pattern helpers work in 8-byte words
  std::vector<std::byte> a(big), b(64), c(1 << 20);
  RmaOp ops[] = {{a.data(), 4096, big}, {b.data(), 0, 64}, {c.data(), 5 << 20, c.size()}};
  auto t10 = Deadline::after(scaled(std::chrono::seconds(10)));
  auto read = p->peer->start_stream_by_owner(p->remote, ops);
  REQUIRE(read);
  REQUIRE(read->wait(t10).ok());
  CHECK(kvpool::pattern_mismatches(a.data(), 4096, big, 41) == 0);
  CHECK(kvpool::pattern_mismatches(b.data(), 0, 64, 41) == 0);
  CHECK(kvpool::pattern_mismatches(c.data(), 5 << 20, c.size(), 41) == 0);

  // A sink sees each op's pieces in order of offset, none over the piece size.
  struct Seen {
    std::size_t op;
    std::uint64_t offset, length;
  };
  std::vector<Seen> seen;
  auto sunk = p->peer->start_stream_by_owner(p->remote, ops, [&](std::size_t op, std::uint64_t offset,
                                                                 std::span<const std::byte> bytes) {
    seen.push_back({op, offset, bytes.size()});
  });
  REQUIRE(sunk);
  REQUIRE(sunk->wait(t10).ok());
  std::vector<std::uint64_t> next(3, 0);
  for (const Seen& x : seen) {
    REQUIRE(x.op < 3);
    CHECK(x.offset == next[x.op]);
    CHECK(x.length <= kStreamPieceBytes);
    next[x.op] += x.length;
  }
  CHECK(next == std::vector<std::uint64_t>{big, 64, c.size()});
  auto pieces = [](std::uint64_t n) { return (n + kStreamPieceBytes - 1) / kStreamPieceBytes; };
  CHECK(seen.size() == 3 + 1 + pieces(c.size()));  // two whole pieces and one of 16 bytes; one; c's

  // More ops than one request carries: two requests, ops numbered as given.
  std::vector<std::byte> small(1500 * 64);
  std::vector<RmaOp> many;
  for (std::size_t j = 0; j < 1500; ++j) many.push_back({small.data() + j * 64, 64 * (1500 - j), 64});
  auto split = p->peer->start_stream_by_owner(p->remote, many);
  REQUIRE(split);
  REQUIRE(split->wait(t10).ok());
  std::size_t wrong = 0;
  for (std::size_t j = 0; j < 1500; ++j) wrong += kvpool::pattern_mismatches(small.data() + j * 64, 64 * (1500 - j), 64, 41);
  CHECK(wrong == 0);

  // Outside the served region (a lying descriptor): refused, nothing written.
  auto info = p->owner->describe(p->region);
  REQUIRE(info);
  info->length *= 4;
  auto lying = p->peer->import_region(*info);
  REQUIRE(lying);
  std::fill(c.begin(), c.end(), std::byte{0x5a});
  RmaOp outside{c.data(), p->region.size() * 2, c.size()};
  auto refused = p->peer->start_stream_by_owner(*lying, std::span(&outside, 1));
  REQUIRE(refused);
  CHECK(refused->wait(t10).code() == StatusCode::kInvalidArgument);
  CHECK(std::all_of(c.begin(), c.end(), [](std::byte x) { return x == std::byte{0x5a}; }));
  // An op of no bytes, or past the end of the region we hold, never leaves.
  RmaOp empty{c.data(), 0, 0};
  CHECK(p->peer->start_stream_by_owner(p->remote, std::span(&empty, 1)).error().code() ==
        StatusCode::kInvalidArgument);
  RmaOp past{c.data(), p->region.size() - 10, 64};
  CHECK(p->peer->start_stream_by_owner(p->remote, std::span(&past, 1)).error().code() ==
        StatusCode::kInvalidArgument);
  // The owner still serves.
  auto again = p->peer->start_stream_by_owner(p->remote, ops);
  REQUIRE(again);
  CHECK(again->wait(t10).ok());
  CHECK(p->owner->owner_read_stats().errors == 1);
}

TEST_CASE("a streamed read that runs out writes nothing after it returned, and a new Peer is served as the first",
          "[transport][stream]") {
  // No progress thread on the owner: the request waits, the read runs out.
  auto p = make_pair("tcp", ErrorMode::kPeer, false);
  kvpool::fill_pattern(p->region.data(), 0, 4 << 20, 51);
  std::vector<std::byte> buf(4 << 20);
  RmaOp op{buf.data(), 0, buf.size()};
  std::atomic<std::size_t> late{0};
  std::atomic<bool> returned{false};
  auto read = p->peer->start_stream_by_owner(
      p->remote, std::span(&op, 1), [&](std::size_t, std::uint64_t offset, std::span<const std::byte> bytes) {
        if (returned.load()) ++late;
        std::memcpy(buf.data() + offset, bytes.data(), bytes.size());
      });
  REQUIRE(read);
  auto t0 = Clock::now();
  CHECK(read->wait(Deadline::after(std::chrono::milliseconds(300))).code() == StatusCode::kDeadlineExceeded);
  CHECK(Clock::now() - t0 < scaled(std::chrono::seconds(2)));
  returned = true;
  std::memset(buf.data(), 0x5a, buf.size());
  // The owner wakes and sends everything; we progress while it arrives.
  REQUIRE(p->owner->start_progress_thread(ProgressMode::kEvent).ok());
  const auto settle = Clock::now() + scaled(std::chrono::milliseconds(700));
  while (Clock::now() < settle) p->client->progress();
  CHECK(late == 0);
  CHECK(std::all_of(buf.begin(), buf.end(), [](std::byte x) { return x == std::byte{0x5a}; }));
  auto t10 = Deadline::after(scaled(std::chrono::seconds(10)));
  auto next = p->peer->start_stream_by_owner(p->remote, std::span(&op, 1));
  REQUIRE(next);
  REQUIRE(next->wait(t10).ok());
  CHECK(kvpool::pattern_mismatches(buf.data(), 0, buf.size(), 51) == 0);

  // The client closes its endpoint and connects again (what it does after
  // an agent was reported down): the owner answers the new one.
  auto info = p->owner->describe(p->region);
  REQUIRE(info);
  p->remote = RemoteRegion();
  p->peer.reset();
  auto peer = p->client->connect(info->worker_address, ErrorMode::kPeer);
  REQUIRE(peer);
  p->peer = std::move(*peer);
  auto remote = p->peer->import_region(*info);
  REQUIRE(remote);
  p->remote = std::move(*remote);
  std::memset(buf.data(), 0, buf.size());
  auto after = p->peer->start_stream_by_owner(p->remote, std::span(&op, 1));
  REQUIRE(after);
  REQUIRE(after->wait(t10).ok());
  CHECK(kvpool::pattern_mismatches(buf.data(), 0, buf.size(), 51) == 0);
}
