// Shard ownership: which keys this coordinator serves, and listing a key range.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

bool CoordinatorCore::State::owns(const Key128& key) const {
  if (owns_all()) return true;
  if (!config.owned_ranges) return shard_of(key, config.shard_count) == config.shard_index;
  const std::uint64_t p = etcd::key_point(key);
  for (const auto& [start, end] : *config.owned_ranges) {
    if (p >= start && p < end) return true;
  }
  return false;
}

bool CoordinatorCore::State::can_read(const Key128& key) const {
  if (owns(key)) return true;
  if (config.readable_ranges.empty()) return false;
  const std::uint64_t p = etcd::key_point(key);
  for (const auto& [start, end] : config.readable_ranges) {
    if (p >= start && p < end) return true;
  }
  return false;
}

Status CoordinatorCore::State::check_read(std::span<const Key128> keys) const {
  if (owns_all()) return Status::ok_status();
  for (const Key128& k : keys) {
    if (!can_read(k)) return shard_error(k);
  }
  return Status::ok_status();
}

Status CoordinatorCore::State::shard_error(const Key128& key) const {
  if (config.owned_ranges) {
    return Status(StatusCode::kFailedPrecondition,
                  "key " + key_text(key) + " (point " + std::to_string(etcd::key_point(key)) +
                      ") is not in the key ranges of shard " + std::to_string(config.shard_index) +
                      ": route it by the shard map in etcd (" + etcd::kShardMapKey + ")");
  }
  return Status(StatusCode::kFailedPrecondition,
                "key " + key_text(key) + " belongs to shard " + std::to_string(shard_of(key, config.shard_count)) +
                    ", this coordinator serves shard " + std::to_string(config.shard_index));
}

Status CoordinatorCore::State::check_shard(std::span<const Key128> keys) const {
  if (owns_all()) return Status::ok_status();
  for (const Key128& k : keys) {
    if (!owns(k)) return shard_error(k);
  }
  return Status::ok_status();
}

void CoordinatorCore::set_owned_ranges(std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges,
                                       std::vector<std::pair<std::uint64_t, std::uint64_t>> readable) {
  std::lock_guard lock(mu_);
  s_->config.owned_ranges = std::move(ranges);
  s_->config.readable_ranges = std::move(readable);
}

CoordinatorCore::KeyListing CoordinatorCore::list_keys(std::uint64_t start, std::uint64_t end, std::uint32_t cursor,
                                                       std::uint32_t limit) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  KeyListing out;
  const std::uint32_t high = s.slab.high_water();
  std::uint32_t i = cursor;
  for (; i < high && out.keys.size() < limit; ++i) {
    const BlockEntry& e = s.slab[i];
    if (e.state != BlockState::kCommitted) continue;
    const std::uint64_t p = etcd::key_point(e.key);
    if (p < start || p >= end) continue;
    out.keys.emplace_back(s.namespaces[e.ns].id, e.key);
  }
  out.next = i < high ? i : 0;
  return out;
}

}  // namespace kvpool::coordinator
