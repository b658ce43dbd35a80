// Agent membership: joins, heartbeats, deaths and what they drop.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

void CoordinatorCore::State::drop_agent_state(Agent& a) {
  std::vector<std::uint32_t> all;
  all.reserve(a.lists.evictable_count() + a.lists.busy_count());
  a.lists.for_each(slab, [&](std::uint32_t i) { all.push_back(i); });
  for (std::uint32_t i : all) {
    BlockEntry& e = slab[i];
    if (e.state == BlockState::kWriting || e.state == BlockState::kCommitted) {
      by_key.erase(key_hash(e.ns, e.key), i);
      lru_erase(i);
      Namespace& n = namespaces[e.ns];
      --n.live_blocks;
      n.live_bytes -= static_cast<std::uint64_t>(slot_granules(e.length)) * kGranule;
      if (e.state == BlockState::kCommitted) --n.blocks;
    }
    by_slot.erase(slot_hash(e.agent, e.granule), i);
    e.list = BlockLists::kNone;
    slab.free(i);
  }
  a.lists = BlockLists{};
  // Its evictions are over: the memory that held the headers is gone.
  for (const auto& [header, ev] : a.evicting) forget_evicting(a, ev);
  a.evicting.clear();
  a.reclaim = ReclaimQueue{};
  a.space.reset();
  a.future.reset();
  a.used_granules = a.live_granules = a.committed_blocks = 0;
  a.draining = false;
  a.recovering = false;
  a.retiring = false;
}

void CoordinatorCore::State::declare_dead(Agent& a, const char* why) {
  logger()->warn("agent {} ({}, incarnation {}) declared dead: {}; dropping {} blocks", to_u32(a.id),
                 a.reg.control_address, a.reg.incarnation, why, a.committed_blocks);
  drop_agent_state(a);
  a.alive = false;
  ++epoch;
  dead_since_tick.push_back(DeadAgent{a.id, a.reg.incarnation});
}

void CoordinatorCore::State::sweep(Clock::time_point now) {
  for (auto& ap : agents) {
    if (ap->alive && now - ap->last_heartbeat > config.agent_timeout) declare_dead(*ap, "missed heartbeats");
  }
}

Result<AgentId> CoordinatorCore::register_agent(const AgentRegistration& reg, Clock::time_point now) {
  auto r = join(reg, now, /*rejoin=*/false);
  if (!r) return tl::unexpected(r.error());
  return r->id;
}

Result<Rejoin> CoordinatorCore::rejoin_agent(const AgentRegistration& reg, Clock::time_point now) {
  return join(reg, now, /*rejoin=*/true);
}

Result<Rejoin> CoordinatorCore::join(const AgentRegistration& reg, Clock::time_point now, bool rejoin) {
  std::string identity;
  if (!reg.control_address.empty()) {
    identity = "control:" + reg.control_address;
  } else if (!reg.worker_address.empty()) {
    identity = "worker:" + reg.worker_address;
  } else {
    return make_error(StatusCode::kInvalidArgument, "agent registration has neither a control nor a worker address");
  }
  auto layout = pool::RegionLayout::create(reg.region_bytes);
  if (!layout) {
    return make_error(StatusCode::kInvalidArgument, "agent " + reg.control_address + ": " + layout.error().message());
  }
  if (layout->num_granules >= kNil) {
    return make_error(StatusCode::kInvalidArgument, "agent " + reg.control_address + ": region of " +
                                                        std::to_string(reg.region_bytes) +
                                                        " bytes is over 2^32 granules");
  }
  auto space = pool::SlotAllocator::create(layout->payload_bytes);
  auto future = pool::SlotAllocator::create(layout->payload_bytes);
  if (!space || !future) return make_error(StatusCode::kInternal, "slot allocator for a valid layout failed");

  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  Agent* a = nullptr;
  if (auto it = s.agent_by_identity.find(identity); it != s.agent_by_identity.end()) {
    a = &s.agent(it->second);
    if (a->reg.incarnation == reg.incarnation) {
      if (a->alive && a->reg.region_bytes != reg.region_bytes) {
        return make_error(StatusCode::kFailedPrecondition, "agent " + std::to_string(it->second) + " incarnation " +
                                                               std::to_string(reg.incarnation) +
                                                               " registered before with another region size");
      }
      if (a->alive) {
        a->last_heartbeat = std::max(a->last_heartbeat, now);
        // A rejoin that finds its recovery unfinished (the agent reconnected
        // mid-scan) sends its blocks again; repeats are harmless.
        return Rejoin{a->id, a->recovering};
      }
      if (!rejoin) {
        return make_error(StatusCode::kFailedPrecondition,
                          "agent " + std::to_string(it->second) + " incarnation " + std::to_string(reg.incarnation) +
                              " was declared dead: rejoin with its scan, or register a new incarnation");
      }
    } else if (a->alive) {
      logger()->info("agent {} restarted: incarnation {} replaces {}", it->second, reg.incarnation, a->reg.incarnation);
      s.declare_dead(*a, "replaced by a new incarnation");
    }
  } else {
    if (s.agents.size() + 1 >= kNil) return make_error(StatusCode::kResourceExhausted, "too many agents");
    s.agents.push_back(std::make_unique<Agent>());
    a = s.agents.back().get();
    a->id = AgentId{static_cast<std::uint32_t>(s.agents.size())};
    s.agent_by_identity.emplace(identity, to_u32(a->id));
  }
  a->reg = reg;
  a->alive = true;
  a->recovering = rejoin;
  ++a->joins;
  a->last_heartbeat = now;
  a->layout = *layout;
  a->space.emplace(std::move(*space));
  a->future.emplace(std::move(*future));
  const auto n = static_cast<double>(layout->num_granules);
  a->high_granules = static_cast<std::uint64_t>(s.config.high_watermark * n);
  a->low_granules = static_cast<std::uint64_t>(s.config.low_watermark * n);
  ++s.epoch;
  logger()->info("agent {} {}: {} host {} incarnation {} region {} bytes ({} payload)", to_u32(a->id),
                 rejoin ? "rejoined, recovering its blocks" : "joined", reg.control_address, reg.host_id,
                 reg.incarnation, reg.region_bytes, layout->payload_bytes);
  return Rejoin{a->id, rejoin};
}

