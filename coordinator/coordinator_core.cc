// CoordinatorCore: construction, and the lookups every part of the core uses.
// Each responsibility has its own file: core_namespaces.cc, core_membership.cc,
// core_recovery.cc, core_shards.cc, core_writes.cc, core_reads.cc,
// core_waiters.cc, core_blocks.cc, core_placement.cc, core_eviction.cc,
// core_drain.cc, core_tick.cc, core_invariants.cc; State is in core_state.h.

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

CoordinatorCore::CoordinatorCore(std::unique_ptr<State> state) : s_(std::move(state)) {}
CoordinatorCore::~CoordinatorCore() = default;

Result<std::unique_ptr<CoordinatorCore>> CoordinatorCore::create(const CoordinatorConfig& config) {
  using std::chrono::nanoseconds;
  if (!(config.low_watermark > 0.0 && config.low_watermark <= config.high_watermark && config.high_watermark <= 1.0)) {
    return make_error(StatusCode::kInvalidArgument, "watermarks must satisfy 0 < low <= high <= 1");
  }
  if (config.agent_timeout <= nanoseconds(0) || config.write_lease_ttl <= nanoseconds(0) ||
      config.read_lease_ttl <= nanoseconds(0) || config.invalidation_retry <= nanoseconds(0) ||
      config.write_quarantine < nanoseconds(0)) {
    return make_error(StatusCode::kInvalidArgument,
                      "agent timeout, lease ttls and invalidation retry must be positive, quarantine not negative");
  }
  if (config.shard_count == 0 || config.shard_index >= config.shard_count) {
    return make_error(StatusCode::kInvalidArgument, "shard_index must be below shard_count (>= 1)");
  }
  auto state = std::make_unique<State>();
  state->config = config;
  state->next_generation = config.first_generation;
  if (state->next_generation == 0) {
    state->next_generation = static_cast<Generation>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
  }
  state->next_lease = config.first_lease_id;
  if (state->next_lease == 0) {
    std::random_device rd;
    // 62 bits: ids never wrap around in practice.
    state->next_lease = (((static_cast<std::uint64_t>(rd()) << 32) | rd()) & ((1ull << 62) - 1)) + 1;
  }
  return std::unique_ptr<CoordinatorCore>(new CoordinatorCore(std::move(state)));
}

Result<Agent*> CoordinatorCore::State::current_agent(AgentId id, std::uint64_t incarnation) {
  Agent* a = find_agent(id);
  if (a == nullptr || !a->alive) {
    return make_error(StatusCode::kNotFound, "agent " + std::to_string(to_u32(id)) + " is unknown or dead");
  }
  if (a->reg.incarnation != incarnation) {
    return make_error(StatusCode::kFailedPrecondition, "agent " + std::to_string(to_u32(id)) + " incarnation " +
                                                           std::to_string(incarnation) + " is gone");
  }
  return a;
}

Result<std::uint32_t> CoordinatorCore::State::ns_lookup(NamespaceId id) const {
  auto it = ns_index.find(id);
  if (it == ns_index.end()) {
    return make_error(StatusCode::kNotFound, "unknown namespace " + hex(id) + ": register it first");
  }
  return it->second;
}

std::uint32_t CoordinatorCore::State::find_key(std::uint32_t ns, const Key128& key) const {
  return by_key.find(key_hash(ns, key), [&](std::uint32_t i) {
    const BlockEntry& e = slab[i];
    return e.key == key && e.ns == ns;
  });
}

std::uint32_t CoordinatorCore::State::find_slot(std::uint32_t agent_id, std::uint32_t granule) const {
  return by_slot.find(slot_hash(agent_id, granule), [&](std::uint32_t i) {
    const BlockEntry& e = slab[i];
    return e.agent == agent_id && e.granule == granule;
  });
}

Location CoordinatorCore::State::location_of(const BlockEntry& e) const {
  const Agent& a = agent(e.agent);
  const std::uint64_t offset = static_cast<std::uint64_t>(e.granule) * kGranule;
  return Location{
      AgentId{e.agent}, a.reg.incarnation, a.layout.payload_region_offset(offset), a.layout.header_offset(offset),
      e.length,         e.generation};
}

SlotRef CoordinatorCore::State::slot_ref(const Agent& a, const ReclaimQueue::Pending& p) const {
  const std::uint64_t offset = static_cast<std::uint64_t>(p.granule) * kGranule;
  return SlotRef{a.layout.header_offset(offset), a.layout.payload_region_offset(offset),
                 static_cast<std::uint64_t>(p.granules) * kGranule, p.generation};
}

}  // namespace kvpool::coordinator
