#pragma once
// The nouns of the coordinator core's API: ids, agent registrations, block
// locations, per-key results and the actions the network server performs.
// Plain data, no I/O; see coordinator_core.h for the operations.

#include <chrono>
#include <cstdint>
#include <optional>
#include <functional>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "kvpool/types.h"
#include "runtime/common/units.h"

namespace kvpool::coordinator {

// An agent's id, stable across its incarnations: an agent that restarts
// (same control address, new incarnation) keeps its id. 0 is never issued.
enum class AgentId : std::uint32_t {};
// A write or read lease. Ids start at a random point per coordinator start,
// so a lease id from before a restart does not name a new lease. 0 is never
// issued.
enum class LeaseId : std::uint64_t {};
// A wait_for() registration, for cancel_wait().
enum class WaiterId : std::uint64_t {};
// Increases with every allocation, across all agents; written into the slot
// header, where "higher wins" when two valid slots hold one key.
using Generation = std::uint64_t;

inline constexpr std::uint32_t to_u32(AgentId id) { return static_cast<std::uint32_t>(id); }
inline constexpr std::uint64_t to_u64(LeaseId id) { return static_cast<std::uint64_t>(id); }

enum class PlacementPolicy {
  // The live agent on the writer's host when the block fits there (after
  // evicting there if needed), else the least-full live agent.
  kLocalFirst,
  // Always the least-full live agent (used bytes / capacity).
  kSpread,
};

struct CoordinatorConfig {
  // An agent whose last heartbeat is older than this is declared dead.
  std::chrono::nanoseconds agent_timeout = std::chrono::seconds(3);
  // A writer must commit before now + write_lease_ttl.
  std::chrono::nanoseconds write_lease_ttl = std::chrono::seconds(10);
  // A read lease protects its blocks from eviction and removal-reuse this long.
  std::chrono::nanoseconds read_lease_ttl = std::chrono::seconds(30);
  // The space of an expired write lease waits this long before it is
  // invalidated and reused: a put posted before the deadline may still land
  // late (DESIGN.md, "Data flows"). It must exceed the longest put deadline.
  std::chrono::nanoseconds write_quarantine = std::chrono::seconds(5);
  // An invalidation request with no acknowledgement is sent again by tick()
  // after this long (agents treat a repeat as a no-op).
  std::chrono::nanoseconds invalidation_retry = std::chrono::seconds(2);
  PlacementPolicy placement = PlacementPolicy::kLocalFirst;
  // Fractions of an agent's payload capacity, 0 < low <= high <= 1. When an
  // allocation would take an agent's live bytes (committed + being written)
  // above high, least-recently-used blocks are evicted until live bytes plus
  // the allocation are at most low. With high == low every allocation evicts
  // exactly what it needs. The room between high and 1 absorbs space that is
  // waiting for its invalidation acknowledgement.
  double high_watermark = 0.95;
  double low_watermark = 0.90;
  // Bounds the eviction work one allocate() call does (tick() keeps draining
  // agents above the high watermark, with its own bound).
  std::uint32_t max_evictions_per_call = 4096;
  std::uint32_t max_evictions_per_tick = 65536;
  // This coordinator owns the keys with shard_of(key, shard_count) ==
  // shard_index (shard.h), unless owned_ranges is set.
  std::uint32_t shard_index = 0;
  std::uint32_t shard_count = 1;
  // With the shard map in etcd (runtime/etcd/shard_map.h): the key-point
  // ranges [first, second) this coordinator owns (may be empty: a shard
  // being added owns nothing yet). CoordinatorCore::set_owned_ranges
  // changes them at run time.
  std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> owned_ranges;
  // Ranges moving away to another shard (a shard being added): still read
  // here (lookup, contains, remove, kept on a rebuild) but not written.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> readable_ranges;
  // Limits that keep one client from taking the coordinator's memory:
  // registered namespaces (blocks recovered after a restart may add
  // namespaces past it), and write leases open at once per writer (client
  // id). Over either, the call or key fails with kResourceExhausted.
  std::uint32_t max_namespaces = 65536;
  std::uint64_t max_write_leases_per_client = 1u << 20;
  // Namespaces one client (by client id) and one tenant may add, so that
  // neither takes every slot of max_namespaces and locks everyone else out.
  // Registering a namespace the coordinator already knows adds nothing.
  // Over either, register_namespace fails with kResourceExhausted. 0: no limit.
  std::uint32_t max_namespaces_per_client = 1024;
  std::uint32_t max_namespaces_per_tenant = 4096;
  // The first generation issued; 0 takes the wall clock in microseconds, so a
  // restarted coordinator keeps issuing higher generations.
  Generation first_generation = 0;
  // The first lease id issued; 0 takes a random one.
  std::uint64_t first_lease_id = 0;
};

// Who registers a namespace, for the per-client and per-tenant limits:
// the client id of its connection, and the tenant its credential names
// (empty: the cluster secret).
struct NamespaceRegistrant {
  std::string client;
  std::string tenant;
};

// What an agent tells the coordinator when it joins.
struct AgentRegistration {
  std::string worker_address;      // UCX worker address blob, for workers' endpoints
  std::string packed_rkey;         // the region's packed rkey
  std::string host_id;             // same value on every process of one host (local-first placement)
  std::string control_address;     // host:port of the agent's control RPC; identifies the agent across restarts
  std::uint64_t region_base = 0;   // remote address of the region's byte 0
  std::uint64_t region_bytes = 0;  // the whole region: header table + payload area
  std::uint64_t incarnation = 0;   // new value on every agent start
  // Empty: a region of the shared pool. Else an isolated tenant's region
  // (the agent process registers one per isolated tenant, each its own
  // registration with its own rkey): only namespaces of that tenant are
  // placed in it (CoordinatorCore::register_namespace), and blocks recovered
  // from it belong to that tenant.
  std::string tenant;
};

// A block an agent found in its own region (header and payload verify):
// what a coordinator that lost its index (restart, or an agent it had
// declared dead) takes back as committed (DESIGN.md, "Data flows").
struct RecoveredBlock {
  NamespaceId ns = 0;
  Key128 key;
  std::uint64_t payload_offset = 0;  // relative to the payload base, G-aligned
  std::uint64_t length = 0;          // payload bytes
  Generation generation = 0;
};

// How a rejoining agent's registration was taken.
struct Rejoin {
  AgentId id{};
  // True: the coordinator knows nothing of the region's contents; send every
  // block of a scan (recover_blocks), then finish_recovery(). False: it is
  // the registration in force, nothing to send.
  bool send_blocks = false;
};


// Where a block lives. Offsets are relative to the region's start; add
// AgentRegistration::region_base for a remote address.
struct Location {
  AgentId agent{};
  std::uint64_t incarnation = 0;
  std::uint64_t payload_offset = 0;  // layout.payload_base + slot offset
  std::uint64_t header_offset = 0;   // the 64-byte slot header (pool::RegionLayout::header_offset)
  std::uint64_t length = 0;          // payload bytes, as allocated (not rounded)
  Generation generation = 0;
  friend bool operator==(const Location&, const Location&) = default;
};

// Who writes: host_id drives local-first placement.
struct WriterInfo {
  std::string client_id;
  std::string host_id;
};

struct BlockRequest {
  Key128 key;
  std::uint64_t length = 0;  // payload bytes, 1 .. the namespace's block size
};

enum class AllocateOutcome {
  kPlaced,   // write payload then header at location, then commit(lease)
  kExists,   // already committed (dedupe): write nothing; location says where
  kPending,  // another writer holds an uncommitted lease on the key: write nothing
  kError,    // see status
};

struct AllocateItem {
  AllocateOutcome outcome = AllocateOutcome::kError;
  Location location;                   // kPlaced, kExists
  LeaseId lease{};                     // kPlaced: the write lease
  Clock::time_point lease_deadline{};  // kPlaced: commit before this
  // kError: kInvalidArgument (zero length, over the namespace's block size),
  // kUnavailable (space is being reclaimed: retry shortly), kResourceExhausted
  // (nothing fits even after eviction: every block is leased or being
  // written, or no live agent), kFailedPrecondition (key of another shard).
  Status status;
};

// One slot the agent must invalidate (zero its header) before the space is
// reused; the agent echoes it back in its acknowledgement.
struct SlotRef {
  std::uint64_t header_offset = 0;   // region offset of the 64-byte header
  std::uint64_t payload_offset = 0;  // region offset of the payload (layout.payload_base + slot offset)
  std::uint64_t length = 0;          // slot bytes, rounded up to the granule
  Generation generation = 0;         // the block's generation: tells a stale acknowledgement from a current one
  friend bool operator==(const SlotRef&, const SlotRef&) = default;
};

struct InvalidateRequest {
  AgentId agent{};
  std::uint64_t incarnation = 0;
  std::vector<SlotRef> slots;
};

struct RecoverResult {
  std::uint64_t adopted = 0;  // now committed and visible
  // Not taken: an older duplicate of a key (its slot is invalidated), a key
  // of another shard, or a slot outside the region or overlapping another.
  std::uint64_t dropped = 0;
  std::vector<InvalidateRequest> invalidations;  // send now
};

struct AllocateResult {
  std::vector<AllocateItem> items;  // one per request, same order
  // Invalidations created by evictions in this call: send them now.
  std::vector<InvalidateRequest> invalidations;
  std::uint64_t membership_epoch = 0;  // refresh the agent table when it changed
};

// A slot whose block was evicted and whose agent has not yet acknowledged
// the invalidation of its header (CoordinatorCore::lookup, evicting()).
struct EvictingSlot {
  AgentId agent{};
  std::uint64_t header_offset = 0;  // as in Location and SlotRef
  Generation generation = 0;
  friend bool operator==(const EvictingSlot&, const EvictingSlot&) = default;
};

struct LookupResult {
  // The longest run of leading keys that are committed on live agents, with
  // their locations (locations.size() is the hit count).
  std::vector<Location> locations;
  // When a read lease was asked for and locations is not empty: it keeps
  // those blocks from eviction and from removal-reuse until release() or
  // lease_deadline.
  LeaseId read_lease{};
  Clock::time_point lease_deadline{};
  std::uint64_t membership_epoch = 0;
  // With report_evicting: the prefix would end at a key whose block is
  // being evicted (its slot not yet invalidated by the agent). Then nothing
  // else is returned (no locations, no lease): ask again once these slots
  // are acknowledged (CoordinatorCore::evicting() no longer lists them).
  std::vector<EvictingSlot> evicting;
};

// Per-key or per-lease statuses plus invalidations to send now.
struct BatchResult {
  std::vector<Status> statuses;
  std::vector<InvalidateRequest> invalidations;
  // remove(): the blocks whose slots went to invalidation in this call (not
  // the read-leased ones, which wait for their leases): once the agent has
  // acknowledged these, no restart can bring them back.
  std::vector<Location> removed;
  // remove(): the read-leased blocks it took out of the index; their slots
  // keep a valid header until the last lease ends, so the agent must be told
  // to leave them out of a restart's scan (rpc::kPushRemoved).
  std::vector<Location> removed_leased;
};

struct DeadAgent {
  AgentId agent{};
  std::uint64_t incarnation = 0;
};

struct TickActions {
  std::uint64_t expired_write_leases = 0;
  std::uint64_t expired_read_leases = 0;
  std::uint64_t evicted_blocks = 0;  // watermark eviction done by this tick
  // Agents declared dead since the previous tick (by this tick or by any call
  // that noticed a missed heartbeat): tell workers to drop their endpoints.
  std::vector<DeadAgent> dead_agents;
  // Send these; the agent acknowledges with CoordinatorCore::invalidated().
  std::vector<InvalidateRequest> invalidations;
  std::uint64_t fired_waiters = 0;  // wait_for callbacks run by this tick
};

struct AgentView {
  AgentId id{};
  std::uint64_t incarnation = 0;
  AgentRegistration registration;
  bool alive = false;
  Clock::time_point last_heartbeat{};
  std::uint64_t capacity_bytes = 0;    // payload area
  std::uint64_t used_bytes = 0;        // not allocatable now: live + leased-removed + awaiting invalidation
  std::uint64_t live_bytes = 0;        // committed + being written (slot bytes)
  std::uint64_t reclaiming_bytes = 0;  // quarantined or awaiting invalidation acknowledgement
  std::uint64_t blocks = 0;            // committed blocks
  std::uint64_t largest_free = 0;      // the largest slot placeable now
  bool draining = false;               // pooltool drain: no new placements, blocks moving off
  bool drained = false;                // draining and nothing of it is needed any more
  bool recovering = false;             // rejoined, its scan of slot headers not finished yet
};

struct Stats {
  std::uint64_t blocks = 0;  // committed
  std::uint64_t capacity_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::uint64_t live_bytes = 0;
  std::uint64_t reclaiming_bytes = 0;  // quarantine + pending invalidation
  std::uint64_t write_leases = 0;
  std::uint64_t read_leases = 0;
  std::uint64_t waiters = 0;
  std::uint64_t namespaces = 0;
  std::uint64_t agents_alive = 0;
  std::uint64_t membership_epoch = 0;
  // Cumulative counters.
  std::uint64_t lookup_hits = 0;    // blocks returned by lookup()
  std::uint64_t lookup_misses = 0;  // keys asked by lookup() and not returned
  std::uint64_t evictions = 0;  // acknowledged by the agent (the slot header is zero)
  std::uint64_t removals = 0;
  std::uint64_t evicting = 0;  // evicted, acknowledgement outstanding (still counted in blocks)
  std::uint64_t removing = 0;  // removed unleased, acknowledgement outstanding (still counted in blocks)
  std::uint64_t expired_write_leases = 0;
  std::uint64_t aborted_write_leases = 0;
  std::vector<AgentView> agents;
};

// A slot of an agent's region as the coordinator sees it (for tools and
// consistency checks).
enum class SlotState {
  kWriting,        // under a write lease
  kCommitted,      // visible to lookups
  kRemovedLeased,  // removed, waiting for read leases to end
  kQuarantined,    // expired write lease, waiting for late puts to drain
  kInvalidating,   // waiting for the agent's acknowledgement (sent or to be sent)
};

struct SlotView {
  std::uint64_t payload_offset = 0;  // relative to the payload base (what pool::SlotAllocator uses)
  std::uint64_t length = 0;          // rounded to the granule
  SlotState state = SlotState::kCommitted;
  Generation generation = 0;
  Key128 key;                    // not set for kQuarantined / kInvalidating
  NamespaceId namespace_id = 0;  // idem
  std::uint64_t stamp = 0;       // LRU stamp (larger: used more recently); idem
};

// ---- Drain (pooltool drain): moving an agent's blocks to other agents ----

// One block to copy: the source agent (the one draining) puts the payload
// of `from` into `to` on another agent, then a header for the same
// namespace, key and length with generation to.generation, and reports the
// outcome (CoordinatorCore::finish_moves) before `deadline`.
struct BlockMove {
  std::uint64_t id = 0;
  NamespaceId ns = 0;
  Key128 key;
  Location from;
  Location to;  // a reserved slot: nothing else is placed there meanwhile
  Clock::time_point deadline{};
};

// Where a drain stands after one drain() call.
struct DrainStep {
  std::vector<BlockMove> moves;   // issued by this call: send them to the source agent
  std::uint64_t blocks_left = 0;  // committed blocks still on the agent (moving ones included)
  std::uint64_t writing = 0;      // blocks being written there: moved once committed
  std::uint64_t in_flight = 0;    // moves issued and not finished (this call's included)
  std::uint64_t moved = 0;        // blocks moved off the agent since its drain began
  std::uint64_t failed = 0;       // move attempts that failed since then (the block stays and is retried)
  std::uint64_t unplaceable = 0;  // blocks this call found no room for on any other agent
  Status placement;               // why, when unplaceable > 0
  // Nothing of the agent's is needed any more: no committed or written
  // block, no move in flight, no removed block still read: it can stop.
  bool drained = false;
};

// The source agent's report on one move: ok once payload and header landed.
struct MoveOutcome {
  std::uint64_t id = 0;
  Status status;
};

// Runs once per wait_for() registration: committed[i] says whether keys[i]
// was committed when it fired.
using WaitCallback = std::function<void(std::vector<bool> committed)>;

}  // namespace kvpool::coordinator
