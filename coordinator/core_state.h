#pragma once
// CoordinatorCore::State, shared by the core's .cc files (coordinator_core.cc
// and core_*.cc, one responsibility each); not for use outside the core.
// Every member is guarded by CoordinatorCore::mu_.

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coordinator/block_lists.h"
#include "coordinator/block_slab.h"
#include "coordinator/coordinator_core.h"
#include "coordinator/evicting_keys.h"
#include "coordinator/index_table.h"
#include "coordinator/lease_table.h"
#include "coordinator/reclaim_queue.h"
#include "coordinator/shard.h"
#include "coordinator/stamp_notes.h"
#include "coordinator/waiter_table.h"
#include "pool/slot_allocator.h"
#include "pool/slot_header.h"
#include "runtime/common/logging.h"

namespace kvpool::coordinator {
namespace core {

inline std::shared_ptr<spdlog::logger> logger() {
  static const std::shared_ptr<spdlog::logger> l = log::get("coordinator");
  return l;
}

inline std::uint64_t slot_hash(std::uint32_t agent, std::uint32_t granule) {
  return mix64((static_cast<std::uint64_t>(agent) << 32) | granule);
}

inline std::string hex(std::uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

inline std::string key_text(const Key128& k) { return hex(k.hi) + hex(k.lo); }

struct Namespace {
  NamespaceId id = 0;
  NamespaceDescriptor descriptor;
  std::uint64_t block_bytes = 0;  // 0: known only from recovered blocks, not registered since
  std::uint64_t blocks = 0;       // committed
  // Quota accounting: blocks being written or committed, and their slot bytes.
  std::uint64_t live_blocks = 0;
  std::uint64_t live_bytes = 0;
  std::uint64_t quota_blocks = 0;  // 0: none
  std::uint64_t quota_bytes = 0;   // 0: none
  // The isolated tenant whose regions hold the namespace's blocks (empty:
  // the shared regions). Set by register_namespace, or, for a namespace
  // known only from recovered blocks, by the region they came from.
  std::string tenant;
  // With a quota: the namespace's committed blocks by (LRU stamp, entry), so
  // a write over quota evicts exactly its least recently used unleased block.
  std::set<std::pair<std::uint64_t, std::uint32_t>> lru;
  // Blocks evicted whose agent has not acknowledged the invalidation yet:
  // still counted as blocks (no one may observe an eviction before then).
  std::uint64_t evicting = 0;
  bool has_quota() const { return quota_blocks != 0 || quota_bytes != 0; }
  // Whether `blocks` more blocks of `bytes` more slot bytes would pass the quota.
  bool over_quota(std::uint64_t blocks, std::uint64_t bytes) const {
    return (quota_blocks != 0 && live_blocks + blocks > quota_blocks) ||
           (quota_bytes != 0 && live_bytes + bytes > quota_bytes);
  }
};

struct Agent {
  AgentId id{};
  AgentRegistration reg;
  bool alive = false;
  Clock::time_point last_heartbeat{};
  pool::RegionLayout layout;
  // `space`: what can be placed now. `future`: what will be free once every
  // slot in `reclaim` is acknowledged (space plus reclaim). Every placement
  // is taken from space and reserved in future; a retired slot is freed in
  // future at once and in space on acknowledgement. So space's free extents
  // are always inside future's, and "would an extent fit once reclaim
  // completes" is one look at future, which keeps eviction from evicting
  // again while acknowledgements are in flight.
  std::optional<pool::SlotAllocator> space;
  std::optional<pool::SlotAllocator> future;
  BlockLists lists;
  ReclaimQueue reclaim;
  std::uint64_t used_granules = 0;  // space: everything not allocatable now
  std::uint64_t live_granules = 0;  // kWriting + kCommitted
  std::uint64_t committed_blocks = 0;
  std::uint64_t high_granules = 0;
  std::uint64_t low_granules = 0;
  bool draining = false;           // above the high watermark and eviction ran out of budget: tick() goes on
  bool recovering = false;         // rejoined, scan not finished: not placeable
  std::uint64_t joins = 0;         // registrations so far: a lease from before a rejoin names lost state
  std::uint64_t sweep_cursor = 0;  // where the next bounded window sweep starts (granule)
  // pooltool drain: not placeable; its blocks move to other agents. Its own
  // name: `draining` above is the watermark eviction's.
  bool retiring = false;
  std::uint64_t moved = 0;          // blocks moved off since the drain began
  std::uint64_t move_failures = 0;  // move attempts that failed since then
  // Evicted blocks whose slot invalidation the agent has not acknowledged
  // yet, by slot header offset: (namespace index, key, generation). They
  // are in State::evicting too.
  struct Evicting {
    std::uint32_t ns = 0;
    Key128 key;
    Generation generation = 0;
    bool removal = false;  // removed on request (remove, pooltool evict), not evicted under pressure
  };
  std::unordered_map<std::uint64_t, Evicting> evicting;
};

// A block being copied off a retiring agent (drain): the target slot is
// taken from the target's space and future like a placement, but no entry
// holds it until the move finishes; the source entry is pinned meanwhile.
struct Move {
  std::uint32_t entry = 0;
  Generation old_generation = 0;
  std::uint32_t source = 0;
  std::uint32_t target = 0;
  std::uint64_t target_incarnation = 0;
  std::uint64_t target_join = 0;  // Agent::joins when reserved: a rejoin drops the reservation
  pool::Slot slot;                // in the target's payload area
  Generation generation = 0;      // of the copy
  Clock::time_point deadline{};
};

struct WriteLease {
  std::uint32_t entry = 0;
  std::uint32_t client = 0;  // State::client_open index
  Generation generation = 0;
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  Clock::time_point deadline{};
  std::uint64_t join = 0;  // Agent::joins when issued
};

struct ReadLease {
  Clock::time_point deadline{};
  std::vector<std::pair<std::uint32_t, Generation>> pins;  // entry, generation (a reused entry has another)
};

enum class RoomOutcome { kFits, kProgress, kNoWay };

// What occupies a granule of the future map, for window planning.
struct Step {
  enum Kind { kFree, kEvictable, kBlocked } kind = kBlocked;
  std::uint64_t granules = 1;
  std::uint32_t entry = kNil;
};

// An agent as agents() and stats() show it (core_membership.cc).
AgentView view_of(const Agent& a);

}  // namespace core

using core::Agent;
using core::hex;
using core::key_text;
using core::logger;
using core::Move;
using core::Namespace;
using core::ReadLease;
using core::RoomOutcome;
using core::slot_hash;
using core::Step;
using core::view_of;
using core::WriteLease;
using pool::kGranule;

struct CoordinatorCore::State {
  CoordinatorConfig config;

