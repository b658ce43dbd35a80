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
// Layer slices (format version 2). A KV block is layer-major (runtime/gpu/
// plan.h: layer, then K/V, then segment), so layer l's bytes are the l-th of
// `slices` equal ranges of the payload. To let a reader verify one layer
// before the others have arrived, a block may carry a checksum per slice:
// slices > 1 means a table of `slices` XXH3-64 values (8 bytes each,
// little-endian; entry s covers payload bytes [s * L / slices, (s+1) * L /
// slices)) stored right after the header, in the header slots of the block's
// own granules 2..g, which no scan reads while the block is valid. The
// header's payload_checksum is then the XXH3-64 of the table's bytes, so the
// header vouches for the table and the table for each slice. A block gets
// slices = its namespace's layers when that divides its length and the table
// fits in its g - 1 spare slots (8 per slot); else one slice, no table, and
// payload_checksum is the XXH3-64 of the payload as in version 1
// (slices_for). Block sizes and namespace ids are unchanged by this.
//
// Write order: a writer puts the payload first, then the table, then the
// header (a writer over RMA may put table and header in one operation after
// the payload: a scan verifies the table against the header, so a header
// that landed without its table is a torn block, never a misread one). A
// header whose checksums verify means a complete payload. Removing a block
// invalidates its header before the space is reused.
//
// Slot header, 64 bytes, every integer little-endian:
//
//   offset size field
//        0    4 magic            bytes "KVPS" (u32 0x5350564B); zero = no block
//        4    2 version          kSlotFormatVersion (2); version 1 slots (no slices) are refused
//        6    2 slices           layer slices, >= 1 (version 1: flags, always 0)
//        8    8 namespace_id     hash of the namespace descriptor (DESIGN.md "Keys")
//       16    8 key.lo           low 64 bits of the 128-bit block key
//       24    8 key.hi           high 64 bits of the block key
//       32    8 payload_length   bytes of payload, > 0 (not rounded to G)
//       40    8 generation       higher wins when two valid slots hold one key
//       48    8 payload_checksum slices == 1: XXH3-64 (seed 0) of the payload_length payload bytes;
//                                slices > 1: XXH3-64 of the slice table's slices * 8 bytes
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
inline constexpr std::uint16_t kSlotFormatVersion = 2;
inline constexpr std::size_t kSliceChecksumBytes = 8;  // one table entry

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
  // Region offset of the slice table of that block (right after its header).
  std::uint64_t table_offset(std::uint64_t payload_offset) const {
    return header_offset(payload_offset) + kSlotHeaderBytes;
  }
  // Whether `count` headers starting at region offset `offset` lie inside the
  // header table, offset aligned to a header. Overflow-safe for any values:
  // offsets come from the network (invalidations, drain copies).
  bool holds_headers(std::uint64_t offset, std::uint64_t count) const {
    return offset % kSlotHeaderBytes == 0 && offset <= header_table_bytes &&
           count <= (header_table_bytes - offset) / kSlotHeaderBytes;
  }
  // Header index (== granule index) of a G-aligned payload offset.
  static std::uint64_t slot_index(std::uint64_t payload_offset) { return payload_offset / kGranule; }

  friend bool operator==(const RegionLayout&, const RegionLayout&) = default;
};

using Key128 = kvpool::Key128;  // include/kvpool/types.h

// The caller-visible fields of a header; magic, version and the header
// checksum are written by encode() and checked by decode().
struct SlotHeader {
  std::uint64_t namespace_id = 0;
  Key128 key;
  std::uint64_t payload_length = 0;
  std::uint64_t generation = 0;
  std::uint64_t payload_checksum = 0;
  std::uint32_t slices = 1;  // layer slices; > 1: a table follows the header (see above)
  friend bool operator==(const SlotHeader&, const SlotHeader&) = default;
};

// The slices a block of payload_length bytes in a namespace of `layers`
// layers gets: layers when it is > 1, divides payload_length and the table
// fits in the block's spare header slots; else 1.
std::uint32_t slices_for(std::uint64_t payload_length, std::uint32_t layers);
// Bytes of a block's slice table: slices * 8, or 0 for one slice.
inline std::uint64_t table_bytes(std::uint32_t slices) { return slices > 1 ? slices * kSliceChecksumBytes : 0; }

// Writes the 64 header bytes, magic, version and header checksum included.
void encode(const SlotHeader& header, std::span<std::byte, kSlotHeaderBytes> out);

// Reads and verifies 64 header bytes (not the payload: see verify_payload).
//   kNotFound: the magic is zero, i.e. the slot was never written or was
//              invalidated; the slot holds no block.
//   kDataLoss: the message says which check failed: "bad magic",
//              "unsupported version", "header checksum mismatch",
//              "bad slice count" (zero, not dividing the length, or a table
//              that does not fit), or "zero payload length".
Result<SlotHeader> decode(std::span<const std::byte, kSlotHeaderBytes> in);

