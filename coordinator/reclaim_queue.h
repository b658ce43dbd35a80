#pragma once
// ReclaimQueue: one agent's slots on their way back to the free space.
//
// A slot whose block was evicted, removed, aborted or whose write lease
// expired may still carry a valid header, so its space is reused only after
// the agent has invalidated (zeroed) that header and said so (DESIGN.md:
// "Remove and evict"); otherwise a restart's scan could bring the block back,
// or a late put could land on a new block. Stages:
//
//   kQuarantined  expired write lease: a put posted in time may still land;
//                 wait until `at`, then kReady
//   kReady        to be sent to the agent
//   kSent         sent at `at`; sent again after the retry interval until
//                 acknowledged
//
// acknowledge() accepts only a sent slot whose granule, length and generation
// all match, so a stale or repeated acknowledgement never frees a slot that
// has since been reused and freed again.
//
// Memory: one map node per slot in flight (transient; bounded by the
// eviction rate times the acknowledgement delay). Thread-compatible: no lock.

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "coordinator/coordinator_types.h"
#include "runtime/common/units.h"

namespace kvpool::coordinator {

class ReclaimQueue {
 public:
  enum class Stage : std::uint8_t { kQuarantined, kReady, kSent };

  struct Pending {
    std::uint32_t granule = 0;   // slot start, granules from the payload base
    std::uint32_t granules = 0;  // slot length in granules
    Generation generation = 0;
    Stage stage = Stage::kReady;
  };

  // Precondition: no slot of the queue starts at granule (asserted).
  void add_quarantined(std::uint32_t granule, std::uint32_t granules, Generation generation, Clock::time_point until);
  void add_ready(std::uint32_t granule, std::uint32_t granules, Generation generation);

  // Marks as sent at now, and appends to out, every slot due: ready ones,
  // quarantined ones whose quarantine has ended, and sent ones not
  // acknowledged within `retry`. O(slots in the queue).
  void collect_due(Clock::time_point now, std::chrono::nanoseconds retry, std::vector<Pending>& out);
  // Only the ready ones (quarantine and retries wait for the next tick).
  // O(ready slots).
  void collect_ready(Clock::time_point now, std::vector<Pending>& out);

  // True (and the slot leaves the queue) when a sent slot matches all three.
  bool acknowledge(std::uint32_t granule, std::uint32_t granules, Generation generation);

  std::uint64_t granules_total() const { return granules_total_; }
  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }

  template <typename F>
  void for_each(F&& f) const {
    for (const auto& [granule, item] : items_) f(Pending{granule, item.granules, item.generation, item.stage});
  }

 private:
  struct Item {
    std::uint32_t granules = 0;
    Stage stage = Stage::kReady;
    Clock::time_point at{};  // kQuarantined: until; kSent: when sent
    Generation generation = 0;
  };

  void add(std::uint32_t granule, const Item& item);

  std::map<std::uint32_t, Item> items_;  // by slot start granule
  std::vector<std::uint32_t> ready_;     // granules added as kReady and not yet collected
  std::uint64_t granules_total_ = 0;
};

}  // namespace kvpool::coordinator
