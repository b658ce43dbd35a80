#pragma once
// The self-describing layout of an agent's region: a table of 64-byte slot
// headers followed by the payload area, and the codec for one header.
//
// Region layout (R bytes, all offsets relative to the region's start):
//
//   [0, header_table_bytes)                 header table: 64-byte headers, one per granule
//   [payload_base, payload_base + payload_bytes)   payload area, payload_bytes = num_granules * G
//   [payload_base + payload_bytes, R)       unused tail (< G)
//
// G = kGranule = 64 KiB, the smallest block and the unit of placement. A
// "payload offset" is relative to payload_base. Every block's payload starts
// at a G-aligned payload offset p and covers ceil(len / G) granules. The
// header describing it is header number i = p / G, at region offset i * 64.
// Headers at the other granules a block covers are not part of it (they are
// stale or zero) and a scan never looks at them.
//
// Sizing: with T = floor(R / G), header_table_bytes = round_up(T * 64, G),
// payload_base = header_table_bytes, payload_bytes = the largest multiple of G
// that fits in R - header_table_bytes, num_granules = payload_bytes / G. The
// table is 1/1024 of the region (a 1 TiB region spends 1 GiB on headers).
// Payloads are G-aligned in memory only if the region's base address is.
//
// Write order: a writer puts the payload first and the header last (ordered
// by a fence or flush), so a header whose checksums verify means a complete
// payload. Removing a block invalidates its header before the space is reused.
//
// Slot header, 64 bytes, every integer little-endian:
//
//   offset size field
//        0    4 magic            bytes "KVPS" (u32 0x5350564B); zero = no block
//        4    2 version          kSlotFormatVersion (1)
//        6    2 flags            0; nonzero is rejected until a version defines a flag
//        8    8 namespace_id     hash of the namespace descriptor (DESIGN.md "Keys")
//       16    8 key.lo           low 64 bits of the 128-bit block key
//       24    8 key.hi           high 64 bits of the block key
//       32    8 payload_length   bytes of payload, > 0 (not rounded to G)
//       40    8 generation       higher wins when two valid slots hold one key
//       48    8 payload_checksum XXH3-64 (seed 0) of the payload_length payload bytes
//       56    8 header_checksum  XXH3-64 (seed 0) of header bytes [0, 56)
//
// Everything here is pure functions over caller-owned bytes: thread-safe as
// long as no one writes the bytes being read.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvpool/status.h"
#include "kvpool/types.h"

namespace kvpool::pool {

inline constexpr std::uint64_t kGranule = 64 * 1024;
inline constexpr std::size_t kSlotHeaderBytes = 64;
inline constexpr std::uint32_t kSlotMagic = 0x5350564B;  // "KVPS" as little-endian bytes
inline constexpr std::uint16_t kSlotFormatVersion = 1;

// Where the header table and the payload area lie in a region of
// region_bytes bytes (see the layout above).
struct RegionLayout {
  std::uint64_t region_bytes = 0;
  std::uint64_t header_table_bytes = 0;
  std::uint64_t payload_base = 0;   // == header_table_bytes
  std::uint64_t payload_bytes = 0;  // num_granules * kGranule
  std::uint64_t num_granules = 0;

  // kInvalidArgument when the region cannot hold its header table plus one
  // granule of payload (less than 2 * kGranule).
  static Result<RegionLayout> create(std::uint64_t region_bytes);

  // Region offset of the header for the block whose payload starts at
  // payload_offset. Precondition (asserted): payload_offset is G-aligned and
  // inside the payload area.
  std::uint64_t header_offset(std::uint64_t payload_offset) const;
  // Region offset of the payload byte at payload_offset.
  std::uint64_t payload_region_offset(std::uint64_t payload_offset) const {
    return payload_base + payload_offset;
  }
  // Header index (== granule index) of a G-aligned payload offset.
  static std::uint64_t slot_index(std::uint64_t payload_offset) { return payload_offset / kGranule; }

