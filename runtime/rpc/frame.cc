#include "runtime/rpc/frame.h"

#include <boost/asio/error.hpp>
#include <cstring>

#include "runtime/common/codec.h"

namespace kvpool::rpc {
namespace {

// Big enough that a burst of pipelined ~1.3 KB requests arrives in one read;
// a connection grows to it once bytes arrive, and keeps it.
constexpr std::size_t kInitialBuffer = 64 * 1024;
// What a connection holds before it has sent anything: thousands of idle or
// half-open connections must not pin 64 KiB each.
constexpr std::size_t kFirstBuffer = 4096;
// Compact instead of reading into a sliver at the end of the buffer.
constexpr std::size_t kMinRead = 4096;
// Error messages are for humans; a megabyte is plenty.
constexpr std::size_t kMaxMessage = 1 << 20;

std::uint64_t load_le(const char* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

void store_le(char* p, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

bool known_role(std::uint8_t r) { return r >= 1 && r <= 4; }

}  // namespace

std::string_view role_name(Role role) {
  switch (role) {
    case Role::kWorker:
      return "worker";
    case Role::kAgent:
      return "agent";
    case Role::kCoordinator:
      return "coordinator";
    case Role::kTool:
      return "tool";
  }
  return "unknown";
}

Result<HeaderBytes> encode_header(const FrameHeader& header, std::size_t max_frame) {
  if (header.version != kProtocolVersion) {
    return make_error(StatusCode::kInvalidArgument, "frame version " + std::to_string(header.version) +
                                                        " is not protocol version " + std::to_string(kProtocolVersion));
  }
  if (header.payload_size > max_frame) {
    return make_error(StatusCode::kInvalidArgument, "frame payload of " + std::to_string(header.payload_size) +
                                                        " bytes exceeds the limit of " + std::to_string(max_frame));
  }
  if ((header.flags & ~kKnownFlags) != 0) {
    return make_error(StatusCode::kInvalidArgument, "unknown frame flag bits " + std::to_string(header.flags));
  }
  HeaderBytes out;
  store_le(out.data() + 0, kFrameMagic, 4);
  store_le(out.data() + 4, header.version, 2);
  store_le(out.data() + 6, header.type, 2);
  store_le(out.data() + 8, header.request_id, 8);
  store_le(out.data() + 16, header.payload_size, 4);
  store_le(out.data() + 20, header.flags, 4);
  return out;
}

Result<FrameHeader> decode_header(std::span<const char, kHeaderSize> bytes, std::size_t max_frame) {
  const char* p = bytes.data();
  auto magic = static_cast<std::uint32_t>(load_le(p, 4));
  if (magic != kFrameMagic) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%08x", magic);
    return make_error(StatusCode::kInvalidArgument, std::string("bad frame magic ") + hex + " (not a kvpool peer?)");
  }
  FrameHeader h;
  h.version = static_cast<std::uint16_t>(load_le(p + 4, 2));
  h.type = static_cast<std::uint16_t>(load_le(p + 6, 2));
  h.request_id = load_le(p + 8, 8);
  h.payload_size = static_cast<std::uint32_t>(load_le(p + 16, 4));
  h.flags = static_cast<std::uint32_t>(load_le(p + 20, 4));
  if (h.version != kProtocolVersion) {
    return make_error(StatusCode::kInvalidArgument, "peer speaks protocol version " + std::to_string(h.version) +
                                                        ", this build speaks " + std::to_string(kProtocolVersion));
  }
  if (h.payload_size > max_frame) {
    return make_error(StatusCode::kInvalidArgument, "frame claims a payload of " + std::to_string(h.payload_size) +
                                                        " bytes, over the limit of " + std::to_string(max_frame));
  }
  if ((h.flags & ~kKnownFlags) != 0) {
    return make_error(StatusCode::kInvalidArgument, "unknown frame flag bits " + std::to_string(h.flags));
  }
  return h;
}

FrameReader::FrameReader(std::size_t max_frame) : max_frame_(max_frame), buf_(kFirstBuffer) {}

std::span<char> FrameReader::buffer() {
  if (begin_ == end_) {
    begin_ = end_ = 0;
    // Give back the room a large frame needed; the common case is small.
    if (buf_.size() > kInitialBuffer) {
      buf_.resize(kInitialBuffer);
      buf_.shrink_to_fit();
    }
  }
  // How much of the frame at begin_ must fit: the whole frame once its
  // header is in and has passed decode_header (next() ran first and refused
  // a bad one, so payload_size <= max_frame here), else just the header.
  std::size_t want = kHeaderSize;
  if (end_ - begin_ >= kHeaderSize) {
    auto h = decode_header(std::span<const char, kHeaderSize>(buf_.data() + begin_, kHeaderSize), max_frame_);
    if (h) want = kHeaderSize + h->payload_size;
  }
  if (buf_.size() - begin_ < want || (buf_.size() - end_ < kMinRead && begin_ > 0)) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  // Grow with the bytes that have arrived, not with what the header claims:
  // a peer that sends one header announcing 16 MiB and then nothing must not
  // pin 16 MiB (a thousand such connections would pin 16 GiB).
  const std::size_t have = end_ - begin_;
  const std::size_t room = std::min(want, std::max(kInitialBuffer, 2 * have));
  if (buf_.size() < room) buf_.resize(room);
  if (end_ == buf_.size()) buf_.resize(buf_.size() + kMinRead);
  return std::span<char>(buf_.data() + end_, buf_.size() - end_);
}

void FrameReader::commit(std::size_t n) { end_ += n; }

Result<std::optional<Frame>> FrameReader::next() {
  if (end_ - begin_ < kHeaderSize) return std::optional<Frame>();
  auto h = decode_header(std::span<const char, kHeaderSize>(buf_.data() + begin_, kHeaderSize), max_frame_);
  if (!h) return tl::unexpected(h.error());
  std::size_t total = kHeaderSize + h->payload_size;
  if (end_ - begin_ < total) return std::optional<Frame>();
  std::optional<Frame> frame(std::in_place);
  frame->header = *h;
  frame->payload.assign(buf_.data() + begin_ + kHeaderSize, h->payload_size);
  begin_ += total;
  return frame;
}

std::string encode_error(const Status& status) {
  Writer w;
  w(status.code(), status.message());
  return w.take();
}

Status decode_error(std::string_view payload) {
  Reader r(payload);
  std::uint16_t code = r.u16();  // raw: an unknown code is reported, not mapped to kInternal
  std::string message = r.bytes(kMaxMessage);
  if (!r.done()) return Status(StatusCode::kInternal, "malformed error reply from the peer");
  if (code == 0 || code > static_cast<std::uint16_t>(kLastStatusCode)) {
    return Status(StatusCode::kInternal, "peer error with unknown code " + std::to_string(code) + ": " + message);
  }
  return Status(static_cast<StatusCode>(code), std::move(message));
}

std::string encode_hello(const Hello& hello) {
  Writer w;
  w(hello.version, static_cast<std::uint8_t>(hello.role), hello.id, hello.auth);
  return w.take();
}

Result<Hello> decode_hello(std::string_view payload) {
  Reader r(payload);
  Hello h;
  std::uint8_t role = 0;  // checked after the payload, with its own message
  r(h.version, role);
  r.bytes(h.id, kMaxIdBytes);
  r(h.auth);
  if (Status s = r.finish("hello"); !s.ok()) return tl::unexpected(std::move(s));
  if (!known_role(role))
    return make_error(StatusCode::kInvalidArgument, "hello with unknown role " + std::to_string(role));
  h.role = static_cast<Role>(role);
  return h;
}

std::string encode_hello_reply(const HelloReply& reply) {
  Writer w;
  w(static_cast<std::uint8_t>(reply.role), reply.server_id, reply.server_version, reply.auth);
  return w.take();
}

Result<HelloReply> decode_hello_reply(std::string_view payload) {
  Reader r(payload);
  HelloReply h;
  const std::uint8_t role = r.u8();  // checked after the payload, as the hello's
  for (std::string* s : {&h.server_id, &h.server_version, &h.auth}) r.bytes(*s, kMaxIdBytes);
  if (Status s = r.finish("hello reply"); !s.ok()) return tl::unexpected(std::move(s));
  if (!known_role(role)) {
    return make_error(StatusCode::kInvalidArgument, "hello reply with unknown role " + std::to_string(role));
  }
  h.role = static_cast<Role>(role);
  return h;
}

}  // namespace kvpool::rpc
