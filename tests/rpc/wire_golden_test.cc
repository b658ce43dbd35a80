// The control protocol's bytes, pinned: one fully populated instance of every
// message (every field off its default, every list with 2+ elements) must
// encode to the hex captured from the hand-written codec before issue 17's
// field lists replaced it. A change here is a wire change: old peers would
// misread it. Then, for every message, decode refuses each truncation,
// trailing bytes and element counts the payload cannot hold, naming the
// message.

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "runtime/rpc/auth.h"
#include "runtime/rpc/frame.h"
#include "runtime/rpc/messages.h"

namespace kvpool::rpc {
namespace {

std::string hex(std::string_view b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : b) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

// One message, type-erased so the checks below loop over all of them.
struct Case {
  std::string name;  // how its decode errors begin
  std::string encoded;
  std::function<Status(std::string_view)> decode;
  std::function<std::string(std::string_view)> round_trip;  // decode, then encode
  std::vector<std::size_t> count_at;                        // offsets of its u32 element counts
};

template <class M>
Case make(std::string name, const M& m, std::vector<std::size_t> count_at = {}) {
  Case c{std::move(name), encode(m), nullptr, nullptr, std::move(count_at)};
  c.decode = [](std::string_view p) {
    M out;
    return rpc::decode(p, out);
  };
  c.round_trip = [](std::string_view p) {
    M out;
    if (!rpc::decode(p, out).ok()) return std::string("decode failed");
    return encode(out);
  };
  return c;
}

const Key128 kKey1{0x0102030405060708ull, 0x1112131415161718ull};
const Key128 kKey2{0x2122232425262728ull, 0x3132333435363738ull};
constexpr NamespaceId kNs = 0x0a0b0c0d0e0f1011ull;

NamespaceDescriptor descriptor() {
  return {"meta-llama/Meta-Llama-3-8B", "bf16", 32, 8, 128, 16, "vllm-paged", 1, 2, 2u << 20};
}

AgentRecord agent_record(std::uint32_t id) {
  return {id,
          0x1001 + id,
          "ucx-worker-address",
          "packed-rkey",
          "host-a",
          "10.0.0.5:7400",
          0x7f0000000000ull,
          1ull << 30,
          false,
          1ull << 20,
          12,
          "acme"};
}

LocationWire location(std::uint32_t agent) { return {agent, 0x2002, 0x10000 + agent, 0x200 + agent, 65536, 3 + agent}; }

AgentStatsRecord agent_stats(std::uint32_t id) {
  return {id,         0x3003, "host-b", "10.0.0.6:7400", true, 250,  1ull << 30, 1ull << 29, 1ull << 20,
          1ull << 19, 4096,   17,       1ull << 28,      true, true, true,       -12,        "beta"};
}

NamespaceRecord namespace_record(NamespaceId id) {
  return {id, descriptor(), 2u << 20, 7, 9, 18u << 20, 100, 1ull << 30};
}

DrainTarget drain_target(std::uint32_t agent) {
  return {agent, 0x4004, "ucx-target", "target-rkey", "host-c", 0x7e0000000000ull, 1ull << 31};
}

StatsReply stats() {
  StatsReply s;
  std::uint64_t v = 1;
  for (auto* f : {&s.agents_alive, &s.agents_dead, &s.capacity_bytes, &s.used_bytes, &s.blocks, &s.namespaces,
                  &s.lookup_hits, &s.lookup_misses, &s.uptime_ms, &s.live_bytes, &s.reclaiming_bytes, &s.write_leases,
                  &s.read_leases, &s.evictions, &s.expired_write_leases}) {
    *f = v++ * 0x0101;
  }
  s.unix_ms = -1765000000123;
  s.leader = true;
  s.shard = 5;
  s.epoch = 0x99;
  return s;
}

AllocateReply allocate_reply() {
  AllocateReply r;
  r.results.resize(4);
  r.results[0].outcome = AllocateOutcome::kPlaced;
  r.results[0].location = location(1);
  r.results[0].lease = 77;
  r.results[0].lease_ms = 5000;
  r.results[1].outcome = AllocateOutcome::kExists;
  r.results[2].outcome = AllocateOutcome::kPending;
  r.results[3].outcome = AllocateOutcome::kError;
  r.results[3].error = {StatusCode::kResourceExhausted, "pool full"};
  r.epoch = 0x42;
  return r;
}

std::vector<Case> cases() {
  const StatusWire failed{StatusCode::kUnavailable, "target down"};
  return {
      make("status", StatusWire{StatusCode::kNotFound, "no such block"}),
      make("register namespace", RegisterNamespaceRequest{descriptor()}),
      make("register namespace reply", RegisterNamespaceReply{kNs, 2u << 20}),
      make("register agent", RegisterAgentRequest{agent_record(0), true}),
      make("register agent reply", RegisterAgentReply{7, 1000, true, 0x1234567890, {{"acme", 64u << 20}, {"b", 1}}},
           {17}),
      make("recover blocks",
           RecoverBlocksRequest{7, 0x1001, true, {{kNs, kKey1, 4096, 65536, 3}, {kNs + 1, kKey2, 8192, 4096, 4}}},
           {13}),
      make("recover blocks reply", RecoverBlocksReply{5, 2}),
      make("set quota", SetQuotaRequest{kNs, 100, 1ull << 30}),
      make("heartbeat", HeartbeatRequest{7, 0x1001, -1765000000123}),
      make("list agents reply", ListAgentsReply{9, {agent_record(1), agent_record(2)}}, {8}),
      make("allocate", AllocateRequest{kNs, "host-a", {{kKey1, 65536}, {kKey2, 131072}}}, {18}),
      make("allocate reply", allocate_reply(), {0}),
      make("lease batch", LeaseBatch{{1, 2, 0x0102030405060708ull}, 42}, {0}),
      make("status batch", StatusBatch{{StatusWire{}, failed}}, {0}),
      make("lookup", LookupRequest{kNs, false, {kKey1, kKey2}}, {9}),
      make("lookup reply", LookupReply{88, {location(1), location(2)}, 43}, {8}),
      make("release", ReleaseRequest{88, 43}),
      make("keys request", KeysRequest{kNs, {kKey1, kKey2}}, {8}),
      make("wait for", WaitForRequest{kNs, 250, {kKey1, kKey2}}, {12}),
      make("wait for reply", WaitForReply{{true, false, true}}, {0}),
      make("invalidate", InvalidateMessage{7, 0x1001, {{0x100, 0x200, 65536, 3}, {0x300, 0x400, 4096, 4}}, 44}, {12}),
      make("agent down", AgentDownMessage{7, 0x1001, 45}),
      make("stats", stats()),
      make("list namespaces reply", ListNamespacesReply{{namespace_record(kNs), namespace_record(kNs + 1)}}, {0}),
      make("usage", UsageRequest{false, kNs}),
      make("usage reply", UsageReply{{{kNs, 3, 4, 5}, {kNs + 1, 6, 7, 8}}}, {0}),
      make("evict namespace", EvictNamespaceRequest{kNs, true, 60000}),
      make("evict namespace reply", EvictNamespaceReply{1, 2, 3, 4}),
      make("agent stats reply", AgentStatsReply{{agent_stats(1), agent_stats(2)}}, {0}),
      make("drain", DrainRequest{7, DrainMode::kUndrain, 16}),
      make("drain reply", DrainReply{true, true, 1, 2, 3, 4, 5, 6, {StatusCode::kResourceExhausted, "no room"}}),
      // The moves' count follows 2 targets of 4 + 8 + (4 + 10) + (4 + 11) + (4 + 6) + 8 + 8 bytes.
      make("drain copy",
           DrainCopyMessage{7,
                            0x1001,
                            {drain_target(2), drain_target(3)},
                            {{1, kNs, kKey1, location(7), location(2)}, {2, kNs, kKey2, location(7), location(3)}},
                            46},
           {12, 12 + 4 + 2 * 67}),
      make("drain copied", DrainCopiedRequest{7, 0x1001, {{1, StatusWire{}}, {2, failed}}}, {12}),
  };
}

// Captured from the hand-written codec (commit bf84341), in cases() order.
const char* const kGolden[] = {
    "02000d0000006e6f207375636820626c6f636b",
    "1a0000006d6574612d6c6c616d612f4d6574612d4c6c616d612d332d38420400000062663136200000000800000080000000"
    "100000000a000000766c6c6d2d706167656401000000020000000000200000000000",
    "11100f0e0d0c0b0a0000200000000000",
    "000000000110000000000000120000007563782d776f726b65722d616464726573730b0000007061636b65642d726b657906"
    "000000686f73742d610d00000031302e302e302e353a3734303000000000007f000000000040000000000000001000000000"
    "000c000000000000000400000061636d6501",
    "07000000e8030000019078563412000000020000000400000061636d65000000040000000001000000620100000000000000",
    "070000000110000000000000010200000011100f0e0d0c0b0a08070605040302011817161514131211001000000000000000"
    "00010000000000030000000000000012100f0e0d0c0b0a282726252423222138373635343332310020000000000000001000"
    "00000000000400000000000000",
    "05000000000000000200000000000000",
    "11100f0e0d0c0b0a64000000000000000000004000000000",
    "070000000110000000000000854dcd0d65feffff",
    "090000000000000002000000010000000210000000000000120000007563782d776f726b65722d616464726573730b000000"
    "7061636b65642d726b657906000000686f73742d610d00000031302e302e302e353a3734303000000000007f000000000040"
    "000000000000001000000000000c000000000000000400000061636d65020000000310000000000000120000007563782d77"
    "6f726b65722d616464726573730b0000007061636b65642d726b657906000000686f73742d610d00000031302e302e302e35"
    "3a3734303000000000007f000000000040000000000000001000000000000c000000000000000400000061636d65",
    "11100f0e0d0c0b0a06000000686f73742d610200000008070605040302011817161514131211000001000000000028272625"
    "2423222138373635343332310000020000000000",
    "040000000001000000022000000000000001000100000000000102000000000000000001000000000004000000000000004d"
    "0000000000000088130000010203050009000000706f6f6c2066756c6c4200000000000000",
    "030000000100000000000000020000000000000008070605040302012a00000000000000",
    "0200000000000000000006000b00000074617267657420646f776e",
    "11100f0e0d0c0b0a00020000000807060504030201181716151413121128272625242322213837363534333231",
    "5800000000000000020000000100000002200000000000000100010000000000010200000000000000000100000000000400"
    "0000000000000200000002200000000000000200010000000000020200000000000000000100000000000500000000000000"
    "2b00000000000000",
    "58000000000000002b00000000000000",
    "11100f0e0d0c0b0a020000000807060504030201181716151413121128272625242322213837363534333231",
    "11100f0e0d0c0b0afa000000020000000807060504030201181716151413121128272625242322213837363534333231",
    "03000000010001",
    "0700000001100000000000000200000000010000000000000002000000000000000001000000000003000000000000000003"
    "0000000000000004000000000000001000000000000004000000000000002c00000000000000",
    "0700000001100000000000002d00000000000000",
    "0101000000000000020200000000000003030000000000000404000000000000050500000000000006060000000000000707"
    "000000000000080800000000000009090000000000000a0a0000000000000b0b0000000000000c0c0000000000000d0d0000"
    "000000000e0e0000000000000f0f000000000000854dcd0d65feffff01050000009900000000000000",
    "0200000011100f0e0d0c0b0a1a0000006d6574612d6c6c616d612f4d6574612d4c6c616d612d332d38420400000062663136"
    "200000000800000080000000100000000a000000766c6c6d2d70616765640100000002000000000020000000000000002000"
    "000000000700000000000000090000000000000000002001000000006400000000000000000000400000000012100f0e0d0c"
    "0b0a1a0000006d6574612d6c6c616d612f4d6574612d4c6c616d612d332d3842040000006266313620000000080000008000"
    "0000100000000a000000766c6c6d2d7061676564010000000200000000002000000000000000200000000000070000000000"
    "00000900000000000000000020010000000064000000000000000000004000000000",
    "0011100f0e0d0c0b0a",
    "0200000011100f0e0d0c0b0a030000000400000000000000050000000000000012100f0e0d0c0b0a06000000070000000000"
    "00000800000000000000",
    "11100f0e0d0c0b0a0160ea000000000000",
    "0100000000000000020000000000000003000000000000000400000000000000",
    "0200000001000000033000000000000006000000686f73742d620d00000031302e302e302e363a3734303001fa0000000000"
    "0000000000400000000000000020000000000000100000000000000008000000000000100000000000001100000000000000"
    "0000001000000000010101f4ffffffffffffff040000006265746102000000033000000000000006000000686f73742d620d"
    "00000031302e302e302e363a3734303001fa0000000000000000000040000000000000002000000000000010000000000000"
    "00080000000000001000000000000011000000000000000000001000000000010101f4ffffffffffffff0400000062657461",
    "070000000110000000",
    "0101010000000000000002000000000000000300000000000000040000000000000005000000000000000600000000000000"
    "0500070000006e6f20726f6f6d",
    "070000000110000000000000020000000200000004400000000000000a0000007563782d7461726765740b00000074617267"
    "65742d726b657906000000686f73742d6300000000007e000000000080000000000300000004400000000000000a00000075"
    "63782d7461726765740b0000007461726765742d726b657906000000686f73742d6300000000007e00000000008000000000"
    "02000000010000000000000011100f0e0d0c0b0a080706050403020118171615141312110700000002200000000000000700"
    "010000000000070200000000000000000100000000000a000000000000000200000002200000000000000200010000000000"
    "020200000000000000000100000000000500000000000000020000000000000011100f0e0d0c0b0a28272625242322213837"
    "3635343332310700000002200000000000000700010000000000070200000000000000000100000000000a00000000000000"
    "03000000022000000000000003000100000000000302000000000000000001000000000006000000000000002e0000000000"
    "0000",
    "070000000110000000000000020000000100000000000000000000000000020000000000000006000b000000746172676574"
    "20646f776e",
};

TEST_CASE("every message encodes to its captured bytes", "[rpc][messages][golden]") {
  const auto all = cases();
  REQUIRE(std::size(kGolden) == all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    INFO(all[i].name);
    CHECK(hex(all[i].encoded) == kGolden[i]);
    CHECK(all[i].round_trip(all[i].encoded) == all[i].encoded);
  }
}

std::uint32_t u32_at(std::string_view p, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(p[at + i]);
  return v;
}
void set_u32(std::string& p, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[at + i] = static_cast<char>(v >> (8 * i));
}

bool refused_naming(const Status& s, const std::string& name) {
  return s.code() == StatusCode::kInvalidArgument && s.message().rfind(name + ": ", 0) == 0;
}

TEST_CASE("every message refuses truncations and trailing bytes, naming itself", "[rpc][messages][golden]") {
  for (const Case& c : cases()) {
    INFO(c.name);
    REQUIRE(c.decode(c.encoded).ok());
    for (std::size_t n = 0; n < c.encoded.size(); ++n) {
      INFO("first " << n << " bytes");
      CHECK(refused_naming(c.decode(std::string_view(c.encoded).substr(0, n)), c.name));
    }
    CHECK(refused_naming(c.decode(c.encoded + '\0'), c.name));
  }
}

TEST_CASE("every list refuses element counts the payload cannot hold", "[rpc][messages][golden]") {
  for (const Case& c : cases()) {
    for (std::size_t at : c.count_at) {
      INFO(c.name << ", count at " << at);
      std::string p = c.encoded;
      REQUIRE(u32_at(p, at) >= 2);  // the offset names a list's count
      for (std::uint32_t n : {u32_at(p, at) + 1, kMaxBatch, kMaxBatch + 1, 0xffffffffu}) {
        set_u32(p, at, n);
        CHECK(refused_naming(c.decode(p), c.name));
      }
    }
  }
}

TEST_CASE("a batch over kMaxBatch is refused with the limit even when its bytes are there", "[rpc][messages]") {
  WaitForReply big;
  big.committed.assign(kMaxBatch + 1, true);
  WaitForReply out;
  Status s = decode(encode(big), out);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() == "wait for reply: a batch of 65537 items is over the limit of 65536: split it");
  big.committed.pop_back();
  CHECK(decode(encode(big), out).ok());
}

TEST_CASE("enums out of range: outcomes and drain modes refused, status codes read as kInternal", "[rpc][messages]") {
  std::string p = encode(allocate_reply());
  p[4] = 4;  // the first result's outcome
  AllocateReply reply;
  Status s = decode(p, reply);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() == "allocate reply: bad outcome");

