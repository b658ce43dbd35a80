#pragma once
// CoordinatorCore: the coordinator's whole state machine, with no I/O.
//
// It holds the block index (namespace + key -> agent, slot, generation,
// state), places new blocks on agents' regions (one pool::SlotAllocator per
// region), keeps write and read leases, evicts least-recently-used blocks
// under memory pressure, tracks agent membership, and runs the invalidation
// protocol that returns freed space only after the owning agent has zeroed
// the slot header (DESIGN.md, "Data flows"). The network server wraps it:
// it calls these methods and performs the actions they return (invalidation
// RPCs to agents, notices to workers). Nothing here blocks or sends.
//
// Time: every method that depends on time takes `now` (a Clock::time_point),
// so tests drive time explicitly; the server passes Clock::now(). Every such
// call first declares dead the agents whose last heartbeat is older than
// agent_timeout, so no result ever names a dead agent; tick() reports them.
//
// Thread safety: every public method is thread-safe; one internal mutex
// serialises them (each call is short: O(keys in the batch), plus bounded
// eviction work). wait_for() callbacks run after that mutex is released, on
// the thread of the call that completed them: commit(), tick(), or
// wait_for() itself when all keys are already committed. A callback may call
// back into the core.
//
// Errors: a call-level problem (unknown namespace) comes back as the Result's
// error; per-key or per-lease outcomes come back in the result's vectors.
//
// Space life cycle of one slot:
//   allocate -> kWriting --commit--> kCommitted --evict/remove--> reclaim
//               kWriting --abort--> reclaim
//               kWriting --lease expires (tick)--> quarantine --> reclaim
//               kCommitted --remove while read-leased--> kRemovedLeased --last lease ends--> reclaim
//   reclaim = an InvalidateRequest to the agent; only its acknowledgement
//   (invalidated()) returns the space to the allocator. An agent that dies
//   or restarts loses all of its blocks and slots at once.
//
// Memory: about 90 bytes per committed block (block_slab.h, index_table.h);
// coordinator_bench measures it.

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/coordinator_types.h"
#include "kvpool/status.h"
#include "kvpool/types.h"
#include "runtime/common/units.h"

namespace kvpool::coordinator {

struct NamespaceView {
  NamespaceId id = 0;
  NamespaceDescriptor descriptor;
  std::uint64_t block_bytes = 0;
  std::uint64_t blocks = 0;  // committed blocks
  std::uint64_t live_bytes = 0;  // slot bytes of blocks committed or being written
  std::uint64_t quota_blocks = 0;  // 0: no quota
  std::uint64_t quota_bytes = 0;   // 0: no quota
  std::uint64_t live_blocks = 0;   // blocks committed or being written (what a quota counts)
  std::string tenant;              // isolated tenant whose regions hold it; empty: the shared regions
};

// What the index itself occupies (for coordinator_bench and pooltool).
struct MemoryFootprint {
  std::uint64_t entries = 0;           // slab entries in use (all states)
  std::uint64_t slab_bytes = 0;        // allocated slab chunks
  std::uint64_t key_index_bytes = 0;   // (namespace, key) -> entry table
  std::uint64_t slot_index_bytes = 0;  // (agent, slot start) -> entry table
};

class CoordinatorCore {
 public:
  // kInvalidArgument for an inconsistent config (watermarks outside
  // 0 < low <= high <= 1, a zero ttl or timeout, shard_index >= shard_count).
  static Result<std::unique_ptr<CoordinatorCore>> create(const CoordinatorConfig& config = {});
  ~CoordinatorCore();
  CoordinatorCore(const CoordinatorCore&) = delete;
  CoordinatorCore& operator=(const CoordinatorCore&) = delete;

  // ---- Namespaces ----

  // Idempotent; the id is namespace_id(desc). Registering a namespace known
  // only from recovered blocks (recover_blocks) makes it writable again.
  // kInvalidArgument when
  // block_bytes_of(desc) rejects it; kResourceExhausted past 2^32 - 1
  // namespaces.
  //
  // `tenant` names the isolated tenant (runtime/common/tenants.h) whose
  // regions (AgentRegistration::tenant) hold the namespace's blocks; empty:
  // the shared regions. Placement and drains never leave those regions.
  // Registering again with another tenant moves new placements there;
  // blocks already placed stay until evicted.
  //
  // `by` counts a new namespace against its client's and its tenant's limits
  // (CoordinatorConfig::max_namespaces_per_client, _per_tenant):
  // kResourceExhausted naming the limit when one is reached.
  Result<NamespaceId> register_namespace(const NamespaceDescriptor& desc, std::string_view tenant = {},
                                         const NamespaceRegistrant& by = {});
  // The tenant register_namespace (or the recovered region) gave the
  // namespace. kNotFound: unknown namespace.
  Result<std::string> namespace_tenant(NamespaceId id) const;
  std::vector<NamespaceView> namespaces() const;

