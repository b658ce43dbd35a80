#include "runtime/client/router_merge.h"

namespace kvpool::detail {
namespace {

// A key of a moving range that one side missed is asked on the other side,
// then on the first again: the mover copies a block to the new owner before
// it removes it from the old, so a block missed at the new owner and then at
// the old one (removed there meanwhile) is at the new owner by the third
// ask. A key missed three times in a row is on neither side.
constexpr int kAskedEnough = 3;

}  // namespace

std::size_t prefix_of(const Client::Router::Split& split, const std::vector<std::size_t>& done, std::size_t n,
                      std::optional<std::size_t>* stopped_part) {
  std::size_t prefix = n;
  for (std::size_t p = 0; p < split.index.size(); ++p) {
    if (done[p] < split.index[p].size() && split.index[p][done[p]] < prefix) {
      prefix = split.index[p][done[p]];
      *stopped_part = p;
    }
  }
  return prefix;
}

bool refused_by_map(const Status& s) { return s.code() == StatusCode::kFailedPrecondition; }

void count_outcomes(PutResult& out) {
  out.written = out.deduplicated = out.pending = out.failed = 0;
  for (auto o : out.outcomes) {
    switch (o) {
      case PutOutcome::kWritten: ++out.written; break;
      case PutOutcome::kExists: ++out.deduplicated; break;
      case PutOutcome::kPending: ++out.pending; break;
      case PutOutcome::kFailed: ++out.failed; break;
    }
  }
}

std::vector<std::size_t> refused_keys(const std::vector<PutOutcome>& outcomes, const std::vector<Status>& errors) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    if (outcomes[i] == PutOutcome::kFailed && refused_by_map(errors[i])) out.push_back(i);
  }
  return out;
}

std::optional<Status> whole_call_error(const std::vector<Status>& errors, const std::vector<bool>& whole) {
  std::optional<Status> first;
  bool any_answered = whole.empty();
  for (std::size_t i = 0; i < whole.size(); ++i) {
    if (!whole[i]) {
      any_answered = true;
      continue;
    }
    const auto c = errors[i].code();
    if (c == StatusCode::kInvalidArgument || c == StatusCode::kFailedPrecondition) return errors[i];
    if (!first) first = errors[i];
  }
  if (!any_answered && first) return first;
  return std::nullopt;
}

bool OtherSide::again(const etcd::ShardMap& map, const Key128& at, bool missed, std::size_t found) {
  // A miss at a key of a moving range may be on the other side of the move.
  if (!map.range_of(etcd::key_point(at)).from || !missed) return false;
  asked_ = found == 0 ? asked_ + 1 : 1;
  if (asked_ == kAskedEnough) return false;  // on neither side
  via_from_ = !via_from_;
  return true;
}

}  // namespace kvpool::detail
