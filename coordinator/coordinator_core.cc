#include "coordinator/coordinator_core.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <numeric>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

#include "coordinator/block_lists.h"
#include "coordinator/block_slab.h"
#include "coordinator/index_table.h"
#include "coordinator/reclaim_queue.h"
#include "coordinator/shard.h"
#include "pool/slot_allocator.h"
#include "pool/slot_header.h"
#include "runtime/common/logging.h"

namespace kvpool::coordinator {
namespace {

using pool::kGranule;

// Agents tried per key before giving up on placing it now: if the least-full
// few cannot take a block, fuller ones will not either, and every try may
// evict (above the high watermark).
constexpr std::size_t kMaxPlacementTries = 8;
// Candidate windows (largest free-to-be extents) tried by size-aware eviction
// before the bounded sweep of the whole region.
constexpr std::size_t kWindowCandidates = 16;
// Bounds the sweep (a hash lookup a step) to a few milliseconds under the lock.
constexpr std::uint64_t kMaxSweepSteps = 1u << 16;

std::shared_ptr<spdlog::logger> logger() {
  static const std::shared_ptr<spdlog::logger> l = log::get("coordinator");
  return l;
}

std::uint64_t key_hash(std::uint32_t ns, const Key128& key) {
  return mix64(key.lo ^
               mix64(key.hi ^ (static_cast<std::uint64_t>(ns) * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull)));
}

std::uint64_t slot_hash(std::uint32_t agent, std::uint32_t granule) {
  return mix64((static_cast<std::uint64_t>(agent) << 32) | granule);
}

std::string hex(std::uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string key_text(const Key128& k) { return hex(k.hi) + hex(k.lo); }

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

struct WaitKey {
  std::uint32_t ns = 0;
  Key128 key;
  friend bool operator==(const WaitKey&, const WaitKey&) = default;
};
struct WaitKeyHash {
  std::size_t operator()(const WaitKey& k) const { return static_cast<std::size_t>(key_hash(k.ns, k.key)); }
};

struct Waiter {
  std::uint32_t ns = 0;
  std::vector<Key128> keys;
  std::vector<bool> committed;
  std::size_t remaining = 0;
  Clock::time_point deadline{};
  WaitCallback done;
};

// Callbacks to run once the lock is released.
using ReadyCallbacks = std::vector<std::pair<WaitCallback, std::vector<bool>>>;

void run_callbacks(ReadyCallbacks& ready) {
  for (auto& [done, committed] : ready) done(std::move(committed));
}

using ExpiryHeap = std::priority_queue<std::pair<Clock::time_point, std::uint64_t>,
                                       std::vector<std::pair<Clock::time_point, std::uint64_t>>, std::greater<>>;

// A lease that ends early (commit, abort, release) leaves its heap pair
// behind until the deadline passes. At a high rate that is rate x ttl stale
// pairs (16 MB per million), so the heap is rebuilt from the live leases once
// it holds more than twice as many pairs: amortised O(1) per lease.
template <typename Map>
void compact_expiry(ExpiryHeap& heap, const Map& live) {
  if (heap.size() < 1024 || heap.size() <= 2 * live.size()) return;
  std::vector<std::pair<Clock::time_point, std::uint64_t>> pairs;
  pairs.reserve(live.size());
  for (const auto& [id, lease] : live) pairs.emplace_back(lease.deadline, id);
  heap = ExpiryHeap(std::greater<>(), std::move(pairs));
}

enum class RoomOutcome { kFits, kProgress, kNoWay };

// What occupies a granule of the future map, for window planning.
struct Step {
  enum Kind { kFree, kEvictable, kBlocked } kind = kBlocked;
  std::uint64_t granules = 1;
  std::uint32_t entry = kNil;
};

}  // namespace

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

  std::unordered_map<std::uint64_t, WriteLease> write_leases;
  // Open write leases per writer (client id), for max_write_leases_per_client.
  std::unordered_map<std::string, std::uint32_t> client_index;
  std::vector<std::uint64_t> client_open;
  ExpiryHeap write_expiry;  // (deadline, lease); stale pairs are skipped
  std::unordered_map<std::uint64_t, ReadLease> read_leases;
  ExpiryHeap read_expiry;

  // Drain moves in flight by id, and the move of each pinned source entry.
  std::unordered_map<std::uint64_t, Move> moves;
  std::unordered_map<std::uint32_t, std::uint64_t> moving;

  std::unordered_map<std::uint64_t, Waiter> waiters;
  std::unordered_map<WaitKey, std::vector<std::pair<std::uint64_t, std::uint32_t>>, WaitKeyHash> wait_index;
  std::set<std::pair<Clock::time_point, std::uint64_t>> waiter_deadlines;

  std::uint64_t next_lease = 1;
  std::uint64_t next_waiter = 1;
  Generation next_generation = 1;
  std::uint64_t touch_clock = 0;
  // (time, touch_clock) noted by tick() about once a second: which stamps
  // are older than a time (stamp_at). Thinned to every other note past
  // kMaxStampNotes.
  std::vector<std::pair<Clock::time_point, std::uint64_t>> stamp_notes;
  std::uint64_t epoch = 0;
  std::vector<DeadAgent> dead_since_tick;

  // Evicted blocks not yet invalidated by their agents, by (namespace
  // index, key): lookups, wait_for and stats must not show the eviction
  // before the agent has zeroed the slot header (a coordinator restart
  // would otherwise bring back a block a client saw go). Usually one
  // element per key; more when a key was written and evicted again before
  // the first acknowledgement.
  std::unordered_map<WaitKey, std::vector<EvictingSlot>, WaitKeyHash> evicting;
  std::uint64_t evicting_count = 0;  // elements of `evicting`
  std::uint64_t removing_count = 0;  // of which removals (Agent::Evicting::removal)

  std::uint64_t lookup_hits = 0;
  std::uint64_t lookup_misses = 0;
  std::uint64_t evictions = 0;  // includes evicting_count (stats() subtracts it)
  std::uint64_t removals = 0;
  std::uint64_t expired_write_leases = 0;
  std::uint64_t aborted_write_leases = 0;

  // ---- helpers ----