  // A namespace's budget (0: none) in blocks and in slot bytes (granule-
  // rounded), counting blocks committed or being written. A write that
  // would pass it first evicts that namespace's least recently used unleased
  // blocks, exactly (no watermark slack), wherever they live; when every
  // block is leased the write fails with kResourceExhausted. A lower quota
  // evicts down to it at once. Keeping the namespace's LRU order costs about
  // 40 bytes per committed block of a namespace with a quota. Call error:
  // kNotFound (namespace).
  Result<BatchResult> set_quota(NamespaceId ns, std::uint64_t quota_blocks, std::uint64_t quota_bytes,
                                Clock::time_point now);

  // ---- Agents ----

  // Adds an agent, or a new incarnation of a known one (same control_address,
  // or same worker_address when control_address is empty): the old
  // incarnation's blocks, leases' slots and pending invalidations are dropped
  // at once (its memory is gone) and it is reported dead by the next tick().
  // The same incarnation again while alive is idempotent (refreshes the
  // heartbeat). Errors:
  //   kInvalidArgument: no control or worker address, a region too small
  //     for one granule of payload (pool::RegionLayout), or over 2^32 granules.
  //   kFailedPrecondition: the same incarnation with a different region size,
  //     or an incarnation that was declared dead. An agent whose incarnation
  //     was declared dead must zero its header table and register a new
  //     incarnation (its old headers could otherwise resurrect blocks that
  //     were removed while it was away).
  Result<AgentId> register_agent(const AgentRegistration& registration, Clock::time_point now);

  // The registration of an agent whose region outlived the coordinator's
  // knowledge of it: the coordinator restarted, or declared the agent dead
  // (a partition, a frozen process) while its memory lived on. The region's
  // own headers are the truth (DESIGN.md): when send_blocks comes back true
  // the agent is alive but not placeable until it has sent its scan through
  // recover_blocks() and called finish_recovery(). The registration in force
  // again (same incarnation, alive, not recovering) is idempotent with
  // send_blocks false. Errors as register_agent, except that a dead
  // incarnation is accepted.
  Result<Rejoin> rejoin_agent(const AgentRegistration& registration, Clock::time_point now);

  // Takes scanned blocks back as committed: per block, an older duplicate of
  // a key (here or on another agent) loses to the higher generation and its
  // slot is invalidated; a block of a key still being written elsewhere is
  // dropped likewise. Blocks of namespaces the coordinator does not know
  // yet are kept under the namespace id (lookups find them; writes wait for
  // register_namespace). Future generations are issued above every adopted
  // one. Sending a block again is harmless. kNotFound: unknown or dead
  // agent; kFailedPrecondition: another incarnation, or not recovering.
  Result<RecoverResult> recover_blocks(AgentId agent, std::uint64_t incarnation,
                                       std::span<const RecoveredBlock> blocks, Clock::time_point now);

  // Ends a recovery: every granule no adopted block covers stays
  // unallocatable for write_lease_ttl + write_quarantine (a late put of the
  // old epoch may still land there), then is invalidated like a freed slot
  // and returns to the free space; the agent becomes placeable now.
  // Idempotent. Errors as recover_blocks (not recovering is ok).
  Status finish_recovery(AgentId agent, std::uint64_t incarnation, Clock::time_point now);

  // kNotFound: unknown agent, declared dead, or another incarnation: the
  // agent must register (again).
  Status heartbeat(AgentId agent, std::uint64_t incarnation, Clock::time_point now);

  // Agent membership in etcd (runtime/etcd/membership.h): declares dead at
  // once, like a heartbeat timeout, the live agent whose control_address is
  // `name` together with its isolated tenant regions ("name/TENANT"), unless
  // its incarnation is `keep` (0: keep none; the key naming a new
  // incarnation keeps that one). Reported by the next tick() like any
  // death. The number of records declared dead.
  std::size_t expire_agents(std::string_view name, std::uint64_t keep, const char* why, Clock::time_point now);

  // Every agent ever registered (dead ones with alive == false and zero
  // usage), as of the last call that swept for timeouts.
  std::vector<AgentView> agents() const;
  // Bumps on every join, restart and death.
  std::uint64_t membership_epoch() const;

