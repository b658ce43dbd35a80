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
constexpr std::size_t kSlicesAt = 6;
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

// Whether a block of `length` bytes can carry `slices` slices: equal
// slices, and a table that fits in the header slots of its granules 2..g.
bool slices_fit(std::uint64_t length, std::uint64_t slices) {
  if (slices == 0 || slices > 0xffff || length % slices != 0) return false;
  if (slices == 1) return true;
  return slices <= (granules_for(length) - 1) * (kSlotHeaderBytes / kSliceChecksumBytes);
}

}  // namespace

std::uint32_t slices_for(std::uint64_t payload_length, std::uint32_t layers) {
  return layers > 1 && payload_length > 0 && slices_fit(payload_length, layers) ? layers : 1;
}

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
  store_le<std::uint16_t>(p + kSlicesAt, static_cast<std::uint16_t>(header.slices));
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
  SlotHeader header;
  header.slices = load_le<std::uint16_t>(p + kSlicesAt);
  header.namespace_id = load_le<std::uint64_t>(p + kNamespaceAt);
  header.key.lo = load_le<std::uint64_t>(p + kKeyLoAt);
  header.key.hi = load_le<std::uint64_t>(p + kKeyHiAt);
  header.payload_length = load_le<std::uint64_t>(p + kLengthAt);
  header.generation = load_le<std::uint64_t>(p + kGenerationAt);
  header.payload_checksum = load_le<std::uint64_t>(p + kPayloadChecksumAt);
  if (header.payload_length == 0)
    return make_error(StatusCode::kDataLoss, "zero payload length in slot header");
  if (!slices_fit(header.payload_length, header.slices)) {
    return make_error(StatusCode::kDataLoss, "bad slice count " + std::to_string(header.slices) +
                                                 " in slot header (payload of " +
                                                 std::to_string(header.payload_length) + " bytes)");
  }
  return header;
}

std::uint16_t header_version(std::span<const std::byte, kSlotHeaderBytes> in) {
  if (load_le<std::uint32_t>(in.data() + kMagicAt) == 0) return 0;
  return load_le<std::uint16_t>(in.data() + kVersionAt);
}

std::uint64_t payload_checksum(std::span<const std::byte> payload) {
  return XXH3_64bits(payload.data(), payload.size());
}

void encode_table(std::span<const std::uint64_t> table, std::span<std::byte> out) {
  assert(out.size() >= table.size() * kSliceChecksumBytes);
  for (std::size_t s = 0; s < table.size(); ++s) store_le<std::uint64_t>(out.data() + s * kSliceChecksumBytes, table[s]);
}

std::vector<std::uint64_t> decode_table(std::span<const std::byte> in) {
  std::vector<std::uint64_t> table(in.size() / kSliceChecksumBytes);
  for (std::size_t s = 0; s < table.size(); ++s) table[s] = load_le<std::uint64_t>(in.data() + s * kSliceChecksumBytes);
  return table;
}

std::uint64_t table_checksum(std::span<const std::uint64_t> table) {
  if (table.size() == 1) return table[0];
  std::vector<std::byte> bytes(table.size() * kSliceChecksumBytes);
  encode_table(table, bytes);
  return XXH3_64bits(bytes.data(), bytes.size());
}

std::uint64_t block_checksum(std::span<const std::byte> payload, std::uint32_t slices, std::uint64_t* table) {
  assert(slices >= 1 && payload.size() % slices == 0);
  if (slices <= 1) {
    const std::uint64_t sum = payload_checksum(payload);
    if (table != nullptr) table[0] = sum;
    return sum;
  }
  std::vector<std::uint64_t> own;
  if (table == nullptr) {
    own.resize(slices);
    table = own.data();
  }
  const std::size_t slice = payload.size() / slices;
  for (std::uint32_t s = 0; s < slices; ++s) table[s] = payload_checksum(payload.subspan(s * slice, slice));
  return table_checksum(std::span<const std::uint64_t>(table, slices));
}

static_assert(sizeof(XXH3_state_t) <= 640 && alignof(XXH3_state_t) <= 64, "PayloadHasher's state is too small");

PayloadHasher::PayloadHasher(std::uint64_t length, std::uint32_t slices) { reset(length, slices); }

void PayloadHasher::reset(std::uint64_t length, std::uint32_t slices) {
  assert(slices >= 1 && (slices == 1 || length % slices == 0));
  slice_bytes_ = slices > 1 ? length / slices : 0;
  in_slice_ = 0;
  table_.clear();
  if (slices > 1) table_.reserve(slices);
  XXH3_64bits_reset(reinterpret_cast<XXH3_state_t*>(state_));
}

void PayloadHasher::end_slice() {
  auto* state = reinterpret_cast<XXH3_state_t*>(state_);
  table_.push_back(XXH3_64bits_digest(state));
  XXH3_64bits_reset(state);
  in_slice_ = 0;
}