  std::vector<Namespace> namespaces;
  std::unordered_map<NamespaceId, std::uint32_t> ns_index;

  std::vector<std::unique_ptr<Agent>> agents;  // AgentId v at agents[v - 1]
  std::unordered_map<std::string, std::uint32_t> agent_by_identity;

  BlockSlab slab;
  IndexTable by_key;   // (namespace, key) -> entry, for kWriting and kCommitted
  IndexTable by_slot;  // (agent, slot start granule) -> entry, every entry in use

  // Namespaces added by each client id and each tenant, for
  // max_namespaces_per_client and _per_tenant (since this coordinator started).
  std::unordered_map<std::string, std::uint32_t> namespaces_by_client;
  std::unordered_map<std::string, std::uint32_t> namespaces_by_tenant;

  LeaseTable<WriteLease> write_leases;
  // Open write leases per writer (client id), for max_write_leases_per_client.
  std::unordered_map<std::string, std::uint32_t> client_index;
  std::vector<std::uint64_t> client_open;
  LeaseTable<ReadLease> read_leases;

  // Drain moves in flight by id, and the move of each pinned source entry.
  std::unordered_map<std::uint64_t, Move> moves;
  std::unordered_map<std::uint32_t, std::uint64_t> moving;

  WaiterTable waiters;

  std::uint64_t next_lease = 1;
  Generation next_generation = 1;
  std::uint64_t touch_clock = 0;
  // touch_clock noted by tick() about once a second: which stamps are
  // older than a time (stamp_at).
  StampNotes stamp_notes;
  std::uint64_t epoch = 0;
  std::vector<DeadAgent> dead_since_tick;

  // Evicted blocks not yet invalidated by their agents, by key
  // (evicting_keys.h); removals are Agent::Evicting::removal.
  EvictingKeys evicting;

  std::uint64_t lookup_hits = 0;
  std::uint64_t lookup_misses = 0;
  std::uint64_t evictions = 0;  // includes evicting.count() (stats() subtracts it)
  std::uint64_t removals = 0;
  std::uint64_t expired_write_leases = 0;
  std::uint64_t aborted_write_leases = 0;

  // ---- inline accessors ----

  Agent& agent(std::uint32_t id) { return *agents[id - 1]; }
  const Agent& agent(std::uint32_t id) const { return *agents[id - 1]; }
  Agent* find_agent(AgentId id) {
    const std::uint32_t v = to_u32(id);
    return v == 0 || v > agents.size() ? nullptr : agents[v - 1].get();
  }
  const Agent* find_agent(AgentId id) const { return const_cast<State*>(this)->find_agent(id); }
  bool owns_all() const { return !config.owned_ranges && config.shard_count == 1; }

