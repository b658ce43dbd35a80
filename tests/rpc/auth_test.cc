// The authentication handshake (runtime/rpc/auth.h) end to end over
// loopback: both sides prove they know the cluster secret, a wrong secret
// on either side is refused, a recorded handshake cannot be replayed, and an
// unauthenticated peer is answered nothing but an auth error.

#include "runtime/rpc/auth.h"

#include <poll.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/common/secret.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/server.h"
#include "tests/common/test_util.h"
#include "tests/rpc/raw_conn.h"

namespace kvpool::rpc {
namespace {

using namespace std::chrono_literals;
using kvpool::testing::make_secret_file;
using kvpool::testing::scaled;

// Every test of this binary that does not name a secret file finds this one.
const std::string kProcessSecret = kvpool::testing::use_test_secret();

constexpr std::uint16_t kEcho = 100;
constexpr const char* kSecretReply = "the server's data";

struct AuthServer {
  explicit AuthServer(const std::string& secret_file, bool tls = false) {
    ServerOptions options;
    options.server_id = "auth-test";
    options.secret_file = secret_file;
    options.tls = tls;
    auto s = Server::start(options, [this](Request req, Responder r) {
      ++handled;
      if (req.type == kEcho) {
        r.reply(kSecretReply + std::string(":") + req.payload);
      } else {
        fail_unknown_type(req, r);
      }
    });
    REQUIRE(s);
    server = std::move(*s);
  }
  std::atomic<int> handled{0};
  std::unique_ptr<Server> server;
};

Result<std::unique_ptr<Client>> connect(std::uint16_t port, const std::string& secret_file) {
  ClientOptions o;
  o.port = port;
  o.client_id = "auth-client";
  o.role = Role::kWorker;
  o.secret_file = secret_file;
  return Client::connect(o, Deadline::after(scaled(5s)));
}

// Whether `received` holds exactly one frame: an error reply with `code`.
void check_only_an_auth_error(const std::string& received, std::uint64_t request_id) {
  FrameReader reader(kDefaultMaxFrame);
  auto space = reader.buffer();
  REQUIRE(space.size() >= received.size());
  std::memcpy(space.data(), received.data(), received.size());
  reader.commit(received.size());
  auto f = reader.next();
  REQUIRE(f);
  REQUIRE(*f);
  CHECK((*f)->header.is_reply());
  CHECK((*f)->header.is_error());
  CHECK((*f)->header.request_id == request_id);
  CHECK(decode_error((*f)->payload).code() == StatusCode::kPermissionDenied);
  CHECK((*f)->payload.find(kSecretReply) == std::string::npos);
  auto more = reader.next();
  REQUIRE(more);
  CHECK(!*more);  // nothing after the error
  CHECK(reader.buffered() == 0);
}

// Forwards one connection between a client and `target_port`, recording
// what each side sent.
class RecordingProxy {
 public:
  explicit RecordingProxy(std::uint16_t target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listen_fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listen_fd_, 1) == 0);
    socklen_t len = sizeof(addr);
    REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~RecordingProxy() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }
  std::uint16_t port() const { return port_; }
  std::string client_bytes() {
    std::lock_guard lock(mu_);
    return from_client_;
  }
  std::string server_bytes() {
    std::lock_guard lock(mu_);
    return from_server_;
  }

