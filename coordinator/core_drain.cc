// Drain: moving a retiring agent's blocks to other agents.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

bool CoordinatorCore::State::move_target_current(const Move& m) const {
  const Agent& t = agent(m.target);
  return t.alive && t.reg.incarnation == m.target_incarnation && t.joins == m.target_join;
}

bool CoordinatorCore::State::move_source_current(const Move& m) const {
  if (m.entry >= slab.high_water()) return false;
  const BlockEntry& e = slab[m.entry];
  return e.state == BlockState::kCommitted && e.generation == m.old_generation && e.agent == m.source;
}

std::optional<std::pair<std::uint32_t, pool::Slot>> CoordinatorCore::State::place_move(std::uint32_t exclude,
                                                                                       std::uint64_t bytes) {
  std::vector<std::uint32_t> tried{exclude};
  const std::string tenant = agent(exclude).reg.tenant;
  for (;;) {
    const std::uint32_t id = least_full(nullptr, bytes, tried, tenant);
    if (id == 0) return std::nullopt;
    tried.push_back(id);
    Agent& t = agent(id);
    if (t.used_granules + bytes / kGranule > t.high_granules) continue;
    auto slot = t.space->allocate(bytes);
    if (!slot) continue;
    if (Status st = t.future->reserve(*slot); !st.ok()) {
      logger()->error("agent {}: move placement {}: {}", id, slot->offset, st.to_string());
      (void)t.space->free(*slot);
      continue;
    }
    t.used_granules += slot->length / kGranule;
    return std::make_pair(id, *slot);
  }
}

void CoordinatorCore::State::fail_move(const Move& m, Clock::time_point now) {
  if (move_target_current(m)) {
    Agent& t = agent(m.target);
    if (Status st = t.future->free(m.slot); !st.ok()) {
      logger()->error("agent {}: release of move slot {}: {}", m.target, m.slot.offset, st.to_string());
    }
    t.reclaim.add_quarantined(static_cast<std::uint32_t>(m.slot.offset / kGranule),
                              static_cast<std::uint32_t>(m.slot.length / kGranule), m.generation,
                              now + config.write_quarantine);
  }
  Agent& src = agent(m.source);
  if (src.alive) ++src.move_failures;
  unpin(m.entry, m.old_generation);
}

bool CoordinatorCore::State::complete_move(const Move& m) {
  const std::uint32_t j = slab.allocate();
  if (j == kNil) return false;
  unpin(m.entry, m.old_generation);
  BlockEntry& old = slab[m.entry];
  const std::uint32_t ns = old.ns;
  const Key128 key = old.key;
  const std::uint32_t length = old.length;
  const std::uint64_t g = slot_granules(length);
  if (old.pins == 0) {
    retire(m.entry, std::nullopt);
  } else {
    Agent& src = agent(old.agent);
    by_key.erase(key_hash(old.ns, old.key), m.entry);
    lru_erase(m.entry);
    src.live_granules -= g;
    --src.committed_blocks;
    Namespace& n = namespaces[ns];
    --n.blocks;
    --n.live_blocks;
    n.live_bytes -= g * kGranule;
    old.state = BlockState::kRemovedLeased;
  }
  Agent& t = agent(m.target);
  BlockEntry& e = slab[j];
  e.key = key;
  e.generation = m.generation;
  e.stamp = ++touch_clock;
  e.agent = m.target;
  e.granule = static_cast<std::uint32_t>(m.slot.offset / kGranule);
  e.length = length;
  e.ns = ns;
  e.state = BlockState::kCommitted;
  by_key.insert(key_hash(ns, key), j);
  by_slot.insert(slot_hash(m.target, e.granule), j);
  t.lists.link_lru(slab, j);
  t.live_granules += g;
  ++t.committed_blocks;
  Namespace& n = namespaces[ns];
  ++n.blocks;
  ++n.live_blocks;
  n.live_bytes += g * kGranule;
  lru_insert(j);
  ++agent(m.source).moved;
  return true;
}

void CoordinatorCore::State::forget_move(const Move& m, std::uint64_t id) {
  auto it = moving.find(m.entry);
  if (it != moving.end() && it->second == id) moving.erase(it);
}

std::uint64_t CoordinatorCore::State::moves_from(std::uint32_t source) const {
  std::uint64_t n = 0;
  for (const auto& [id, m] : moves) n += m.source == source ? 1 : 0;
  return n;
}

bool CoordinatorCore::State::issue_move(std::uint32_t src, std::uint32_t i, Clock::time_point now, DrainStep& step) {
  const BlockEntry& e = slab[i];
  const std::uint64_t bytes = static_cast<std::uint64_t>(slot_granules(e.length)) * kGranule;
  auto placed = place_move(src, bytes);
  if (!placed) {
    step.placement = Status(StatusCode::kResourceExhausted,
                            "no other live agent has " + std::to_string(bytes) +
                                " bytes free under its high watermark for a block of agent " + std::to_string(src));
    return false;
  }
  const auto [target, slot] = *placed;
  Agent& t = agent(target);
  Move m;
  m.entry = i;
  m.old_generation = e.generation;
  m.source = src;
  m.target = target;
  m.target_incarnation = t.reg.incarnation;
  m.target_join = t.joins;
  m.slot = slot;
  m.generation = next_generation++;
  m.deadline = now + config.write_lease_ttl;
  const std::uint64_t move_id = next_lease++;
  BlockMove bm;
  bm.id = move_id;
  bm.ns = namespaces[e.ns].id;
  bm.key = e.key;
  bm.from = location_of(e);
  bm.to = Location{AgentId{target},
                   t.reg.incarnation,
                   t.layout.payload_region_offset(slot.offset),
                   t.layout.header_offset(slot.offset),
                   e.length,
                   m.generation};
  bm.deadline = m.deadline;
  pin(i);  // off the LRU list: eviction leaves it alone, and oldest() moves on
  moves.emplace(move_id, m);
  moving[i] = move_id;
  step.moves.push_back(bm);
  return true;
}

