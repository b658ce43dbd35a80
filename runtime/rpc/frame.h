#pragma once
// The control protocol's framing, below the messages: every message travels
// as one frame, a fixed 24-byte header followed by the payload.
//
//   offset size  field
//        0    4  magic           0x4350564B ("KVPC" read as little-endian bytes)
//        4    2  version         kProtocolVersion; anything else is refused
//        6    2  type            message type (kHello, messages.h)
//        8    8  request id      chosen by the requester, echoed in the reply;
//                                0 in a push (server -> client, no reply)
//       16    4  payload length  bytes after the header, at most max_frame
//       20    4  flags           bit 0 kFlagReply, bit 1 kFlagError; the
//                                other bits must be 0
//       24    -  payload
//
// All integers are little-endian. A reply carries the request's type and id
// with kFlagReply set. An error reply also sets kFlagError and its payload is
// an error payload: u16 StatusCode, then the message as codec bytes (u32
// length + bytes); encode_error()/decode_error().
//
// The receiver checks the header before it allocates anything for the
// payload: a length above max_frame closes the connection, so a peer cannot
// make us allocate by claiming a large frame.
//
// Every connection opens with the authentication handshake (auth.h,
// SECURITY.md), in three frames:
//   1. server -> client, as soon as it accepts: an auth challenge (type 2,
//      request id 0, no flags): u8 scheme, u8 flags, bytes server nonce;
//      with the TLS flag, a TLS handshake follows and everything after it
//      travels inside TLS (tls.h);
//   2. client -> server: the hello request (type 1):
//        u16 protocol version, u8 Role, bytes client id, bytes auth
//      where `auth` is the client's proof (auth.h: scheme, client nonce,
//      HMAC over both nonces and the hello);
//   3. server -> client: the hello reply:
//        u8 Role, bytes server id, bytes server version, bytes auth
//      where `auth` is the server's proof (an HMAC over both nonces, the
//      hello and this reply), or an error reply (kPermissionDenied) after
//      which the server closes the connection.
// Nothing else is answered before the hello has succeeded.
//
// Types 1..15 are reserved for this layer; messages.h numbers from 16.
//
// Also here, with no Asio: FrameReader, which cuts a byte stream into frames,
// shared by the client and the server.

#include <array>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvpool/status.h"
#include "runtime/common/asio_status.h"

namespace kvpool::rpc {

inline constexpr std::uint32_t kFrameMagic = 0x4350564B;
// 2: the authentication handshake (the challenge frame, the hello reply's
// auth field).
// 3: isolated tenant regions (agent records and the registration reply),
// the owner-read rkey, leader epochs on placements, commits, releases and
// pushes. A build of version 2 is refused at the first frame, naming both
// versions, instead of failing later on a field it does not know.
inline constexpr std::uint16_t kProtocolVersion = 3;
inline constexpr std::size_t kHeaderSize = 24;
// The largest payload a frame may carry unless configured otherwise.
inline constexpr std::size_t kDefaultMaxFrame = std::size_t{16} << 20;

inline constexpr std::uint32_t kFlagReply = 1u << 0;
inline constexpr std::uint32_t kFlagError = 1u << 1;
inline constexpr std::uint32_t kKnownFlags = kFlagReply | kFlagError;

inline constexpr std::uint16_t kHello = 1;
inline constexpr std::uint16_t kAuthChallenge = 2;

// Longest client or server id a hello may carry: ids go into every log line.
inline constexpr std::size_t kMaxIdBytes = 256;

enum class Role : std::uint8_t { kWorker = 1, kAgent = 2, kCoordinator = 3, kTool = 4 };
// "worker", "agent", "coordinator", "tool"; "unknown" otherwise.
std::string_view role_name(Role role);

struct FrameHeader {
  std::uint16_t version = kProtocolVersion;
  std::uint16_t type = 0;
  std::uint64_t request_id = 0;
  std::uint32_t payload_size = 0;
  std::uint32_t flags = 0;

  bool is_reply() const { return (flags & kFlagReply) != 0; }
  bool is_error() const { return (flags & kFlagError) != 0; }
};

using HeaderBytes = std::array<char, kHeaderSize>;

// Writes the header with the magic. kInvalidArgument when the version is not
// kProtocolVersion, the payload is larger than `max_frame`, or a flag bit is
// unknown: the sender refuses what the receiver would.
Result<HeaderBytes> encode_header(const FrameHeader& header, std::size_t max_frame);

// Parses and checks a received header. kInvalidArgument (with a message fit
// for the log) on a bad magic, a version other than kProtocolVersion, a
// payload length above `max_frame`, or an unknown flag bit.
Result<FrameHeader> decode_header(std::span<const char, kHeaderSize> bytes, std::size_t max_frame);

struct Frame {
  FrameHeader header;
  std::string payload;
};

// Cuts a byte stream into frames. Read from the socket into buffer(), call
// commit() with the count read, then next() until it returns no frame.
// Memory is bounded by max_frame + kHeaderSize: the buffer grows past its
// initial 64 KiB only for a frame whose header has already been checked.
// Not thread-safe; one per connection.
class FrameReader {
 public:
  explicit FrameReader(std::size_t max_frame);

  // Free space to read into; never empty.
  std::span<char> buffer();
  void commit(std::size_t n);
  // The next complete frame, std::nullopt when more bytes are needed, or
  // kInvalidArgument on a malformed header (the stream is then unusable).
  Result<std::optional<Frame>> next();
  // Bytes of an incomplete frame held back: nonzero at EOF means the peer
  // hung up mid-frame.
  std::size_t buffered() const { return end_ - begin_; }

 private:
  std::size_t max_frame_;
  std::vector<char> buf_;
  std::size_t begin_ = 0;  // first unconsumed byte
  std::size_t end_ = 0;    // one past the last received byte
};

// The payload of an error reply. decode_error never returns an ok Status: a
// malformed payload, or a code of kOk or one this build does not know,
// becomes kInternal, so an error reply always reads as an error.
std::string encode_error(const Status& status);
Status decode_error(std::string_view payload);

struct Hello {
  std::uint16_t version = kProtocolVersion;
  Role role = Role::kTool;
  std::string id;
  std::string auth;  // the client's proof (auth.h); opaque at this layer
};
std::string encode_hello(const Hello& hello);
// kInvalidArgument on a truncated payload, trailing bytes, an unknown role or
// an id over kMaxIdBytes. The version is returned, not checked: the caller
// answers a mismatch with kFailedPrecondition.
Result<Hello> decode_hello(std::string_view payload);

struct HelloReply {
  Role role = Role::kCoordinator;
  std::string server_id;
  std::string server_version;
  std::string auth;  // the server's proof (auth.h); opaque at this layer
};
std::string encode_hello_reply(const HelloReply& reply);
Result<HelloReply> decode_hello_reply(std::string_view payload);

// Asio errors map to Status in one place (runtime/common/asio_status.h).
using kvpool::to_status;

}  // namespace kvpool::rpc