  friend bool operator==(const RegionLayout&, const RegionLayout&) = default;
};

using Key128 = kvpool::Key128;  // include/kvpool/types.h

// The caller-visible fields of a header; magic, version, flags and the header
// checksum are written by encode() and checked by decode().
struct SlotHeader {
  std::uint64_t namespace_id = 0;
  Key128 key;
  std::uint64_t payload_length = 0;
  std::uint64_t generation = 0;
  std::uint64_t payload_checksum = 0;
  friend bool operator==(const SlotHeader&, const SlotHeader&) = default;
};

// Writes the 64 header bytes, magic, version and header checksum included.
void encode(const SlotHeader& header, std::span<std::byte, kSlotHeaderBytes> out);

// Reads and verifies 64 header bytes (not the payload: see verify_payload).
//   kNotFound: the magic is zero, i.e. the slot was never written or was
//              invalidated; the slot holds no block.
//   kDataLoss: the message says which check failed: "bad magic",
//              "unsupported version", "header checksum mismatch",
//              "unsupported flags", or "zero payload length".
Result<SlotHeader> decode(std::span<const std::byte, kSlotHeaderBytes> in);

// XXH3-64 (seed 0) of the payload bytes, the value stored in payload_checksum.
std::uint64_t payload_checksum(std::span<const std::byte> payload);

// payload_checksum computed piece by piece, the pieces fed in order (for a
// payload that is hashed while parts of it move, each part while it is in
// cache). Not copyable: the state is large (XXH3's, ~600 bytes).
class PayloadHasher {
 public:
  PayloadHasher();
  PayloadHasher(const PayloadHasher&) = delete;
  PayloadHasher& operator=(const PayloadHasher&) = delete;
  void update(std::span<const std::byte> piece);
  // payload_checksum of the pieces fed so far, in order.
  std::uint64_t digest() const;

 private:
  alignas(64) std::byte state_[640];
};

// Copies n bytes from src to dst (not overlapping) and returns
// payload_checksum of the copy, hashing it piece by piece while each piece
// is still in cache: one pass over memory where copy-then-hash makes two.
std::uint64_t copy_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n);

// The same for a destination that is not read again soon (a pool slot being
// written): the copy uses non-temporal stores, which spare the memory bus
// reading each destination line before writing it, and the hash reads the
// source, in cache from the copy's loads. Ordered before later stores
// (sfence). Returns payload_checksum of src.
std::uint64_t stream_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n);

// kDataLoss when payload is not exactly header.payload_length bytes or its
// checksum differs from header.payload_checksum (a torn or overwritten block).
Status verify_payload(const SlotHeader& header, std::span<const std::byte> payload);

// Marks the slot as holding no block: zeroes all 64 bytes, so decode()
// returns kNotFound and a later scan treats the space as free.
void invalidate(std::span<std::byte, kSlotHeaderBytes> header);

struct ScannedBlock {
  std::uint64_t payload_offset = 0;  // G-aligned, relative to payload_base
  SlotHeader header;
  friend bool operator==(const ScannedBlock&, const ScannedBlock&) = default;
};

struct ScanResult {
  std::vector<ScannedBlock> blocks;   // ascending payload_offset, never overlapping
  std::uint64_t empty_slots = 0;      // headers with a zero magic (free granules)
  std::uint64_t invalid_headers = 0;  // bad magic/version/flags/checksum, zero length, or past the end
  std::uint64_t torn_blocks = 0;      // header valid, payload checksum mismatch
};

// Walks the header table of a whole region and returns every block whose
// header and payload both verify. Invalid or torn slots are counted and
// skipped one granule at a time; after a valid block the walk resumes past
// the granules it covers (so headers inside a valid block are never read).
// kInvalidArgument when region is smaller than layout.region_bytes.
// Reads every header and hashes every valid payload: O(region) work.
Result<ScanResult> scan(std::span<const std::byte> region, const RegionLayout& layout);

}  // namespace kvpool::pool
