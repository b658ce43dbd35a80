// Writes the seed corpora of the fuzz targets: small valid encodings made by
// the real encoders, plus a few malformed ones. Run by hand after a wire
// format or an input layout (inputs.h) changes:
//
//   build-fuzz/bin/fuzz_gen_corpus tests/fuzz/corpus
//
// It replaces the files of each target's folder under the given root, and
// its output is deterministic, so git shows what changed.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "pool/slot_header.h"
#include "runtime/rpc/auth.h"
#include "runtime/rpc/frame.h"
#include "runtime/rpc/messages.h"
#include "tests/fuzz/inputs.h"
#include "transport/internal.h"
#include "transport/rendezvous.h"

namespace fs = std::filesystem;
using namespace kvpool;
using namespace kvpool::fuzz;

namespace {

class Corpus {
 public:
  Corpus(const fs::path& root, const std::string& target) : dir_(root / target) {
    fs::create_directories(dir_);
    for (const auto& e : fs::directory_iterator(dir_)) fs::remove(e.path());
  }
  void add(const std::string& name, std::string_view bytes) {
    std::ofstream f(dir_ / name, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", (dir_ / name).c_str());
      std::exit(1);
    }
    ++count_;
  }
  ~Corpus() { std::printf("%s: %d seeds\n", dir_.c_str(), count_); }