  p = encode(DrainRequest{7, DrainMode::kStep, 16});
  p[4] = 2;
  DrainRequest drain;
  s = decode(p, drain);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() == "drain: unknown drain mode 2");

  p = encode(StatusWire{StatusCode::kNotFound, "x"});
  p[0] = 99;
  StatusWire status;
  REQUIRE(decode(p, status).ok());
  CHECK(status.code == StatusCode::kInternal);
  CHECK(status.message == "x");
}

TEST_CASE("strings over their limits are refused", "[rpc][messages]") {
  RegisterNamespaceRequest ns{descriptor()};
  ns.descriptor.dtype.assign(65, 'x');
  RegisterNamespaceRequest ns_out;
  CHECK(refused_naming(decode(encode(ns), ns_out), "register namespace"));
  ns.descriptor.dtype.assign(64, 'x');
  CHECK(decode(encode(ns), ns_out).ok());
  AllocateRequest alloc{kNs, std::string(4097, 'h'), {}};
  AllocateRequest alloc_out;
  CHECK(refused_naming(decode(encode(alloc), alloc_out), "allocate"));
}

// The handshake's payloads and MAC inputs (frame.h, auth.h).
std::vector<std::string> handshake_payloads() {
  const Hello hello{kProtocolVersion, Role::kAgent, "agent-7", "proof-bytes"};
  const HelloReply reply{Role::kCoordinator, "coord-1", "0.9.1", "server-proof"};
  const AuthChallenge challenge{kAuthHmacSha256, kAuthFlagTls, std::string(kAuthNonceBytes, 'n')};
  const std::string nonce(kAuthNonceBytes, 'c');
  const std::string mac(kAuthMacBytes, 'm');
  const std::string key(32, 'k');
  return {
      encode_hello(hello),
      encode_hello_reply(reply),
      encode_error(Status(StatusCode::kNotFound, "no such block")),
      encode_auth_challenge(challenge),
      encode_client_proof(ClientProof{kAuthHmacSha256, nonce, mac, {}}),
      encode_client_proof(ClientProof{kAuthHmacSha256Tenant, nonce, mac, "acme"}),
      client_mac(key, challenge, nonce, hello),
      client_mac(key, challenge, nonce, hello, "acme"),
      server_mac(key, challenge, nonce, hello, reply),
      server_mac(key, challenge, nonce, hello, reply, "acme"),
  };
}

