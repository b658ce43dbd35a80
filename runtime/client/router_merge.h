#pragma once
// How the router (router.h) merges the shards' answers to one call back into
// the caller's order: the prefix a get or lookup ends at, the keys a shard
// refused for the shard map, the error of a call as a whole, and when a read
// asks the other side of a moving range. Shared by the plain calls
// (router_calls.cc) and the mapped ones (router_mapped.cc); no I/O.

#include <cstddef>
#include <optional>
#include <vector>

#include "kvpool/client.h"
#include "runtime/client/router.h"
#include "runtime/etcd/shard_map.h"

namespace kvpool::detail {

// The caller's prefix given how many leading keys of each part were done:
// the first caller index whose part stopped before it (n when none did), and
// that part (nullopt when none).
std::size_t prefix_of(const Client::Router::Split& split, const std::vector<std::size_t>& done, std::size_t n,
                      std::optional<std::size_t>* stopped_part);

// A coordinator refused the call for the shard map (it is ahead of ours).
bool refused_by_map(const Status& s);

// Sets written, deduplicated, pending and failed from out.outcomes.
void count_outcomes(PutResult& out);

// The keys of `out` refused for the shard map (kFailedPrecondition), in
// order.
std::vector<std::size_t> refused_keys(const std::vector<PutOutcome>& outcomes, const std::vector<Status>& errors);

// After the passes: a whole-call kInvalidArgument/kFailedPrecondition fails
// the call (as on one shard); so does a call no shard answered.
std::optional<Status> whole_call_error(const std::vector<Status>& errors, const std::vector<bool>& whole);

// The passes of a read (get, lookup, mapped get) over a moving range: which
// side the next pass asks.
class OtherSide {
 public:
  // The next pass sends keys of a moving range to the shard they move from.
  bool via_from() const { return via_from_; }
  // After a pass that found `found` keys and ended at `at`, missed there
  // (`missed`: kNotFound, not an error): true when the next pass should ask
  // the other side of at's move.
  bool again(const etcd::ShardMap& map, const Key128& at, bool missed, std::size_t found);

 private:
  bool via_from_ = false;
  int asked_ = 0;  // passes in a row that ended at the same key
};

}  // namespace kvpool::detail