// The format version of a header with a nonzero magic (0 for an empty
// slot): lets a scan tell a slot of an older format from a damaged one.
std::uint16_t header_version(std::span<const std::byte, kSlotHeaderBytes> in);

// XXH3-64 (seed 0) of bytes: a one-slice block's payload_checksum, and each
// slice's table entry.
std::uint64_t payload_checksum(std::span<const std::byte> payload);

// The payload_checksum of a block of `slices` slices (payload.size() must
// divide by slices): XXH3-64 of the payload for one slice, else of the table
// of the slices' XXH3-64s. table, when not null, receives the `slices`
// entries (for one slice: the payload's XXH3-64).
std::uint64_t block_checksum(std::span<const std::byte> payload, std::uint32_t slices,
                             std::uint64_t* table = nullptr);
// The payload_checksum a table of slice checksums gives (XXH3-64 of its
// little-endian bytes; for one entry, that entry).
std::uint64_t table_checksum(std::span<const std::uint64_t> table);
// The table's bytes as stored (table.size() * 8, little-endian) and back.
void encode_table(std::span<const std::uint64_t> table, std::span<std::byte> out);
std::vector<std::uint64_t> decode_table(std::span<const std::byte> in);

// block_checksum computed piece by piece, the pieces fed in order (for a
// payload that is hashed while parts of it move, each part while it is in
// cache). Not copyable: the state is large (XXH3's, ~600 bytes).
class PayloadHasher {
 public:
  // A block of `length` bytes in `slices` slices (length % slices == 0).
  explicit PayloadHasher(std::uint64_t length = 0, std::uint32_t slices = 1);
  PayloadHasher(const PayloadHasher&) = delete;
  PayloadHasher& operator=(const PayloadHasher&) = delete;
  // Starts over, for a block of `length` bytes in `slices` slices.
  void reset(std::uint64_t length, std::uint32_t slices);
  void update(std::span<const std::byte> piece);
  // block_checksum of the pieces fed so far, in order: the block's once
  // all `length` bytes are in (for one slice, of whatever was fed).
  std::uint64_t digest() const;
  // The slice checksums, once all `length` bytes are in.
  const std::vector<std::uint64_t>& table() const { return table_; }

 private:
  void end_slice();
  alignas(64) std::byte state_[640];
  std::uint64_t slice_bytes_ = 0;  // 0: one slice
  std::uint64_t in_slice_ = 0;     // bytes of the current slice fed
  std::vector<std::uint64_t> table_;
};

// Copies n bytes from src to dst (not overlapping) and returns
// block_checksum of the copy in `slices` slices (the table, when not null,
// gets each slice's), hashing it piece by piece while each piece is still in
// cache: one pass over memory where copy-then-hash makes two.
std::uint64_t copy_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n, std::uint32_t slices,
                                    std::uint64_t* table = nullptr);

// The same for a destination that is not read again soon (a pool slot being
// written): the copy uses non-temporal stores, which spare the memory bus
// reading each destination line before writing it, and the hash reads the
// source, in cache from the copy's loads. Ordered before later stores
// (sfence). Returns block_checksum of src.
std::uint64_t stream_payload_checksum(std::byte* dst, const std::byte* src, std::size_t n, std::uint32_t slices,
                                      std::uint64_t* table = nullptr);

// kDataLoss when payload is not exactly header.payload_length bytes or its
// block_checksum differs from header.payload_checksum (a torn or overwritten
// block). Needs no table: the slices are hashed from the payload.
Status verify_payload(const SlotHeader& header, std::span<const std::byte> payload);

// verify_payload plus the stored table (table_bytes(header.slices) bytes, as
// found after the header): kDataLoss when the table does not give the
// header's payload_checksum ("slice table mismatch") or slice s differs from
// its entry ("layer slice s checksum mismatch"). What a scan and a drain
// copy check: a block whose table is damaged is not kept.
Status verify_block(const SlotHeader& header, std::span<const std::byte> payload, std::span<const std::byte> table);

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
  std::uint64_t invalid_headers = 0;  // bad magic/version/slices/checksum, zero length, or past the end
  std::uint64_t old_version = 0;      // of those, headers of an older format (counted, logged once, space reused)
  std::uint64_t torn_blocks = 0;      // header valid, payload or slice table checksum mismatch
};

// Walks the header table of a whole region and returns every block whose
// header and payload both verify. Invalid or torn slots are counted and
// skipped one granule at a time; after a valid block the walk resumes past
// the granules it covers (so headers inside a valid block, and its slice
// table, are never read as headers). Slots of an older format are logged in
// one line per scan, never read as blocks.
// kInvalidArgument when region is smaller than layout.region_bytes.
// Reads every header and hashes every valid payload: O(region) work.
Result<ScanResult> scan(std::span<const std::byte> region, const RegionLayout& layout);

}  // namespace kvpool::pool
