#include "runtime/rpc/client.h"

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/rpc/server.h"
#include "tests/common/test_util.h"

namespace kvpool::rpc {
namespace {

using namespace std::chrono_literals;
using kvpool::testing::scaled;

constexpr std::uint16_t kEcho = 100;
constexpr std::uint16_t kHold = 101;  // the handler keeps the Responder
constexpr std::uint16_t kBig = 103;   // replies with `payload` decimal bytes

struct Held {
  std::mutex mu;
  std::vector<Responder> responders;
  std::size_t size() {
    std::lock_guard lock(mu);
    return responders.size();
  }
  Responder take(std::size_t i) {
    std::lock_guard lock(mu);
    return responders.at(i);
  }
};

struct Fixture {
  explicit Fixture(ServerOptions options = {}) {
    options.server_id = "coord-test";
    auto s = Server::start(options, [this](Request req, Responder r) {
      switch (req.type) {
        case kEcho:
          r.reply(std::move(req.payload));
          break;
        case kHold: {
          std::lock_guard lock(held.mu);
          held.responders.push_back(r);
          break;
        }
        case kBig:
          r.reply(std::string(std::stoul(req.payload), 'b'));
          break;
        default:
          fail_unknown_type(req, r);
      }
    });
    REQUIRE(s);
    server = std::move(*s);
  }
  ~Fixture() {
    if (server) server->stop();
  }
  std::unique_ptr<Client> connect(std::size_t max_frame = kDefaultMaxFrame) {
    ClientOptions options;
    options.port = server->port();
    options.role = Role::kWorker;
    options.client_id = "worker-1";
    options.max_frame = max_frame;
    auto c = Client::connect(options, Deadline::after(scaled(5s)));
    REQUIRE(c);
    return std::move(*c);
  }
  Held held;  // before server: the handler refers to it
  std::unique_ptr<Server> server;
};

Deadline soon() { return Deadline::after(scaled(5s)); }

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds within) {
  auto until = Clock::now() + within;
  while (Clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

// A port nothing listens on: bind one, note it, close it.
std::uint16_t closed_port() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor acceptor(io);
  boost::system::error_code ec;
  acceptor.open(boost::asio::ip::tcp::v4(), ec);
  acceptor.bind({boost::asio::ip::make_address("127.0.0.1"), 0}, ec);
  REQUIRE(!ec);
  return acceptor.local_endpoint().port();
}

}  // namespace

TEST_CASE("connecting where nothing listens fails with kUnavailable", "[rpc][client]") {
  ClientOptions options;
  options.port = closed_port();
  auto c = Client::connect(options, Deadline::after(scaled(5s)));
  REQUIRE(!c);
  CHECK(c.error().code() == StatusCode::kUnavailable);
}

TEST_CASE("connecting to a server that never answers the hello ends at the deadline", "[rpc][client]") {
  // A listener that never accepts: the kernel completes the TCP handshake
  // from its backlog, and nobody ever reads the hello.
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor acceptor(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  ClientOptions options;
  options.port = acceptor.local_endpoint().port();
  auto start = Clock::now();
  auto c = Client::connect(options, Deadline::after(200ms));
  auto took = Clock::now() - start;
  REQUIRE(!c);
  CHECK(c.error().code() == StatusCode::kDeadlineExceeded);
  CHECK(took >= 200ms);
  CHECK(took < 200ms + scaled(2s));
}

TEST_CASE("a call whose handler never replies ends with kDeadlineExceeded and the client stays usable",
          "[rpc][client]") {
  Fixture f;
  auto client = f.connect();
  SECTION("blocking call") {
    auto start = Clock::now();
    auto reply = client->call(kHold, "", Deadline::after(100ms));
    auto took = Clock::now() - start;
    REQUIRE(!reply);
    CHECK(reply.error().code() == StatusCode::kDeadlineExceeded);
    CHECK(took >= 100ms);
    CHECK(took < 100ms + scaled(1s));
  }
  SECTION("async call") {
    std::promise<Result<std::string>> promise;
    auto start = Clock::now();
    client->call_async(kHold, "", Deadline::after(100ms), [&](Result<std::string> r) { promise.set_value(r); });
    auto future = promise.get_future();
    REQUIRE(future.wait_for(scaled(5s)) == std::future_status::ready);
    auto took = Clock::now() - start;
    auto reply = future.get();
    REQUIRE(!reply);
    CHECK(reply.error().code() == StatusCode::kDeadlineExceeded);
    CHECK(took >= 100ms);
    CHECK(took < 100ms + scaled(1s));
  }
  // The late reply is dropped, and the next call gets its own answer.
  REQUIRE(eventually([&] { return f.held.size() == 1; }, scaled(5s)));
  f.held.take(0).reply("late");
  CHECK(client->connected());
  auto reply = client->call(kEcho, "after", soon());
  REQUIRE(reply);
  CHECK(*reply == "after");
}

TEST_CASE("async deadlines fire in deadline order, whatever the order of the calls", "[rpc][client]") {
  Fixture f;
  auto client = f.connect();
  std::mutex mu;
  std::vector<int> order;
  std::atomic<int> done{0};
  auto record = [&](int tag) {
    return [&, tag](Result<std::string> r) {
      CHECK(r.error().code() == StatusCode::kDeadlineExceeded);
      std::lock_guard lock(mu);
      order.push_back(tag);
      ++done;
    };
  };
  client->call_async(kHold, "", Deadline::after(scaled(300ms)), record(3));
  client->call_async(kHold, "", Deadline::after(scaled(100ms)), record(1));
  client->call_async(kHold, "", Deadline::after(scaled(200ms)), record(2));
  // Never fails by deadline; it fails with kUnavailable when the client goes.
  client->call_async(kHold, "", Deadline::never(), [](Result<std::string>) {});
  REQUIRE(eventually([&] { return done == 3; }, scaled(5s)));
  std::lock_guard lock(mu);
  CHECK(order == std::vector<int>{1, 2, 3});
}

TEST_CASE("a server stopped mid-call fails the call with kUnavailable promptly", "[rpc][client]") {
  Fixture f;
  auto client = f.connect();
  std::promise<Result<std::string>> async_result;
  client->call_async(kHold, "", Deadline::after(60s), [&](Result<std::string> r) { async_result.set_value(r); });
  auto blocking = std::async(std::launch::async, [&] { return client->call(kHold, "", Deadline::after(60s)); });
  REQUIRE(eventually([&] { return f.held.size() == 2; }, scaled(5s)));
  auto start = Clock::now();
  f.server->stop();
  REQUIRE(blocking.wait_for(scaled(2s)) == std::future_status::ready);
  auto reply = blocking.get();
  REQUIRE(!reply);
  CHECK(reply.error().code() == StatusCode::kUnavailable);
  auto async_future = async_result.get_future();
  REQUIRE(async_future.wait_for(scaled(2s)) == std::future_status::ready);
  CHECK(async_future.get().error().code() == StatusCode::kUnavailable);
  CHECK(Clock::now() - start < scaled(2s));

  // Every later call fails at once too.
  CHECK(!client->connected());
  auto later = client->call(kEcho, "", Deadline::after(60s));
  CHECK(later.error().code() == StatusCode::kUnavailable);
  std::promise<Result<std::string>> later_async;
  client->call_async(kEcho, "", Deadline::after(60s), [&](Result<std::string> r) { later_async.set_value(r); });
  auto later_future = later_async.get_future();
  REQUIRE(later_future.wait_for(scaled(2s)) == std::future_status::ready);
  CHECK(later_future.get().error().code() == StatusCode::kUnavailable);
}

TEST_CASE("close() fails pending calls with kUnavailable and later ones at once", "[rpc][client]") {
  Fixture f;
  auto client = f.connect();
  std::promise<Result<std::string>> pending;
  client->call_async(kHold, "", Deadline::never(), [&](Result<std::string> r) { pending.set_value(r); });
  REQUIRE(eventually([&] { return f.held.size() == 1; }, scaled(5s)));
  client->close();
  client->close();
  CHECK(!client->connected());
  auto future = pending.get_future();
  REQUIRE(future.wait_for(scaled(2s)) == std::future_status::ready);
  CHECK(future.get().error().code() == StatusCode::kUnavailable);
  CHECK(client->call(kEcho, "", soon()).error().code() == StatusCode::kUnavailable);
}

TEST_CASE("destroying a client with calls in flight completes them", "[rpc][client]") {
  Fixture f;
  auto client = f.connect();
  std::atomic<int> failed{0};
  for (int i = 0; i < 10; ++i) {
    client->call_async(kHold, "", Deadline::never(), [&](Result<std::string> r) {
      if (!r && r.error().code() == StatusCode::kUnavailable) ++failed;
    });
  }
  REQUIRE(eventually([&] { return f.held.size() == 10; }, scaled(5s)));
  client.reset();
  CHECK(failed == 10);
}

TEST_CASE("max_frame is enforced on the client side", "[rpc][client]") {
  Fixture f;
  SECTION("a request over max_frame is refused before it is sent") {
    auto client = f.connect(4096);
    auto reply = client->call(kEcho, std::string(4097, 'x'), soon());
    REQUIRE(!reply);
    CHECK(reply.error().code() == StatusCode::kInvalidArgument);
    std::promise<Result<std::string>> async_result;
    client->call_async(kEcho, std::string(4097, 'x'), soon(),
                       [&](Result<std::string> r) { async_result.set_value(r); });
    CHECK(async_result.get_future().get().error().code() == StatusCode::kInvalidArgument);
    CHECK(client->call(kEcho, std::string(4096, 'x'), soon()).value().size() == 4096);
  }
  SECTION("a reply over max_frame closes the connection") {
    auto client = f.connect(4096);
    CHECK(client->call(kBig, "4096", soon()).value().size() == 4096);
    auto reply = client->call(kBig, "100000", soon());
    REQUIRE(!reply);
    CHECK(reply.error().code() == StatusCode::kUnavailable);
    CHECK(reply.error().message().find("limit") != std::string::npos);
    CHECK(!client->connected());
  }
}

TEST_CASE("call_async callbacks run on the client's io thread, where call() is refused", "[rpc][client]") {
  Fixture f;
  auto client = f.connect();
  std::promise<std::pair<std::thread::id, StatusCode>> seen;
  client->call_async(kEcho, "x", soon(), [&](Result<std::string>) {
    auto nested = client->call(kEcho, "y", soon());
    seen.set_value({std::this_thread::get_id(), nested ? StatusCode::kOk : nested.error().code()});
  });
  auto [thread, code] = seen.get_future().get();
  CHECK(thread != std::this_thread::get_id());
  CHECK(code == StatusCode::kFailedPrecondition);
}

TEST_CASE("an already expired deadline fails without a round trip", "[rpc][client]") {
  Fixture f;
  auto client = f.connect();
  auto reply = client->call(kEcho, "", Deadline(Clock::now() - 1ms));
  CHECK(reply.error().code() == StatusCode::kDeadlineExceeded);
  CHECK(client->call(kEcho, "ok", soon()).value() == "ok");
}

}  // namespace kvpool::rpc

namespace kvpool::rpc {

TEST_CASE("large requests from several threads at once arrive whole, each reply matching its request",
          "[rpc][client]") {
  // A caller writes its request itself when no write is in flight, and
  // hands what the socket does not take at once to the io thread: frames of
  // several MiB (more than a loopback socket takes in one send) from four
  // threads, with small ones between them, must all arrive whole and in
  // their own frames.
  Fixture f;
  auto client = f.connect();
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 12; ++i) {
        const std::size_t n = (i % 3 == 0) ? 16 : (std::size_t{3} << 20) + 4099 * static_cast<std::size_t>(t + i);
        std::string payload(n, '\0');
        for (std::size_t k = 0; k < n; k += 4093) payload[k] = static_cast<char>('a' + (t * 7 + i + k) % 26);
        auto reply = client->call(kEcho, payload, soon());
        if (!reply || *reply != payload) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(bad == 0);
  CHECK(client->connected());
}

}  // namespace kvpool::rpc