void PayloadHasher::update(std::span<const std::byte> piece) {
  auto* state = reinterpret_cast<XXH3_state_t*>(state_);
  if (slice_bytes_ == 0) {
    XXH3_64bits_update(state, piece.data(), piece.size());
    return;
  }
  while (!piece.empty()) {
    const std::size_t take = std::min<std::uint64_t>(piece.size(), slice_bytes_ - in_slice_);
    XXH3_64bits_update(state, piece.data(), take);
    in_slice_ += take;
    piece = piece.subspan(take);
    if (in_slice_ == slice_bytes_) end_slice();
  }
}

std::uint64_t PayloadHasher::digest() const {
  if (slice_bytes_ == 0) return XXH3_64bits_digest(reinterpret_cast<const XXH3_state_t*>(state_));
  return table_checksum(table_);
}

namespace {

// Pieces that fit the L1 data cache: each is hashed right after the copy
// touched it, so the hash reads from cache, not memory.
constexpr std::size_t kHashPiece = 32 << 10;

// Copies [src, src+n) to dst piece by piece with `copy`, hashing each piece
// from `from_dst ? dst : src` while it is in cache, slice by slice.
template <typename Copy>
std::uint64_t copy_and_hash(std::byte* dst, const std::byte* src, std::size_t n, std::uint32_t slices,
                            std::uint64_t* table, Copy copy, bool from_dst) {
  assert(slices >= 1 && n % slices == 0);
  std::vector<std::uint64_t> own;
  if (slices > 1 && table == nullptr) {
    own.resize(slices);
    table = own.data();
  }
  const std::size_t slice = n / slices;
  XXH3_state_t state;
  for (std::uint32_t s = 0; s < slices; ++s) {
    XXH3_64bits_reset(&state);
    const std::size_t end = (s + 1) * slice;
    for (std::size_t at = s * slice; at < end; at += kHashPiece) {
      const std::size_t len = std::min(kHashPiece, end - at);
      copy(dst + at, src + at, len);
      XXH3_64bits_update(&state, (from_dst ? dst : src) + at, len);
    }
    const std::uint64_t sum = XXH3_64bits_digest(&state);
    if (table != nullptr) table[s] = sum;
    if (slices == 1) return sum;
  }
  return table_checksum(std::span<const std::uint64_t>(table, slices));
}

}  // namespace

std::uint64_t copy_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n, std::uint32_t slices,
                                    std::uint64_t* table) {
  return copy_and_hash(
      dst, src, n, slices, table, [](std::byte* d, const std::byte* s, std::size_t len) { std::memcpy(d, s, len); },
      true);
}

std::uint64_t stream_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n, std::uint32_t slices,
                                      std::uint64_t* table) {
  // The hash reads the source: in cache from the copy's loads.
  const std::uint64_t sum = copy_and_hash(dst, src, n, slices, table, stream_copy_unfenced, false);
  _mm_sfence();
  return sum;
}

Status verify_payload(const SlotHeader& header, std::span<const std::byte> payload) {
  if (payload.size() != header.payload_length) {
    return Status(StatusCode::kDataLoss, "payload is " + std::to_string(payload.size()) +
                                             " bytes, its header says " +
                                             std::to_string(header.payload_length));
  }
  if (block_checksum(payload, header.slices) != header.payload_checksum) {
    return Status(StatusCode::kDataLoss, "payload checksum mismatch (torn or overwritten block)");
  }
  return Status::ok_status();
}

Status verify_block(const SlotHeader& header, std::span<const std::byte> payload, std::span<const std::byte> table) {
  if (header.slices <= 1) return verify_payload(header, payload);
  if (payload.size() != header.payload_length) return verify_payload(header, payload);
  if (table.size() != table_bytes(header.slices) ||
      XXH3_64bits(table.data(), table.size()) != header.payload_checksum) {
    return Status(StatusCode::kDataLoss, "slice table mismatch (torn or overwritten block)");
  }
  const auto entries = decode_table(table);
  const std::size_t slice = payload.size() / header.slices;
  for (std::uint32_t s = 0; s < header.slices; ++s) {
    if (payload_checksum(payload.subspan(s * slice, slice)) != entries[s]) {
      return Status(StatusCode::kDataLoss,
                    "layer slice " + std::to_string(s) + " checksum mismatch (torn or overwritten block)");
    }
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
        if (const auto v = header_version(header_bytes); v != 0 && v < kSlotFormatVersion) ++result.old_version;
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
    auto table = region.subspan(layout.table_offset(payload_offset), table_bytes(header->slices));
    if (Status st = verify_block(*header, payload, table); !st.ok()) {
      ++result.torn_blocks;
      logger->debug("scan: slot {} (payload offset {}): {}", index, payload_offset, st.message());
      ++index;
      continue;
    }
    result.blocks.push_back(ScannedBlock{payload_offset, *header});
    index += granules;
  }
  if (result.old_version > 0) {
    logger->warn("scan: {} slots hold blocks of an older slot format than version {} (written by an older "
                 "kvpool): refused, their space is reused",
                 result.old_version, kSlotFormatVersion);
  }
  logger->info("scanned region of {} bytes: {} valid blocks, {} torn, {} invalid headers, {} empty slots",
               layout.region_bytes, result.blocks.size(), result.torn_blocks, result.invalid_headers,
               result.empty_slots);
  return result;
}

}  // namespace kvpool::pool
