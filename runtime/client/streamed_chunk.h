#pragma once
// StreamedChunk: the blocks of a get that their agent streams
// (transport::Peer::start_stream_by_owner), placed and checksummed as the
// pieces arrive.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "pool/slot_header.h"
#include "runtime/common/stream_copy.h"
#include "transport/peer.h"

namespace kvpool::detail {

// ops are the blocks' payloads, one per block (the first `blocks`), then
// any other reads of the chunk (slot headers). Each piece is copied to its
// destination and, when it continues its payload in order, hashed while it
// is still in cache: verification then makes no second pass over memory.
class StreamedChunk {
 public:
  // The blocks are hashed as block_checksum in `slices` slices (the
  // namespace's, pool::slices_for).
  StreamedChunk(std::vector<transport::RmaOp> all_ops, std::size_t blocks, std::uint32_t slices)
      : ops(std::move(all_ops)), hashers_(blocks), hashed_(blocks, 0) {
    for (std::size_t j = 0; j < blocks; ++j) hashers_[j].reset(ops[j].length, slices);
  }
  const std::vector<transport::RmaOp> ops;

  // The transport's sink (transport::ReadSink): one piece at a time.
  void place(std::size_t op, std::uint64_t offset, std::span<const std::byte> bytes) {
    // Payloads go to buffers nobody reads soon (on their way to a GPU):
    // non-temporal stores; the hash reads the piece from cache.
    auto* dst = static_cast<std::byte*>(ops[op].local) + offset;
    if (op < hashed_.size()) {
      stream_copy(dst, bytes.data(), bytes.size());
    } else {
      std::memcpy(dst, bytes.data(), bytes.size());
    }
    if (op < hashed_.size() && hashed_[op] == offset) {
      hashers_[op].update(bytes);
      hashed_[op] += bytes.size();
    }
  }
  // pool::block_checksum of block j's payload as it arrived, when every
  // byte was hashed in order; otherwise none, and the caller hashes its
  // buffer. Call once the read is complete.
  std::optional<std::uint64_t> digest(std::size_t j) const {
    if (hashed_[j] != ops[j].length) return std::nullopt;
    return hashers_[j].digest();
  }

 private:
  std::vector<pool::PayloadHasher> hashers_;
  std::vector<std::uint64_t> hashed_;
};

}  // namespace kvpool::detail
