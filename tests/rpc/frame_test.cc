#include "runtime/rpc/frame.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

#include "runtime/common/codec.h"
#include "runtime/rpc/auth.h"

namespace kvpool::rpc {
namespace {

constexpr std::size_t kMax = 1 << 20;

std::span<const char, kHeaderSize> view(const HeaderBytes& b) { return std::span<const char, kHeaderSize>(b); }

// A header with arbitrary field values, bypassing encode_header's checks.
HeaderBytes raw_header(std::uint32_t magic, std::uint16_t version, std::uint32_t length, std::uint32_t flags) {
  Writer w;
  w.u32(magic);
  w.u16(version);
  w.u16(7);
  w.u64(42);
  w.u32(length);
  w.u32(flags);
  HeaderBytes out;
  std::memcpy(out.data(), w.buffer().data(), kHeaderSize);
  return out;
}

std::string frame_bytes(std::uint16_t type, std::uint64_t id, std::uint32_t flags, const std::string& payload) {
  FrameHeader h;
  h.type = type;
  h.request_id = id;
  h.flags = flags;
  h.payload_size = static_cast<std::uint32_t>(payload.size());
  auto bytes = encode_header(h, kMax);
  REQUIRE(bytes);
  return std::string(bytes->data(), bytes->size()) + payload;
}

void feed(FrameReader& reader, std::string_view bytes) {
  while (!bytes.empty()) {
    auto space = reader.buffer();
    REQUIRE(!space.empty());
    std::size_t n = std::min(space.size(), bytes.size());
    std::memcpy(space.data(), bytes.data(), n);
    reader.commit(n);
    bytes.remove_prefix(n);
  }
}

}  // namespace

TEST_CASE("a frame header survives encode and decode with every field intact", "[rpc][frame]") {
  FrameHeader h;
  h.type = 0xBEEF;
  h.request_id = 0x0102030405060708ull;
  h.payload_size = 1234;
  h.flags = kFlagReply | kFlagError;
  auto bytes = encode_header(h, kMax);
  REQUIRE(bytes);
  // Little-endian on the wire, magic first: "KVPC".
  CHECK(std::string(bytes->data(), 4) == "KVPC");
  CHECK(static_cast<unsigned char>((*bytes)[8]) == 0x08);
  auto back = decode_header(view(*bytes), kMax);
  REQUIRE(back);
  CHECK(back->version == kProtocolVersion);
  CHECK(back->type == 0xBEEF);
  CHECK(back->request_id == 0x0102030405060708ull);
  CHECK(back->payload_size == 1234);
  CHECK(back->is_reply());
  CHECK(back->is_error());
}

TEST_CASE("decode_header refuses each malformed header", "[rpc][frame]") {
  SECTION("bad magic") {
    auto r = decode_header(view(raw_header(0x50545448, kProtocolVersion, 0, 0)), kMax);
    REQUIRE(!r);
    CHECK(r.error().code() == StatusCode::kInvalidArgument);
    CHECK(r.error().message().find("magic") != std::string::npos);
  }
  SECTION("another protocol version") {
    auto r = decode_header(view(raw_header(kFrameMagic, 1, 0, 0)), kMax);
    REQUIRE(!r);
    CHECK(r.error().message().find("version 1") != std::string::npos);
  }
  SECTION("payload over max_frame") {
    auto r = decode_header(view(raw_header(kFrameMagic, kProtocolVersion, 1u << 30, 0)), kMax);
    REQUIRE(!r);
    CHECK(r.error().message().find("1073741824") != std::string::npos);
    CHECK(decode_header(view(raw_header(kFrameMagic, kProtocolVersion, kMax, 0)), kMax));
  }
  SECTION("unknown flag bits") {
    auto r = decode_header(view(raw_header(kFrameMagic, kProtocolVersion, 0, 1u << 2)), kMax);
    REQUIRE(!r);
    CHECK(r.error().message().find("flag") != std::string::npos);
  }
}

TEST_CASE("encode_header refuses what the receiver would refuse", "[rpc][frame]") {
  FrameHeader h;
  SECTION("oversized payload") {
    h.payload_size = kMax + 1;
    CHECK(encode_header(h, kMax).error().code() == StatusCode::kInvalidArgument);
  }
  SECTION("unknown flag") {
    h.flags = 0x80;
    CHECK(!encode_header(h, kMax));
  }
  SECTION("other version") {
    h.version = 9;
    CHECK(!encode_header(h, kMax));
  }
}

TEST_CASE("FrameReader reassembles frames fed a byte at a time and many at once", "[rpc][frame]") {
  std::string stream = frame_bytes(3, 1, 0, "hello") + frame_bytes(4, 2, kFlagReply, "") +
                       frame_bytes(5, 3, 0, std::string(200000, 'x'));  // bigger than the initial buffer
  SECTION("byte at a time") {
    FrameReader reader(kMax);
    std::vector<Frame> frames;
    for (char c : stream) {
      feed(reader, std::string_view(&c, 1));
      for (;;) {
        auto f = reader.next();
        REQUIRE(f);
        if (!*f) break;
        frames.push_back(std::move(**f));
      }
    }
    REQUIRE(frames.size() == 3);
    CHECK(frames[0].payload == "hello");
    CHECK(frames[1].header.is_reply());
    CHECK(frames[1].payload.empty());
    CHECK(frames[2].payload.size() == 200000);
    CHECK(reader.buffered() == 0);
  }
  SECTION("all at once") {
    FrameReader reader(kMax);
    feed(reader, stream);
    int n = 0;
    for (;;) {
      auto f = reader.next();
      REQUIRE(f);
      if (!*f) break;
      CHECK((*f)->header.request_id == static_cast<std::uint64_t>(++n));
    }
    CHECK(n == 3);
  }
}

TEST_CASE("FrameReader refuses a 1 GiB claim without growing its buffer", "[rpc][frame]") {
  FrameReader reader(kMax);
  HeaderBytes h = raw_header(kFrameMagic, kProtocolVersion, 1u << 30, 0);
  feed(reader, std::string_view(h.data(), h.size()));
  auto f = reader.next();
  REQUIRE(!f);
  CHECK(f.error().code() == StatusCode::kInvalidArgument);
  CHECK(reader.buffer().size() <= 64 * 1024);
}

TEST_CASE("FrameReader grows with the bytes that arrive, not with the size a header claims", "[rpc][frame]") {
  const std::size_t max = 16u << 20;
  FrameReader reader(max);
  HeaderBytes h = raw_header(kFrameMagic, kProtocolVersion, static_cast<std::uint32_t>(max), 0);
  feed(reader, std::string_view(h.data(), h.size()));
  auto f = reader.next();
  REQUIRE(f);
  CHECK_FALSE(f->has_value());  // a valid header, the payload still to come
  // A peer that stops here holds at most a small buffer, not 16 MiB.
  CHECK(reader.buffer().size() <= 128 * 1024);
  // The whole payload, arriving, still makes a frame.
  feed(reader, std::string(max, 'x'));
  auto frame = reader.next();
  REQUIRE(frame);
  REQUIRE(frame->has_value());
  CHECK((*frame)->payload.size() == max);
}

TEST_CASE("a truncated frame stays buffered until the rest arrives", "[rpc][frame]") {
  FrameReader reader(kMax);
  std::string bytes = frame_bytes(3, 1, 0, "payload");
  feed(reader, std::string_view(bytes).substr(0, 27));
  auto f = reader.next();
  REQUIRE(f);
  CHECK(!*f);
  CHECK(reader.buffered() == 27);
}

TEST_CASE("auth challenge and client proof round trip, and bad ones are refused", "[rpc][frame]") {
  AuthChallenge c{kAuthHmacSha256, kAuthFlagTls, std::string(kAuthNonceBytes, 's')};
  auto c_back = decode_auth_challenge(encode_auth_challenge(c));
  REQUIRE(c_back);
  CHECK(c_back->server_nonce == c.server_nonce);
  CHECK(c_back->flags == kAuthFlagTls);
  ClientProof p{kAuthHmacSha256, std::string(kAuthNonceBytes, 'c'), std::string(kAuthMacBytes, 'm'), {}};
  auto p_back = decode_client_proof(encode_client_proof(p));
  REQUIRE(p_back);
  CHECK(p_back->client_nonce == p.client_nonce);
  CHECK(p_back->mac == p.mac);
  SECTION("unknown challenge flag") {
    c.flags = 2;
    CHECK(decode_auth_challenge(encode_auth_challenge(c)).error().code() == StatusCode::kInvalidArgument);
  }
  SECTION("unknown scheme") {
    c.scheme = 9;
    p.scheme = 9;
    CHECK(decode_auth_challenge(encode_auth_challenge(c)).error().code() == StatusCode::kInvalidArgument);
    CHECK(decode_client_proof(encode_client_proof(p)).error().code() == StatusCode::kInvalidArgument);
  }
  SECTION("short nonce or MAC") {
    c.server_nonce.pop_back();
    p.mac.pop_back();
    CHECK(!decode_auth_challenge(encode_auth_challenge(c)));
    CHECK(!decode_client_proof(encode_client_proof(p)));
  }
  SECTION("empty, as an old client sends") { CHECK(!decode_client_proof("")); }
  SECTION("the two MACs differ for the same inputs") {
    Hello hello{kProtocolVersion, Role::kWorker, "w", ""};
    HelloReply reply{Role::kCoordinator, "c", "v", ""};
    std::string key(32, 'k');
    CHECK(client_mac(key, c, p.client_nonce, hello) != server_mac(key, c, p.client_nonce, hello, reply));
    CHECK(client_mac(key, c, p.client_nonce, hello) != client_mac(std::string(32, 'j'), c, p.client_nonce, hello));
    AuthChallenge plain = c;
    plain.flags = 0;  // TLS stripped by someone in the middle
    CHECK(client_mac(key, c, p.client_nonce, hello) != client_mac(key, plain, p.client_nonce, hello));
    Hello other = hello;
    other.id = "x";
    CHECK(client_mac(key, c, p.client_nonce, hello) != client_mac(key, c, p.client_nonce, other));
  }
}

TEST_CASE("hello and hello reply round trip, and bad ones are refused", "[rpc][frame]") {
  Hello hello{kProtocolVersion, Role::kAgent, "agent-7", ""};
  auto back = decode_hello(encode_hello(hello));
  REQUIRE(back);
  CHECK(back->role == Role::kAgent);
  CHECK(back->id == "agent-7");
  CHECK(back->auth.empty());

  HelloReply reply{Role::kCoordinator, "coord", "0.1.0", std::string(32, 'm')};
  auto reply_back = decode_hello_reply(encode_hello_reply(reply));
  REQUIRE(reply_back);
  CHECK(reply_back->server_id == "coord");
  CHECK(reply_back->server_version == "0.1.0");
  CHECK(reply_back->auth == std::string(32, 'm'));

  SECTION("unknown role") {
    Writer w;
    w.u16(kProtocolVersion);
    w.u8(9);
    w.bytes("x");
    w.bytes("");
    CHECK(decode_hello(w.buffer()).error().code() == StatusCode::kInvalidArgument);
  }
  SECTION("truncated") { CHECK(!decode_hello(encode_hello(hello).substr(0, 5))); }
  SECTION("trailing bytes") { CHECK(!decode_hello(encode_hello(hello) + "x")); }
  SECTION("overlong id") {
    hello.id = std::string(kMaxIdBytes + 1, 'a');
    CHECK(!decode_hello(encode_hello(hello)));
  }
}

TEST_CASE("an error payload carries code and message, and a malformed one reads as kInternal", "[rpc][frame]") {
  Status s = decode_error(encode_error(Status(StatusCode::kNotFound, "no such key")));
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.message() == "no such key");
  CHECK(decode_error("x").code() == StatusCode::kInternal);
  CHECK(decode_error(encode_error(Status())).code() == StatusCode::kInternal);  // ok is not an error
  Writer w;
  w.u16(999);
  w.bytes("future code");
  CHECK(decode_error(w.buffer()).code() == StatusCode::kInternal);
}

TEST_CASE("role names are stable", "[rpc][frame]") {
  CHECK(role_name(Role::kWorker) == "worker");
  CHECK(role_name(Role::kAgent) == "agent");
  CHECK(role_name(Role::kCoordinator) == "coordinator");
  CHECK(role_name(Role::kTool) == "tool");
}

}  // namespace kvpool::rpc
