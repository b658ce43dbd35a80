// Invariants: check_consistency() cross-checks every structure.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

namespace {

Status internal(const std::string& what) { return Status(StatusCode::kInternal, what); }

// True when the ranges (sorted by offset) are disjoint and tile [0, total).
bool tiles(std::vector<pool::Slot>& ranges, std::uint64_t total) {
  std::sort(ranges.begin(), ranges.end(), [](const pool::Slot& x, const pool::Slot& y) { return x.offset < y.offset; });
  std::uint64_t pos = 0;
  for (const pool::Slot& r : ranges) {
    if (r.offset != pos) return false;
    pos = r.end();
  }
  return pos == total;
}

}  // namespace

Status CoordinatorCore::State::check_agent(const Agent& a) const {
  const std::string who = "agent " + std::to_string(to_u32(a.id)) + ": ";
  if (!a.alive) {
    if (a.lists.evictable_count() + a.lists.busy_count() != 0 || !a.reclaim.empty() || !a.evicting.empty()) {
      return internal(who + "dead but holds slots");
    }
    return Status::ok_status();
  }
  // Every evicting block is a slot on its way back, under the same generation.
  std::size_t evicting_found = 0;
  a.reclaim.for_each([&](const ReclaimQueue::Pending& p) {
    auto it = a.evicting.find(a.layout.header_offset(static_cast<std::uint64_t>(p.granule) * kGranule));
    if (it != a.evicting.end() && it->second.generation == p.generation) ++evicting_found;
  });
  if (evicting_found != a.evicting.size()) return internal(who + "an evicting block is not awaiting invalidation");
  std::vector<pool::Slot> entries;
  std::uint64_t live = 0, committed = 0, evictable = 0, busy = 0;
  Status bad;
  a.lists.for_each(slab, [&](std::uint32_t i) {
    if (!bad.ok()) return;
    const BlockEntry& e = slab[i];
    const std::uint64_t g = slot_granules(e.length);
    if (e.agent != to_u32(a.id)) bad = internal(who + "entry of agent " + std::to_string(e.agent) + " on its list");
    if (e.state == BlockState::kFree) bad = internal(who + "free entry on a list");
    const bool should_lru = e.state == BlockState::kCommitted && e.pins == 0;
    if ((e.list == BlockLists::kLru) != should_lru) bad = internal(who + "entry on the wrong list");
    if (e.state == BlockState::kRemovedLeased && e.pins == 0) bad = internal(who + "removed entry with no pins");
    if (e.state == BlockState::kWriting || e.state == BlockState::kCommitted) {
      live += g;
      if (find_key(e.ns, e.key) != i) bad = internal(who + "entry " + key_text(e.key) + " not found by key");
    }
    if (e.state == BlockState::kCommitted) ++committed;
    if (find_slot(e.agent, e.granule) != i) bad = internal(who + "entry not found by slot");
    (e.list == BlockLists::kLru ? evictable : busy)++;
    entries.push_back(pool::Slot{e.granule * kGranule, g * kGranule});
  });
  if (!bad.ok()) return bad;
  if (evictable != a.lists.evictable_count() || busy != a.lists.busy_count()) return internal(who + "list counts");
  if (live != a.live_granules) return internal(who + "live granules counter");
  if (committed != a.committed_blocks) return internal(who + "committed blocks counter");

  for (const auto& [id, m] : moves) {
    if (m.target == to_u32(a.id) && move_target_current(m)) entries.push_back(m.slot);
  }
  std::vector<pool::Slot> reclaim;
  a.reclaim.for_each([&](const ReclaimQueue::Pending& p) {
    reclaim.push_back(pool::Slot{p.granule * kGranule, p.granules * kGranule});
  });
  // space: its free extents, every entry and every reclaiming slot tile the
  // payload area (nothing is lost, nothing is handed out twice).
  std::vector<pool::Slot> all = a.space->free_extents();
  all.insert(all.end(), entries.begin(), entries.end());
  all.insert(all.end(), reclaim.begin(), reclaim.end());
  if (!tiles(all, a.layout.payload_bytes))
    return internal(who + "free space, blocks and reclaiming slots overlap or leave gaps");
  // future: its free extents and the entries tile it (reclaiming slots are free there).
  std::vector<pool::Slot> fut = a.future->free_extents();
  fut.insert(fut.end(), entries.begin(), entries.end());
  if (!tiles(fut, a.layout.payload_bytes)) return internal(who + "future map inconsistent with the blocks");
  if (a.space->stats().used_bytes != a.used_granules * kGranule) return internal(who + "used granules counter");
  return Status::ok_status();
}

Status CoordinatorCore::State::check_all() const {
  std::uint64_t in_lists = 0, keyed = 0;
  for (const auto& ap : agents) {
    if (Status st = check_agent(*ap); !st.ok()) return st;
    ap->lists.for_each(slab, [&](std::uint32_t i) {
      ++in_lists;
      if (slab[i].state == BlockState::kWriting || slab[i].state == BlockState::kCommitted) ++keyed;
    });
  }
  if (in_lists != slab.in_use()) return internal("slab entries in use not all on agent lists");
  if (keyed != by_key.size()) return internal("key index size");
  std::uint64_t evicting_agents = 0, evicting_keys = 0, evicting_ns = 0;
  for (const auto& ap : agents) evicting_agents += ap->evicting.size();
  evicting_keys = evicting.listed();
  for (const Namespace& n : namespaces) evicting_ns += n.evicting;
  std::uint64_t removing = 0;
  for (const auto& ap : agents) {
    for (const auto& [h, ev] : ap->evicting) removing += ev.removal ? 1 : 0;
  }
  if (evicting_agents != evicting.count() || evicting_keys != evicting.count() || evicting_ns != evicting.count() ||
      removing != evicting.removing()) {
    return internal("evicting block counts disagree");
  }
  if (in_lists != by_slot.size()) return internal("slot index size");
  std::vector<std::uint64_t> ns_blocks(namespaces.size(), 0);
  for (const auto& ap : agents) {
    ap->lists.for_each(slab, [&](std::uint32_t i) {
      if (slab[i].state == BlockState::kCommitted) ++ns_blocks[slab[i].ns];
    });
  }
  for (std::size_t n = 0; n < namespaces.size(); ++n) {
    if (ns_blocks[n] != namespaces[n].blocks) return internal("namespace block counter");
    if (namespaces[n].has_quota() && namespaces[n].lru.size() != namespaces[n].blocks) {
      return internal("namespace LRU of a quota does not hold every committed block");
    }
  }
  return Status::ok_status();
}

Status CoordinatorCore::check_consistency() const {
  std::lock_guard lock(mu_);
  return s_->check_all();
}

}  // namespace kvpool::coordinator
