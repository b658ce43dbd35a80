#pragma once
// A raw control-protocol peer over POSIX sockets, for tests that must send
// what rpc::Client never would (bad frames, forged or replayed hellos), and
// the frame-building helpers they share.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>

#include "runtime/common/codec.h"
#include "runtime/common/secret.h"
#include "runtime/rpc/auth.h"
#include "runtime/rpc/frame.h"
#include "tests/common/test_util.h"

namespace kvpool::rpc {

inline std::string header(std::uint32_t magic, std::uint16_t version, std::uint16_t type, std::uint64_t id,
                          std::uint32_t length, std::uint32_t flags) {
  Writer w;
  w.u32(magic);
  w.u16(version);
  w.u16(type);
  w.u64(id);
  w.u32(length);
  w.u32(flags);
  return w.take();
}

inline std::string frame(std::uint16_t type, std::uint64_t id, const std::string& payload, std::uint32_t flags = 0) {
  return header(kFrameMagic, kProtocolVersion, type, id, static_cast<std::uint32_t>(payload.size()), flags) + payload;
}

// A hello with an empty auth field: refused, unless something else about it
// is refused first.
inline std::string hello_frame(std::uint16_t version = kProtocolVersion, std::uint8_t role = 1) {
  Writer w;
  w.u16(version);
  w.u8(role);
  w.bytes("raw-peer");
  w.bytes("");
  return frame(kHello, 1, w.take());
}

// A blocking loopback socket with a receive timeout, so a server that fails
// to close cannot hang the test. By default it reads the server's auth
// challenge on connecting (every server sends one first).
class RawConn {
 public:
  explicit RawConn(std::uint16_t port, bool read_challenge = true) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    auto ms = kvpool::testing::scaled(std::chrono::seconds(5)).count();
    timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
    REQUIRE(::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0);
    if (read_challenge) {
      Frame f = recv_frame();
      REQUIRE(f.header.type == kAuthChallenge);
      REQUIRE(f.header.flags == 0);
      auto c = decode_auth_challenge(f.payload);
      REQUIRE(c);
      challenge_ = *c;
    }
  }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;
  ~RawConn() { close(); }

  const AuthChallenge& challenge() const { return challenge_; }

  // A hello frame (request id 1) with a valid proof for this connection's
  // challenge under `key` (default: the secret the environment names).
  std::string authenticated_hello(const std::string& id, Role role = Role::kWorker, std::string key = {}) {
    if (key.empty()) {
      auto s = load_secret("");
      REQUIRE(s);
      key = std::string(s->key());
    }
    Hello hello{kProtocolVersion, role, id, {}};
    std::string nonce(kAuthNonceBytes, 'n');
    hello.auth = encode_client_proof(ClientProof{kAuthHmacSha256, nonce, client_mac(key, challenge_, nonce, hello), {}});
    return frame(kHello, 1, encode_hello(hello));
  }

  // As authenticated_hello, for tenant `tenant` with its key.
  std::string tenant_hello(const std::string& id, const std::string& tenant, const std::string& key,
                           Role role = Role::kWorker) {
    Hello hello{kProtocolVersion, role, id, {}};
    std::string nonce(kAuthNonceBytes, 't');
    hello.auth = encode_client_proof(
        ClientProof{kAuthHmacSha256Tenant, nonce, client_mac(key, challenge_, nonce, hello, tenant), tenant});
    return frame(kHello, 1, encode_hello(hello));
  }

  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      REQUIRE(n > 0);
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  // Half-closes our side: the server sees EOF.
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Reads exactly one frame; fails the test on a close or timeout first.
  Frame recv_frame() {
    std::string bytes = recv_exact(kHeaderSize);
    auto h = decode_header(std::span<const char, kHeaderSize>(bytes.data(), kHeaderSize), kDefaultMaxFrame);
    REQUIRE(h);
    return Frame{*h, recv_exact(h->payload_size)};
  }

  // Reads until the server closes (true) or the receive timeout (false);
  // what arrived is in `received`.
  bool read_until_closed(std::string& received) {
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        received.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0) return true;
      if (errno == EINTR) continue;
      return errno == ECONNRESET;
    }
  }

 private:
  std::string recv_exact(std::size_t n) {
    std::string out(n, '\0');
    std::size_t have = 0;
    while (have < n) {
      ssize_t got = ::recv(fd_, out.data() + have, n - have, 0);
      if (got < 0 && errno == EINTR) continue;
      REQUIRE(got > 0);
      have += static_cast<std::size_t>(got);
    }
    return out;
  }
  int fd_ = -1;
  AuthChallenge challenge_;
};

}  // namespace kvpool::rpc