  // The key-point ranges this coordinator owns from now on (the shard map
  // changed: CoordinatorConfig::owned_ranges). Keys outside them are
  // refused with kFailedPrecondition; blocks already indexed stay readable
  // through entries already handed out but are not looked up any more.
  void set_owned_ranges(std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges,
                        std::vector<std::pair<std::uint64_t, std::uint64_t>> readable = {});

  // Committed blocks whose key point (etcd::key_point) lies in [start, end),
  // by namespace id, scanning the index from entry `cursor` on; at most
  // `limit` keys. `next` is the cursor to go on from, 0 when the scan is
  // done. What moving a key range to another shard copies.
  struct KeyListing {
    std::vector<std::pair<NamespaceId, Key128>> keys;
    std::uint32_t next = 0;
  };
  KeyListing list_keys(std::uint64_t start, std::uint64_t end, std::uint32_t cursor, std::uint32_t limit) const;

  // ---- Writes ----

  // Per key, in order: kExists (committed: touches it in the LRU), kPending
  // (another write lease holds it; a key repeated in the batch is pending
  // the second time), kPlaced (a new write lease until now +
  // write_lease_ttl), or kError (see AllocateItem::status). Evictions this
  // call made come back as invalidations to send. Call error: kNotFound for
  // an unknown namespace.
  Result<AllocateResult> allocate(NamespaceId ns, std::span<const BlockRequest> blocks, const WriterInfo& writer,
                                  Clock::time_point now);

  // Per lease: ok, kNotFound (unknown, already committed, or expired and
  // reclaimed by tick()), kFailedPrecondition (its deadline has passed; the
  // slot goes to quarantine), kUnavailable (its agent died or restarted).
  // All ok ones become visible together. Completed waiters fire after the
  // lock is released, before this returns.
  std::vector<Status> commit(std::span<const LeaseId> write_leases, Clock::time_point now);

  // Gives up write leases: the slots go to invalidation at once (the writer
  // may have written a header), so call it only once no put of the lease can
  // still land (completed, failed, or its endpoint closed). A lease past its
  // deadline goes to quarantine instead. Per lease: ok (also when its agent
  // is gone), kNotFound.
  BatchResult abort(std::span<const LeaseId> write_leases, Clock::time_point now);

  // ---- Reads ----

  // The longest run of leading keys committed on live agents, with
  // locations, touched in the LRU; with take_read_lease, one read lease
  // pinning them (only when at least one key hit). Call errors: kNotFound
  // (namespace), kFailedPrecondition (a key of another shard).
  //
  // With report_evicting, a run that would end at a key whose block was
  // evicted but whose agent has not acknowledged the slot's invalidation
  // yet returns only LookupResult::evicting (no locations, no lease): the
  // caller waits for those slots (any_evicting) and asks again, so no
  // client sees an eviction that a coordinator restart could undo (the
  // rebuild finds a valid header). Hits cost nothing more; a miss costs one
  // hash probe while some eviction is outstanding.
  Result<LookupResult> lookup(NamespaceId ns, std::span<const Key128> keys, bool take_read_lease,
                              Clock::time_point now, bool report_evicting = false);

  // The outstanding evictions (see lookup) of any of `keys`; empty when
  // none (or an unknown namespace). O(keys), nothing when no eviction is
  // outstanding.
  std::vector<EvictingSlot> evicting(NamespaceId ns, std::span<const Key128> keys) const;
  // Whether any of `slots` is still being evicted: its agent alive (the
  // same incarnation) and its acknowledgement outstanding. An agent's death
  // or restart ends its evictions (its blocks go anyway).
  bool any_evicting(std::span<const EvictingSlot> slots) const;

  // Per key: committed on a live agent. Touches nothing.
  Result<std::vector<bool>> contains(NamespaceId ns, std::span<const Key128> keys, Clock::time_point now);

  // Ends a read lease; its blocks become evictable again (as most recently
  // used), and removed ones go to invalidation at the next tick().
  // kNotFound: unknown or already expired.
  Status release(LeaseId read_lease, Clock::time_point now);

  // Per key: ok, kNotFound (not committed), kFailedPrecondition (being
  // written, or of another shard). A removed block leaves the index at once;
  // its space is invalidated once no read lease holds it (the returned
  // invalidations are those that could go now). An unleased one is
  // "evicting" (see invalidated()) until the agent acknowledges: lookups
  // with report_evicting wait for it like for an eviction.
  Result<BatchResult> remove(NamespaceId ns, std::span<const Key128> keys, Clock::time_point now);

