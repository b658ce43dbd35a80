#pragma once
// OrderedHasher: the payload checksums of a put's blocks, computed piece by
// piece in the order the pieces are posted (transport::Peer::put_each).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "pool/slot_header.h"

namespace kvpool::detail {

// Each piece is hashed by a helper (the client's verifier thread) at most
// `lead` pieces ahead of the post, or by the posting thread when the helper
// has not reached it (busy with another call's work, or descheduled).
// Either way a piece is hashed just before the transport copies it, which
// then reads it from cache. Blocks already hashed (`hashed`) are skipped.
//
// Use: the posting thread calls posted(j) and ready(j) before posting piece
// j, posts it once ready(j) is true, and calls stop() when done posting; the
// helper runs run_helper() once, on its own thread.
class OrderedHasher {
 public:
  // A piece of a block; a block's pieces are consecutive and in order.
  struct Piece {
    std::size_t block = 0;
    std::size_t offset = 0;
    std::size_t length = 0;
  };
  // checksums[b] gets block b's pool::block_checksum in `slices` slices;
  // with more than one slice, tables[b * slices + s] gets slice s's (the
  // table the slot header vouches for).
  OrderedHasher(std::vector<Piece> order, std::span<const std::span<const std::byte>> blocks,
                std::vector<std::uint64_t>& checksums, const std::vector<char>& hashed, std::size_t lead,
                std::uint32_t slices = 1, std::uint64_t* tables = nullptr)
      : order_(std::move(order)),
        blocks_(blocks),
        checksums_(checksums),
        hashed_(hashed),
        lead_(lead),
        slices_(slices),
        tables_(tables),
        states_(blocks.size()),
        done_(std::make_unique<std::atomic<char>[]>(order_.size())) {}
  // The helper's part (on the verifier thread): returns when every piece is
  // claimed or stop() was called.
  void run_helper() {
    {
      std::lock_guard lock(mu_);
      if (closed_) return;  // came after stop(): blocks_ may be gone
      ++active_;
    }
    while (!stop_.load(std::memory_order_acquire)) {
      const std::size_t k = next_.load(std::memory_order_acquire);
      if (k >= order_.size()) break;
      const std::size_t p = posted_.load(std::memory_order_acquire);
      if (k >= p + lead_) {
        posted_.wait(p, std::memory_order_acquire);
        continue;
      }
      // A block's pieces feed one hasher in order: the piece before (maybe
      // the posting thread's) must be done first.
      if (k > 0 && done_[k - 1].load(std::memory_order_acquire) == 0) {
        std::this_thread::yield();
        continue;
      }
      claim(k);
    }
    std::lock_guard lock(mu_);
    if (--active_ == 0) cv_.notify_all();
  }
  // Posting thread: pieces below `pos` are posted.
  void posted(std::size_t pos) {
    if (pos > posted_.load(std::memory_order_relaxed)) {
      posted_.store(pos, std::memory_order_release);
      posted_.notify_one();
    }
  }
  // Posting thread: whether piece `pos` is hashed, hashing it here when no
  // one has claimed it yet. Pieces below pos must be hashed already.
  bool ready(std::size_t pos) {
    if (done_[pos].load(std::memory_order_acquire) != 0) return true;
    if (next_.load(std::memory_order_acquire) == pos) claim(pos);
    return done_[pos].load(std::memory_order_acquire) != 0;
  }
  // Posting thread, once done posting: the helper leaves; returns when it
  // no longer touches the blocks or the checksums.
  void stop() {
    stop_.store(true, std::memory_order_release);
    posted_.store(SIZE_MAX / 2, std::memory_order_release);
    posted_.notify_all();
    std::unique_lock lock(mu_);
    closed_ = true;
    cv_.wait(lock, [&] { return active_ == 0; });
  }

 private:
  void claim(std::size_t k) {
    std::size_t expected = k;
    if (!next_.compare_exchange_strong(expected, k + 1, std::memory_order_acq_rel)) return;
    const Piece& p = order_[k];
    if (!hashed_[p.block]) {  // else hashed while the allocate was out
      const auto& block = blocks_[p.block];
      std::uint64_t* table = slices_ > 1 ? tables_ + p.block * slices_ : nullptr;
      if (p.offset == 0 && p.length == block.size()) {
        checksums_[p.block] = pool::block_checksum(block, slices_, table);
      } else {
        auto& state = states_[p.block];
        if (p.offset == 0) state = std::make_unique<pool::PayloadHasher>(block.size(), slices_);
        state->update(block.subspan(p.offset, p.length));
        if (p.offset + p.length == block.size()) {
          checksums_[p.block] = state->digest();
          if (table != nullptr) std::copy(state->table().begin(), state->table().end(), table);
          state.reset();
        }
      }
    }
    done_[k].store(1, std::memory_order_release);
  }
  const std::vector<Piece> order_;  // in posting order
  const std::span<const std::span<const std::byte>> blocks_;
  std::vector<std::uint64_t>& checksums_;
  const std::vector<char>& hashed_;
  const std::size_t lead_;
  const std::uint32_t slices_;
  std::uint64_t* const tables_;
  std::vector<std::unique_ptr<pool::PayloadHasher>> states_;  // per block, while its pieces go
  std::unique_ptr<std::atomic<char>[]> done_;
  std::atomic<std::size_t> next_{0};    // the next piece to claim
  std::atomic<std::size_t> posted_{0};  // pieces below are posted
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;  // guarded by mu_: stop() was called
  int active_ = 0;       // guarded by mu_: helpers inside run_helper
};

}  // namespace kvpool::detail