  // Lookups of agents, namespaces and entries (coordinator_core.cc).
  // The live agent `id` at `incarnation`: kNotFound when unknown or dead,
  // kFailedPrecondition when another incarnation took its place.
  Result<Agent*> current_agent(AgentId id, std::uint64_t incarnation);
  Result<std::uint32_t> ns_lookup(NamespaceId id) const;
  std::uint32_t find_key(std::uint32_t ns, const Key128& key) const;
  std::uint32_t find_slot(std::uint32_t agent_id, std::uint32_t granule) const;
  Location location_of(const BlockEntry& e) const;
  SlotRef slot_ref(const Agent& a, const ReclaimQueue::Pending& p) const;

  // Shard ownership (core_shards.cc).
  bool owns(const Key128& key) const;
  // Owned, or in a range moving away (readable until the move ends).
  bool can_read(const Key128& key) const;
  Status check_read(std::span<const Key128> keys) const;
  Status shard_error(const Key128& key) const;
  Status check_shard(std::span<const Key128> keys) const;

  // An entry's life: LRU, pins, retirement, evictions in flight (core_blocks.cc).
  // The per-namespace LRU of quota'd namespaces follows every committed
  // entry's stamp.
  void lru_insert(std::uint32_t i);
  void lru_erase(std::uint32_t i);
  void restamp(std::uint32_t i);
  void touch(std::uint32_t i);
  void pin(std::uint32_t i);
  void unpin(std::uint32_t i, Generation generation);
  // Takes an entry out of the index and puts its slot on the reclaim queue:
  // quarantined until `quarantine_until` when given, else ready to
  // invalidate.
  void retire(std::uint32_t i, std::optional<Clock::time_point> quarantine_until);
  void evict(std::uint32_t i);
  // Retires a committed, unpinned block whose header is valid: until the
  // agent acknowledges the invalidation the block is "evicting": lookups
  // reaching its key wait (server.cc), stats still count it.
  void retire_tracked(std::uint32_t i, bool removal);
  // The agent acknowledged the invalidation of the slot whose header is at
  // `header_offset`: an eviction there is over.
  void evicted_done(Agent& a, std::uint64_t header_offset, Generation generation);
  void forget_evicting(const Agent& a, const Agent::Evicting& ev);
  // The evicting slots of a key (none: empty).
  const std::vector<EvictingSlot>* evicting_of(std::uint32_t ns, const Key128& key) const;
  std::vector<InvalidateRequest> collect_ready(Clock::time_point now);

  // Membership (core_membership.cc).
  // Drops every block and slot of an agent whose memory is gone.
  void drop_agent_state(Agent& a);
  void declare_dead(Agent& a, const char* why);
  void sweep(Clock::time_point now);

  // Recovery (core_recovery.cc).
  // The namespace index of a recovered block: a known namespace of the
  // agent's tenant, or a new one known only from recovered blocks; nullopt
  // when the block may not be adopted.
  std::optional<std::uint32_t> recovered_namespace(const Agent& a, NamespaceId id);
  enum class Adoption { kAdopted, kDropped, kRepeat };
  // One block of recover_blocks(): adopted as committed, dropped (its slot
  // to invalidation when this coordinator accounts for it), or a repeat.
  Adoption adopt_block(Agent& a, const RecoveredBlock& b);

  // Placement (core_placement.cc).
  // Evicts least-recently-used blocks while the agent would pass its high
  // watermark, down to the low one (counting the new block).
  void watermark_evict(Agent& a, std::uint64_t granules, std::uint32_t& budget);
  std::optional<pool::Slot> place_now(Agent& a, std::uint64_t bytes, std::uint32_t& budget);
  // The live agent with the lowest used fraction among `pool_ids` (all live
  // agents when null) that can hold `bytes` and was not tried yet.
  // Only regions of `tenant` (an isolated tenant's, or the shared ones when
  // empty) are considered: a namespace's blocks never leave its regions.
  std::uint32_t least_full(const std::vector<std::uint32_t>* pool_ids, std::uint64_t bytes,
                           const std::vector<std::uint32_t>& tried, const std::string& tenant) const;
  // place()'s first step: a slot of `bytes` on the writer's host (local-first)
  // or the least full agents of `tenant`, at most kMaxPlacementTries of
  // them; the agents tried, and the one chosen, come back in the arguments.
  std::optional<pool::Slot> choose_slot(std::uint64_t bytes, const std::vector<std::uint32_t>& local,
                                        const std::string& tenant, std::uint32_t& budget,
                                        std::vector<std::uint32_t>& tried, std::uint32_t& chosen);
  // Why no agent took the block: none can (kResourceExhausted), or one is
  // making room by eviction (kUnavailable: retry).
  Status no_room(const BlockRequest& req, const std::string& tenant, const std::vector<std::uint32_t>& tried,
                 std::uint32_t& budget);
  // A new block being written, under a new write lease.
  AllocateItem place(std::uint32_t ns, const BlockRequest& req, const std::vector<std::uint32_t>& local,
                     std::uint32_t client, Clock::time_point now, std::uint32_t& budget);

