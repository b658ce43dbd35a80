#include "runtime/rpc/server.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "runtime/rpc/client.h"
#include "tests/common/test_util.h"

namespace kvpool::rpc {
namespace {

using namespace std::chrono_literals;
using kvpool::testing::scaled;

constexpr std::uint16_t kEcho = 100;
constexpr std::uint16_t kHold = 101;  // the handler keeps the Responder
constexpr std::uint16_t kFail = 102;

std::unique_ptr<Server> start_server(Handler handler, ServerOptions options = {}) {
  options.server_id = "coord-test";
  options.version = "v-test";
  auto server = Server::start(options, std::move(handler));
  REQUIRE(server);
  return std::move(*server);
}

std::unique_ptr<Client> connect_client(std::uint16_t port, std::string id = "worker-1", Role role = Role::kWorker) {
  ClientOptions options;
  options.port = port;
  options.role = role;
  options.client_id = std::move(id);
  auto client = Client::connect(options, Deadline::after(scaled(5s)));
  REQUIRE(client);
  return std::move(*client);
}

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

// Handler parts tests share: echo, hold (Responders kept for the test to
// answer), fail (error with the payload as message).
struct Held {
  std::mutex mu;
  std::vector<Responder> responders;
  std::size_t size() {
    std::lock_guard lock(mu);
    return responders.size();
  }
};

Handler basic_handler(Held* held) {
  return [held](Request req, Responder r) {
    switch (req.type) {
      case kEcho:
        r.reply(std::move(req.payload));
        break;
      case kHold: {
        std::lock_guard lock(held->mu);
        held->responders.push_back(r);
        break;
      }
      case kFail:
        r.fail(Status(StatusCode::kResourceExhausted, req.payload));
        break;
      default:
        fail_unknown_type(req, r);
    }
  };
}

}  // namespace

TEST_CASE("the hello shows the client's role and id to the handler and the server's to the client", "[rpc][server]") {
  std::mutex mu;
  std::vector<std::pair<Role, std::string>> seen;
  std::set<std::uint64_t> connections;
  auto server = start_server([&](Request req, Responder r) {
    {
      std::lock_guard lock(mu);
      seen.emplace_back(req.peer_role, req.peer_id);
      connections.insert(req.connection_id);
    }
    r.reply("");
  });
  auto worker = connect_client(server->port(), "worker-9", Role::kWorker);
  auto agent = connect_client(server->port(), "agent-3", Role::kAgent);
  CHECK(worker->server().role == Role::kCoordinator);
  CHECK(worker->server().server_id == "coord-test");
  CHECK(worker->server().server_version == "v-test");
  REQUIRE(worker->call(kEcho, "", soon()));
  REQUIRE(agent->call(kEcho, "", soon()));
  std::lock_guard lock(mu);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == std::make_pair(Role::kWorker, std::string("worker-9")));
  CHECK(seen[1] == std::make_pair(Role::kAgent, std::string("agent-3")));
  CHECK(connections.size() == 2);
}

TEST_CASE("an echo request comes back as its reply", "[rpc][server]") {
  Held held;
  auto server = start_server(basic_handler(&held));
  auto client = connect_client(server->port());
  SECTION("small") {
    auto reply = client->call(kEcho, "ping", soon());
    REQUIRE(reply);
    CHECK(*reply == "ping");
  }
  SECTION("empty") {
    auto reply = client->call(kEcho, "", soon());
    REQUIRE(reply);
    CHECK(reply->empty());
  }
  SECTION("larger than the read buffer") {
    std::string big(3 << 20, 'k');
    for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>(i / 4096);
    auto reply = client->call(kEcho, big, soon());
    REQUIRE(reply);
    CHECK(*reply == big);
  }
}

TEST_CASE("1000 pipelined calls from several threads, answered out of order, each get their own reply",
          "[rpc][server]") {
  // Even-numbered requests are answered later by another thread, in reverse
  // order of arrival; odd ones at once on the io thread.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<std::string, Responder>> deferred;
  bool done = false;
  std::atomic<int> in_flight_max{0};
  auto server = start_server([&](Request req, Responder r) {
    int n = std::stoi(req.payload.substr(req.payload.find(':') + 1));
    if (n % 2 == 0) {
      std::lock_guard lock(mu);
      deferred.emplace_front("re:" + req.payload, r);
      in_flight_max = std::max<int>(in_flight_max, static_cast<int>(deferred.size()));
      cv.notify_one();
    } else {
      r.reply("re:" + req.payload);
    }
  });
  std::thread replier([&] {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait_for(lock, 2ms, [&] { return done; });
      if (done && deferred.empty()) return;
      // Answer whatever piled up, newest first.
      auto batch = std::move(deferred);
      deferred.clear();
      lock.unlock();
      for (auto& [payload, r] : batch) r.reply(payload);
      lock.lock();
    }
  });

  auto client = connect_client(server->port());
  constexpr int kThreads = 8;
  constexpr int kPerThread = 125;
  std::atomic<int> ok{0};
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        std::string payload = "t" + std::to_string(t) + ":" + std::to_string(t * kPerThread + i);
        auto reply = client->call(kEcho, payload, soon());
        if (reply && *reply == "re:" + payload) {
          ++ok;
        } else {
          ++wrong;
        }
      }
    });
  }
  // And async calls interleaved, matched by their own callbacks.
  std::atomic<int> async_ok{0};
  std::atomic<int> async_done{0};
  for (int i = 0; i < 200; ++i) {
    std::string payload = "a:" + std::to_string(i);
    client->call_async(kEcho, payload, soon(), [&, payload](Result<std::string> r) {
      if (r && *r == "re:" + payload) ++async_ok;
      ++async_done;
    });
  }
  for (auto& t : callers) t.join();
  CHECK(eventually([&] { return async_done == 200; }, scaled(5s)));
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_one();
  replier.join();
  CHECK(ok == kThreads * kPerThread);
  CHECK(wrong == 0);
  CHECK(async_ok == 200);
  CHECK(in_flight_max >= 1);
}

