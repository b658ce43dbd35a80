// Placement: which agent and slot a new block gets, evicting above the high
// watermark.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

namespace {

// Agents tried per key before giving up on placing it now: if the least-full
// few cannot take a block, fuller ones will not either, and every try may
// evict (above the high watermark).
constexpr std::size_t kMaxPlacementTries = 8;

}  // namespace

void CoordinatorCore::State::watermark_evict(Agent& a, std::uint64_t granules, std::uint32_t& budget) {
  if (a.live_granules + granules <= a.high_granules) return;
  while (a.live_granules + granules > a.low_granules) {
    if (budget == 0) {
      a.draining = true;
      return;
    }
    const std::uint32_t i = a.lists.oldest(slab);
    if (i == kNil) return;
    evict(i);
    --budget;
  }
}

std::optional<pool::Slot> CoordinatorCore::State::place_now(Agent& a, std::uint64_t bytes, std::uint32_t& budget) {
  watermark_evict(a, bytes / kGranule, budget);
  auto slot = a.space->allocate(bytes);
  if (!slot) return std::nullopt;
  if (Status st = a.future->reserve(*slot); !st.ok()) {
    // space's free extents lie inside future's: this is a bug.
    logger()->error("agent {}: placement {}: {}", to_u32(a.id), slot->offset, st.to_string());
    (void)a.space->free(*slot);
    return std::nullopt;
  }
  a.used_granules += slot->length / kGranule;
  return *slot;
}

std::uint32_t CoordinatorCore::State::least_full(const std::vector<std::uint32_t>* pool_ids, std::uint64_t bytes,
                                                 const std::vector<std::uint32_t>& tried,
                                                 const std::string& tenant) const {
  std::uint32_t best = 0;
  double best_fraction = 2.0;
  auto consider = [&](std::uint32_t id) {
    const Agent& a = agent(id);
    if (!a.alive || a.recovering || a.retiring || a.layout.payload_bytes < bytes) return;
    if (a.reg.tenant != tenant) return;
    if (std::find(tried.begin(), tried.end(), id) != tried.end()) return;
    const double f = static_cast<double>(a.used_granules) / static_cast<double>(a.layout.num_granules);
    if (f < best_fraction) {
      best_fraction = f;
      best = id;
    }
  };
  if (pool_ids != nullptr) {
    for (std::uint32_t id : *pool_ids) consider(id);
  } else {
    for (std::uint32_t id = 1; id <= agents.size(); ++id) consider(id);
  }
  return best;
}

std::optional<pool::Slot> CoordinatorCore::State::choose_slot(std::uint64_t bytes,
                                                              const std::vector<std::uint32_t>& local,
                                                              const std::string& tenant, std::uint32_t& budget,
                                                              std::vector<std::uint32_t>& tried,
                                                              std::uint32_t& chosen) {
  std::optional<pool::Slot> slot;
  if (config.placement == PlacementPolicy::kLocalFirst && !local.empty()) {
    if (std::uint32_t id = least_full(&local, bytes, tried, tenant); id != 0) {
      tried.push_back(id);
      slot = place_now(agent(id), bytes, budget);
      if (slot) chosen = id;
    }
  }
  while (!slot && tried.size() < kMaxPlacementTries) {
    const std::uint32_t id = least_full(nullptr, bytes, tried, tenant);
    if (id == 0) break;
    tried.push_back(id);
    slot = place_now(agent(id), bytes, budget);
    if (slot) chosen = id;
  }
  return slot;
}

Status CoordinatorCore::State::no_room(const BlockRequest& req, const std::string& tenant,
                                       const std::vector<std::uint32_t>& tried, std::uint32_t& budget) {
  const std::uint64_t granules = slot_granules(req.length);
  const std::uint64_t bytes = granules * kGranule;
  if (tried.empty()) {
    return Status(StatusCode::kResourceExhausted,
                  "no live agent can hold a block of " + std::to_string(req.length) + " bytes" +
                      (tenant.empty() ? std::string()
                                      : " in a region of isolated tenant '" + tenant +
                                            "' (no agent has registered one, or none is live)"));
  }
  for (std::uint32_t id : tried) {
    const RoomOutcome room = make_room(agent(id), granules, budget);
    if (room != RoomOutcome::kNoWay) {
      return Status(StatusCode::kUnavailable, "no space free now for " + std::to_string(bytes) + " bytes; agent " +
                                                  std::to_string(id) +
                                                  " is reclaiming space (evicted blocks wait for their " +
                                                  "invalidation to be acknowledged): retry shortly");
    }
  }
  return Status(StatusCode::kResourceExhausted,
                "no agent can fit " + std::to_string(bytes) +
                    " bytes even after eviction: the space is read-leased or being written");
}

AllocateItem CoordinatorCore::State::place(std::uint32_t ns, const BlockRequest& req,
                                           const std::vector<std::uint32_t>& local, std::uint32_t client,
                                           Clock::time_point now, std::uint32_t& budget) {
  AllocateItem item;
  const std::uint64_t granules = slot_granules(req.length);
  const std::uint64_t bytes = granules * kGranule;
  std::vector<std::uint32_t> tried;
  std::uint32_t chosen = 0;
  const std::string& tenant = namespaces[ns].tenant;
  const std::optional<pool::Slot> slot = choose_slot(bytes, local, tenant, budget, tried, chosen);
  if (!slot) {
    item.status = no_room(req, tenant, tried, budget);
    return item;
  }

  Agent& a = agent(chosen);
  const std::uint32_t i = slab.allocate();
  if (i == kNil) {
    (void)a.space->free(*slot);
    (void)a.future->free(*slot);
    a.used_granules -= granules;
    item.status = Status(StatusCode::kResourceExhausted, "block index full (2^32 - 1 entries)");
    return item;
  }
  BlockEntry& e = slab[i];
  e.key = req.key;
  e.generation = next_generation++;
  e.stamp = ++touch_clock;
  e.agent = chosen;
  e.granule = static_cast<std::uint32_t>(slot->offset / kGranule);
  e.length = static_cast<std::uint32_t>(req.length);
  e.ns = ns;
  e.state = BlockState::kWriting;
  by_key.insert(key_hash(ns, req.key), i);
  by_slot.insert(slot_hash(chosen, e.granule), i);
  a.lists.link_busy(slab, i);
  a.live_granules += granules;
  ++namespaces[ns].live_blocks;
  namespaces[ns].live_bytes += bytes;

  const std::uint64_t lease = next_lease++;
  const Clock::time_point deadline = now + config.write_lease_ttl;
  write_leases.add(lease, WriteLease{i, client, e.generation, chosen, a.reg.incarnation, deadline, a.joins});
  ++client_open[client];

  item.outcome = AllocateOutcome::kPlaced;
  item.location = location_of(e);
  item.lease = LeaseId{lease};
  item.lease_deadline = deadline;
  return item;
}

}  // namespace kvpool::coordinator
