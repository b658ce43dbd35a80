#pragma once
// Which coordinator shard owns a key (DESIGN.md, "Scale, on paper": the key
// space is split across coordinators by key hash). With the shard map in
// etcd (runtime/etcd/shard_map.h) a coordinator owns key-point ranges
// (CoordinatorConfig::owned_ranges); shard_of(key, count) is the map of
// `count` equal ranges, ShardMap::equal(count).

#include <cstdint>

#include "kvpool/types.h"
#include "runtime/etcd/shard_map.h"

namespace kvpool::coordinator {

// Precondition: shard_count >= 1. Range reduction by multiply-shift, so
// shard_count need not be a power of two.
inline std::uint32_t shard_of(const Key128& key, std::uint32_t shard_count) {
  return static_cast<std::uint32_t>((std::uint64_t{etcd::key_point(key)} * shard_count) >> 32);
}

}  // namespace kvpool::coordinator
