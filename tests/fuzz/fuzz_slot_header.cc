// Fuzzes the slot header codec and the region scan (pool/slot_header.h):
// the input describes a small region (2 to 5 granules plus a tail) whose
// header table and payload start come from the input; inputs.h says how,
// including the checksum fix-ups that let the fuzzer past XXH3.
//
// Checks, beyond "no sanitizer report" (the region is a heap buffer of
// exactly region_bytes, so a read past its end is caught):
// - every header that decodes encodes back to the same 64 bytes; a refused
//   one is kNotFound (zero magic) or kDataLoss;
// - scan() accounts for every payload granule exactly once: empty +
//   invalid + torn + the granules of the blocks found == num_granules;
// - the blocks are G-aligned, ascending, inside the payload area, never
//   overlap, and each one's header and payload verify;
// - a region one byte short is refused with kInvalidArgument;
// - RegionLayout::create() of the input's last 8 bytes read as a size
//   either refuses (exactly when the size is under two granules) or gives
//   a layout that fits the region.

#include <cstdint>
#include <cstring>
#include <span>

#include "pool/slot_header.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/inputs.h"

namespace kvpool::fuzz {
namespace {

using pool::kGranule;
using pool::kSlotHeaderBytes;

std::uint64_t granules_of(std::uint64_t length) { return length / kGranule + (length % kGranule != 0); }

void check_layout(std::uint64_t region_bytes) {
  auto layout = pool::RegionLayout::create(region_bytes);
  if (!layout) {
    KVPOOL_FUZZ_CHECK(layout.error().code() == StatusCode::kInvalidArgument);
    KVPOOL_FUZZ_CHECK(region_bytes < 2 * kGranule);
    return;
  }
  const pool::RegionLayout& l = *layout;
  KVPOOL_FUZZ_CHECK(region_bytes >= 2 * kGranule);
  KVPOOL_FUZZ_CHECK(l.region_bytes == region_bytes);
  KVPOOL_FUZZ_CHECK(l.header_table_bytes % kGranule == 0);
  KVPOOL_FUZZ_CHECK(l.header_table_bytes / kSlotHeaderBytes >= region_bytes / kGranule);
  KVPOOL_FUZZ_CHECK(l.payload_base == l.header_table_bytes);
  KVPOOL_FUZZ_CHECK(l.num_granules >= 1);
  KVPOOL_FUZZ_CHECK(l.num_granules <= region_bytes / kGranule);
  KVPOOL_FUZZ_CHECK(l.payload_bytes == l.num_granules * kGranule);
  KVPOOL_FUZZ_CHECK(l.payload_base <= region_bytes && l.payload_bytes <= region_bytes - l.payload_base);
  KVPOOL_FUZZ_CHECK(region_bytes - l.payload_base - l.payload_bytes < kGranule);
}

}  // namespace
}  // namespace kvpool::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvpool::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvpool;
  using namespace kvpool::fuzz;
  if (size >= 10) check_layout(load_le(data + size - 8, 8));
  if (size < 2) return 0;

  SlotRegion region = build_slot_region(data, size);
  const pool::RegionLayout& layout = region.layout;
  const std::span<const std::byte> bytes(region.bytes);

  for (std::uint64_t i = 0; i < layout.num_granules; ++i) {
    auto in = bytes.subspan(layout.header_offset(i * kGranule)).first<pool::kSlotHeaderBytes>();
    auto h = pool::decode(in);
    if (!h) {
      const StatusCode code = h.error().code();
      KVPOOL_FUZZ_CHECK(code == StatusCode::kNotFound || code == StatusCode::kDataLoss);
      continue;
    }
    KVPOOL_FUZZ_CHECK(h->payload_length > 0);
    std::byte out[pool::kSlotHeaderBytes];
    pool::encode(*h, std::span<std::byte, pool::kSlotHeaderBytes>(out));
    KVPOOL_FUZZ_CHECK(std::memcmp(out, in.data(), sizeof(out)) == 0);
  }

  auto scan = pool::scan(bytes, layout);
  KVPOOL_FUZZ_CHECK(scan.has_value());
  std::uint64_t covered = 0;
  std::uint64_t next_free = 0;  // first payload offset past the previous block
  for (const pool::ScannedBlock& b : scan->blocks) {
    KVPOOL_FUZZ_CHECK(b.payload_offset % kGranule == 0);
    KVPOOL_FUZZ_CHECK(b.payload_offset >= next_free);
    KVPOOL_FUZZ_CHECK(b.payload_offset < layout.payload_bytes);
    const std::uint64_t granules = granules_of(b.header.payload_length);
    KVPOOL_FUZZ_CHECK(granules >= 1);
    KVPOOL_FUZZ_CHECK(granules <= (layout.payload_bytes - b.payload_offset) / kGranule);
    auto in = bytes.subspan(layout.header_offset(b.payload_offset)).first<pool::kSlotHeaderBytes>();
    auto h = pool::decode(in);
    KVPOOL_FUZZ_CHECK(h.has_value() && *h == b.header);
    auto payload = bytes.subspan(layout.payload_region_offset(b.payload_offset), b.header.payload_length);
    KVPOOL_FUZZ_CHECK(pool::verify_payload(b.header, payload).ok());
    covered += granules;
    next_free = b.payload_offset + granules * kGranule;
  }
  KVPOOL_FUZZ_CHECK(scan->empty_slots + scan->invalid_headers + scan->torn_blocks + covered == layout.num_granules);

  auto short_scan = pool::scan(bytes.first(bytes.size() - 1), layout);
  KVPOOL_FUZZ_CHECK(!short_scan && short_scan.error().code() == StatusCode::kInvalidArgument);
  return 0;
}
