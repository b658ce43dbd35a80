// Fuzzes every payload decoder of the control protocol: each message of
// runtime/rpc/messages.h, the hello, hello reply and error payloads of
// runtime/rpc/frame.h, and the auth challenge and client proof of
// runtime/rpc/auth.h. The first input byte picks the decoder (inputs.h).
//
// Checks, beyond "no sanitizer report":
// - a refused payload is kInvalidArgument;
// - decoding into an object already filled (by a failed decode of a prefix
//   and by an earlier decode) gives what decoding into a fresh one gives;
// - round trip: decode -> encode -> decode succeeds and encodes the same,
//   and where the encoding is canonical the re-encoding is the input
//   itself. Equality is compared through encode(): every field on the wire
//   takes part, and a field that is not on the wire (an AllocateResult's
//   location when it was not placed) is no part of the message.
//   Status codes above kLastStatusCode are read as kInternal, so a message
//   carrying a kInternal status is not held to byte equality;
// - decode_error never returns ok, and returns exactly the code and message
//   a well-formed payload holds.

#include <cstdint>
#include <string>
#include <string_view>

#include "runtime/common/codec.h"
#include "runtime/common/tenants.h"
#include "runtime/rpc/auth.h"
#include "runtime/rpc/frame.h"
#include "runtime/rpc/messages.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/inputs.h"

