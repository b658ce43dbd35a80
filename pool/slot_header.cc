#include "pool/slot_header.h"

#include <algorithm>
#include <emmintrin.h>

#include <cassert>
#include <cstring>
#include <string>

// The payload checksum goes through libxxhash's run-time dispatch
// (AVX-512, AVX2 or SSE2, whichever the CPU has): the inlined build is SSE2
// only, as the project compiles for baseline x86-64, and hashed at ~0.65 of
// the dispatched speed (19 against 30 GB/s on 64 KiB blocks in cache here).
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#include <xxh_x86dispatch.h>  // XXH3_64bits, XXH3_64bits_update: the dispatched ones

#include "runtime/common/logging.h"
#include "runtime/common/stream_copy.h"

namespace kvpool::pool {
namespace {

// Byte offsets of the header fields (documented in slot_header.h).
constexpr std::size_t kMagicAt = 0;
constexpr std::size_t kVersionAt = 4;
constexpr std::size_t kFlagsAt = 6;
constexpr std::size_t kNamespaceAt = 8;
constexpr std::size_t kKeyLoAt = 16;
constexpr std::size_t kKeyHiAt = 24;
constexpr std::size_t kLengthAt = 32;
constexpr std::size_t kGenerationAt = 40;
constexpr std::size_t kPayloadChecksumAt = 48;
constexpr std::size_t kHeaderChecksumAt = 56;
static_assert(kHeaderChecksumAt + 8 == kSlotHeaderBytes);

// Explicit little-endian stores and loads: the header is read by peers and
// future builds, so its byte order never depends on the host's.
template <typename T>
void store_le(std::byte* at, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) at[i] = static_cast<std::byte>(value >> (8 * i));
}

template <typename T>
T load_le(const std::byte* at) {
  T value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(std::to_integer<T>(at[i]) << (8 * i));
  return value;
}

std::uint64_t header_checksum(const std::byte* header) { return XXH3_64bits(header, kHeaderChecksumAt); }

std::uint64_t granules_for(std::uint64_t length) { return length / kGranule + (length % kGranule != 0); }

}  // namespace

Result<RegionLayout> RegionLayout::create(std::uint64_t region_bytes) {
  RegionLayout layout;
  layout.region_bytes = region_bytes;
  const std::uint64_t table_entries = region_bytes / kGranule;
  const std::uint64_t table_bytes = table_entries * kSlotHeaderBytes;
  layout.header_table_bytes = granules_for(table_bytes) * kGranule;
  if (table_entries == 0 || layout.header_table_bytes >= region_bytes) {
    return make_error(StatusCode::kInvalidArgument, "region of " + std::to_string(region_bytes) +
                                                        " bytes cannot hold a header table and one " +
                                                        std::to_string(kGranule) + "-byte granule");
  }
  layout.payload_base = layout.header_table_bytes;
  layout.num_granules = (region_bytes - layout.header_table_bytes) / kGranule;
  layout.payload_bytes = layout.num_granules * kGranule;
  if (layout.num_granules == 0) {
    return make_error(StatusCode::kInvalidArgument, "region of " + std::to_string(region_bytes) +
                                                        " bytes leaves no granule after its header table");
  }
  // The table has one entry per granule of the whole region, so it always
  // covers every payload granule.
  assert(layout.num_granules <= table_entries);
  return layout;
}

std::uint64_t RegionLayout::header_offset(std::uint64_t payload_offset) const {
  assert(payload_offset % kGranule == 0);
  assert(payload_offset < payload_bytes);
  return slot_index(payload_offset) * kSlotHeaderBytes;
}

void encode(const SlotHeader& header, std::span<std::byte, kSlotHeaderBytes> out) {
  std::byte* p = out.data();
  store_le<std::uint32_t>(p + kMagicAt, kSlotMagic);
  store_le<std::uint16_t>(p + kVersionAt, kSlotFormatVersion);
  store_le<std::uint16_t>(p + kFlagsAt, 0);
  store_le<std::uint64_t>(p + kNamespaceAt, header.namespace_id);
  store_le<std::uint64_t>(p + kKeyLoAt, header.key.lo);
  store_le<std::uint64_t>(p + kKeyHiAt, header.key.hi);
  store_le<std::uint64_t>(p + kLengthAt, header.payload_length);
  store_le<std::uint64_t>(p + kGenerationAt, header.generation);
  store_le<std::uint64_t>(p + kPayloadChecksumAt, header.payload_checksum);
  store_le<std::uint64_t>(p + kHeaderChecksumAt, header_checksum(p));
}

Result<SlotHeader> decode(std::span<const std::byte, kSlotHeaderBytes> in) {
  const std::byte* p = in.data();
  const auto magic = load_le<std::uint32_t>(p + kMagicAt);
  if (magic == 0) return make_error(StatusCode::kNotFound, "empty slot header");
  if (magic != kSlotMagic) return make_error(StatusCode::kDataLoss, "bad magic in slot header");
  // The version defines how the rest (checksum included) is laid out, so it
  // is checked before the checksum.
  const auto version = load_le<std::uint16_t>(p + kVersionAt);
  if (version != kSlotFormatVersion) {
    return make_error(StatusCode::kDataLoss, "unsupported version " + std::to_string(version) +
                                                 " in slot header (expected " +
                                                 std::to_string(kSlotFormatVersion) + ")");
  }
  if (load_le<std::uint64_t>(p + kHeaderChecksumAt) != header_checksum(p)) {
    return make_error(StatusCode::kDataLoss, "header checksum mismatch in slot header");
  }
  if (const auto flags = load_le<std::uint16_t>(p + kFlagsAt); flags != 0) {
    return make_error(StatusCode::kDataLoss,
                      "unsupported flags " + std::to_string(flags) + " in slot header");
  }
  SlotHeader header;
  header.namespace_id = load_le<std::uint64_t>(p + kNamespaceAt);
  header.key.lo = load_le<std::uint64_t>(p + kKeyLoAt);
  header.key.hi = load_le<std::uint64_t>(p + kKeyHiAt);
  header.payload_length = load_le<std::uint64_t>(p + kLengthAt);
  header.generation = load_le<std::uint64_t>(p + kGenerationAt);
  header.payload_checksum = load_le<std::uint64_t>(p + kPayloadChecksumAt);
  if (header.payload_length == 0)
    return make_error(StatusCode::kDataLoss, "zero payload length in slot header");
  return header;
}