  // Size-aware and quota eviction (core_eviction.cc).
  Step step_at(const Agent& a, std::uint64_t granule, const std::vector<pool::Slot>& free_extents) const;
  // The evictable blocks that make [start, start + granules) free-to-be, or
  // nullopt when a block there may not be evicted or more than `budget`
  // would have to go.
  std::optional<std::vector<std::uint32_t>> plan_window(const Agent& a, std::uint64_t start, std::uint64_t granules,
                                                        const std::vector<pool::Slot>& free_extents,
                                                        std::uint32_t budget) const;
  // Size-aware eviction for an allocation of `granules` that nothing can
  // hold now (slot_allocator.h: freeing random small blocks leaves the space
  // in crumbs). In order: nothing when the space will exist once pending
  // invalidations are acknowledged; the least recently used block of exactly
  // that size (its slot alone fits); of the smallest larger size; else a
  // window of consecutive evictable blocks next to one of the largest
  // free-to-be extents; else the first such window of a bounded sweep over
  // the region. When the cheapest window needs more than the budget, evicts
  // part of it (kProgress) so the next call finds a larger extent.
  RoomOutcome make_room(Agent& a, std::uint64_t granules, std::uint32_t& budget);
  // make_room()'s window steps: a window next to one of the largest
  // free-to-be extents within budget (true: evicted), else the bounded sweep.
  bool evict_next_to_free(Agent& a, std::uint64_t granules, const std::vector<pool::Slot>& extents,
                          std::uint32_t& budget);
  RoomOutcome sweep_for_room(Agent& a, std::uint64_t granules, const std::vector<pool::Slot>& extents,
                             std::uint32_t& budget);
  // Evicts the namespace's least recently used unleased blocks until one
  // more block of `bytes` fits its quota. False when the quota cannot make
  // room (every block is leased or being written).
  bool make_quota_room(std::uint32_t ns, std::uint64_t bytes);

  // Write leases (core_writes.cc).
  // The live, current-incarnation agent of a write lease with its entry
  // still being written, or null.
  bool write_lease_valid(const WriteLease& l) const;
  void expire_write_lease(const WriteLease& l, Clock::time_point now);

  // Drain moves (core_drain.cc).
  bool move_target_current(const Move& m) const;
  // The source entry of a move, when it is still the block that was copied.
  bool move_source_current(const Move& m) const;
  // A slot on `exclude`'s peers for a copy of `bytes`: the least full live,
  // placeable agent that stays under its high watermark (a drain evicts
  // nothing); taken from space and reserved in future like a placement.
  // Only into regions of the source's tenant (isolated or shared).
  std::optional<std::pair<std::uint32_t, pool::Slot>> place_move(std::uint32_t exclude, std::uint64_t bytes);
  // Ends a move that did not take: the block stays where it was (unpinned)
  // and the reserved slot waits out a write quarantine (a put may still
  // land) before its invalidation, like an expired write lease.
  void fail_move(const Move& m, Clock::time_point now);
  // Makes the copy the block's location: the old entry leaves the index (its
  // slot to invalidation now, or once its read leases end) and a committed
  // entry takes the target slot. False (nothing changed) when the index is full.
  bool complete_move(const Move& m);
  void forget_move(const Move& m, std::uint64_t id);
  std::uint64_t moves_from(std::uint32_t source) const;

  // tick()'s steps, in the order it takes them (core_tick.cc); the counts
  // are of leases expired and blocks evicted.
  std::uint64_t expire_write_leases(Clock::time_point now);
  void expire_moves(Clock::time_point now);
  std::uint64_t expire_read_leases(Clock::time_point now);
  // Agents above the high watermark whose eviction ran out of budget go on
  // down to the low one, within max_evictions_per_tick.
  std::uint64_t evict_draining();
  // Every invalidation due: new, or unacknowledged for invalidation_retry.
  std::vector<InvalidateRequest> collect_due(Clock::time_point now);

  // drain()'s steps (core_drain.cc).
  // Reserves a target slot and issues the move of entry i; false when no
  // other agent has room.
  bool issue_move(std::uint32_t src, std::uint32_t i, Clock::time_point now, DrainStep& step);
  // The busy list (being written, read-leased, moving, removed-but-read):
  // committed blocks a reader holds move too; it is short next to the LRU
  // lists, which are taken from their least recently used end.
  std::vector<std::uint32_t> held_blocks(const Agent& a, DrainStep& step) const;

  // Invariants (core_invariants.cc).
  Status check_agent(const Agent& a) const;
  Status check_all() const;
};

}  // namespace kvpool::coordinator
