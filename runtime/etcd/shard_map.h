#pragma once
// The shard map: which coordinator shard owns which keys, kept in etcd at
// /kvpool/shardmap (coordinator/README.md, "Sharding").
//
// A key's point is 32 bits of a mix of its 128 bits (key_point); the map
// cuts the point space [0, 2^32) into contiguous ranges, each owned by one
// shard. A shard may own several ranges. A range may carry `from`: it is
// moving from that shard to its new owner (a shard being added); writes go
// to the new owner, reads that miss there also ask `from`.
//
// JSON, either the short form (equal ranges, shard i owning the i-th):
//   {"version": 1, "shards": 2}
// or the full one (what encode_shard_map writes):
//   {"version": 3, "ranges": [{"start": 0, "end": 1073741824, "shard": 0},
//                              {"start": 1073741824, "end": 2147483648, "shard": 2, "from": 0},
//                              {"start": 2147483648, "end": 4294967296, "shard": 1}]}
// Ranges are sorted, contiguous, and cover [0, 2^32) exactly.
//
// No key at all means one shard, 0, owning everything (version 0): what a
// pool run before sharding, or with one shard, has.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "kvpool/types.h"
#include "runtime/etcd/etcd_client.h"

namespace kvpool::etcd {

inline constexpr const char* kShardMapKey = "/kvpool/shardmap";
inline constexpr std::uint64_t kPointSpace = std::uint64_t{1} << 32;

// Keys are XXH3-128 hashes but a worker may pass its own, so the bits are
// mixed first. Namespaces do not enter: a chain's first key already hashes
// the namespace id.
inline std::uint32_t key_point(const Key128& key) {
  std::uint64_t x = key.hi ^ (key.lo * 0x9e3779b97f4a7c15ull);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return static_cast<std::uint32_t>(x >> 32);
}

struct ShardRange {
  std::uint64_t start = 0;  // first point
  std::uint64_t end = 0;    // one past the last point (<= 2^32)
  std::uint32_t shard = 0;
  std::optional<std::uint32_t> from;  // moving from this shard (reads fall back to it)
  friend bool operator==(const ShardRange&, const ShardRange&) = default;
};

struct ShardMap {
  std::int64_t version = 0;
  std::vector<ShardRange> ranges;  // sorted, contiguous, covering [0, 2^32)

  // Equal ranges: shard i owns the points p with (p * count) >> 32 == i,
  // i.e. from ceil(i * 2^32 / count) on. Precondition: count >= 1.
  static ShardMap equal(std::uint32_t count, std::int64_t version = 0);

  // The range holding `point`.
  const ShardRange& range_of(std::uint32_t point) const;
  std::uint32_t shard_of(const Key128& key) const { return range_of(key_point(key)).shard; }
  // Distinct shard ids (owners and `from`s), ascending.
  std::vector<std::uint32_t> shards() const;
  // The ranges `shard` owns (to write and read).
  std::vector<ShardRange> owned_by(std::uint32_t shard) const;
  // Whether one shard owns everything with nothing moving.
  bool single() const { return ranges.size() == 1 && !ranges[0].from; }
  // "0: [0, 2147483648) ..." for logs and errors.
  std::string describe() const;
};

// The next version of `map` with a shard added: the upper half of the
// largest range not moving already goes to `shard`, moving from its owner
// (coordinator/README.md, "Adding a shard"). kInvalidArgument when `shard`
// is in the map already or no range can be split.
Result<ShardMap> add_shard(const ShardMap& map, std::uint32_t shard);

// kInvalidArgument naming what is wrong (not JSON, a gap or overlap, ...).
Result<ShardMap> parse_shard_map(const std::string& json);
std::string encode_shard_map(const ShardMap& map);

// The map in etcd: no key gives ShardMap::equal(1) at version 0;
// kFailedPrecondition naming the key for a malformed value; etcd's error
// when it cannot be read. `revision` (optional) gets the store's revision.
Result<ShardMap> read_shard_map(const Client& client, std::int64_t* revision = nullptr);

}  // namespace kvpool::etcd
