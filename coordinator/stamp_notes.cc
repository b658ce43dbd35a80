#include "coordinator/stamp_notes.h"

#include <algorithm>
#include <chrono>
#include <iterator>

namespace kvpool::coordinator {

void StampNotes::note(Clock::time_point now, std::uint64_t stamp) {
  if (notes_.empty() || now - notes_.back().first >= std::chrono::seconds(1)) {
    if (notes_.size() >= kMaxNotes) {
      std::size_t kept = 0;
      for (std::size_t i = 0; i < notes_.size(); i += 2) notes_[kept++] = notes_[i];
      notes_.resize(kept);
    }
    notes_.emplace_back(now, stamp);
  }
}

std::uint64_t StampNotes::stamp_at(Clock::time_point t) const {
  // The last note taken at or before t.
  auto it = std::upper_bound(notes_.begin(), notes_.end(), t,
                             [](Clock::time_point x, const auto& note) { return x < note.first; });
  return it == notes_.begin() ? 0 : std::prev(it)->second;
}

}  // namespace kvpool::coordinator
