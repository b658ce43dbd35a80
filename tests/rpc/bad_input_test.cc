// Hostile and broken peers, spoken to over raw POSIX sockets: whatever one
// connection sends, the server closes that connection alone and keeps
// serving a well-behaved client connected at the same time.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "runtime/rpc/client.h"
#include "runtime/common/codec.h"
#include "runtime/rpc/server.h"
#include "tests/common/test_util.h"
#include "tests/rpc/raw_conn.h"

namespace kvpool::rpc {
namespace {

using namespace std::chrono_literals;
using kvpool::testing::scaled;

constexpr std::uint16_t kEcho = 100;

// Says hello on a raw connection and reads the reply, so the server has
// answered before the test sends anything bad.
void raw_hello(RawConn& conn) {
  conn.send(conn.authenticated_hello("raw-peer"));
  Frame reply = conn.recv_frame();
  REQUIRE(reply.header.type == kHello);
  REQUIRE(reply.header.is_reply());
  REQUIRE(!reply.header.is_error());
}

// The first frame received, decoded; fails the test when none came.
Frame first_frame(const std::string& bytes) {
  FrameReader reader(kDefaultMaxFrame);
  auto space = reader.buffer();
  REQUIRE(space.size() >= bytes.size());
  std::memcpy(space.data(), bytes.data(), bytes.size());
  reader.commit(bytes.size());
  auto f = reader.next();
  REQUIRE(f);
  REQUIRE(*f);
  return std::move(**f);
}

long max_rss_kib() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

struct Fixture {
  explicit Fixture(std::chrono::milliseconds hello_timeout = std::chrono::seconds(10)) {
    ServerOptions options;
    options.server_id = "coord-test";
    options.hello_timeout = hello_timeout;
    options.on_disconnect = [this](std::uint64_t) { ++disconnects; };
    auto s = Server::start(options, [](Request req, Responder r) {
      if (req.type == kEcho) {
        r.reply(std::move(req.payload));
      } else {
        fail_unknown_type(req, r);
      }
    });
    REQUIRE(s);
    server = std::move(*s);
    ClientOptions client_options;
    client_options.port = server->port();
    client_options.client_id = "good-client";
    auto c = Client::connect(client_options, Deadline::after(scaled(5s)));
    REQUIRE(c);
    good = std::move(*c);
    REQUIRE(good->call(kEcho, "before", Deadline::after(scaled(5s))).value() == "before");
  }
  // The well-behaved client, connected all along, is still served.
  void check_good_client_served() {
    CHECK(good->connected());
    auto reply = good->call(kEcho, "after", Deadline::after(scaled(5s)));
    REQUIRE(reply);
    CHECK(*reply == "after");
  }
  std::atomic<int> disconnects{0};
  std::unique_ptr<Server> server;
  std::unique_ptr<Client> good;
};

}  // namespace

TEST_CASE("a malformed header closes that connection while another client keeps being served", "[rpc][bad_input]") {
  Fixture f;
  RawConn raw(f.server->port());
  bool after_hello = GENERATE(false, true);
  if (after_hello) raw_hello(raw);
  SECTION("wrong magic") { raw.send(header(0x20544547, kProtocolVersion, kEcho, 2, 0, 0)); }
  SECTION("wrong version") { raw.send(header(kFrameMagic, 7, kEcho, 2, 0, 0)); }
  SECTION("unknown flag bits") { raw.send(header(kFrameMagic, kProtocolVersion, kEcho, 2, 0, 0x100)); }
  SECTION("an HTTP request") { raw.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"); }
  SECTION("a reply frame from the client") { raw.send(frame(kEcho, 2, "", kFlagReply)); }
  std::string received;
  CHECK(raw.read_until_closed(received));
  // No reply to the bad frame: the connection just closes.
  CHECK(received.empty());
  f.check_good_client_served();
}

TEST_CASE("a frame claiming 1 GiB closes the connection without allocating it", "[rpc][bad_input]") {
  Fixture f;
  long rss_before = max_rss_kib();
  RawConn raw(f.server->port());
  raw_hello(raw);
  raw.send(header(kFrameMagic, kProtocolVersion, kEcho, 2, 1u << 30, 0));
  raw.send(std::string(1000, 'x'));  // some of the claimed payload
  std::string received;
  CHECK(raw.read_until_closed(received));
  // A 1 GiB buffer would have been zero-filled, so resident.
  CHECK(max_rss_kib() - rss_before < 256 * 1024);
  f.check_good_client_served();
  CHECK(f.disconnects == 1);
}

TEST_CASE("a peer hanging up mid-frame is closed quietly and others are served", "[rpc][bad_input]") {
  Fixture f;
  RawConn raw(f.server->port());
  raw_hello(raw);
  SECTION("in the header") { raw.send(frame(kEcho, 2, "hello").substr(0, 10)); }
  SECTION("in the payload") { raw.send(frame(kEcho, 2, std::string(5000, 'p')).substr(0, 2000)); }
  raw.shutdown_write();
  std::string received;
  CHECK(raw.read_until_closed(received));
  CHECK(received.empty());
  f.check_good_client_served();
  CHECK(f.disconnects == 1);
}

TEST_CASE("a frame before the hello gets an error reply, then the connection closes", "[rpc][bad_input]") {
  Fixture f;
  RawConn raw(f.server->port());
  raw.send(frame(kEcho, 77, "too early"));
  std::string received;
  CHECK(raw.read_until_closed(received));
  Frame reply = first_frame(received);
  CHECK(reply.header.request_id == 77);
  CHECK(reply.header.is_reply());
  CHECK(reply.header.is_error());
  Status s = decode_error(reply.payload);
  CHECK(s.code() == StatusCode::kPermissionDenied);
  CHECK(s.message().find("hello") != std::string::npos);
  f.check_good_client_served();
  CHECK(f.disconnects == 0);  // never said hello: nothing to drop
}

TEST_CASE("a bad hello gets an error reply, then the connection closes", "[rpc][bad_input]") {
  Fixture f;
  RawConn raw(f.server->port());
  StatusCode expected = StatusCode::kOk;
  SECTION("another protocol version in the hello") {
    raw.send(hello_frame(kProtocolVersion + 1));
    expected = StatusCode::kFailedPrecondition;
  }
  SECTION("an unknown role") {
    raw.send(hello_frame(kProtocolVersion, 77));
    expected = StatusCode::kInvalidArgument;
  }
  SECTION("a truncated hello payload") {
    raw.send(frame(kHello, 1, "\x01"));
    expected = StatusCode::kInvalidArgument;
  }
  std::string received;
  CHECK(raw.read_until_closed(received));
  Frame reply = first_frame(received);
  CHECK(reply.header.is_error());
  CHECK(decode_error(reply.payload).code() == expected);
  f.check_good_client_served();
}

TEST_CASE("many bad connections at once do not disturb a good client", "[rpc][bad_input]") {
  Fixture f;
  for (int round = 0; round < 20; ++round) {
    RawConn a(f.server->port());
    RawConn b(f.server->port());
    RawConn c(f.server->port());
    a.send("\xff\xff\xff\xff garbage garbage garbage garbage");
    raw_hello(b);
    b.send(header(kFrameMagic, kProtocolVersion, kEcho, 2, 0xffffffffu, 0));
    c.send(frame(kEcho, 1, "x").substr(0, 5));
    c.close();
    std::string ignored;
    CHECK(a.read_until_closed(ignored));
    CHECK(b.read_until_closed(ignored));
    CHECK(f.good->call(kEcho, std::to_string(round), Deadline::after(scaled(5s))).value() == std::to_string(round));
  }
}

TEST_CASE("a connection that never says hello is closed after hello_timeout", "[rpc][bad_input]") {
  Fixture f(std::chrono::milliseconds(100));
  RawConn silent(f.server->port());
  RawConn slow(f.server->port());
  slow.send(hello_frame().substr(0, 30));  // a hello that never completes
  auto start = Clock::now();
  std::string received;
  CHECK(silent.read_until_closed(received));
  CHECK(slow.read_until_closed(received));
  CHECK(received.empty());
  CHECK(Clock::now() - start < scaled(std::chrono::seconds(2)));
  // The good client said hello long ago and is not affected.
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  f.check_good_client_served();
}

}  // namespace kvpool::rpc