  // Calls done(committed) once every key is committed, or at `deadline` (from
  // tick()) with the ones that were. Runs done before returning when all
  // already are, or when deadline <= now. Call errors as lookup().
  Result<WaiterId> wait_for(NamespaceId ns, std::span<const Key128> keys, Clock::time_point deadline, WaitCallback done,
                            Clock::time_point now);
  // False when the waiter already fired or never existed.
  bool cancel_wait(WaiterId waiter);

  // ---- Drain ----

  // Marks the agent draining (no new placements from now on) and issues up
  // to max_in_flight - (moves in flight) new moves of its committed blocks,
  // each to a slot reserved on the least full other live agent that can
  // take it without passing its high watermark (nothing is evicted for a
  // move). The block stays where it is, readable, until its move finishes;
  // it is pinned meanwhile (no eviction). Call again until drained: each
  // call reports progress. A block with no room anywhere is counted in
  // unplaceable and stays (the agent stays draining). kNotFound: unknown or
  // dead agent; kUnavailable: the agent is recovering its blocks (retry).
  Result<DrainStep> drain(AgentId agent, std::uint32_t max_in_flight, Clock::time_point now);
  // Ends a drain: the agent takes placements again (moves in flight finish).
  // kNotFound: unknown or dead agent.
  Status undrain(AgentId agent, Clock::time_point now);
  // The source agent's outcomes. A successful move whose block is still the
  // one copied (not removed, evicted or rewritten meanwhile) and whose
  // target is still the same incarnation becomes the block's location at
  // once; the old slot is invalidated once no read lease holds it. Any other
  // outcome (failure, a lost race, past the deadline) quarantines the
  // reserved slot like an expired write lease (a late put may still land)
  // and leaves the block where it was. Unknown ids (expired by tick()) are
  // ignored. kNotFound: unknown or dead agent; kFailedPrecondition: another
  // incarnation.
  Result<BatchResult> finish_moves(AgentId source, std::uint64_t incarnation, std::span<const MoveOutcome> outcomes,
                                   Clock::time_point now);

  // ---- Invalidation protocol and time ----

  // The agent's acknowledgement of an InvalidateRequest: each slot that
  // matches one sent to it (offsets, length, generation) returns to the free
  // space; others (repeats of an earlier acknowledgement) are ignored.
  // kNotFound: unknown or dead agent; kFailedPrecondition: another
  // incarnation (its slots are gone with it).
  Status invalidated(AgentId agent, std::uint64_t incarnation, std::span<const SlotRef> slots, Clock::time_point now);

  // Evictions (allocate under pressure, quotas, tick's watermark drain) and
  // removes of unleased blocks take a block out of the index at once and
  // free its space only on the acknowledgement above (invalidated()); until
  // then the block is "evicting": stats() and namespaces() still count it
  // (Stats::evicting, Stats::removing), and lookup(report_evicting) reports
  // it.
  //
  // Call periodically (every 100 ms or so): declares dead agents, expires
  // write leases (to quarantine) and read leases, moves ended quarantines to
  // invalidation, fires waiters whose deadline passed (after unlocking),
  // drains agents above the high watermark, and returns every invalidation
  // due (new, or unacknowledged for invalidation_retry).
  TickActions tick(Clock::time_point now);

  // ---- Introspection (O(agents) or O(blocks of one agent)) ----

  Stats stats() const;
  // The LRU stamp as of time t: every block whose stamp is at most this was
  // last written or looked up at or before t (what `pooltool evict
  // --older-than` selects by). tick() notes the stamp clock once a second,
  // at most 4096 notes (older ones thinned out, so resolution coarsens with
  // uptime); 0 (no block) when t is before the first note.
  std::uint64_t stamp_at(Clock::time_point t) const;
  // Every slot of one agent's region the coordinator accounts for, by
  // payload offset. kNotFound: unknown agent.
  Result<std::vector<SlotView>> slots(AgentId agent) const;
  // Cross-checks every structure (indices, lists, allocators, counters)
  // against each other: O(blocks). kInternal with the first discrepancy.
  Status check_consistency() const;
  MemoryFootprint memory() const;

 private:
  struct State;
  explicit CoordinatorCore(std::unique_ptr<State> state);
  Result<Rejoin> join(const AgentRegistration& registration, Clock::time_point now, bool rejoin);

  mutable std::mutex mu_;
  std::unique_ptr<State> s_;  // guarded by mu_
};

}  // namespace kvpool::coordinator