 private:
  fs::path dir_;
  int count_ = 0;
};

std::string with_prefix(std::uint8_t b0, std::string_view rest) {
  return std::string(1, static_cast<char>(b0)) + std::string(rest);
}
std::string with_prefix(std::uint8_t b0, std::uint8_t b1, std::string_view rest) {
  return std::string{static_cast<char>(b0), static_cast<char>(b1)} + std::string(rest);
}

// Index of a max_frame value in kFrameLimits.
std::uint8_t limit_index(std::size_t max_frame) {
  for (std::size_t i = 0; i < kFrameLimits.size(); ++i)
    if (kFrameLimits[i] == max_frame) return static_cast<std::uint8_t>(i);
  std::abort();
}

std::string frame(std::uint16_t type, std::uint64_t id, std::uint32_t flags, std::string_view payload,
                  std::size_t max_frame = rpc::kDefaultMaxFrame) {
  rpc::FrameHeader h;
  h.type = type;
  h.request_id = id;
  h.payload_size = static_cast<std::uint32_t>(payload.size());
  h.flags = flags;
  auto bytes = rpc::encode_header(h, max_frame);
  if (!bytes) std::abort();
  return std::string(bytes->data(), bytes->size()) + std::string(payload);
}

Key128 key(std::uint64_t i) { return Key128{0x1111111100000000ull + i, 0x2222222200000000ull + i}; }

rpc::AgentRecord agent_record(std::uint32_t n) {
  rpc::AgentRecord a;
  a.agent = n;
  a.incarnation = 1000 + n;
  a.worker_address = std::string(24, static_cast<char>('a' + n));
  a.packed_rkey = std::string("\x01\x02\x03\x04\x05\x06", 6);
  a.host_id = "host-" + std::to_string(n);
  a.control_address = "198.18.0." + std::to_string(n) + ":7000";
  a.region_base = 0x7f0000000000ull;
  a.region_bytes = 1ull << 30;
  a.alive = n % 2 == 0;
  a.used_bytes = 65536 * n;
  a.blocks = n;
  if (n == 3) a.tenant = "acme";  // an isolated tenant's region
  return a;
}

void frames(const fs::path& root) {
  Corpus c(root, "fuzz_frame");
  const std::uint8_t def = limit_index(rpc::kDefaultMaxFrame);
  rpc::Hello hello{rpc::kProtocolVersion, rpc::Role::kWorker, "worker-1", ""};
  rpc::HelloReply hello_reply{rpc::Role::kCoordinator, "coordinator", "0.1.0", std::string(32, 'm')};
  const std::string hello_frame = frame(rpc::kHello, 1, 0, rpc::encode_hello(hello));
  c.add("hello", with_prefix(def, 0, hello_frame));
  c.add("auth_challenge",
        with_prefix(def, 0,
                    frame(rpc::kAuthChallenge, 0, 0,
                          rpc::encode_auth_challenge(rpc::AuthChallenge{rpc::kAuthHmacSha256, 0, std::string(32, 's')}))));
  c.add("hello_reply",
        with_prefix(def, 3, frame(rpc::kHello, 1, rpc::kFlagReply, rpc::encode_hello_reply(hello_reply))));
  c.add("error_reply", with_prefix(def, 1,
                                   frame(rpc::kLookup, 9, rpc::kFlagReply | rpc::kFlagError,
                                         rpc::encode_error(Status(StatusCode::kNotFound, "no such key")))));
  rpc::AllocateRequest alloc{7, "host-a", {{key(1), 65536}, {key(2), 131072}}};
  rpc::LookupRequest lookup{7, true, {key(1), key(2)}};
  rpc::LeaseBatch commit{{11, 12}};
  std::string pipelined = hello_frame + frame(rpc::kAllocate, 2, 0, rpc::encode(alloc)) +
                          frame(rpc::kLookup, 3, 0, rpc::encode(lookup)) +
                          frame(rpc::kCommit, 4, 0, rpc::encode(commit));
  c.add("pipelined_4", with_prefix(def, 0, pipelined));
  c.add("pipelined_4_small_reads", with_prefix(def, 2, pipelined));
  c.add("empty_payload_push", with_prefix(def, 5, frame(rpc::kPushAgentDown, 0, 0, "")));
  c.add("max_frame_200",
        with_prefix(limit_index(200), 7, frame(rpc::kStats, 5, rpc::kFlagReply, std::string(200, 'x'), 200)));
  // A 100000-byte frame from a 24-byte header: padded (kFramePad) past
  // FrameReader's 64 KiB initial buffer.
  std::string big = frame(rpc::kStats, 6, 0, std::string(100000, '\0'), 100000);
  c.add("large_padded", with_prefix(limit_index(100000) | kFramePad, 0, big.substr(0, rpc::kHeaderSize)));
  c.add("large_padded_partial",
        with_prefix(limit_index(kFrameLimits[7]) | kFramePad, 200, big.substr(0, rpc::kHeaderSize + 10)));
  // Malformed.
  std::string bad_magic = hello_frame;
  bad_magic[0] = 'X';
  c.add("bad_magic", with_prefix(def, 0, bad_magic));
  std::string bad_version = hello_frame;
  bad_version[4] = static_cast<char>(rpc::kProtocolVersion + 1);
  c.add("bad_version", with_prefix(def, 0, bad_version));
  std::string bad_flags = hello_frame;
  bad_flags[20] = 4;
  c.add("bad_flags", with_prefix(def, 0, hello_frame + bad_flags));
  c.add("over_max_frame", with_prefix(limit_index(24), 1, frame(rpc::kStats, 5, 0, std::string(25, 'y'))));
  c.add("truncated_header", with_prefix(def, 0, hello_frame.substr(0, 13)));
  c.add("truncated_payload", with_prefix(def, 0, hello_frame + hello_frame.substr(0, hello_frame.size() - 3)));
  c.add("garbage_after_frame", with_prefix(def, 0, hello_frame + "GET / HTTP/1.1\r\n\r\n........"));
}

template <typename T>
void add_message(Corpus& c, MessageKind kind, const std::string& name, const T& m) {
  c.add(name, with_prefix(kind, rpc::encode(m)));
}

void messages(const fs::path& root) {
  using namespace kvpool::rpc;
  Corpus c(root, "fuzz_messages");
  add_message(c, kMsgStatusWire, "status_ok", StatusWire{});
  add_message(c, kMsgStatusWire, "status_not_found", StatusWire{StatusCode::kNotFound, "no such key"});
  NamespaceDescriptor d{"meta-llama/Meta-Llama-3-8B", "bf16", 32, 8, 128, 16, "vllm-paged", 0, 1, 0};
  add_message(c, kMsgRegisterNamespaceRequest, "register_namespace", RegisterNamespaceRequest{d});
  add_message(c, kMsgRegisterNamespaceReply, "register_namespace_reply", RegisterNamespaceReply{0xabcdef, 2 << 20});
  add_message(c, kMsgRegisterAgentRequest, "register_agent", RegisterAgentRequest{agent_record(0)});
  add_message(c, kMsgRegisterAgentReply, "register_agent_reply", RegisterAgentReply{3, 1000, false, 42});
  add_message(c, kMsgHeartbeatRequest, "heartbeat", HeartbeatRequest{3, 1003});
  add_message(c, kMsgListAgentsReply, "list_agents_0", ListAgentsReply{5, {}});
  add_message(c, kMsgListAgentsReply, "list_agents_3",
              ListAgentsReply{5, {agent_record(1), agent_record(2), agent_record(3)}});
  add_message(c, kMsgAllocateRequest, "allocate_2", AllocateRequest{7, "host-a", {{key(1), 65536}, {key(2), 1 << 20}}});
  AllocateReply alloc_reply;
  alloc_reply.results.resize(4);
  alloc_reply.results[0].outcome = AllocateOutcome::kPlaced;
  alloc_reply.results[0].location = LocationWire{1, 1001, 0, 0, 65536, 1};
  alloc_reply.results[0].lease = 77;
  alloc_reply.results[0].lease_ms = 5000;
  alloc_reply.results[1].outcome = AllocateOutcome::kExists;
  alloc_reply.results[2].outcome = AllocateOutcome::kPending;
  alloc_reply.results[3].outcome = AllocateOutcome::kError;
  alloc_reply.results[3].error = StatusWire{StatusCode::kResourceExhausted, "pool full"};
  add_message(c, kMsgAllocateReply, "allocate_reply_4", alloc_reply);
  add_message(c, kMsgLeaseBatch, "lease_batch_3", LeaseBatch{{1, 2, 3}});
  add_message(c, kMsgStatusBatch, "status_batch_2",
              StatusBatch{{StatusWire{}, StatusWire{StatusCode::kFailedPrecondition, "lease expired"}}});
  add_message(c, kMsgLookupRequest, "lookup_3", LookupRequest{7, true, {key(1), key(2), key(3)}});
  add_message(c, kMsgLookupReply, "lookup_reply_2",
              LookupReply{88, {LocationWire{1, 1001, 0, 0, 65536, 1}, LocationWire{2, 1002, 65536, 64, 70000, 2}}});
  add_message(c, kMsgReleaseRequest, "release", ReleaseRequest{88});
  add_message(c, kMsgKeysRequest, "remove_2", KeysRequest{7, {key(4), key(5)}});
  add_message(c, kMsgWaitForRequest, "wait_for_1", WaitForRequest{7, 250, {key(6)}});
  add_message(c, kMsgWaitForReply, "wait_for_reply_3", WaitForReply{{true, false, true}});
  add_message(c, kMsgInvalidateMessage, "invalidate_2",
              InvalidateMessage{1, 1001, {SlotWire{0, 0, 65536, 1}, SlotWire{64, 65536, 100, 2}}});
  add_message(c, kMsgAgentDownMessage, "agent_down", AgentDownMessage{2, 1002, 9});
  StatsReply stats;
  stats.agents_alive = 3;
  stats.capacity_bytes = 3ull << 30;
  stats.used_bytes = 1 << 20;
  stats.blocks = 16;
  stats.leader = true;
  stats.shard = 2;
  stats.epoch = 42;
  add_message(c, kMsgStatsReply, "stats", stats);
  add_message(c, kMsgListNamespacesReply, "list_namespaces_2",
              ListNamespacesReply{{NamespaceRecord{0xabcdef, d, 2 << 20, 16},
                                   NamespaceRecord{0x1234, NamespaceDescriptor{"m", "fp8", 1, 1, 1, 16, "x", 1, 2, 65536},
                                                   65536, 0}}});
  add_message(c, kMsgUsageRequest, "usage_all", UsageRequest{true, 0});
  add_message(c, kMsgUsageRequest, "usage_one", UsageRequest{false, 0xabcdef});
  add_message(c, kMsgUsageReply, "usage_reply_2", UsageReply{{UsageRow{0xabcdef, 1, 3, 3 << 20}, UsageRow{7, 2, 1, 65536}}});
  add_message(c, kMsgEvictNamespaceRequest, "evict_dry_run", EvictNamespaceRequest{0xabcdef, true});
  add_message(c, kMsgEvictNamespaceRequest, "evict_older_than", EvictNamespaceRequest{0xabcdef, false, 3600000});
  add_message(c, kMsgEvictNamespaceReply, "evict_reply", EvictNamespaceReply{16, 32 << 20, 15, 1});
  AgentStatsRecord agent_stats{2, 1002, "host-2", "198.18.0.2:7000", true, 250, 1ull << 30, (1ull << 30) - (1 << 20),
                               1 << 20, 1 << 20, 0, 4, (1ull << 30) - (2 << 20)};
  add_message(c, kMsgAgentStatsReply, "agent_stats_1", AgentStatsReply{{agent_stats}});
  add_message(c, kMsgRegisterAgentRequest, "rejoin_agent", RegisterAgentRequest{agent_record(1), true});
  add_message(c, kMsgRegisterAgentReply, "rejoin_agent_reply", RegisterAgentReply{3, 1000, true});
  add_message(c, kMsgRegisterAgentReply, "register_agent_reply_isolated",
              RegisterAgentReply{3, 1000, false, 0, {{"acme", 64ull << 20}, {"beta", 1ull << 30}}});
  add_message(c, kMsgRecoverBlocksRequest, "recover_blocks_2",
              RecoverBlocksRequest{3, 1003, true,
                                   {RecoveredBlockWire{0xabcdef, key(1), 0, 65536, 11},
                                    RecoveredBlockWire{0xabcdef, key(2), 1 << 20, 2 << 20, 12}}});
  add_message(c, kMsgRecoverBlocksRequest, "recover_blocks_0", RecoverBlocksRequest{3, 1003, false, {}});
  add_message(c, kMsgRecoverBlocksReply, "recover_blocks_reply", RecoverBlocksReply{2, 1});
  add_message(c, kMsgSetQuotaRequest, "set_quota", SetQuotaRequest{0xabcdef, 10000, 0});
  add_message(c, kMsgDrainRequest, "drain_step", DrainRequest{2, DrainMode::kStep, 64});
  add_message(c, kMsgDrainRequest, "undrain", DrainRequest{2, DrainMode::kUndrain, 0});
  DrainReply drain_reply;
  drain_reply.draining = true;
  drain_reply.blocks_left = 30;
  drain_reply.in_flight = 8;
  drain_reply.moved = 12;
  drain_reply.unplaceable = 3;
  drain_reply.placement = StatusWire{kvpool::StatusCode::kResourceExhausted, "no room"};
  add_message(c, kMsgDrainReply, "drain_reply", drain_reply);
  add_message(c, kMsgDrainCopyMessage, "drain_copy_2",
              DrainCopyMessage{2, 1002,
                               {DrainTarget{3, 1003, "ucx-3", "rkey-3", "host-3", 0x7f0000000000ull, 64 << 20}},
                               {MoveWire{41, 0xabcdef, key(1), LocationWire{2, 1002, 65536, 0, 65536, 7},
                                         LocationWire{3, 1003, 131072, 64, 65536, 9}},
                                MoveWire{42, 0xabcdef, key(2), LocationWire{2, 1002, 131072, 64, 100, 8},
                                         LocationWire{3, 1003, 196608, 128, 100, 10}}}});
  add_message(c, kMsgDrainCopiedRequest, "drain_copied_2",
              DrainCopiedRequest{2, 1002,
                                 {MoveResultWire{41, StatusWire{}},
                                  MoveResultWire{42, StatusWire{kvpool::StatusCode::kUnavailable, "peer gone"}}}});
  // High availability: the leader's epoch on placements, commits and pushes.
  AllocateReply alloc_reply_epoch = alloc_reply;
  alloc_reply_epoch.epoch = 42;
  add_message(c, kMsgAllocateReply, "allocate_reply_epoch", alloc_reply_epoch);
  add_message(c, kMsgLeaseBatch, "lease_batch_epoch", LeaseBatch{{77, 78}, 42});
  add_message(c, kMsgLookupReply, "lookup_reply_epoch", LookupReply{88, {LocationWire{1, 1001, 0, 0, 65536, 1}}, 42});
  add_message(c, kMsgReleaseRequest, "release_epoch", ReleaseRequest{88, 42});
  add_message(c, kMsgInvalidateMessage, "invalidate_epoch",
              InvalidateMessage{1, 1001, {SlotWire{0, 0, 65536, 1}}, 42});
  add_message(c, kMsgDrainCopyMessage, "drain_copy_epoch", DrainCopyMessage{2, 1002, {}, {}, 42});
  std::string lease_batch_no_epoch = encode(LeaseBatch{{1, 2}, 9});
  lease_batch_no_epoch.resize(lease_batch_no_epoch.size() - 8);  // an old build's commit: refused as truncated
  c.add("lease_batch_truncated_epoch", with_prefix(kMsgLeaseBatch, lease_batch_no_epoch));
  std::string bad_drain = encode(DrainRequest{2, DrainMode::kStep, 64});
  bad_drain[4] = 7;  // no such mode
  c.add("bad_drain_mode", with_prefix(kMsgDrainRequest, bad_drain));
  std::string bad_usage = encode(UsageRequest{true, 0});
  bad_usage[0] = 2;
  c.add("bad_usage_bool", with_prefix(kMsgUsageRequest, bad_usage));
  std::string bad_ns_count = encode(ListNamespacesReply{});
  bad_ns_count[0] = bad_ns_count[1] = '\xff';
  c.add("bad_list_namespaces_count", with_prefix(kMsgListNamespacesReply, bad_ns_count));
  c.add("hello", with_prefix(kMsgHello, encode_hello(Hello{kProtocolVersion, Role::kAgent, "agent-7", ""})));
  c.add("hello_auth", with_prefix(kMsgHello, encode_hello(Hello{kProtocolVersion, Role::kTool, "pooltool", "nonce"})));
  c.add("hello_reply", with_prefix(kMsgHelloReply, encode_hello_reply(HelloReply{Role::kCoordinator, "coord", "0.1.0",
                                                                                 std::string(32, 'm')})));
  c.add("auth_challenge", with_prefix(kMsgAuthChallenge,
                                      encode_auth_challenge(AuthChallenge{kAuthHmacSha256, 0, std::string(32, 's')})));
  c.add("auth_challenge_tls", with_prefix(kMsgAuthChallenge, encode_auth_challenge(AuthChallenge{
                                                                 kAuthHmacSha256, kAuthFlagTls, std::string(32, 's')})));
  const ClientProof proof{kAuthHmacSha256, std::string(32, 'c'), std::string(32, 'm'), {}};
  c.add("client_proof", with_prefix(kMsgClientProof, encode_client_proof(proof)));
  c.add("hello_with_proof", with_prefix(kMsgHello, encode_hello(Hello{kProtocolVersion, Role::kWorker, "worker-1",
                                                                      encode_client_proof(proof)})));
  c.add("client_proof_tenant",
        with_prefix(kMsgClientProof, encode_client_proof(ClientProof{kAuthHmacSha256Tenant, std::string(32, 'c'),
                                                                     std::string(32, 'm'), "acme"})));
  c.add("bad_client_proof_short_mac",
        with_prefix(kMsgClientProof, encode_client_proof(ClientProof{kAuthHmacSha256, std::string(32, 'c'), "m", {}})));
  c.add("bad_auth_challenge_scheme",
        with_prefix(kMsgAuthChallenge, encode_auth_challenge(AuthChallenge{7, 0, std::string(32, 's')})));
  c.add("error", with_prefix(kMsgError, encode_error(Status(StatusCode::kDeadlineExceeded, "timed out"))));

  // Malformed.
  std::string lookup = encode(LookupRequest{7, true, {key(1), key(2)}});
  c.add("bad_lookup_truncated", with_prefix(kMsgLookupRequest, lookup.substr(0, lookup.size() - 1)));
  c.add("bad_lookup_trailing", with_prefix(kMsgLookupRequest, lookup + "z"));
  std::string bad_bool = lookup;
  bad_bool[8] = 2;
  c.add("bad_lookup_bool", with_prefix(kMsgLookupRequest, bad_bool));
  std::string huge_count = encode(LeaseBatch{{1}});
  huge_count[0] = huge_count[1] = huge_count[2] = huge_count[3] = '\xff';
  c.add("bad_lease_batch_count", with_prefix(kMsgLeaseBatch, huge_count));
  std::string bad_outcome = encode(alloc_reply);
  bad_outcome[4] = 9;
  c.add("bad_allocate_outcome", with_prefix(kMsgAllocateReply, bad_outcome));
  c.add("bad_status_code", with_prefix(kMsgStatusWire, std::string("\xff\x7f\x02\x00\x00\x00hi", 8)));
  c.add("bad_hello_role", with_prefix(kMsgHello, encode_hello(Hello{1, static_cast<Role>(9), "x", ""})));
  c.add("bad_hello_long_id", with_prefix(kMsgHello, encode_hello(Hello{1, Role::kWorker, std::string(257, 'i'), ""})));
  c.add("bad_error_code_0",
        with_prefix(kMsgError, encode_error(Status(StatusCode::kInternal, "m")).replace(0, 2, 2, '\0')));
  c.add("bad_error_truncated", with_prefix(kMsgError, std::string("\x02\x00\x10\x00\x00\x00short", 11)));
}

// Copies the header table of a built region back into a slot input.
std::string bake_slot(std::string input) {
  const auto* data = reinterpret_cast<const std::uint8_t*>(input.data());
  SlotRegion r = build_slot_region(data, input.size());
  const std::size_t n = std::min<std::size_t>(input.size() - 2, r.layout.num_granules * pool::kSlotHeaderBytes);
  input.replace(2, n, reinterpret_cast<const char*>(r.bytes.data()), n);
  input[0] = static_cast<char>(input[0] & ~(kSlotFixPayload | kSlotFixHeader | kSlotForceMagic));
  return input;
}

std::string slot_header(std::uint64_t ns, Key128 k, std::uint64_t length, std::uint64_t generation) {
  pool::SlotHeader h{ns, k, length, generation, 0};
  std::byte out[pool::kSlotHeaderBytes];
  pool::encode(h, std::span<std::byte, pool::kSlotHeaderBytes>(out));
  return std::string(reinterpret_cast<const char*>(out), sizeof(out));
}

void slot_headers(const fs::path& root) {
  Corpus c(root, "fuzz_slot_header");
  const std::string empty(64, '\0');
  const std::uint8_t fix = kSlotFixPayload | kSlotFixHeader;
  // k = 3: four payload granules.
  const std::string h1 = slot_header(7, key(1), 1000, 1);
  const std::string payload(1000, 'p');
  c.add("one_block", bake_slot(with_prefix(3 | fix, 0, h1 + empty + empty + empty + payload)));
  c.add("one_block_fixups", with_prefix(3 | fix, 0, h1 + empty + empty + empty + payload));
  // A two-granule block at 0 (payload beyond the input is zero), one at 2.
  const std::string h2 = slot_header(7, key(2), 70000, 3);
  const std::string h3 = slot_header(7, key(3), 5, 4);
  c.add("two_blocks", bake_slot(with_prefix(3 | fix, 9, h2 + empty + h3 + empty + std::string(64, 'q'))));
  c.add("whole_area", bake_slot(with_prefix(1 | fix, 1, slot_header(9, key(4), 2 * 65536, 1) + empty)));
  c.add("past_the_end", bake_slot(with_prefix(0 | fix, 0, slot_header(9, key(5), 65537, 1))));
  c.add("torn", with_prefix(1 | kSlotFixHeader, 0, h1 + empty + payload));
  std::string bad_checksum = h1;
  bad_checksum[40] ^= 1;  // the generation, after the checksum was taken
  c.add("bad_header_checksum", with_prefix(1, 0, bad_checksum + empty));
  std::string bad_version = h1;
  bad_version[4] = 2;
  c.add("bad_version", with_prefix(2 | kSlotFixHeader, 0, bad_version));
  std::string flags = h1;
  flags[6] = 1;
  c.add("bad_flags", bake_slot(with_prefix(2 | fix, 0, flags + empty + payload)));
  c.add("zero_length", bake_slot(with_prefix(2 | fix, 0, slot_header(7, key(6), 0, 1))));
  c.add("forced_magic", with_prefix(3 | fix | kSlotForceMagic, 7, std::string(64, '\x01') + std::string(64, '\x02')));
  c.add("empty_region", with_prefix(0, 0, ""));
  // The last 8 bytes feed RegionLayout::create: exactly two granules.
  c.add("layout_two_granules", with_prefix(0, 0, std::string("\x00\x00\x02\x00\x00\x00\x00\x00", 8)));
}

void transports(const fs::path& root) {
  using namespace kvpool::transport;
  Corpus c(root, "fuzz_transport");
  ReadRequest one{1, "reader-worker-address", false, {std::string("rkey-0")}, {{0x1000, 0x2000, 64, 0}}};
  ReadRequest many{0xfeedface, std::string(40, 'w'), true, {"r0", "r1", std::string("\x00\x01\x02", 3)}, {}};
  for (std::uint32_t i = 0; i < 5; ++i) many.ops.push_back({0x10000ull * i, 0x20000ull * i, 4096, i % 3});
  one.source_rkey = "owner-rkey";
  many.source_rkey = std::string("\x05\x00\x07", 3);
  const std::string wire = encode_read_request(one);
  c.add("read_one_op", with_prefix(kTransportReadRequest, wire));
  c.add("read_five_ops", with_prefix(kTransportReadRequest, encode_read_request(many)));
  ReadRequest none = one;
  none.ops.clear();
  c.add("read_no_ops", with_prefix(kTransportReadRequest, encode_read_request(none)));
  std::string bad_magic = wire;
  bad_magic[0] = 'x';
  c.add("bad_read_magic", with_prefix(kTransportReadRequest, bad_magic));
  ReadRequest bad_index = one;
  bad_index.ops[0].rkey = 1;
  c.add("bad_read_rkey_index", with_prefix(kTransportReadRequest, encode_read_request(bad_index)));
  ReadRequest no_rkeys = one;
  no_rkeys.rkeys.clear();
  no_rkeys.ops.clear();
  c.add("bad_read_no_rkeys", with_prefix(kTransportReadRequest, encode_read_request(no_rkeys)));
  ReadRequest nine = one;
  nine.rkeys.assign(9, "k");
  c.add("bad_read_nine_rkeys", with_prefix(kTransportReadRequest, encode_read_request(nine)));
  c.add("bad_read_truncated", with_prefix(kTransportReadRequest, wire.substr(0, wire.size() - 5)));
  ReadRequest stream = one;
  stream.stream = true;
  stream.rkeys.clear();
  stream.ops = {{0x1000, 0, 1 << 20, 0}, {0x200000, 0, 64, 0}};
  c.add("read_stream", with_prefix(kTransportReadRequest, encode_read_request(stream)));
  std::string flags = wire;
  flags[16 + one.reader_address.size()] = '\x06';  // unknown flag bits
  c.add("read_other_flags", with_prefix(kTransportReadRequest, flags));

  RegionInfo info{"worker-address-bytes", std::string("\x10\x20\x30", 3), 0x7f0000000000ull, 1ull << 30, "boot-id"};
  const std::string region = encode_region_info(info);
  c.add("region_info", with_prefix(kTransportRegionInfo, region));
  c.add("region_info_empty_fields", with_prefix(kTransportRegionInfo, encode_region_info(RegionInfo{})));
  c.add("bad_region_info_truncated", with_prefix(kTransportRegionInfo, region.substr(0, region.size() - 1)));
  c.add("bad_region_info_trailing", with_prefix(kTransportRegionInfo, region + "z"));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_ROOT (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  const fs::path root = argv[1];
  frames(root);
  messages(root);
  slot_headers(root);
  transports(root);
  return 0;
}