 private:
  void run() {
    pollfd lp{listen_fd_, POLLIN, 0};
    while (!stop_ && ::poll(&lp, 1, 20) <= 0) {
    }
    if (stop_) return;
    int client = ::accept(listen_fd_, nullptr, nullptr);
    int server = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(target_port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (client < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return;
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    char buf[4096];
    while (!stop_) {
      if (::poll(fds, 2, 20) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        ssize_t n = ::recv(fds[i].fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          ::close(client);
          ::close(server);
          return;
        }
        {
          std::lock_guard lock(mu_);
          (i == 0 ? from_client_ : from_server_).append(buf, static_cast<std::size_t>(n));
        }
        (void)!::send(fds[1 - i].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
      }
    }
    ::close(client);
    ::close(server);
  }

  std::uint16_t target_port_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::string from_client_;  // guarded by mu_
  std::string from_server_;  // guarded by mu_
};

// A server that does not know the secret but pretends to: it sends a
// challenge, reads the hello and answers with a well-formed hello reply
// whose proof is made with `key`.
class ImpostorServer {
 public:
  explicit ImpostorServer(std::string key) : key_(std::move(key)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listen_fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listen_fd_, 1) == 0);
    socklen_t len = sizeof(addr);
    REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~ImpostorServer() {
    thread_.join();
    ::close(listen_fd_);
  }
  std::uint16_t port() const { return port_; }
  // Requests the client sent after its hello (it must send none).
  int requests_after_hello() const { return requests_after_hello_.load(); }

 private:
  void run() {
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const AuthChallenge challenge{kAuthHmacSha256, 0, std::string(kAuthNonceBytes, 's')};
    send_all(fd, frame(kAuthChallenge, 0, encode_auth_challenge(challenge)));
    FrameReader reader(kDefaultMaxFrame);
    bool replied = false;
    for (;;) {
      auto space = reader.buffer();
      ssize_t n = ::recv(fd, space.data(), space.size(), 0);
      if (n <= 0) break;
      reader.commit(static_cast<std::size_t>(n));
      for (;;) {
        auto f = reader.next();
        if (!f || !*f) break;
        if (replied) {
          ++requests_after_hello_;
          continue;
        }
        auto hello = decode_hello((*f)->payload);
        auto proof = hello ? decode_client_proof(hello->auth) : Result<ClientProof>(ClientProof{});
        if (!hello || !proof) break;
        HelloReply reply{Role::kCoordinator, "impostor", "0.0", {}};
        reply.auth = key_.empty() ? std::string() : server_mac(key_, challenge, proof->client_nonce, *hello, reply);
        send_all(fd, frame(kHello, (*f)->header.request_id, encode_hello_reply(reply), kFlagReply));
        replied = true;
      }
    }
    ::close(fd);
  }
  static void send_all(int fd, const std::string& bytes) {
    (void)!::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  }

  std::string key_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<int> requests_after_hello_{0};
};

}  // namespace

TEST_CASE("a client and a server with the same secret file authenticate each other", "[rpc][auth]") {
  std::string secret = make_secret_file();
  AuthServer s(secret);
  SECTION("named explicitly") {
    auto c = connect(s.server->port(), secret);
    REQUIRE(c);
    CHECK((*c)->server().server_id == "auth-test");
    CHECK((*c)->call(kEcho, "x", Deadline::after(scaled(5s))).value() == std::string(kSecretReply) + ":x");
  }
  SECTION("found through KVPOOL_SECRET_FILE") {
    AuthServer from_env("");
    auto c = connect(from_env.server->port(), "");
    REQUIRE(c);
    CHECK((*c)->call(kEcho, "y", Deadline::after(scaled(5s))).value() == std::string(kSecretReply) + ":y");
  }
}

TEST_CASE("a client with another secret is refused with kPermissionDenied and gets no data", "[rpc][auth]") {
  std::string secret = make_secret_file();
  AuthServer s(secret);
  std::string other = GENERATE(std::string("file"), std::string("process"));
  const std::string client_secret = other == "file" ? make_secret_file() : kProcessSecret;
  auto c = connect(s.server->port(), client_secret);
  REQUIRE(!c);
  CHECK(c.error().code() == StatusCode::kPermissionDenied);
  CHECK(c.error().message().find("secret") != std::string::npos);
  CHECK(c.error().message().find(client_secret) != std::string::npos);
  CHECK(s.handled == 0);
  // The server goes on serving clients that know the secret.
  auto good = connect(s.server->port(), secret);
  REQUIRE(good);
  CHECK((*good)->call(kEcho, "ok", Deadline::after(scaled(5s))));
  CHECK(s.handled == 1);
}

TEST_CASE("a server that does not know the secret cannot impersonate one", "[rpc][auth]") {
  std::string secret = make_secret_file();
  std::string wrong_key = GENERATE(std::string(), std::string(40, 'w'));
  ImpostorServer impostor(wrong_key);
  auto c = connect(impostor.port(), secret);
  REQUIRE(!c);
  CHECK(c.error().code() == StatusCode::kPermissionDenied);
  CHECK(c.error().message().find("did not prove") != std::string::npos);
  CHECK(c.error().message().find(secret) != std::string::npos);
  CHECK(impostor.requests_after_hello() == 0);
}

TEST_CASE("a missing secret file is a clear error on both sides", "[rpc][auth]") {
  std::string missing = make_secret_file() + ".missing";
  SECTION("client") {
    AuthServer s("");
    auto c = connect(s.server->port(), missing);
    REQUIRE(!c);
    CHECK(c.error().code() == StatusCode::kFailedPrecondition);
    CHECK(c.error().message().find(missing) != std::string::npos);
  }
  SECTION("server") {
    ServerOptions options;
    options.secret_file = missing;
    auto s = Server::start(options, [](Request, Responder) {});
    REQUIRE(!s);
    CHECK(s.error().code() == StatusCode::kFailedPrecondition);
    CHECK(s.error().message().find(missing) != std::string::npos);
  }
  SECTION("a server told to create one does") {
    ServerOptions options;
    options.secret_file = missing;
    options.create_secret = true;
    auto s = Server::start(options, [](Request r, Responder resp) { resp.reply(r.payload); });
    REQUIRE(s);
    auto c = connect((*s)->port(), missing);
    REQUIRE(c);
    CHECK((*c)->call(kEcho, "z", Deadline::after(scaled(5s))).value() == "z");
  }
}

TEST_CASE("a recorded handshake replayed on a new connection is refused and leaks nothing", "[rpc][auth]") {
  AuthServer s(kProcessSecret);
  RecordingProxy proxy(s.server->port());
  {
    auto c = connect(proxy.port(), "");
    REQUIRE(c);
    REQUIRE((*c)->call(kEcho, "recorded", Deadline::after(scaled(5s))));
  }
  const int handled = s.handled;
  REQUIRE(handled == 1);
  // The echo's reply came back through the proxy, so the hello (request 1)
  // and the echo request are both in the recording.
  std::string recorded = proxy.client_bytes();
  REQUIRE(recorded.size() > 2 * kHeaderSize);
  RawConn replay(s.server->port());
  replay.send(recorded);
  std::string received;
  CHECK(replay.read_until_closed(received));
  check_only_an_auth_error(received, 1);
  CHECK(s.handled == handled);
}

TEST_CASE("an unauthenticated peer's requests get an auth error and no data", "[rpc][auth]") {
  AuthServer s("");
  RawConn raw(s.server->port());
  std::string received;
  SECTION("a request before any hello") {
    raw.send(frame(kEcho, 5, "give me data"));
    CHECK(raw.read_until_closed(received));
    check_only_an_auth_error(received, 5);
  }
  SECTION("a hello without a proof, with a request pipelined after it") {
    raw.send(hello_frame() + frame(kEcho, 6, "give me data"));
    CHECK(raw.read_until_closed(received));
    check_only_an_auth_error(received, 1);
  }
  SECTION("a hello with a proof made with the wrong key, with a request after it") {
    raw.send(raw.authenticated_hello("forger", Role::kWorker, std::string(40, 'f')) + frame(kEcho, 7, "data"));
    CHECK(raw.read_until_closed(received));
    check_only_an_auth_error(received, 1);
  }
  SECTION("a proof for another connection's challenge") {
    RawConn other(s.server->port());
    raw.send(other.authenticated_hello("borrower") + frame(kEcho, 8, "data"));
    CHECK(raw.read_until_closed(received));
    check_only_an_auth_error(received, 1);
  }
  CHECK(s.handled == 0);
  // The same raw peer with the right proof is served: the refusals above
  // were about the proof, nothing else.
  RawConn good(s.server->port());
  good.send(good.authenticated_hello("raw-good") + frame(kEcho, 9, "ok"));
  Frame hello_reply = good.recv_frame();
  CHECK(!hello_reply.header.is_error());
  Frame echo = good.recv_frame();
  CHECK(echo.header.request_id == 9);
  CHECK(echo.payload == std::string(kSecretReply) + ":ok");
}

TEST_CASE("with TLS on, everything after the challenge is encrypted", "[rpc][auth][tls]") {
  std::string secret = make_secret_file();
  AuthServer s(secret, true);
  RecordingProxy proxy(s.server->port());
  {
    auto c = connect(proxy.port(), secret);
    REQUIRE(c);
    for (int i = 0; i < 3; ++i) {
      CHECK((*c)->call(kEcho, "plaintext-marker", Deadline::after(scaled(5s))).value() ==
            std::string(kSecretReply) + ":plaintext-marker");
    }
  }
  std::string up = proxy.client_bytes();
  std::string down = proxy.server_bytes();
  REQUIRE(up.size() > 100);
  REQUIRE(down.size() > 100);
  // The client's id, its requests and the replies never cross in clear;
  // only the challenge frame does.
  CHECK(up.find("auth-client") == std::string::npos);
  CHECK(up.find("plaintext-marker") == std::string::npos);
  CHECK(down.find(kSecretReply) == std::string::npos);
  CHECK(down.find("auth-test") == std::string::npos);
  CHECK(up.find("KVPC") == std::string::npos);
  CHECK(down.find("KVPC", 1) == std::string::npos);  // the one at 0 is the challenge
}

TEST_CASE("with TLS on, another secret or a plaintext hello gets nothing", "[rpc][auth][tls]") {
  std::string secret = make_secret_file();
  AuthServer s(secret, true);
  SECTION("a client with another secret fails the TLS handshake") {
    auto c = connect(s.server->port(), make_secret_file());
    REQUIRE(!c);
    CHECK(c.error().code() == StatusCode::kPermissionDenied);
    CHECK(c.error().message().find("TLS") != std::string::npos);
  }
  SECTION("a client that ignores the TLS flag and says hello in clear") {
    RawConn raw(s.server->port());
    CHECK((raw.challenge().flags & kAuthFlagTls) != 0);
    raw.send(raw.authenticated_hello("plain", Role::kWorker, std::string(load_secret(secret)->key())) +
             frame(kEcho, 2, "data"));
    std::string received;
    CHECK(raw.read_until_closed(received));
    CHECK(received.find("KVPC") == std::string::npos);
    CHECK(received.find(kSecretReply) == std::string::npos);
  }
  CHECK(s.handled == 0);
  auto good = connect(s.server->port(), secret);
  REQUIRE(good);
  CHECK((*good)->call(kEcho, "ok", Deadline::after(scaled(5s))));
}

TEST_CASE("a tenant authenticates with its own key, and the handler learns which tenant", "[rpc][auth][tenants]") {
  const std::string cluster = make_secret_file();
  const std::string dir = cluster.substr(0, cluster.rfind('/'));
  const std::string acme = dir + "/acme";
  REQUIRE(create_tenant_secret_file(acme, "acme").ok());
  const std::string acme_key(load_secret(acme).value().key());
  auto table = TenantTable::parse("tenant acme " + acme_key + " namespaces=acme/*\n", "test");
  REQUIRE(table);
  const bool tls = GENERATE(false, true);
  INFO("tls " << tls);
  ServerOptions options;
  options.server_id = "tenant-test";
  options.secret_file = cluster;
  options.tls = tls;
  options.tenants = std::make_shared<const TenantTable>(std::move(*table));
  std::mutex mu;
  std::vector<std::string> tenants_seen;
  auto s = Server::start(options, [&](Request req, Responder r) {
    std::lock_guard lock(mu);
    tenants_seen.push_back(req.tenant);
    r.reply({});
  });
  REQUIRE(s);
  auto port = (*s)->port();
  for (const std::string& file : {acme, cluster}) {
    auto c = connect(port, file);
    REQUIRE(c);
    REQUIRE((*c)->call(kEcho, "x", Deadline::after(scaled(5s))));
  }
  {
    std::lock_guard lock(mu);
    CHECK(tenants_seen == std::vector<std::string>{"acme", ""});
  }
  // Another key under acme's name: refused.
  const std::string forged = dir + "/forged";
  REQUIRE(create_tenant_secret_file(forged, "acme").ok());
  auto bad = connect(port, forged);
  REQUIRE(!bad);
  CHECK(bad.error().code() == StatusCode::kPermissionDenied);
  (*s)->stop();

  // A server never runs on a tenant's credential.
  ServerOptions wrong;
  wrong.secret_file = acme;
  auto refused = Server::start(wrong, [](Request, Responder) {});
  REQUIRE(!refused);
  CHECK(refused.error().code() == StatusCode::kFailedPrecondition);
  CHECK(refused.error().message().find("tenant") != std::string::npos);
}

}  // namespace kvpool::rpc