  Agent& agent(std::uint32_t id) { return *agents[id - 1]; }
  const Agent& agent(std::uint32_t id) const { return *agents[id - 1]; }
  Agent* find_agent(AgentId id) {
    const std::uint32_t v = to_u32(id);
    return v == 0 || v > agents.size() ? nullptr : agents[v - 1].get();
  }
  const Agent* find_agent(AgentId id) const { return const_cast<State*>(this)->find_agent(id); }
  // The live agent `id` at `incarnation`: kNotFound when unknown or dead,
  // kFailedPrecondition when another incarnation took its place.
  Result<Agent*> current_agent(AgentId id, std::uint64_t incarnation) {
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

  Result<std::uint32_t> ns_lookup(NamespaceId id) const {
    auto it = ns_index.find(id);
    if (it == ns_index.end()) {
      return make_error(StatusCode::kNotFound, "unknown namespace " + hex(id) + ": register it first");
    }
    return it->second;
  }

  bool owns_all() const { return !config.owned_ranges && config.shard_count == 1; }
  bool owns(const Key128& key) const {
    if (owns_all()) return true;
    if (!config.owned_ranges) return shard_of(key, config.shard_count) == config.shard_index;
    const std::uint64_t p = etcd::key_point(key);
    for (const auto& [start, end] : *config.owned_ranges) {
      if (p >= start && p < end) return true;
    }
    return false;
  }
  // Owned, or in a range moving away (readable until the move ends).
  bool can_read(const Key128& key) const {
    if (owns(key)) return true;
    if (config.readable_ranges.empty()) return false;
    const std::uint64_t p = etcd::key_point(key);
    for (const auto& [start, end] : config.readable_ranges) {
      if (p >= start && p < end) return true;
    }
    return false;
  }
  Status check_read(std::span<const Key128> keys) const {
    if (owns_all()) return Status::ok_status();
    for (const Key128& k : keys) {
      if (!can_read(k)) return shard_error(k);
    }
    return Status::ok_status();
  }
  Status shard_error(const Key128& key) const {
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
  Status check_shard(std::span<const Key128> keys) const {
    if (owns_all()) return Status::ok_status();
    for (const Key128& k : keys) {
      if (!owns(k)) return shard_error(k);
    }
    return Status::ok_status();
  }

  std::uint32_t find_key(std::uint32_t ns, const Key128& key) const {
    return by_key.find(key_hash(ns, key), [&](std::uint32_t i) {
      const BlockEntry& e = slab[i];
      return e.key == key && e.ns == ns;
    });
  }
  std::uint32_t find_slot(std::uint32_t agent_id, std::uint32_t granule) const {
    return by_slot.find(slot_hash(agent_id, granule), [&](std::uint32_t i) {
      const BlockEntry& e = slab[i];
      return e.agent == agent_id && e.granule == granule;
    });
  }

  Location location_of(const BlockEntry& e) const {
    const Agent& a = agent(e.agent);
    const std::uint64_t offset = static_cast<std::uint64_t>(e.granule) * kGranule;
    return Location{
        AgentId{e.agent}, a.reg.incarnation, a.layout.payload_region_offset(offset), a.layout.header_offset(offset),
        e.length,         e.generation};
  }

  SlotRef slot_ref(const Agent& a, const ReclaimQueue::Pending& p) const {
    const std::uint64_t offset = static_cast<std::uint64_t>(p.granule) * kGranule;
    return SlotRef{a.layout.header_offset(offset), a.layout.payload_region_offset(offset),
                   static_cast<std::uint64_t>(p.granules) * kGranule, p.generation};
  }

  // The per-namespace LRU of quota'd namespaces follows every committed
  // entry's stamp.
  void lru_insert(std::uint32_t i) {
    const BlockEntry& e = slab[i];
    Namespace& n = namespaces[e.ns];
    if (n.has_quota() && e.state == BlockState::kCommitted) n.lru.emplace(e.stamp, i);
  }
  void lru_erase(std::uint32_t i) {
    const BlockEntry& e = slab[i];
    Namespace& n = namespaces[e.ns];
    if (n.has_quota()) n.lru.erase({e.stamp, i});
  }
  void restamp(std::uint32_t i) {
    lru_erase(i);
    slab[i].stamp = ++touch_clock;
    lru_insert(i);
  }

  void touch(std::uint32_t i) {
    BlockEntry& e = slab[i];
    restamp(i);
    if (e.list == BlockLists::kLru) {
      Agent& a = agent(e.agent);
      a.lists.unlink(slab, i);
      a.lists.link_lru(slab, i);
    }
  }

  void pin(std::uint32_t i) {
    BlockEntry& e = slab[i];
    if (e.pins++ == 0 && e.list == BlockLists::kLru) {
      Agent& a = agent(e.agent);
      a.lists.unlink(slab, i);
      a.lists.link_busy(slab, i);
    }
  }

  void unpin(std::uint32_t i, Generation generation) {
    // The entry may be gone (its agent died) and even reused since.
    if (i >= slab.high_water()) return;
    BlockEntry& e = slab[i];
    if (e.state == BlockState::kFree || e.generation != generation || e.pins == 0) return;
    if (--e.pins > 0) return;
    Agent& a = agent(e.agent);
    if (e.state == BlockState::kCommitted) {
      a.lists.unlink(slab, i);
      restamp(i);
      a.lists.link_lru(slab, i);
    } else if (e.state == BlockState::kRemovedLeased) {
      retire(i, std::nullopt);
    }
  }

  // Takes an entry out of the index and puts its slot on the reclaim queue:
  // quarantined until `quarantine_until` when given, else ready to
  // invalidate.
  void retire(std::uint32_t i, std::optional<Clock::time_point> quarantine_until) {
    BlockEntry& e = slab[i];
    Agent& a = agent(e.agent);
    const std::uint32_t g = slot_granules(e.length);
    a.lists.unlink(slab, i);
    if (e.state == BlockState::kWriting || e.state == BlockState::kCommitted) {
      [[maybe_unused]] const bool erased = by_key.erase(key_hash(e.ns, e.key), i);
      assert(erased);
      lru_erase(i);
      Namespace& n = namespaces[e.ns];
      --n.live_blocks;
      n.live_bytes -= static_cast<std::uint64_t>(g) * kGranule;
      a.live_granules -= g;
      if (e.state == BlockState::kCommitted) {
        --a.committed_blocks;
        --namespaces[e.ns].blocks;
      }
    }
    [[maybe_unused]] const bool erased = by_slot.erase(slot_hash(e.agent, e.granule), i);
    assert(erased);
    const pool::Slot slot{static_cast<std::uint64_t>(e.granule) * kGranule, static_cast<std::uint64_t>(g) * kGranule};
    if (Status st = a.future->free(slot); !st.ok()) {
      logger()->error("agent {}: reclaim of slot of block {}: {}", e.agent, key_text(e.key), st.to_string());
    }
    if (quarantine_until) {
      a.reclaim.add_quarantined(e.granule, g, e.generation, *quarantine_until);
    } else {
      a.reclaim.add_ready(e.granule, g, e.generation);
    }
    slab.free(i);
  }

  void evict(std::uint32_t i) {
    assert(slab[i].state == BlockState::kCommitted && slab[i].pins == 0);
    SPDLOG_LOGGER_TRACE(logger(), "evict block {} from agent {}", key_text(slab[i].key), slab[i].agent);
    retire_tracked(i, /*removal=*/false);
    ++evictions;
  }

  // Retires a committed, unpinned block whose header is valid: until the
  // agent acknowledges the invalidation the block is "evicting": lookups
  // reaching its key wait (server.cc), stats still count it.
  void retire_tracked(std::uint32_t i, bool removal) {
    const BlockEntry& e = slab[i];
    Agent& a = agent(e.agent);
    const Agent::Evicting ev{e.ns, e.key, e.generation, removal};
    const std::uint64_t offset = static_cast<std::uint64_t>(e.granule) * kGranule;
    const EvictingSlot ref{AgentId{e.agent}, a.layout.header_offset(offset), e.generation};
    retire(i, std::nullopt);
    if (a.evicting.emplace(ref.header_offset, ev).second) {
      evicting[WaitKey{ev.ns, ev.key}].push_back(ref);
      ++evicting_count;
      if (removal) ++removing_count;
      ++namespaces[ev.ns].evicting;
    }
  }

  // The agent acknowledged the invalidation of the slot whose header is at
  // `header_offset`: an eviction there is over.
  void evicted_done(Agent& a, std::uint64_t header_offset, Generation generation) {
    auto it = a.evicting.find(header_offset);
    if (it == a.evicting.end() || it->second.generation != generation) return;
    forget_evicting(a, it->second);
    a.evicting.erase(it);
  }
  void forget_evicting(const Agent& a, const Agent::Evicting& ev) {
    auto k = evicting.find(WaitKey{ev.ns, ev.key});
    if (k != evicting.end()) {
      std::erase_if(k->second, [&](const EvictingSlot& r) {
        return r.agent == a.id && r.generation == ev.generation;
      });
      if (k->second.empty()) evicting.erase(k);
    }
    --evicting_count;
    if (ev.removal) --removing_count;
    --namespaces[ev.ns].evicting;
  }
  // The evicting slots of a key (none: empty).
  const std::vector<EvictingSlot>* evicting_of(std::uint32_t ns, const Key128& key) const {
    if (evicting.empty()) return nullptr;
    auto it = evicting.find(WaitKey{ns, key});
    return it == evicting.end() ? nullptr : &it->second;
  }

  // Drops every block and slot of an agent whose memory is gone.
  void drop_agent_state(Agent& a) {
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

  void declare_dead(Agent& a, const char* why) {
    logger()->warn("agent {} ({}, incarnation {}) declared dead: {}; dropping {} blocks", to_u32(a.id),
                   a.reg.control_address, a.reg.incarnation, why, a.committed_blocks);
    drop_agent_state(a);
    a.alive = false;
    ++epoch;
    dead_since_tick.push_back(DeadAgent{a.id, a.reg.incarnation});
  }

  void sweep(Clock::time_point now) {
    for (auto& ap : agents) {
      if (ap->alive && now - ap->last_heartbeat > config.agent_timeout) declare_dead(*ap, "missed heartbeats");
    }
  }

  std::vector<InvalidateRequest> collect_ready(Clock::time_point now) {
    std::vector<InvalidateRequest> out;
    std::vector<ReclaimQueue::Pending> pending;
    for (auto& ap : agents) {
      if (!ap->alive) continue;
      pending.clear();
      ap->reclaim.collect_ready(now, pending);
      if (pending.empty()) continue;
      InvalidateRequest req{ap->id, ap->reg.incarnation, {}};
      req.slots.reserve(pending.size());
      for (const auto& p : pending) req.slots.push_back(slot_ref(*ap, p));
      out.push_back(std::move(req));
    }
    return out;
  }

  // ---- placement and eviction ----

  // Evicts least-recently-used blocks while the agent would pass its high
  // watermark, down to the low one (counting the new block).
  void watermark_evict(Agent& a, std::uint64_t granules, std::uint32_t& budget) {
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

  std::optional<pool::Slot> place_now(Agent& a, std::uint64_t bytes, std::uint32_t& budget) {
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

  Step step_at(const Agent& a, std::uint64_t granule, const std::vector<pool::Slot>& free_extents) const {
    const std::uint64_t offset = granule * kGranule;
    // The free extent holding offset, if any (the last one starting at or before it).
    auto it = std::upper_bound(free_extents.begin(), free_extents.end(), offset,
                               [](std::uint64_t off, const pool::Slot& s) { return off < s.offset; });
    if (it != free_extents.begin() && std::prev(it)->end() > offset) {
      return Step{Step::kFree, (std::prev(it)->end() - offset) / kGranule, kNil};
    }
    const std::uint32_t i = find_slot(to_u32(a.id), static_cast<std::uint32_t>(granule));
    // Inside a slot (a sweep resuming where boundaries have since moved):
    // step one granule until the next boundary.
    if (i == kNil) return Step{};
    const BlockEntry& e = slab[i];
    const bool evictable = e.state == BlockState::kCommitted && e.pins == 0;
    return Step{evictable ? Step::kEvictable : Step::kBlocked, slot_granules(e.length), i};
  }

  // The evictable blocks that make [start, start + granules) free-to-be, or
  // nullopt when a block there may not be evicted or more than `budget`
  // would have to go.
  std::optional<std::vector<std::uint32_t>> plan_window(const Agent& a, std::uint64_t start, std::uint64_t granules,
                                                        const std::vector<pool::Slot>& free_extents,
                                                        std::uint32_t budget) const {
    if (start + granules > a.layout.num_granules) return std::nullopt;
    std::vector<std::uint32_t> plan;
    for (std::uint64_t pos = start; pos < start + granules;) {
      const Step s = step_at(a, pos, free_extents);
      if (s.kind == Step::kBlocked) return std::nullopt;
      if (s.kind == Step::kEvictable) {
        if (plan.size() == budget) return std::nullopt;
        plan.push_back(s.entry);
      }
      pos += s.granules;
    }
    return plan;
  }

  // Size-aware eviction for an allocation of `granules` that nothing can
  // hold now (slot_allocator.h: freeing random small blocks leaves the space
  // in crumbs). In order: nothing when the space will exist once pending
  // invalidations are acknowledged; the least recently used block of exactly
  // that size (its slot alone fits); of the smallest larger size; else a
  // window of consecutive evictable blocks next to one of the largest
  // free-to-be extents; else the first such window of a bounded sweep over
  // the region. When the cheapest window needs more than the budget, evicts
  // part of it (kProgress) so the next call finds a larger extent.
  RoomOutcome make_room(Agent& a, std::uint64_t granules, std::uint32_t& budget) {
    if (a.future->stats().largest_free >= granules * kGranule) return RoomOutcome::kFits;
    if (a.lists.evictable_count() == 0) return RoomOutcome::kNoWay;
    if (budget == 0) return RoomOutcome::kProgress;
    const auto g32 = static_cast<std::uint32_t>(granules);
    std::uint32_t i = a.lists.oldest_of_size(g32);
    if (i == kNil) i = a.lists.oldest_larger_than(g32);
    if (i != kNil) {
      evict(i);
      --budget;
      return RoomOutcome::kFits;
    }

    const std::vector<pool::Slot> extents = a.future->free_extents();
    std::vector<std::size_t> order(extents.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    const std::size_t n = std::min(order.size(), kWindowCandidates);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                      [&](std::size_t x, std::size_t y) { return extents[x].length > extents[y].length; });
    for (std::size_t k = 0; k < n; ++k) {
      if (auto plan = plan_window(a, extents[order[k]].offset / kGranule, granules, extents, budget)) {
        for (std::uint32_t e : *plan) evict(e);
        budget -= static_cast<std::uint32_t>(plan->size());
        return RoomOutcome::kFits;
      }
    }

    // Sliding window over the region, resuming where the previous sweep
    // stopped and wrapping around: the shortest run ending at each position
    // that spans `granules` with no blocked slot; the first within budget
    // wins, else the one needing the fewest evictions is started on. A
    // sweep cut short by its bound asks for a retry (the next one goes on).
    std::deque<Step> window;
    std::uint64_t window_granules = 0;
    std::uint32_t window_evictable = 0;
    std::vector<std::uint32_t> best;
    bool best_set = false;
    auto reset_window = [&] {
      window.clear();
      window_granules = 0;
      window_evictable = 0;
    };
    const std::uint64_t total = a.layout.num_granules;
    std::uint64_t pos = a.sweep_cursor < total ? a.sweep_cursor : 0;
    std::uint64_t covered = 0;
    std::uint64_t steps = 0;
    for (; covered < total + granules && steps < kMaxSweepSteps; ++steps) {
      if (pos >= total) {
        pos = 0;
        reset_window();
      }
      const Step s = step_at(a, pos, extents);
      pos += s.granules;
      covered += s.granules;
      if (s.kind == Step::kBlocked) {
        reset_window();
        continue;
      }
      window.push_back(s);
      window_granules += s.granules;
      if (s.kind == Step::kEvictable) ++window_evictable;
      while (!window.empty() && window_granules - window.front().granules >= granules) {
        window_granules -= window.front().granules;
        if (window.front().kind == Step::kEvictable) --window_evictable;
        window.pop_front();
      }
      if (window_granules < granules) continue;
      if (window_evictable <= budget) {
        for (const Step& w : window) {
          if (w.kind == Step::kEvictable) evict(w.entry);
        }
        budget -= window_evictable;
        a.sweep_cursor = pos;
        return RoomOutcome::kFits;
      }
      if (!best_set || window_evictable < best.size()) {
        best.clear();
        for (const Step& w : window) {
          if (w.kind == Step::kEvictable) best.push_back(w.entry);
        }
        best_set = true;
      }
    }
    a.sweep_cursor = pos;
    if (best_set) {
      for (std::size_t k = 0; k < best.size() && budget > 0; ++k, --budget) evict(best[k]);
      return RoomOutcome::kProgress;
    }
    return steps < kMaxSweepSteps ? RoomOutcome::kNoWay : RoomOutcome::kProgress;
  }

  // The live agent with the lowest used fraction among `pool_ids` (all live
  // agents when null) that can hold `bytes` and was not tried yet.
  // Only regions of `tenant` (an isolated tenant's, or the shared ones when
  // empty) are considered: a namespace's blocks never leave its regions.
  std::uint32_t least_full(const std::vector<std::uint32_t>* pool_ids, std::uint64_t bytes,
                           const std::vector<std::uint32_t>& tried, const std::string& tenant) const {
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

  AllocateItem place(std::uint32_t ns, const BlockRequest& req, const std::vector<std::uint32_t>& local,
                     std::uint32_t client, Clock::time_point now, std::uint32_t& budget) {
    AllocateItem item;
    const std::uint64_t granules = slot_granules(req.length);
    const std::uint64_t bytes = granules * kGranule;
    std::vector<std::uint32_t> tried;
    std::optional<pool::Slot> slot;
    std::uint32_t chosen = 0;
    const std::string& tenant = namespaces[ns].tenant;
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
    if (!slot) {
      if (tried.empty()) {
        item.status = Status(StatusCode::kResourceExhausted,
                             "no live agent can hold a block of " + std::to_string(req.length) + " bytes" +
                                 (tenant.empty() ? std::string()
                                                 : " in a region of isolated tenant '" + tenant +
                                                       "' (no agent has registered one, or none is live)"));
        return item;
      }
      for (std::uint32_t id : tried) {
        const RoomOutcome room = make_room(agent(id), granules, budget);
        if (room != RoomOutcome::kNoWay) {
          item.status = Status(StatusCode::kUnavailable, "no space free now for " + std::to_string(bytes) +
                                                             " bytes; agent " + std::to_string(id) +
                                                             " is reclaiming space (evicted blocks wait for their " +
                                                             "invalidation to be acknowledged): retry shortly");
          return item;
        }
      }
      item.status = Status(StatusCode::kResourceExhausted,
                           "no agent can fit " + std::to_string(bytes) +
                               " bytes even after eviction: the space is read-leased or being written");
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
    write_leases.emplace(lease, WriteLease{i, client, e.generation, chosen, a.reg.incarnation, deadline, a.joins});
    ++client_open[client];
    compact_expiry(write_expiry, write_leases);
    write_expiry.emplace(deadline, lease);

    item.outcome = AllocateOutcome::kPlaced;
    item.location = location_of(e);
    item.lease = LeaseId{lease};
    item.lease_deadline = deadline;
    return item;
  }

  // Evicts the namespace's least recently used unleased blocks until one
  // more block of `bytes` fits its quota. False when the quota cannot make
  // room (every block is leased or being written).
  bool make_quota_room(std::uint32_t ns, std::uint64_t bytes) {
    Namespace& n = namespaces[ns];
    auto it = n.lru.begin();
    while (n.over_quota(1, bytes)) {
      while (it != n.lru.end() && slab[it->second].pins != 0) ++it;
      if (it == n.lru.end()) return false;
      const std::uint32_t victim = (it++)->second;
      evict(victim);  // erases victim's pair; `it` already moved past it
    }
    return true;
  }

  // ---- leases ----

  // The live, current-incarnation agent of a write lease with its entry
  // still being written, or null.
  bool write_lease_valid(const WriteLease& l) const {
    const Agent& a = agent(l.agent);
    if (!a.alive || a.reg.incarnation != l.incarnation || a.joins != l.join) return false;
    const BlockEntry& e = slab[l.entry];
    return e.state == BlockState::kWriting && e.generation == l.generation;
  }

  void expire_write_lease(const WriteLease& l, Clock::time_point now) {
    if (!write_lease_valid(l)) return;
    retire(l.entry, now + config.write_quarantine);
    ++expired_write_leases;
  }

  // ---- waiters ----

  void finish_waiter(std::uint64_t id, ReadyCallbacks* ready) {
    auto it = waiters.find(id);
    if (it == waiters.end()) return;
    Waiter& w = it->second;
    for (std::size_t pos = 0; pos < w.keys.size(); ++pos) {
      if (w.committed[pos]) continue;
      auto wi = wait_index.find(WaitKey{w.ns, w.keys[pos]});
      if (wi == wait_index.end()) continue;
      auto& v = wi->second;
      v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& p) { return p.first == id; }), v.end());
      if (v.empty()) wait_index.erase(wi);
    }
    waiter_deadlines.erase({w.deadline, id});
    if (ready != nullptr) ready->emplace_back(std::move(w.done), std::move(w.committed));
    waiters.erase(it);
  }

  void notify_committed(std::uint32_t ns, const Key128& key, ReadyCallbacks& ready) {
    if (wait_index.empty()) return;
    auto it = wait_index.find(WaitKey{ns, key});
    if (it == wait_index.end()) return;
    const auto list = std::move(it->second);
    wait_index.erase(it);
    for (const auto& [id, pos] : list) {
      auto wit = waiters.find(id);
      if (wit == waiters.end() || wit->second.committed[pos]) continue;
      wit->second.committed[pos] = true;
      if (--wit->second.remaining == 0) finish_waiter(id, &ready);
    }
  }

  // ---- drain moves ----

  bool move_target_current(const Move& m) const {
    const Agent& t = agent(m.target);
    return t.alive && t.reg.incarnation == m.target_incarnation && t.joins == m.target_join;
  }

  // The source entry of a move, when it is still the block that was copied.
  bool move_source_current(const Move& m) const {
    if (m.entry >= slab.high_water()) return false;
    const BlockEntry& e = slab[m.entry];
    return e.state == BlockState::kCommitted && e.generation == m.old_generation && e.agent == m.source;
  }

  // A slot on `exclude`'s peers for a copy of `bytes`: the least full live,
  // placeable agent that stays under its high watermark (a drain evicts
  // nothing); taken from space and reserved in future like a placement.
  // Only into regions of the source's tenant (isolated or shared).
  std::optional<std::pair<std::uint32_t, pool::Slot>> place_move(std::uint32_t exclude, std::uint64_t bytes) {
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

  // Ends a move that did not take: the block stays where it was (unpinned)
  // and the reserved slot waits out a write quarantine (a put may still
  // land) before its invalidation, like an expired write lease.
  void fail_move(const Move& m, Clock::time_point now) {
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

  // Makes the copy the block's location: the old entry leaves the index (its
  // slot to invalidation now, or once its read leases end) and a committed
  // entry takes the target slot. False (nothing changed) when the index is full.
  bool complete_move(const Move& m) {
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

  void forget_move(const Move& m, std::uint64_t id) {
    auto it = moving.find(m.entry);
    if (it != moving.end() && it->second == id) moving.erase(it);
  }

  std::uint64_t moves_from(std::uint32_t source) const {
    std::uint64_t n = 0;
    for (const auto& [id, m] : moves) n += m.source == source ? 1 : 0;
    return n;
  }

  // ---- consistency ----

  Status check_agent(const Agent& a) const;
  Status check_all() const;
};

// ---------------------------------------------------------------------------

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

// ---- namespaces ----

Result<NamespaceId> CoordinatorCore::register_namespace(const NamespaceDescriptor& desc, std::string_view tenant,
                                                        const NamespaceRegistrant& by) {
  auto bytes = block_bytes_of(desc);
  if (!bytes) return tl::unexpected(bytes.error());
  const NamespaceId id = namespace_id(desc);
  std::lock_guard lock(mu_);
  State& s = *s_;
  if (auto it = s.ns_index.find(id); it != s.ns_index.end()) {
    Namespace& n = s.namespaces[it->second];
    if (n.block_bytes == 0) {  // known from recovered blocks until now
      n.descriptor = desc;
      n.block_bytes = *bytes;
      logger()->info("namespace {} registered again: {} {}", hex(id), desc.model_id, desc.layout);
    }
    if (n.tenant != tenant) {
      // The tenants file changed (or the blocks came back from another kind
      // of region): new blocks go to the new regions; blocks already placed
      // stay where they are until evicted.
      logger()->warn("namespace {} ({}) moves from {} to {}: its {} blocks stay where they are", hex(id),
                     desc.model_id, n.tenant.empty() ? "the shared regions" : "isolated tenant '" + n.tenant + "'",
                     tenant.empty() ? "the shared regions" : "isolated tenant '" + std::string(tenant) + "'", n.blocks);
      n.tenant = std::string(tenant);
    }
    return id;
  }
  if (s.namespaces.size() >= s.config.max_namespaces) {
    return make_error(StatusCode::kResourceExhausted, "too many namespaces: the limit is " +
                                                          std::to_string(s.config.max_namespaces) +
                                                          " (coordinator config max_namespaces)");
  }
  std::uint32_t* by_client = by.client.empty() ? nullptr : &s.namespaces_by_client[by.client];
  std::uint32_t* by_tenant = by.tenant.empty() ? nullptr : &s.namespaces_by_tenant[by.tenant];
  if (by_tenant != nullptr && s.config.max_namespaces_per_tenant != 0 &&
      *by_tenant >= s.config.max_namespaces_per_tenant) {
    return make_error(StatusCode::kResourceExhausted,
                      "tenant '" + by.tenant + "' has registered " + std::to_string(*by_tenant) +
                          " namespaces, its limit (coordinator flag --max-namespaces-per-tenant)");
  }
  if (by_client != nullptr && s.config.max_namespaces_per_client != 0 &&
      *by_client >= s.config.max_namespaces_per_client) {
    return make_error(StatusCode::kResourceExhausted,
                      "client '" + by.client + "' has registered " + std::to_string(*by_client) +
                          " namespaces, its limit (coordinator flag --max-namespaces-per-client)");
  }
  if (by_client != nullptr) ++*by_client;
  if (by_tenant != nullptr) ++*by_tenant;
  s.ns_index.emplace(id, static_cast<std::uint32_t>(s.namespaces.size()));
  Namespace& fresh = s.namespaces.emplace_back();
  fresh.id = id;
  fresh.descriptor = desc;
  fresh.block_bytes = *bytes;
  fresh.tenant = std::string(tenant);
  logger()->info("namespace {} registered: {} {} block {} bytes{}", hex(id), desc.model_id, desc.layout, *bytes,
                 tenant.empty() ? std::string() : ", in the regions of isolated tenant '" + std::string(tenant) + "'");
  return id;
}

std::vector<NamespaceView> CoordinatorCore::namespaces() const {
  std::lock_guard lock(mu_);
  std::vector<NamespaceView> out;
  for (const Namespace& n : s_->namespaces) {
    // Blocks being evicted still count until their agent acknowledges.
    out.push_back(NamespaceView{n.id, n.descriptor, n.block_bytes, n.blocks + n.evicting, n.live_bytes,
                                n.quota_blocks, n.quota_bytes, n.live_blocks, n.tenant});
  }
  return out;
}

Result<std::string> CoordinatorCore::namespace_tenant(NamespaceId id) const {
  std::lock_guard lock(mu_);
  auto it = s_->ns_index.find(id);
  if (it == s_->ns_index.end()) return make_error(StatusCode::kNotFound, "unknown namespace " + hex(id));
  return s_->namespaces[it->second].tenant;
}

Result<BatchResult> CoordinatorCore::set_quota(NamespaceId ns_id, std::uint64_t quota_blocks,
                                               std::uint64_t quota_bytes, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  Namespace& n = s.namespaces[*ns];
  const bool had = n.has_quota();
  n.quota_blocks = quota_blocks;
  n.quota_bytes = quota_bytes;
  if (!n.has_quota()) {
    n.lru.clear();
  } else if (!had) {
    // Start following the namespace's committed blocks: one pass over the
    // slab (an operator's command, not a data-path call).
    for (std::uint32_t i = 0; i < s.slab.high_water(); ++i) {
      const BlockEntry& e = s.slab[i];
      if (e.state == BlockState::kCommitted && e.ns == *ns) n.lru.emplace(e.stamp, i);
    }
  }
  // Down to the new quota now, as far as unleased blocks allow.
  for (auto it = n.lru.begin(); n.over_quota(0, 0) && it != n.lru.end();) {
    const std::uint32_t i = (it++)->second;
    if (s.slab[i].pins == 0) s.evict(i);
  }
  logger()->info("namespace {} quota: {} blocks, {} bytes (0: none)", hex(ns_id), quota_blocks, quota_bytes);
  BatchResult r;
  r.invalidations = s.collect_ready(now);
  return r;
}

// ---- agents ----

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

Result<RecoverResult> CoordinatorCore::recover_blocks(AgentId id, std::uint64_t incarnation,
                                                      std::span<const RecoveredBlock> blocks, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto found = s.current_agent(id, incarnation);
  if (!found) return tl::unexpected(found.error());
  Agent* a = *found;
  if (!a->recovering) {
    return make_error(StatusCode::kFailedPrecondition,
                      "agent " + std::to_string(to_u32(id)) + " is not recovering: rejoin first");
  }
  RecoverResult out;
  const std::uint32_t agent_id = to_u32(id);
  for (const RecoveredBlock& b : blocks) {
    const std::uint64_t g = slot_granules(b.length);
    if (b.length == 0 || b.length > UINT32_MAX || b.payload_offset % kGranule != 0 ||
        b.payload_offset >= a->layout.payload_bytes || g > (a->layout.payload_bytes - b.payload_offset) / kGranule ||
        !s.can_read(b.key)) {
      ++out.dropped;  // left to the end of recovery, which invalidates it
      continue;
    }
    const auto granule = static_cast<std::uint32_t>(b.payload_offset / kGranule);
    if (const std::uint32_t i = s.find_slot(agent_id, granule); i != kNil) {
      const BlockEntry& e = s.slab[i];
      if (e.key != b.key || e.generation != b.generation) ++out.dropped;
      continue;  // sent before (a repeat), or overlapping
    }
    const pool::Slot slot{b.payload_offset, g * kGranule};
    if (!a->space->reserve(slot).ok()) {
      ++out.dropped;  // overlaps an adopted block: not a block this coordinator can account for
      continue;
    }
    a->used_granules += g;
    std::uint32_t ns;
    if (auto it = s.ns_index.find(b.ns); it != s.ns_index.end()) {
      ns = it->second;
      if (s.namespaces[ns].tenant != a->reg.tenant) {
        // A block in a region its namespace may not use (the tenants file
        // changed): left out, so no one is handed a location in a region
        // that is not theirs.
        a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
        ++out.dropped;
        continue;
      }
    } else if (s.namespaces.size() < kNil) {
      ns = static_cast<std::uint32_t>(s.namespaces.size());
      s.ns_index.emplace(b.ns, ns);
      Namespace& recovered = s.namespaces.emplace_back();
      recovered.id = b.ns;
      recovered.tenant = a->reg.tenant;
    } else {
      a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
      ++out.dropped;
      continue;
    }
    if (const std::uint32_t i = s.find_key(ns, b.key); i != kNil) {
      BlockEntry& e = s.slab[i];
      if (e.state == BlockState::kCommitted && e.pins == 0 && e.generation < b.generation) {
        s.retire(i, std::nullopt);  // the older copy loses
      } else {
        a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
        ++out.dropped;
        continue;
      }
    }
    const std::uint32_t i = s.slab.allocate();
    if (i == kNil || !a->future->reserve(slot).ok()) {
      if (i != kNil) s.slab.free(i);
      a->reclaim.add_ready(granule, static_cast<std::uint32_t>(g), b.generation);
      ++out.dropped;
      continue;
    }
    BlockEntry& e = s.slab[i];
    e.key = b.key;
    e.generation = b.generation;
    e.stamp = ++s.touch_clock;
    e.agent = agent_id;
    e.granule = granule;
    e.length = static_cast<std::uint32_t>(b.length);
    e.ns = ns;
    e.state = BlockState::kCommitted;
    s.by_key.insert(key_hash(ns, b.key), i);
    s.by_slot.insert(slot_hash(agent_id, granule), i);
    a->lists.link_lru(s.slab, i);
    a->live_granules += g;
    ++a->committed_blocks;
    ++s.namespaces[ns].blocks;
    ++s.namespaces[ns].live_blocks;
    s.namespaces[ns].live_bytes += g * kGranule;
    s.lru_insert(i);
    s.next_generation = std::max(s.next_generation, b.generation + 1);
    ++out.adopted;
  }
  out.invalidations = s.collect_ready(now);
  return out;
}

Status CoordinatorCore::finish_recovery(AgentId id, std::uint64_t incarnation, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto found = s.current_agent(id, incarnation);
  if (!found) return found.error();
  Agent* a = *found;
  if (!a->recovering) return Status::ok_status();
  // Space no valid header covers may still receive a late put of a lease
  // issued before the restart: it waits out a lease and a quarantine, then
  // its headers are zeroed like any freed slot's.
  const Clock::time_point until = now + s.config.write_lease_ttl + s.config.write_quarantine;
  std::uint64_t gap_granules = 0;
  for (const pool::Slot& gap : a->space->free_extents()) {
    if (Status st = a->space->reserve(gap); !st.ok()) {
      logger()->error("agent {}: quarantining free extent {}: {}", to_u32(id), gap.offset, st.to_string());
      continue;
    }
    const auto g = static_cast<std::uint32_t>(gap.length / kGranule);
    a->reclaim.add_quarantined(static_cast<std::uint32_t>(gap.offset / kGranule), g, 0, until);
    a->used_granules += g;
    gap_granules += g;
  }
  a->recovering = false;
  ++s.epoch;
  logger()->info("agent {} recovered: {} blocks, {} bytes of unclaimed space quarantined", to_u32(id),
                 a->committed_blocks, gap_granules * kGranule);
  return Status::ok_status();
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

namespace {

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

}  // namespace

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

// ---- drain ----

Result<DrainStep> CoordinatorCore::drain(AgentId id, std::uint32_t max_in_flight, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  Agent* a = s.find_agent(id);
  if (a == nullptr || !a->alive) {
    return make_error(StatusCode::kNotFound, "agent " + std::to_string(to_u32(id)) + " is unknown or down");
  }
  if (a->recovering) {
    return make_error(StatusCode::kUnavailable,
                      "agent " + std::to_string(to_u32(id)) + " is recovering its blocks after a rejoin: retry shortly");
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
  // Reserves a target slot and issues the move of entry i; false when no
  // other agent has room.
  auto issue = [&](std::uint32_t i) {
    const BlockEntry& e = s.slab[i];
    const std::uint64_t bytes = static_cast<std::uint64_t>(slot_granules(e.length)) * kGranule;
    auto placed = s.place_move(src, bytes);
    if (!placed) {
      step.placement = Status(StatusCode::kResourceExhausted,
                              "no other live agent has " + std::to_string(bytes) +
                                  " bytes free under its high watermark for a block of agent " + std::to_string(src));
      return false;
    }
    const auto [target, slot] = *placed;
    Agent& t = s.agent(target);
    Move m;
    m.entry = i;
    m.old_generation = e.generation;
    m.source = src;
    m.target = target;
    m.target_incarnation = t.reg.incarnation;
    m.target_join = t.joins;
    m.slot = slot;
    m.generation = s.next_generation++;
    m.deadline = now + s.config.write_lease_ttl;
    const std::uint64_t move_id = s.next_lease++;
    BlockMove bm;
    bm.id = move_id;
    bm.ns = s.namespaces[e.ns].id;
    bm.key = e.key;
    bm.from = s.location_of(e);
    bm.to = Location{AgentId{target},
                     t.reg.incarnation,
                     t.layout.payload_region_offset(slot.offset),
                     t.layout.header_offset(slot.offset),
                     e.length,
                     m.generation};
    bm.deadline = m.deadline;
    s.pin(i);  // off the LRU list: eviction leaves it alone, and oldest() moves on
    s.moves.emplace(move_id, m);
    s.moving[i] = move_id;
    step.moves.push_back(bm);
    return true;
  };
  // The busy list (being written, read-leased, moving, removed-but-read):
  // committed blocks a reader holds move too; it is short next to the LRU
  // lists, which are taken from their least recently used end.
  std::vector<std::uint32_t> held;
  a->lists.for_each_busy(s.slab, [&](std::uint32_t i) {
    const BlockEntry& e = s.slab[i];
    if (e.state == BlockState::kWriting) ++step.writing;
    if (e.state != BlockState::kCommitted) return;
    if (auto it = s.moving.find(i); it != s.moving.end()) {
      auto m = s.moves.find(it->second);
      if (m != s.moves.end() && m->second.old_generation == e.generation) return;  // already moving
    }
    held.push_back(i);
  });
  bool full = false;
  while (!full && step.moves.size() < room) {
    const std::uint32_t i = a->lists.oldest(s.slab);
    if (i == kNil) break;
    full = !issue(i);
  }
  for (std::size_t k = 0; k < held.size() && !full && step.moves.size() < room; ++k) full = !issue(held[k]);
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
      why = Status(StatusCode::kFailedPrecondition, "the block of move " + std::to_string(o.id) +
                                             " was removed or evicted meanwhile");
    }
    if (why.ok() && !s.complete_move(m)) why = Status(StatusCode::kResourceExhausted, "block index full");
    if (!why.ok()) s.fail_move(m, now);
    r.statuses.push_back(why);
  }
  r.invalidations = s.collect_ready(now);
  return r;
}

// ---- writes ----

Result<AllocateResult> CoordinatorCore::allocate(NamespaceId ns_id, std::span<const BlockRequest> blocks,
                                                 const WriterInfo& writer, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  const std::uint64_t max_bytes = s.namespaces[*ns].block_bytes;
  if (max_bytes == 0) {
    return make_error(StatusCode::kNotFound, "namespace " + hex(ns_id) +
                                                 " is known only from blocks recovered after a coordinator restart: "
                                                 "register it again before writing");
  }

  std::vector<std::uint32_t> local;
  if (!writer.host_id.empty()) {
    for (const auto& a : s.agents) {
      if (a->alive && !a->recovering && a->reg.host_id == writer.host_id) local.push_back(to_u32(a->id));
    }
  }

  std::uint32_t client = 0;
  if (auto it = s.client_index.find(writer.client_id); it != s.client_index.end()) {
    client = it->second;
  } else {
    client = static_cast<std::uint32_t>(s.client_open.size());
    s.client_index.emplace(writer.client_id, client);
    s.client_open.push_back(0);
  }

  AllocateResult result;
  result.items.reserve(blocks.size());
  std::uint32_t budget = s.config.max_evictions_per_call;
  for (const BlockRequest& req : blocks) {
    AllocateItem item;
    if (req.length == 0 || req.length > max_bytes) {
      item.status = Status(StatusCode::kInvalidArgument,
                           "block " + key_text(req.key) + " length " + std::to_string(req.length) + " is not in 1.." +
                               std::to_string(max_bytes) + " (the namespace's block size)");
    } else if (!s.owns(req.key)) {
      item.status = s.shard_error(req.key);
    } else if (const std::uint32_t i = s.find_key(*ns, req.key); i != kNil) {
      BlockEntry& e = s.slab[i];
      if (e.state == BlockState::kCommitted) {
        item.outcome = AllocateOutcome::kExists;
        item.location = s.location_of(e);
        s.touch(i);
      } else {
        item.outcome = AllocateOutcome::kPending;
      }
    } else if (s.client_open[client] >= s.config.max_write_leases_per_client) {
      item.status = Status(StatusCode::kResourceExhausted,
                           "writer '" + writer.client_id + "' holds " + std::to_string(s.client_open[client]) +
                               " open write leases, the limit: commit or abort some first");
    } else if (!s.make_quota_room(*ns, static_cast<std::uint64_t>(slot_granules(req.length)) * kGranule)) {
      item.status = Status(StatusCode::kResourceExhausted,
                           "namespace " + hex(ns_id) + " is at its quota and every block of it is read-leased or " +
                               "being written");
    } else {
      item = s.place(*ns, req, local, client, now, budget);
    }
    result.items.push_back(std::move(item));
  }
  result.invalidations = s.collect_ready(now);
  result.membership_epoch = s.epoch;
  return result;
}

std::vector<Status> CoordinatorCore::commit(std::span<const LeaseId> leases, Clock::time_point now) {
  std::vector<Status> out;
  out.reserve(leases.size());
  ReadyCallbacks ready;
  {
    std::lock_guard lock(mu_);
    State& s = *s_;
    s.sweep(now);
    for (LeaseId lease : leases) {
      auto it = s.write_leases.find(to_u64(lease));
      if (it == s.write_leases.end()) {
        out.emplace_back(StatusCode::kNotFound, "unknown write lease " + std::to_string(to_u64(lease)) +
                                                    " (never issued, committed, aborted or expired)");
        continue;
      }
      const WriteLease l = it->second;
      s.write_leases.erase(it);
      --s.client_open[l.client];
      const Agent& a = s.agent(l.agent);
      // An agent that rejoined since (same incarnation) lost this lease's
      // state when it was declared dead.
      if (!a.alive || a.reg.incarnation != l.incarnation || a.joins != l.join) {
        out.emplace_back(StatusCode::kUnavailable, "agent " + std::to_string(l.agent) + " incarnation " +
                                                       std::to_string(l.incarnation) +
                                                       " is gone and the block with it: write it again");
        continue;
      }
      if (now > l.deadline) {
        s.expire_write_lease(l, now);
        out.emplace_back(StatusCode::kFailedPrecondition,
                         "write lease " + std::to_string(to_u64(lease)) + " expired before the commit");
        continue;
      }
      BlockEntry& e = s.slab[l.entry];
      if (e.state != BlockState::kWriting || e.generation != l.generation) {
        out.emplace_back(StatusCode::kInternal,
                         "write lease " + std::to_string(to_u64(lease)) + " names an entry in another state");
        logger()->error("{}", out.back().to_string());
        continue;
      }
      Agent& owner = s.agent(l.agent);
      owner.lists.unlink(s.slab, l.entry);
      e.state = BlockState::kCommitted;
      e.stamp = ++s.touch_clock;
      s.lru_insert(l.entry);
      owner.lists.link_lru(s.slab, l.entry);
      ++owner.committed_blocks;
      ++s.namespaces[e.ns].blocks;
      s.notify_committed(e.ns, e.key, ready);
      out.emplace_back();
    }
  }
  run_callbacks(ready);
  return out;
}

BatchResult CoordinatorCore::abort(std::span<const LeaseId> leases, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  BatchResult r;
  r.statuses.reserve(leases.size());
  for (LeaseId lease : leases) {
    auto it = s.write_leases.find(to_u64(lease));
    if (it == s.write_leases.end()) {
      r.statuses.emplace_back(StatusCode::kNotFound, "unknown write lease " + std::to_string(to_u64(lease)));
      continue;
    }
    const WriteLease l = it->second;
    s.write_leases.erase(it);
    --s.client_open[l.client];
    if (s.write_lease_valid(l)) {
      if (now > l.deadline) {
        s.retire(l.entry, now + s.config.write_quarantine);
        ++s.expired_write_leases;
      } else {
        s.retire(l.entry, std::nullopt);
        ++s.aborted_write_leases;
      }
    }
    r.statuses.emplace_back();
  }
  r.invalidations = s.collect_ready(now);
  return r;
}

// ---- reads ----

Result<LookupResult> CoordinatorCore::lookup(NamespaceId ns_id, std::span<const Key128> keys, bool take_read_lease,
                                             Clock::time_point now, bool report_evicting) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  if (Status st = s.check_read(keys); !st.ok()) return tl::unexpected(st);
  LookupResult r;
  r.membership_epoch = s.epoch;
  std::vector<std::pair<std::uint32_t, Generation>> pins;
  for (const Key128& key : keys) {
    const std::uint32_t i = s.find_key(*ns, key);
    if (i == kNil || s.slab[i].state != BlockState::kCommitted) {
      // The prefix ends here. A miss on a block still being evicted must not
      // be seen yet: the caller waits for the agent and asks again. (One
      // branch when nothing is evicting; hits never get here.)
      if (report_evicting) {
        if (const auto* ev = s.evicting_of(*ns, key)) {
          r.evicting = *ev;
          for (const auto& [entry, generation] : pins) s.unpin(entry, generation);
          r.locations.clear();
          return r;
        }
      }
      break;
    }
    r.locations.push_back(s.location_of(s.slab[i]));
    s.touch(i);
    if (take_read_lease) {
      s.pin(i);
      pins.emplace_back(i, s.slab[i].generation);
    }
  }
  s.lookup_hits += r.locations.size();
  s.lookup_misses += keys.size() - r.locations.size();
  if (take_read_lease && !pins.empty()) {
    const std::uint64_t id = s.next_lease++;
    const Clock::time_point deadline = now + s.config.read_lease_ttl;
    s.read_leases.emplace(id, ReadLease{deadline, std::move(pins)});
    compact_expiry(s.read_expiry, s.read_leases);
    s.read_expiry.emplace(deadline, id);
    r.read_lease = LeaseId{id};
    r.lease_deadline = deadline;
  }
  return r;
}

std::vector<EvictingSlot> CoordinatorCore::evicting(NamespaceId ns_id, std::span<const Key128> keys) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  std::vector<EvictingSlot> out;
  if (s.evicting.empty()) return out;
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return out;
  for (const Key128& key : keys) {
    if (const auto* ev = s.evicting_of(*ns, key)) out.insert(out.end(), ev->begin(), ev->end());
  }
  return out;
}

bool CoordinatorCore::any_evicting(std::span<const EvictingSlot> slots) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  if (s.evicting.empty()) return false;
  for (const EvictingSlot& e : slots) {
    const Agent* a = s.find_agent(e.agent);
    if (a == nullptr || !a->alive) continue;
    auto it = a->evicting.find(e.header_offset);
    if (it != a->evicting.end() && it->second.generation == e.generation) return true;
  }
  return false;
}

Result<std::vector<bool>> CoordinatorCore::contains(NamespaceId ns_id, std::span<const Key128> keys,
                                                    Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  if (Status st = s.check_read(keys); !st.ok()) return tl::unexpected(st);
  std::vector<bool> out(keys.size(), false);
  for (std::size_t k = 0; k < keys.size(); ++k) {
    const std::uint32_t i = s.find_key(*ns, keys[k]);
    out[k] = i != kNil && s.slab[i].state == BlockState::kCommitted;
  }
  return out;
}

Status CoordinatorCore::release(LeaseId lease, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto it = s.read_leases.find(to_u64(lease));
  if (it == s.read_leases.end()) {
    return Status(StatusCode::kNotFound, "unknown read lease " + std::to_string(to_u64(lease)) + " (or expired)");
  }
  const ReadLease l = std::move(it->second);
  s.read_leases.erase(it);
  for (const auto& [i, generation] : l.pins) s.unpin(i, generation);
  return Status::ok_status();
}

Result<BatchResult> CoordinatorCore::remove(NamespaceId ns_id, std::span<const Key128> keys, Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  BatchResult r;
  r.statuses.reserve(keys.size());
  for (const Key128& key : keys) {
    if (!s.can_read(key)) {
      r.statuses.push_back(s.shard_error(key));
      continue;
    }
    const std::uint32_t i = s.find_key(*ns, key);
    if (i == kNil) {
      r.statuses.emplace_back(StatusCode::kNotFound, "block " + key_text(key) + " is not in the pool");
      continue;
    }
    BlockEntry& e = s.slab[i];
    if (e.state == BlockState::kWriting) {
      r.statuses.emplace_back(StatusCode::kFailedPrecondition,
                              "block " + key_text(key) + " is being written: remove it after its commit");
      continue;
    }
    ++s.removals;
    if (e.pins == 0) {
      r.removed.push_back(s.location_of(e));
      s.retire_tracked(i, /*removal=*/true);
    } else {
      // Readers still hold it: out of the index now, space later.
      r.removed_leased.push_back(s.location_of(e));
      Agent& a = s.agent(e.agent);
      s.by_key.erase(key_hash(e.ns, e.key), i);
      s.lru_erase(i);
      a.live_granules -= slot_granules(e.length);
      --a.committed_blocks;
      Namespace& n = s.namespaces[e.ns];
      --n.blocks;
      --n.live_blocks;
      n.live_bytes -= static_cast<std::uint64_t>(slot_granules(e.length)) * kGranule;
      e.state = BlockState::kRemovedLeased;
    }
    r.statuses.emplace_back();
  }
  r.invalidations = s.collect_ready(now);
  return r;
}

Result<WaiterId> CoordinatorCore::wait_for(NamespaceId ns_id, std::span<const Key128> keys, Clock::time_point deadline,
                                           WaitCallback done, Clock::time_point now) {
  if (!done) return make_error(StatusCode::kInvalidArgument, "wait_for needs a callback");
  ReadyCallbacks ready;
  WaiterId result{};
  {
    std::lock_guard lock(mu_);
    State& s = *s_;
    s.sweep(now);
    auto ns = s.ns_lookup(ns_id);
    if (!ns) return tl::unexpected(ns.error());
    if (Status st = s.check_shard(keys); !st.ok()) return tl::unexpected(st);
    const std::uint64_t id = s.next_waiter++;
    result = WaiterId{id};
    Waiter w;
    w.ns = *ns;
    w.keys.assign(keys.begin(), keys.end());
    w.committed.assign(keys.size(), false);
    for (std::size_t k = 0; k < keys.size(); ++k) {
      const std::uint32_t i = s.find_key(*ns, keys[k]);
      w.committed[k] = i != kNil && s.slab[i].state == BlockState::kCommitted;
      if (!w.committed[k]) ++w.remaining;
    }
    if (w.remaining == 0 || deadline <= now) {
      ready.emplace_back(std::move(done), std::move(w.committed));
    } else {
      w.deadline = deadline;
      w.done = std::move(done);
      for (std::size_t k = 0; k < keys.size(); ++k) {
        if (!w.committed[k]) s.wait_index[WaitKey{*ns, keys[k]}].emplace_back(id, static_cast<std::uint32_t>(k));
      }
      s.waiter_deadlines.emplace(deadline, id);
      s.waiters.emplace(id, std::move(w));
    }
  }
  run_callbacks(ready);
  return result;
}

bool CoordinatorCore::cancel_wait(WaiterId waiter) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  const auto id = static_cast<std::uint64_t>(waiter);
  if (s.waiters.count(id) == 0) return false;
  s.finish_waiter(id, nullptr);
  return true;
}

// ---- invalidation and time ----

Status CoordinatorCore::invalidated(AgentId id, std::uint64_t incarnation, std::span<const SlotRef> slots,
                                    Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto found = s.current_agent(id, incarnation);
  if (!found) return found.error();
  Agent* a = *found;
  std::size_t ignored = 0;
  for (const SlotRef& ref : slots) {
    const pool::RegionLayout& layout = a->layout;
    if (ref.payload_offset < layout.payload_base || ref.length == 0 || ref.length % kGranule != 0 ||
        (ref.payload_offset - layout.payload_base) % kGranule != 0 ||
        ref.payload_offset - layout.payload_base >= layout.payload_bytes ||
        ref.header_offset != layout.header_offset(ref.payload_offset - layout.payload_base)) {
      ++ignored;
      continue;
    }
    const std::uint64_t offset = ref.payload_offset - layout.payload_base;
    const auto granule = static_cast<std::uint32_t>(offset / kGranule);
    const auto granules = static_cast<std::uint32_t>(ref.length / kGranule);
    if (!a->reclaim.acknowledge(granule, granules, ref.generation)) {
      ++ignored;
      continue;
    }
    if (!a->evicting.empty()) s.evicted_done(*a, ref.header_offset, ref.generation);
    if (Status st = a->space->free(pool::Slot{offset, ref.length}); !st.ok()) {
      logger()->error("agent {}: freeing acknowledged slot: {}", to_u32(id), st.to_string());
      continue;
    }
    a->used_granules -= granules;
  }
  if (ignored > 0) {
    logger()->debug("agent {}: {} of {} acknowledged slots matched nothing sent (repeats?)", to_u32(id), ignored,
                    slots.size());
  }
  return Status::ok_status();
}

TickActions CoordinatorCore::tick(Clock::time_point now) {
  TickActions actions;
  ReadyCallbacks ready;
  {
    std::lock_guard lock(mu_);
    State& s = *s_;
    s.sweep(now);
    actions.dead_agents = std::move(s.dead_since_tick);
    s.dead_since_tick.clear();

    // A lease is good through its deadline (commit accepts now == deadline),
    // so it expires once now is past it. Deadlines never change, so the heap
    // pair of a lease still present carries its deadline.
    while (!s.write_expiry.empty() && s.write_expiry.top().first < now) {
      const std::uint64_t id = s.write_expiry.top().second;
      s.write_expiry.pop();
      auto it = s.write_leases.find(id);
      if (it == s.write_leases.end()) continue;
      const WriteLease l = it->second;
      s.write_leases.erase(it);
      --s.client_open[l.client];
      if (s.write_lease_valid(l)) {
        s.expire_write_lease(l, now);
        ++actions.expired_write_leases;
      }
    }
    // Moves past their deadline: the source agent never reported (it died,
    // or lost its connection).
    for (auto it = s.moves.begin(); it != s.moves.end();) {
      if (it->second.deadline >= now) {
        ++it;
        continue;
      }
      const Move m = it->second;
      const std::uint64_t id = it->first;
      it = s.moves.erase(it);
      s.forget_move(m, id);
      s.fail_move(m, now);
    }
    while (!s.read_expiry.empty() && s.read_expiry.top().first < now) {
      const std::uint64_t id = s.read_expiry.top().second;
      s.read_expiry.pop();
      auto it = s.read_leases.find(id);
      if (it == s.read_leases.end()) continue;
      const ReadLease l = std::move(it->second);
      s.read_leases.erase(it);
      for (const auto& [i, generation] : l.pins) s.unpin(i, generation);
      ++actions.expired_read_leases;
    }
    while (!s.waiter_deadlines.empty() && s.waiter_deadlines.begin()->first <= now) {
      s.finish_waiter(s.waiter_deadlines.begin()->second, &ready);
      ++actions.fired_waiters;
    }

    constexpr std::size_t kMaxStampNotes = 4096;
    if (s.stamp_notes.empty() || now - s.stamp_notes.back().first >= std::chrono::seconds(1)) {
      if (s.stamp_notes.size() >= kMaxStampNotes) {
        std::size_t kept = 0;
        for (std::size_t i = 0; i < s.stamp_notes.size(); i += 2) s.stamp_notes[kept++] = s.stamp_notes[i];
        s.stamp_notes.resize(kept);
      }
      s.stamp_notes.emplace_back(now, s.touch_clock);
    }

    std::uint32_t budget = s.config.max_evictions_per_tick;
    for (auto& ap : s.agents) {
      Agent& a = *ap;
      if (!a.alive || !a.draining) continue;
      while (a.live_granules > a.low_granules && budget > 0) {
        const std::uint32_t i = a.lists.oldest(s.slab);
        if (i == kNil) break;
        s.evict(i);
        --budget;
        ++actions.evicted_blocks;
      }
      a.draining = a.live_granules > a.low_granules && budget == 0;
    }

    std::vector<ReclaimQueue::Pending> pending;
    for (auto& ap : s.agents) {
      if (!ap->alive) continue;
      pending.clear();
      ap->reclaim.collect_due(now, s.config.invalidation_retry, pending);
      if (pending.empty()) continue;
      InvalidateRequest req{ap->id, ap->reg.incarnation, {}};
      req.slots.reserve(pending.size());
      for (const auto& p : pending) req.slots.push_back(s.slot_ref(*ap, p));
      actions.invalidations.push_back(std::move(req));
    }
  }
  run_callbacks(ready);
  return actions;
}

// ---- introspection ----

std::uint64_t CoordinatorCore::stamp_at(Clock::time_point t) const {
  std::lock_guard lock(mu_);
  const auto& notes = s_->stamp_notes;
  // The last note taken at or before t.
  auto it = std::upper_bound(notes.begin(), notes.end(), t,
                             [](Clock::time_point x, const auto& note) { return x < note.first; });
  return it == notes.begin() ? 0 : std::prev(it)->second;
}

Stats CoordinatorCore::stats() const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  Stats st;
  for (const auto& ap : s.agents) {
    AgentView v = view_of(*ap);
    st.blocks += v.blocks;
    st.capacity_bytes += v.capacity_bytes;
    st.used_bytes += v.used_bytes;
    st.live_bytes += v.live_bytes;
    st.reclaiming_bytes += v.reclaiming_bytes;
    if (v.alive) ++st.agents_alive;
    st.agents.push_back(std::move(v));
  }
  st.write_leases = s.write_leases.size();
  st.read_leases = s.read_leases.size();
  st.waiters = s.waiters.size();
  st.namespaces = s.namespaces.size();
  st.membership_epoch = s.epoch;
  st.lookup_hits = s.lookup_hits;
  st.lookup_misses = s.lookup_misses;
  st.evictions = s.evictions - (s.evicting_count - s.removing_count);
  st.evicting = s.evicting_count - s.removing_count;
  st.removing = s.removing_count;
  st.removals = s.removals;
  st.expired_write_leases = s.expired_write_leases;
  st.aborted_write_leases = s.aborted_write_leases;
  return st;
}

Result<std::vector<SlotView>> CoordinatorCore::slots(AgentId id) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  const Agent* a = s.find_agent(id);
  if (a == nullptr) return make_error(StatusCode::kNotFound, "unknown agent " + std::to_string(to_u32(id)));
  std::vector<SlotView> out;
  a->lists.for_each(s.slab, [&](std::uint32_t i) {
    const BlockEntry& e = s.slab[i];
    SlotView v;
    v.payload_offset = static_cast<std::uint64_t>(e.granule) * kGranule;
    v.length = static_cast<std::uint64_t>(slot_granules(e.length)) * kGranule;
    v.state = e.state == BlockState::kWriting     ? SlotState::kWriting
              : e.state == BlockState::kCommitted ? SlotState::kCommitted
                                                  : SlotState::kRemovedLeased;
    v.generation = e.generation;
    v.key = e.key;
    v.namespace_id = s.namespaces[e.ns].id;
    v.stamp = e.stamp;
    out.push_back(v);
  });
  a->reclaim.for_each([&](const ReclaimQueue::Pending& p) {
    SlotView v;
    v.payload_offset = static_cast<std::uint64_t>(p.granule) * kGranule;
    v.length = static_cast<std::uint64_t>(p.granules) * kGranule;
    v.state = p.stage == ReclaimQueue::Stage::kQuarantined ? SlotState::kQuarantined : SlotState::kInvalidating;
    v.generation = p.generation;
    out.push_back(v);
  });
  std::sort(out.begin(), out.end(),
            [](const SlotView& x, const SlotView& y) { return x.payload_offset < y.payload_offset; });
  return out;
}

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
  for (const auto& [k, refs] : evicting) evicting_keys += refs.size();
  for (const Namespace& n : namespaces) evicting_ns += n.evicting;
  std::uint64_t removing = 0;
  for (const auto& ap : agents) {
    for (const auto& [h, ev] : ap->evicting) removing += ev.removal ? 1 : 0;
  }
  if (evicting_agents != evicting_count || evicting_keys != evicting_count || evicting_ns != evicting_count ||
      removing != removing_count) {
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

MemoryFootprint CoordinatorCore::memory() const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  return MemoryFootprint{s.slab.in_use(), s.slab.memory_bytes(), s.by_key.memory_bytes(), s.by_slot.memory_bytes()};
}

}  // namespace kvpool::coordinator