TEST_CASE("a handler's failure reaches the client as the same code and message", "[rpc][server]") {
  Held held;
  auto server = start_server(basic_handler(&held));
  auto client = connect_client(server->port());
  auto reply = client->call(kFail, "pool is full", soon());
  REQUIRE(!reply);
  CHECK(reply.error().code() == StatusCode::kResourceExhausted);
  CHECK(reply.error().message() == "pool is full");

  SECTION("fail_unknown_type answers kUnimplemented naming the type") {
    auto unknown = client->call(999, "", soon());
    REQUIRE(!unknown);
    CHECK(unknown.error().code() == StatusCode::kUnimplemented);
    CHECK(unknown.error().message().find("999") != std::string::npos);
  }
  // The connection survives error replies.
  CHECK(client->call(kEcho, "still here", soon()).value() == "still here");
}

TEST_CASE("only the first answer to a request is sent", "[rpc][server]") {
  auto server = start_server([](Request req, Responder r) {
    Responder copy = r;
    r.reply("first:" + req.payload);
    copy.reply("second");
    copy.fail(Status(StatusCode::kInternal, "third"));
  });
  auto client = connect_client(server->port());
  for (int i = 0; i < 20; ++i) {
    auto reply = client->call(kEcho, std::to_string(i), soon());
    REQUIRE(reply);
    CHECK(*reply == "first:" + std::to_string(i));
  }
}

TEST_CASE("a request whose Responder is dropped unanswered fails with kInternal", "[rpc][server]") {
  auto server = start_server([](Request, Responder) {});
  auto client = connect_client(server->port());
  auto reply = client->call(kEcho, "", soon());
  REQUIRE(!reply);
  CHECK(reply.error().code() == StatusCode::kInternal);
}

TEST_CASE("a reply over the server's max_frame becomes an error reply", "[rpc][server]") {
  ServerOptions options;
  options.max_frame = 4096;
  auto server = start_server([](Request, Responder r) { r.reply(std::string(5000, 'x')); }, options);
  auto client = connect_client(server->port());
  auto reply = client->call(kEcho, "", soon());
  REQUIRE(!reply);
  CHECK(reply.error().code() == StatusCode::kInternal);
  CHECK(client->connected());
}

