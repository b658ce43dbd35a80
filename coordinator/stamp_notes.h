#pragma once
// StampNotes: the LRU stamp clock noted against time, so that "last written
// or looked up at or before time t" becomes "stamp at most stamp_at(t)"
// (what `pooltool evict --older-than` selects by). No lock, no clock: the
// core notes under its mutex, from tick(), with `now`. Not thread-safe.

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "coordinator/coordinator_types.h"

namespace kvpool::coordinator {

class StampNotes {
 public:
  // Past this many notes every other one is dropped, so resolution
  // coarsens with uptime.
  static constexpr std::size_t kMaxNotes = 4096;

  // Notes `stamp` at `now`, unless the last note is less than a second old.
  void note(Clock::time_point now, std::uint64_t stamp);
  // The stamp of the last note taken at or before t; 0 (no block) when t
  // is before the first note.
  std::uint64_t stamp_at(Clock::time_point t) const;

 private:
  std::vector<std::pair<Clock::time_point, std::uint64_t>> notes_;  // (time, stamp), by time
};

}  // namespace kvpool::coordinator
