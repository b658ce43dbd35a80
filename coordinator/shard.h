#pragma once
// Which coordinator shard owns a key (DESIGN.md, "Scale, on paper": the key
// space is split across coordinators by key hash, the shard map kept in
// etcd). There is one shard today; every keyed operation of the core still
// routes through shard_of(), so splitting later changes this function and the
// shard map, not the callers.

#include <cstdint>

#include "kvpool/types.h"

namespace kvpool::coordinator {

// Keys are XXH3-128 hashes but a worker may pass its own, so the bits are
// mixed first. Namespaces do not enter: a chain's first key already hashes
// the namespace id. Range reduction by multiply-shift: shard_count need not
// be a power of two. Precondition: shard_count >= 1.
inline std::uint32_t shard_of(const Key128& key, std::uint32_t shard_count) {
  std::uint64_t x = key.hi ^ (key.lo * 0x9e3779b97f4a7c15ull);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return static_cast<std::uint32_t>(((x >> 32) * shard_count) >> 32);
}

}  // namespace kvpool::coordinator