TEST_CASE("push from the server reaches the client's push handler", "[rpc][server]") {
  std::atomic<std::uint64_t> connection{0};
  auto server = start_server([&](Request req, Responder r) {
    connection = req.connection_id;
    r.reply("");
  });
  auto client = connect_client(server->port());
  std::mutex mu;
  std::vector<std::pair<std::uint16_t, std::string>> pushes;
  client->set_push_handler([&](std::uint16_t type, std::string payload) {
    std::lock_guard lock(mu);
    pushes.emplace_back(type, std::move(payload));
  });
  REQUIRE(client->call(kEcho, "", soon()));
  REQUIRE(server->push(connection, 42, "agent 3 down").ok());
  REQUIRE(server->push(connection, 43, "").ok());
  CHECK(eventually(
      [&] {
        std::lock_guard lock(mu);
        return pushes.size() == 2;
      },
      scaled(5s)));
  std::lock_guard lock(mu);
  REQUIRE(pushes.size() == 2);
  CHECK(pushes[0] == std::make_pair(std::uint16_t{42}, std::string("agent 3 down")));
  CHECK(pushes[1].first == 43);

  SECTION("push to an unknown connection is kNotFound") {
    CHECK(server->push(connection + 1000, 42, "").code() == StatusCode::kNotFound);
  }
  SECTION("push over max_frame is refused") {
    CHECK(server->push(connection, 42, std::string(kDefaultMaxFrame + 1, 'x')).code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("on_disconnect fires once with the connection id when a client leaves", "[rpc][server]") {
  std::mutex mu;
  std::vector<std::uint64_t> gone;
  std::atomic<std::uint64_t> connection{0};
  ServerOptions options;
  options.on_disconnect = [&](std::uint64_t id) {
    std::lock_guard lock(mu);
    gone.push_back(id);
  };
  auto server = start_server(
      [&](Request req, Responder r) {
        connection = req.connection_id;
        r.reply("");
      },
      options);
  auto client = connect_client(server->port());
  REQUIRE(client->call(kEcho, "", soon()));
  auto other = connect_client(server->port(), "worker-2");
  client.reset();
  CHECK(eventually(
      [&] {
        std::lock_guard lock(mu);
        return !gone.empty();
      },
      scaled(5s)));
  std::this_thread::sleep_for(20ms);
  std::lock_guard lock(mu);
  REQUIRE(gone.size() == 1);
  CHECK(gone[0] == connection);
  CHECK(server->push(connection, 42, "").code() == StatusCode::kNotFound);
}

TEST_CASE("a Responder used after its client left is a harmless no-op", "[rpc][server]") {
  Held held;
  std::atomic<int> disconnects{0};
  ServerOptions options;
  options.on_disconnect = [&](std::uint64_t) { ++disconnects; };
  auto server = start_server(basic_handler(&held), options);
  auto client = connect_client(server->port());
  client->call_async(kHold, "", Deadline::never(), [](Result<std::string>) {});
  REQUIRE(eventually([&] { return held.size() == 1; }, scaled(5s)));
  client.reset();
  REQUIRE(eventually([&] { return disconnects == 1; }, scaled(5s)));
  held.responders[0].reply("too late");
  held.responders[0].fail(Status(StatusCode::kInternal, "too late"));

  SECTION("and after the server is gone") {
    auto client2 = connect_client(server->port());
    client2->call_async(kHold, "", Deadline::never(), [](Result<std::string>) {});
    REQUIRE(eventually([&] { return held.size() == 2; }, scaled(5s)));
    server.reset();
    held.responders[1].reply("server gone");
  }
  // The server still serves others.
  if (server) {
    auto client3 = connect_client(server->port());
    CHECK(client3->call(kEcho, "x", soon()).value() == "x");
  }
  held.responders.clear();
}

TEST_CASE("stop() closes every connection, is idempotent, and calls no on_disconnect", "[rpc][server]") {
  Held held;
  std::atomic<int> disconnects{0};
  ServerOptions options;
  options.threads = 3;
  options.on_disconnect = [&](std::uint64_t) { ++disconnects; };
  auto server = start_server(basic_handler(&held), options);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(connect_client(server->port(), "w" + std::to_string(i)));
    REQUIRE(clients.back()->call(kEcho, "x", soon()));
  }
  server->stop();
  server->stop();
  for (auto& c : clients) CHECK(eventually([&] { return !c->connected(); }, scaled(5s)));
  CHECK(disconnects == 0);
}

TEST_CASE("a server with several io threads serves several clients at once", "[rpc][server]") {
  Held held;
  ServerOptions options;
  options.threads = 4;
  auto server = start_server(basic_handler(&held), options);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int c = 0; c < 4; ++c) {
    threads.emplace_back([&, c] {
      auto client = connect_client(server->port(), "w" + std::to_string(c));
      for (int i = 0; i < 200; ++i) {
        std::string p = std::to_string(c) + "/" + std::to_string(i);
        if (client->call(kEcho, p, soon()).value_or("") == p) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok == 800);
}

TEST_CASE("Server::start refuses bad options and a taken port", "[rpc][server]") {
  Held held;
  ServerOptions options;
  SECTION("no threads") {
    options.threads = 0;
    CHECK(Server::start(options, basic_handler(&held)).error().code() == StatusCode::kInvalidArgument);
  }
  SECTION("port in use") {
    auto first = start_server(basic_handler(&held));
    options.port = first->port();
    auto second = Server::start(options, basic_handler(&held));
    // SO_REUSEADDR does not let two listeners share a port.
    REQUIRE(!second);
    CHECK(second.error().code() == StatusCode::kFailedPrecondition);
  }
}

TEST_CASE("past max_connections a client is told too many connections, and a freed slot lets the next one in",
          "[rpc][server][limits]") {
  ServerOptions o;
  o.max_connections = 2;
  auto server = start_server([](Request, Responder r) { r.reply("ok"); }, o);
  auto a = connect_client(server->port(), "a");
  auto b = connect_client(server->port(), "b");
  ClientOptions co;
  co.port = server->port();
  co.client_id = "c";
  auto c = Client::connect(co, soon());
  REQUIRE_FALSE(c);
  CHECK(c.error().code() == StatusCode::kResourceExhausted);
  CHECK(c.error().message().find("too many connections") != std::string::npos);
  // The others are served all along.
  CHECK(a->call(kEcho, "x", soon()));
  a.reset();
  CHECK(eventually(
      [&] {
        auto d = Client::connect(co, soon());
        return d && (*d)->call(kEcho, "y", soon()).has_value();
      },
      scaled(5s)));
  CHECK(b->call(kEcho, "z", soon()));
}

}  // namespace kvpool::rpc