Status CoordinatorCore::heartbeat(AgentId id, std::uint64_t incarnation, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  Agent* a = s.find_agent(id);
  if (a == nullptr) return Status(StatusCode::kNotFound, "unknown agent " + std::to_string(to_u32(id)));
  if (!a->alive) {
    return Status(StatusCode::kNotFound, "agent " + std::to_string(to_u32(id)) + " was declared dead: register again");
  }
  if (a->reg.incarnation != incarnation) {
    return Status(StatusCode::kNotFound, "agent " + std::to_string(to_u32(id)) + " incarnation " +
                                             std::to_string(incarnation) + " is not the registered one (" +
                                             std::to_string(a->reg.incarnation) + "): register again");
  }
  a->last_heartbeat = std::max(a->last_heartbeat, now);
  return Status::ok_status();
}

namespace core {

AgentView view_of(const Agent& a) {
  AgentView v;
  v.id = a.id;
  v.incarnation = a.reg.incarnation;
  v.registration = a.reg;
  v.alive = a.alive;
  v.last_heartbeat = a.last_heartbeat;
  if (a.alive) {
    v.capacity_bytes = a.layout.payload_bytes;
    v.used_bytes = a.used_granules * kGranule;
    v.live_bytes = a.live_granules * kGranule;
    v.reclaiming_bytes = a.reclaim.granules_total() * kGranule;
    v.blocks = a.committed_blocks + a.evicting.size();  // evictions count once acknowledged
    v.largest_free = a.space->stats().largest_free;
    v.draining = a.retiring;
  }
  v.recovering = a.alive && a.recovering;
  return v;
}

}  // namespace core

std::vector<AgentView> CoordinatorCore::agents() const {
  std::lock_guard lock(mu_);
  std::vector<AgentView> out;
  for (const auto& a : s_->agents) {
    out.push_back(view_of(*a));
    out.back().drained = a->alive && a->retiring && a->lists.evictable_count() + a->lists.busy_count() == 0 &&
                         s_->moves_from(to_u32(a->id)) == 0;
  }
  return out;
}

std::size_t CoordinatorCore::expire_agents(std::string_view name, std::uint64_t keep, const char* why,
                                           Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  // The shared region decides: a tenant region of the same process goes
  // with it (its own incarnation differs from the one in etcd).
  bool shared_goes = false;
  for (const auto& ap : s.agents) {
    if (ap->alive && ap->reg.control_address == name) shared_goes = keep == 0 || ap->reg.incarnation != keep;
  }
  if (!shared_goes && keep != 0) return 0;
  std::size_t n = 0;
  for (auto& ap : s.agents) {
    if (!ap->alive) continue;
    const std::string& c = ap->reg.control_address;
    const bool same = c == name;
    const bool tenant = c.size() > name.size() && c.compare(0, name.size(), name) == 0 && c[name.size()] == '/';
    if (!same && !tenant) continue;
    if (same && keep != 0 && ap->reg.incarnation == keep) continue;
    s.declare_dead(*ap, why);
    ++n;
  }
  return n;
}

std::uint64_t CoordinatorCore::membership_epoch() const {
  std::lock_guard lock(mu_);
  return s_->epoch;
}

}  // namespace kvpool::coordinator