// Captured as kGolden, in handshake_payloads() order.
const char* const kHandshakeGolden[] = {
    "030002070000006167656e742d370b00000070726f6f662d6279746573",
    "0307000000636f6f72642d3105000000302e392e310c0000007365727665722d70726f6f66",
    "02000d0000006e6f207375636820626c6f636b",
    "0101200000006e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e",
    "01200000006363636363636363636363636363636363636363636363636363636363636363200000006d6d6d6d6d6d6d6d6d"
    "6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d",
    "02200000006363636363636363636363636363636363636363636363636363636363636363200000006d6d6d6d6d6d6d6d6d"
    "6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d0400000061636d65",
    "24466227233ea7ffbc0c6f70054ce2d790ef784c6a071ff69bd76ae1a9529875",
    "e9a1a87b1b506b9715f132e6a564e645a41980d8c7b5d44f1a42f128330a3a7b",
    "44ef630b53f04d8e0336282dcb3d98db4a2ee9a5427534a3411bc199486df4f1",
    "48465aedc79ac481130b16552c87121112de4455d60ecb760450d80af543178e",
};

TEST_CASE("the hello, error and auth payloads encode to their captured bytes", "[rpc][golden]") {
  const auto got = handshake_payloads();
  REQUIRE(std::size(kHandshakeGolden) == got.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO(i);
    CHECK(hex(got[i]) == kHandshakeGolden[i]);
  }
}

}  // namespace
}  // namespace kvpool::rpc