std::vector<std::uint32_t> CoordinatorCore::State::held_blocks(const Agent& a, DrainStep& step) const {
  std::vector<std::uint32_t> held;
  a.lists.for_each_busy(slab, [&](std::uint32_t i) {
    const BlockEntry& e = slab[i];
    if (e.state == BlockState::kWriting) ++step.writing;
    if (e.state != BlockState::kCommitted) return;
    if (auto it = moving.find(i); it != moving.end()) {
      auto m = moves.find(it->second);
      if (m != moves.end() && m->second.old_generation == e.generation) return;  // already moving
    }
    held.push_back(i);
  });
  return held;
}

Result<DrainStep> CoordinatorCore::drain(AgentId id, std::uint32_t max_in_flight, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  Agent* a = s.find_agent(id);
  if (a == nullptr || !a->alive) {
    return make_error(StatusCode::kNotFound, "agent " + std::to_string(to_u32(id)) + " is unknown or down");
  }
  if (a->recovering) {
    return make_error(StatusCode::kUnavailable, "agent " + std::to_string(to_u32(id)) +
                                                    " is recovering its blocks after a rejoin: retry shortly");
  }
  if (!a->retiring) {
    a->retiring = true;
    a->moved = a->move_failures = 0;
    logger()->info("agent {} ({}) draining: {} blocks to move", to_u32(id), a->reg.control_address,
                   a->committed_blocks);
  }
  const std::uint32_t src = to_u32(id);
  DrainStep step;
  const std::uint64_t in_flight = s.moves_from(src);
  const std::uint64_t room = max_in_flight > in_flight ? max_in_flight - in_flight : 0;
  const std::vector<std::uint32_t> held = s.held_blocks(*a, step);
  bool full = false;
  while (!full && step.moves.size() < room) {
    const std::uint32_t i = a->lists.oldest(s.slab);
    if (i == kNil) break;
    full = !s.issue_move(src, i, now, step);
  }
  for (std::size_t k = 0; k < held.size() && !full && step.moves.size() < room; ++k)
    full = !s.issue_move(src, held[k], now, step);
  // Blocks left unmoved for want of room (not for want of in-flight slots).
  if (full) {
    const std::uint64_t moving = in_flight + step.moves.size();
    step.unplaceable = std::max<std::uint64_t>(1, a->committed_blocks > moving ? a->committed_blocks - moving : 0);
  }
  step.blocks_left = a->committed_blocks;
  step.in_flight = s.moves_from(src);
  step.moved = a->moved;
  step.failed = a->move_failures;
  step.drained = a->lists.evictable_count() + a->lists.busy_count() == 0 && step.in_flight == 0;
  return step;
}

Status CoordinatorCore::undrain(AgentId id, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  Agent* a = s.find_agent(id);
  if (a == nullptr || !a->alive) {
    return Status(StatusCode::kNotFound, "agent " + std::to_string(to_u32(id)) + " is unknown or down");
  }
  if (a->retiring) logger()->info("agent {} ({}) takes placements again", to_u32(id), a->reg.control_address);
  a->retiring = false;
  return Status::ok_status();
}

Result<BatchResult> CoordinatorCore::finish_moves(AgentId id, std::uint64_t incarnation,
                                                  std::span<const MoveOutcome> outcomes, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto found = s.current_agent(id, incarnation);
  if (!found) return tl::unexpected(found.error());
  BatchResult r;
  r.statuses.reserve(outcomes.size());
  for (const MoveOutcome& o : outcomes) {
    auto it = s.moves.find(o.id);
    if (it == s.moves.end() || it->second.source != to_u32(id)) {
      r.statuses.emplace_back(StatusCode::kNotFound, "move " + std::to_string(o.id) + " is unknown or expired");
      continue;
    }
    const Move m = it->second;
    s.moves.erase(it);
    s.forget_move(m, o.id);
    Status why;
    if (!o.status.ok()) {
      why = o.status;
    } else if (now > m.deadline) {
      why = Status(StatusCode::kDeadlineExceeded, "move " + std::to_string(o.id) + " finished past its deadline");
    } else if (!s.move_target_current(m)) {
      why = Status(StatusCode::kUnavailable, "the target agent of move " + std::to_string(o.id) + " is gone");
    } else if (!s.move_source_current(m)) {
      why = Status(StatusCode::kFailedPrecondition,
                   "the block of move " + std::to_string(o.id) + " was removed or evicted meanwhile");
    }
    if (why.ok() && !s.complete_move(m)) why = Status(StatusCode::kResourceExhausted, "block index full");
    if (!why.ok()) s.fail_move(m, now);
    r.statuses.push_back(why);
  }
  r.invalidations = s.collect_ready(now);
  return r;
}

}  // namespace kvpool::coordinator
