#pragma once
// Rendezvous: how two processes find each other where no coordinator runs
// (transport tests, kvbench, the transport demo). A blocking loopback TCP
// channel of length-prefixed messages, each wait bounded by a deadline, and
// the encoding of a RegionInfo on it. The pool's control protocol replaces
// this between agents, coordinator and workers.

#include <cstdint>
#include <string>
#include <string_view>

#include "kvpool/status.h"
#include "runtime/common/units.h"
#include "transport/memory.h"

namespace kvpool::transport {

inline constexpr std::size_t kMaxRendezvousMessage = 1 << 20;

class Channel {
 public:
  static Result<Channel> connect(const std::string& host, std::uint16_t port, Deadline deadline);
  Channel(Channel&& other) noexcept;
  Channel& operator=(Channel&& other) noexcept;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel();

  Status send(std::string_view message);
  // kUnavailable when the peer closed, kDeadlineExceeded on timeout,
  // kInvalidArgument for a length over kMaxRendezvousMessage.
  Result<std::string> receive(Deadline deadline);

 private:
  friend class Listener;
  explicit Channel(int fd) : fd_(fd) {}
  int fd_ = -1;
};

class Listener {
 public:
  // Listens on host:port; port 0 lets the OS pick (see port()).
  static Result<Listener> listen(const std::string& host, std::uint16_t port);
  Listener(Listener&& other) noexcept;
  Listener& operator=(Listener&& other) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  std::uint16_t port() const { return port_; }
  Result<Channel> accept(Deadline deadline);

 private:
  Listener(int fd, std::uint16_t port) : fd_(fd), port_(port) {}
  int fd_ = -1;
  std::uint16_t port_ = 0;
};

std::string encode_region_info(const RegionInfo& info);
Result<RegionInfo> decode_region_info(std::string_view bytes);

}  // namespace kvpool::transport
