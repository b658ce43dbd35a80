#include "transport/rendezvous.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "runtime/common/codec.h"

namespace kvpool::transport {
namespace {

Status errno_status(StatusCode code, const std::string& what) {
  return Status(code, what + ": " + std::strerror(errno));
}

// Waits until fd is ready for `events` or the deadline passes.
Status wait_fd(int fd, short events, Deadline deadline, const char* what) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline.remaining()).count();
    if (left <= 0 && deadline.expired()) return Status(StatusCode::kDeadlineExceeded, std::string(what) + ": timed out");
    pollfd p{fd, events, 0};
    int timeout = left > 1000 ? 1000 : static_cast<int>(left);
    int rc = ::poll(&p, 1, timeout);
    if (rc > 0) return Status();
    if (rc < 0 && errno != EINTR) return errno_status(StatusCode::kInternal, what);
  }
}

}  // namespace

Result<Channel> Channel::connect(const std::string& host, std::uint16_t port, Deadline deadline) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return make_error(StatusCode::kInvalidArgument, "rendezvous: not an IPv4 address: " + host);
  }
  for (;;) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return tl::unexpected(errno_status(StatusCode::kInternal, "rendezvous socket"));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return Channel(fd);
    }
    int err = errno;
    ::close(fd);
    if (deadline.expired()) {
      errno = err;
      return tl::unexpected(errno_status(StatusCode::kUnavailable,
                                         "rendezvous: connecting to " + host + ":" + std::to_string(port)));
    }
    ::usleep(20 * 1000);  // the peer may not listen yet
  }
}

Channel::Channel(Channel&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
Channel& Channel::operator=(Channel&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}
Channel::~Channel() {
  if (fd_ >= 0) ::close(fd_);
}

Status Channel::send(std::string_view message) {
  if (message.size() > kMaxRendezvousMessage) {
    return Status(StatusCode::kInvalidArgument, "rendezvous: message too long");
  }
  Writer w;
  w.bytes(message);  // u32 length, then the message
  const std::string frame = w.take();
  std::size_t sent = 0;
  while (sent < frame.size()) {
    ssize_t n = ::send(fd_, frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(StatusCode::kUnavailable, "rendezvous send");
    }
    sent += static_cast<std::size_t>(n);
  }
  return Status();
}

Result<std::string> Channel::receive(Deadline deadline) {
  auto read_exact = [&](char* buf, std::size_t len) -> Status {
    std::size_t got = 0;
    while (got < len) {
      if (Status s = wait_fd(fd_, POLLIN, deadline, "rendezvous receive"); !s.ok()) return s;
      ssize_t n = ::recv(fd_, buf + got, len - got, 0);
      if (n == 0) return Status(StatusCode::kUnavailable, "rendezvous: peer closed the channel");
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return errno_status(StatusCode::kUnavailable, "rendezvous receive");
      }
      got += static_cast<std::size_t>(n);
    }
    return Status();
  };
  char hdr[4];
  if (Status s = read_exact(hdr, 4); !s.ok()) return tl::unexpected(s);
  const std::uint32_t len = Reader(std::string_view(hdr, 4)).u32();
  if (len > kMaxRendezvousMessage) {
    return make_error(StatusCode::kInvalidArgument, "rendezvous: message of " + std::to_string(len) + " bytes refused");
  }
  std::string out(len, '\0');
  if (Status s = read_exact(out.data(), len); !s.ok()) return tl::unexpected(s);
  return out;
}

Result<Listener> Listener::listen(const std::string& host, std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return make_error(StatusCode::kInvalidArgument, "rendezvous: not an IPv4 address: " + host);
  }
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return tl::unexpected(errno_status(StatusCode::kInternal, "rendezvous socket"));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 16) != 0) {
    Status s = errno_status(StatusCode::kUnavailable, "rendezvous: listening on " + host + ":" + std::to_string(port));
    ::close(fd);
    return tl::unexpected(s);
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return Listener(fd, ntohs(addr.sin_port));
}

Listener::Listener(Listener&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), port_(std::exchange(other.port_, 0)) {}
Listener& Listener::operator=(Listener&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    port_ = std::exchange(other.port_, 0);
  }
  return *this;
}
Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

Result<Channel> Listener::accept(Deadline deadline) {
  if (Status s = wait_fd(fd_, POLLIN, deadline, "rendezvous accept"); !s.ok()) return tl::unexpected(s);
  int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return tl::unexpected(errno_status(StatusCode::kUnavailable, "rendezvous accept"));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return Channel(fd);
}

// The region info's field list (codec.h): its wire format, both ways.
template <class Io>
void fields(Io& io, RegionInfo& info) {
  io(info.worker_address, info.packed_rkey, info.base, info.length, info.host_id);
}

std::string encode_region_info(const RegionInfo& info) { return encode_fields(info); }

Result<RegionInfo> decode_region_info(std::string_view bytes) {
  RegionInfo info;
  if (!decode_fields(bytes, info, "region info").ok()) return make_error(StatusCode::kInvalidArgument, "rendezvous: malformed region info");
  return info;
}

}  // namespace kvpool::transport
