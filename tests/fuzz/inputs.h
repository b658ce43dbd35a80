#pragma once
// How each fuzz target reads its input, shared with gen_corpus.cc so the
// seeds it writes mean what the targets expect. Changing a layout here
// means regenerating tests/fuzz/corpus (README.md).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "pool/slot_header.h"
#include "runtime/rpc/frame.h"
#include "tests/fuzz/fuzz_util.h"

namespace kvpool::fuzz {

// ---- fuzz_frame ----------------------------------------------------------
// byte 0: bits 0-2 pick max_frame from kFrameLimits; bit 3 (kFramePad): a
//         frame whose payload runs past the input is padded with zeros, so
//         a few bytes can describe a frame larger than FrameReader's initial
//         buffer (bounded by kFramePadLimit in all).
// byte 1: seed of the read sizes fed to FrameReader; 0 = whatever buffer()
//         offers.
// rest:   the byte stream.
inline constexpr std::array<std::size_t, 8> kFrameLimits = {0,    1,         24,     200,
                                                            4096, 64 * 1024, 100000, rpc::kDefaultMaxFrame};
inline constexpr std::uint8_t kFramePad = 1u << 3;
inline constexpr std::size_t kFramePadLimit = 256 * 1024;

// ---- fuzz_messages -------------------------------------------------------
// byte 0 % kMessageKinds picks the decoder; the rest is its payload.
enum MessageKind : std::uint8_t {
  kMsgStatusWire,
  kMsgRegisterNamespaceRequest,
  kMsgRegisterNamespaceReply,
  kMsgRegisterAgentRequest,
  kMsgRegisterAgentReply,
  kMsgHeartbeatRequest,
  kMsgListAgentsReply,
  kMsgAllocateRequest,
  kMsgAllocateReply,
  kMsgLeaseBatch,
  kMsgStatusBatch,
  kMsgLookupRequest,
  kMsgLookupReply,
  kMsgReleaseRequest,
  kMsgKeysRequest,
  kMsgWaitForRequest,
  kMsgWaitForReply,
  kMsgInvalidateMessage,
  kMsgAgentDownMessage,
  kMsgStatsReply,
  kMsgHello,          // frame.h: decode_hello
  kMsgHelloReply,     // frame.h: decode_hello_reply
  kMsgError,          // frame.h: decode_error
  kMsgAuthChallenge,  // auth.h: decode_auth_challenge
  kMsgClientProof,    // auth.h: decode_client_proof
  // Operator messages (pooltool), appended so earlier seeds keep their kind.
  kMsgListNamespacesReply,
  kMsgUsageRequest,
  kMsgUsageReply,
  kMsgEvictNamespaceRequest,
  kMsgEvictNamespaceReply,
  kMsgAgentStatsReply,
  // Coordinator restart (agent rejoin) and namespace quotas.
  kMsgRecoverBlocksRequest,
  kMsgRecoverBlocksReply,
  kMsgSetQuotaRequest,
  // Drain (pooltool drain).
  kMsgDrainRequest,
  kMsgDrainReply,
  kMsgDrainCopyMessage,
  kMsgDrainCopiedRequest,
  kMessageKinds,
};

// ---- fuzz_transport ------------------------------------------------------
// byte 0 even: owner read request (transport/internal.h); odd: rendezvous
// region info (transport/rendezvous.h). The rest is the message.
inline constexpr std::uint8_t kTransportReadRequest = 0;
inline constexpr std::uint8_t kTransportRegionInfo = 1;

// ---- fuzz_slot_header ----------------------------------------------------
// byte 0: bits 0-1: extra granules k, the region holds 2 + k granules plus a
//         tail, so its payload area has 1 + k granules (the header table
//         takes the first); bit 2 (kSlotFixPayload): store the right payload
//         checksum in each header whose length fits; bit 3 (kSlotFixHeader):
//         store the right header checksum; bit 4 (kSlotForceMagic): give
//         each header whose first byte is nonzero the magic, version 1 and
//         flags 0. The fix-ups let the fuzzer reach past the checksums,
//         which it could never guess.
// byte 1: the unused tail is byte1 * 251 bytes (< one granule).
// then:   the headers of the payload granules, 64 bytes each, copied to the
//         header table; then payload bytes from the start of the payload
//         area. The rest of the region is zero.
inline constexpr std::uint8_t kSlotFixPayload = 1u << 2;
inline constexpr std::uint8_t kSlotFixHeader = 1u << 3;
inline constexpr std::uint8_t kSlotForceMagic = 1u << 4;

struct SlotRegion {
  std::vector<std::byte> bytes;  // exactly layout.region_bytes long
  pool::RegionLayout layout;
};

// Builds the region an input describes, fix-ups applied. Needs size >= 2.
inline SlotRegion build_slot_region(const std::uint8_t* data, std::size_t size) {
  const std::uint8_t mode = data[0];
  const std::uint64_t region_bytes = (2 + (mode & 3u)) * pool::kGranule + std::uint64_t{data[1]} * 251;
  auto layout = pool::RegionLayout::create(region_bytes);
  KVPOOL_FUZZ_CHECK(layout.has_value());
  SlotRegion r{std::vector<std::byte>(region_bytes), *layout};
  const std::uint8_t* in = data + 2;
  std::size_t left = size - 2;
  const std::size_t header_bytes = layout->num_granules * pool::kSlotHeaderBytes;
  std::size_t n = std::min(left, header_bytes);
  std::copy_n(reinterpret_cast<const std::byte*>(in), n, r.bytes.begin());
  in += n;
  left -= n;
  n = std::min<std::size_t>(left, layout->payload_bytes);
  std::copy_n(reinterpret_cast<const std::byte*>(in), n, r.bytes.begin() + layout->payload_base);

  for (std::uint64_t i = 0; i < layout->num_granules; ++i) {
    auto* h = reinterpret_cast<unsigned char*>(r.bytes.data() + i * pool::kSlotHeaderBytes);
    if ((mode & kSlotForceMagic) && h[0] != 0) {
      store_le(h + 0, pool::kSlotMagic, 4);
      store_le(h + 4, pool::kSlotFormatVersion, 2);
      store_le(h + 6, 1, 2);  // one slice: no table to fix up
    }
    if (mode & kSlotFixPayload) {
      const std::uint64_t length = load_le(h + 32, 8);
      const std::uint64_t granules = length / pool::kGranule + (length % pool::kGranule != 0);
      if (length > 0 && granules <= layout->num_granules - i) {
        auto payload =
            std::span<const std::byte>(r.bytes).subspan(layout->payload_region_offset(i * pool::kGranule), length);
        store_le(h + 48, pool::payload_checksum(payload), 8);
      }
    }
    if (mode & kSlotFixHeader) {
      store_le(h + 56, pool::payload_checksum(std::span<const std::byte>(r.bytes).subspan(i * 64, 56)), 8);
    }
  }
  return r;
}

}  // namespace kvpool::fuzz