namespace kvpool::fuzz {
namespace {

using namespace kvpool::rpc;

bool internal(const StatusWire& s) { return s.code == StatusCode::kInternal; }

// Whether re-encoding must give back the input bytes.
template <typename T>
bool canonical(const T&) {
  return true;
}
bool canonical(const StatusWire& m) { return !internal(m); }
bool canonical(const StatusBatch& m) {
  for (const auto& s : m.results)
    if (internal(s)) return false;
  return true;
}
bool canonical(const AllocateReply& m) {
  for (const auto& r : m.results)
    if (r.outcome == AllocateOutcome::kError && internal(r.error)) return false;
  return true;
}
// An unknown status code decodes as kInternal, so it does not round-trip.
bool canonical(const DrainReply& m) { return !internal(m.placement); }
bool canonical(const DrainCopiedRequest& m) {
  for (const auto& r : m.results)
    if (internal(r.status)) return false;
  return true;
}

template <typename T>
void check_message(std::string_view p) {
  T fresh;
  Status s = decode(p, fresh);

  T reused;
  (void)decode(p.substr(0, p.size() / 2), reused);  // leaves whatever a failed decode leaves
  Status s2 = decode(p, reused);
  KVPOOL_FUZZ_CHECK(s.ok() == s2.ok());
  if (!s.ok()) {
    KVPOOL_FUZZ_CHECK(s.code() == StatusCode::kInvalidArgument);
    KVPOOL_FUZZ_CHECK(s2.code() == StatusCode::kInvalidArgument);
    return;
  }
  const std::string q = encode(fresh);
  KVPOOL_FUZZ_CHECK(encode(reused) == q);
  KVPOOL_FUZZ_CHECK(decode(p, reused).ok());  // decoding over itself
  KVPOOL_FUZZ_CHECK(encode(reused) == q);
  if (canonical(fresh)) KVPOOL_FUZZ_CHECK(q == p);

  T back;
  KVPOOL_FUZZ_CHECK(decode(q, back).ok());
  KVPOOL_FUZZ_CHECK(encode(back) == q);
}

void check_hello(std::string_view p) {
  auto h = decode_hello(p);
  if (!h) {
    KVPOOL_FUZZ_CHECK(h.error().code() == StatusCode::kInvalidArgument);
    return;
  }
  KVPOOL_FUZZ_CHECK(h->id.size() <= kMaxIdBytes);
  KVPOOL_FUZZ_CHECK(role_name(h->role) != "unknown");
  const std::string q = encode_hello(*h);
  KVPOOL_FUZZ_CHECK(q == p);
  auto back = decode_hello(q);
  KVPOOL_FUZZ_CHECK(back.has_value() && encode_hello(*back) == q);
}

void check_hello_reply(std::string_view p) {
  auto h = decode_hello_reply(p);
  if (!h) {
    KVPOOL_FUZZ_CHECK(h.error().code() == StatusCode::kInvalidArgument);
    return;
  }
  KVPOOL_FUZZ_CHECK(h->server_id.size() <= kMaxIdBytes);
  KVPOOL_FUZZ_CHECK(h->server_version.size() <= kMaxIdBytes);
  KVPOOL_FUZZ_CHECK(h->auth.size() <= kMaxIdBytes);
  KVPOOL_FUZZ_CHECK(role_name(h->role) != "unknown");
  const std::string q = encode_hello_reply(*h);
  KVPOOL_FUZZ_CHECK(q == p);
  auto back = decode_hello_reply(q);
  KVPOOL_FUZZ_CHECK(back.has_value() && encode_hello_reply(*back) == q);
}

void check_auth_challenge(std::string_view p) {
  auto c = decode_auth_challenge(p);
  if (!c) {
    KVPOOL_FUZZ_CHECK(c.error().code() == StatusCode::kInvalidArgument);
    return;
  }
  KVPOOL_FUZZ_CHECK(c->scheme == kAuthHmacSha256);
  KVPOOL_FUZZ_CHECK(c->server_nonce.size() == kAuthNonceBytes);
  KVPOOL_FUZZ_CHECK(encode_auth_challenge(*c) == p);
}

void check_client_proof(std::string_view p) {
  auto c = decode_client_proof(p);
  if (!c) {
    KVPOOL_FUZZ_CHECK(c.error().code() == StatusCode::kInvalidArgument);
    return;
  }
  KVPOOL_FUZZ_CHECK(c->scheme == kAuthHmacSha256 || c->scheme == kAuthHmacSha256Tenant);
  KVPOOL_FUZZ_CHECK(c->scheme == kAuthHmacSha256Tenant ? valid_tenant_name(c->tenant) : c->tenant.empty());
  KVPOOL_FUZZ_CHECK(c->client_nonce.size() == kAuthNonceBytes);
  KVPOOL_FUZZ_CHECK(c->mac.size() == kAuthMacBytes);
  KVPOOL_FUZZ_CHECK(encode_client_proof(*c) == p);
}

void check_error(std::string_view p) {
  Status st = decode_error(p);
  KVPOOL_FUZZ_CHECK(!st.ok());
  KVPOOL_FUZZ_CHECK(st.code() >= StatusCode::kInvalidArgument && st.code() <= kLastStatusCode);
  // Parse it independently: a well-formed payload with a known code comes
  // back exactly, and re-encodes to itself.
  Reader r(p);
  const std::uint16_t code = r.u16();
  const std::string message = r.bytes(1 << 20);
  if (r.done() && code >= 1 && code <= static_cast<std::uint16_t>(kLastStatusCode)) {
    KVPOOL_FUZZ_CHECK(static_cast<std::uint16_t>(st.code()) == code);
    KVPOOL_FUZZ_CHECK(st.message() == message);
    KVPOOL_FUZZ_CHECK(encode_error(st) == p);
  } else {
    KVPOOL_FUZZ_CHECK(st.code() == StatusCode::kInternal);
  }
  Status back = decode_error(encode_error(st));
  KVPOOL_FUZZ_CHECK(back.code() == st.code() && back.message() == st.message());
}

}  // namespace
}  // namespace kvpool::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvpool::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvpool::fuzz;
  using namespace kvpool::rpc;
  if (size < 1) return 0;
  // Exactly the fuzzer's bytes, so ASan sees any read past the end.
  const std::string_view p = as_chars(data + 1, size - 1);
  switch (static_cast<MessageKind>(data[0] % kMessageKinds)) {
    case kMsgStatusWire:
      check_message<StatusWire>(p);
      break;
    case kMsgRegisterNamespaceRequest:
      check_message<RegisterNamespaceRequest>(p);
      break;
    case kMsgRegisterNamespaceReply:
      check_message<RegisterNamespaceReply>(p);
      break;
    case kMsgRegisterAgentRequest:
      check_message<RegisterAgentRequest>(p);
      break;
    case kMsgRegisterAgentReply:
      check_message<RegisterAgentReply>(p);
      break;
    case kMsgHeartbeatRequest:
      check_message<HeartbeatRequest>(p);
      break;
    case kMsgListAgentsReply:
      check_message<ListAgentsReply>(p);
      break;
    case kMsgAllocateRequest:
      check_message<AllocateRequest>(p);
      break;
    case kMsgAllocateReply:
      check_message<AllocateReply>(p);
      break;
    case kMsgLeaseBatch:
      check_message<LeaseBatch>(p);
      break;
    case kMsgStatusBatch:
      check_message<StatusBatch>(p);
      break;
    case kMsgLookupRequest:
      check_message<LookupRequest>(p);
      break;
    case kMsgLookupReply:
      check_message<LookupReply>(p);
      break;
    case kMsgReleaseRequest:
      check_message<ReleaseRequest>(p);
      break;
    case kMsgKeysRequest:
      check_message<KeysRequest>(p);
      break;
    case kMsgWaitForRequest:
      check_message<WaitForRequest>(p);
      break;
    case kMsgWaitForReply:
      check_message<WaitForReply>(p);
      break;
    case kMsgInvalidateMessage:
      check_message<InvalidateMessage>(p);
      break;
    case kMsgAgentDownMessage:
      check_message<AgentDownMessage>(p);
      break;
    case kMsgStatsReply:
      check_message<StatsReply>(p);
      break;
    case kMsgHello:
      check_hello(p);
      break;
    case kMsgHelloReply:
      check_hello_reply(p);
      break;
    case kMsgError:
      check_error(p);
      break;
    case kMsgAuthChallenge:
      check_auth_challenge(p);
      break;
    case kMsgClientProof:
      check_client_proof(p);
      break;
    case kMsgListNamespacesReply:
      check_message<ListNamespacesReply>(p);
      break;
    case kMsgUsageRequest:
      check_message<UsageRequest>(p);
      break;
    case kMsgUsageReply:
      check_message<UsageReply>(p);
      break;
    case kMsgEvictNamespaceRequest:
      check_message<EvictNamespaceRequest>(p);
      break;
    case kMsgEvictNamespaceReply:
      check_message<EvictNamespaceReply>(p);
      break;
    case kMsgAgentStatsReply:
      check_message<AgentStatsReply>(p);
      break;
    case kMsgRecoverBlocksRequest:
      check_message<RecoverBlocksRequest>(p);
      break;
    case kMsgRecoverBlocksReply:
      check_message<RecoverBlocksReply>(p);
      break;
    case kMsgSetQuotaRequest:
      check_message<SetQuotaRequest>(p);
      break;
    case kMsgDrainRequest:
      check_message<DrainRequest>(p);
      break;
    case kMsgDrainReply:
      check_message<DrainReply>(p);
      break;
    case kMsgDrainCopyMessage:
      check_message<DrainCopyMessage>(p);
      break;
    case kMsgDrainCopiedRequest:
      check_message<DrainCopiedRequest>(p);
      break;
    case kMessageKinds:
      break;
  }
  return 0;
}