std::uint64_t payload_checksum(std::span<const std::byte> payload) {
  return XXH3_64bits(payload.data(), payload.size());
}

static_assert(sizeof(XXH3_state_t) <= 640 && alignof(XXH3_state_t) <= 64, "PayloadHasher's state is too small");

PayloadHasher::PayloadHasher() { XXH3_64bits_reset(reinterpret_cast<XXH3_state_t*>(state_)); }

void PayloadHasher::update(std::span<const std::byte> piece) {
  XXH3_64bits_update(reinterpret_cast<XXH3_state_t*>(state_), piece.data(), piece.size());
}

std::uint64_t PayloadHasher::digest() const {
  return XXH3_64bits_digest(reinterpret_cast<const XXH3_state_t*>(state_));
}

namespace {

// Pieces that fit the L1 data cache: each is hashed right after the copy
// touched it, so the hash reads from cache, not memory.
constexpr std::size_t kHashPiece = 32 << 10;

// Copies [src, src+n) to dst piece by piece with `copy`, hashing each piece
// from `from_dst ? dst : src` while it is in cache.
template <typename Copy>
std::uint64_t copy_and_hash(std::byte* dst, const std::byte* src, std::size_t n, Copy copy, bool from_dst) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (std::size_t at = 0; at < n; at += kHashPiece) {
    const std::size_t len = std::min(kHashPiece, n - at);
    copy(dst + at, src + at, len);
    XXH3_64bits_update(&state, (from_dst ? dst : src) + at, len);
  }
  return XXH3_64bits_digest(&state);
}

}  // namespace

std::uint64_t copy_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n) {
  return copy_and_hash(
      dst, src, n, [](std::byte* d, const std::byte* s, std::size_t len) { std::memcpy(d, s, len); }, true);
}

std::uint64_t stream_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n) {
  // The hash reads the source: in cache from the copy's loads.
  const std::uint64_t sum = copy_and_hash(dst, src, n, stream_copy_unfenced, false);
  _mm_sfence();
  return sum;
}

Status verify_payload(const SlotHeader& header, std::span<const std::byte> payload) {
  if (payload.size() != header.payload_length) {
    return Status(StatusCode::kDataLoss, "payload is " + std::to_string(payload.size()) +
                                             " bytes, its header says " +
                                             std::to_string(header.payload_length));
  }
  if (payload_checksum(payload) != header.payload_checksum) {
    return Status(StatusCode::kDataLoss, "payload checksum mismatch (torn or overwritten block)");
  }
  return Status::ok_status();
}

void invalidate(std::span<std::byte, kSlotHeaderBytes> header) {
  std::memset(header.data(), 0, header.size());
}

Result<ScanResult> scan(std::span<const std::byte> region, const RegionLayout& layout) {
  if (region.size() < layout.region_bytes) {
    return make_error(StatusCode::kInvalidArgument, "scan of " + std::to_string(region.size()) +
                                                        " bytes, layout needs " +
                                                        std::to_string(layout.region_bytes));
  }
  auto logger = log::get("pool");
  ScanResult result;
  std::uint64_t index = 0;
  while (index < layout.num_granules) {
    const std::uint64_t payload_offset = index * kGranule;
    auto header_bytes = region.subspan(layout.header_offset(payload_offset)).first<kSlotHeaderBytes>();
    auto header = decode(header_bytes);
    if (!header) {
      if (header.error().code() == StatusCode::kNotFound) {
        ++result.empty_slots;
      } else {
        ++result.invalid_headers;
        logger->debug("scan: slot {} (payload offset {}): {}", index, payload_offset,
                      header.error().message());
      }
      ++index;
      continue;
    }
    // Compare in granules so a huge length cannot overflow the arithmetic.
    const std::uint64_t granules = granules_for(header->payload_length);
    if (granules > layout.num_granules - index) {
      ++result.invalid_headers;
      logger->debug("scan: slot {} (payload offset {}): length {} runs past the payload area ({} bytes)",
                    index, payload_offset, header->payload_length, layout.payload_bytes);
      ++index;
      continue;
    }
    auto payload = region.subspan(layout.payload_region_offset(payload_offset), header->payload_length);
    if (Status st = verify_payload(*header, payload); !st.ok()) {
      ++result.torn_blocks;
      logger->debug("scan: slot {} (payload offset {}): {}", index, payload_offset, st.message());
      ++index;
      continue;
    }
    result.blocks.push_back(ScannedBlock{payload_offset, *header});
    index += granules;
  }
  logger->info("scanned region of {} bytes: {} valid blocks, {} torn, {} invalid headers, {} empty slots",
               layout.region_bytes, result.blocks.size(), result.torn_blocks, result.invalid_headers,
               result.empty_slots);
  return result;
}

}  // namespace kvpool::pool
