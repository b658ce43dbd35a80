#pragma once
// The control protocol's messages: one struct per request and reply, with
// encode/decode over the little-endian codec. Coordinator, agent and runtime
// share these; the frame layer (frame.h) carries them.
//
// Every decode refuses truncated payloads, trailing bytes, and element counts
// that the remaining bytes could not hold (kInvalidArgument).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvpool/status.h"
#include "kvpool/types.h"

namespace kvpool::rpc {

// Message types. 1 is the hello (frame.h). Requests carry a type; the reply
// carries the same type with the reply flag. Pushes (server -> client, no
// reply) have their own types.
enum MessageType : std::uint16_t {
  kRegisterNamespace = 16,
  kRegisterAgent = 17,
  kHeartbeat = 18,
  kListAgents = 19,
  kAllocate = 20,
  kCommit = 21,
  kAbort = 22,
  kLookup = 23,
  kRelease = 24,
  kRemove = 25,
  kWaitFor = 26,
  kStats = 27,
  kListNamespaces = 28,  // operator tools: every registered namespace
  kUsage = 29,           // operator tools: committed blocks by namespace and agent
  kEvictNamespace = 30,  // operator tools: remove every committed block of a namespace
  kAgentStats = 31,      // operator tools: every agent's usage and heartbeat age
  kRecoverBlocks = 32,   // agent -> coordinator: blocks of a scan, after a rejoin
  kSetQuota = 33,        // a namespace's budget in blocks and bytes (0: none)
  kDrain = 36,           // operator tools: one step of an agent's drain (or undrain), with its progress
  kDrainCopied = 38,     // agent -> coordinator: outcomes of the moves of a kPushDrainCopy
  kInvalidateDone = 41,  // agent -> coordinator: slots invalidated
  kRemovedDone = 35,     // agent -> coordinator: the slots of a kPushRemoved are left out of scans (InvalidateMessage)
  // pushes
  kPushInvalidate = 40,  // coordinator -> agent: invalidate these slots, then send kInvalidateDone
  kPushAgentDown = 42,   // coordinator -> workers: an agent incarnation is gone
  kPushDrainCopy = 37,   // coordinator -> agent: copy these blocks of yours to other agents, then kDrainCopied
  // push, coordinator -> agent (InvalidateMessage): these slots were
  // removed while read-leased; their headers stay valid for the readers
  // until the invalidation, but no scan may take them back. The agent
  // acknowledges with kRemovedDone, and the remove is answered then.
  kPushRemoved = 34,
};

// Caps on batch sizes so one request cannot make the server do unbounded
// work (the frame size already bounds bytes).
inline constexpr std::uint32_t kMaxBatch = 65536;

struct StatusWire {
  StatusCode code = StatusCode::kOk;
  std::string message;
  Status to_status() const { return code == StatusCode::kOk ? Status() : Status(code, message); }
  static StatusWire from(const Status& s) { return {s.code(), s.message()}; }
};

// Where a block lives: region-relative offsets of its payload and its slot
// header in agent `agent`'s region (incarnation `incarnation`).
struct LocationWire {
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  std::uint64_t payload_offset = 0;
  std::uint64_t header_offset = 0;
  std::uint64_t length = 0;
  std::uint64_t generation = 0;
};

struct RegisterNamespaceRequest {
  NamespaceDescriptor descriptor;
};
struct RegisterNamespaceReply {
  NamespaceId id = 0;
  std::uint64_t block_bytes = 0;
};

struct AgentRecord {
  std::uint32_t agent = 0;  // assigned by the coordinator; 0 in a registration
  std::uint64_t incarnation = 0;
  std::string worker_address;
  std::string packed_rkey;
  std::string host_id;
  std::string control_address;
  std::uint64_t region_base = 0;
  std::uint64_t region_bytes = 0;
  bool alive = true;
  std::uint64_t used_bytes = 0;
  std::uint64_t blocks = 0;
  // Empty: a region of the shared pool. Else the isolated tenant this region
  // belongs to (runtime/common/tenants.h): only that tenant's namespaces are
  // placed in it, and only that tenant's workers are told of it.
  std::string tenant;
};
struct IsolatedRegionWire {
  std::string tenant;
  std::uint64_t region_bytes = 0;
  friend bool operator==(const IsolatedRegionWire&, const IsolatedRegionWire&) = default;
};
struct RegisterAgentRequest {
  AgentRecord agent;
  // The region outlived the coordinator's knowledge of it (the coordinator
  // restarted, or declared this agent dead): its headers hold blocks.
  bool rejoin = false;
};
struct RegisterAgentReply {
  std::uint32_t agent = 0;
  std::uint32_t heartbeat_interval_ms = 0;
  // Rejoin taken fresh: send the scan (kRecoverBlocks), the last batch with
  // `last` set.
  bool send_blocks = false;
  // High availability: the leader's epoch (coordinator/leader.h), 0 without
  // etcd. An agent refuses a coordinator whose epoch is below one it has
  // seen: a deposed leader that still answers.
  std::uint64_t epoch = 0;
  // To the registration of a shared region (tenant empty): the isolated
  // tenants of the coordinator's --tenants file and the size of the region
  // each gets on this agent. The agent allocates one region per tenant and
  // registers each as its own record (AgentRecord::tenant); a region of a
  // tenant no longer listed stays, unused, until the agent restarts.
  std::vector<IsolatedRegionWire> isolated{};
};
struct RecoveredBlockWire {
  NamespaceId ns = 0;
  Key128 key;
  std::uint64_t payload_offset = 0;  // relative to the payload base
  std::uint64_t length = 0;
  std::uint64_t generation = 0;
};
struct RecoverBlocksRequest {
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  bool last = false;  // the scan is complete: end the recovery
  std::vector<RecoveredBlockWire> blocks;
};
struct SetQuotaRequest {
  NamespaceId ns = 0;
  std::uint64_t quota_blocks = 0;  // 0: none
  std::uint64_t quota_bytes = 0;   // 0: none
};
struct RecoverBlocksReply {
  std::uint64_t adopted = 0;
  std::uint64_t dropped = 0;
};
struct HeartbeatRequest {
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  // The agent's wall clock (Unix ms) when it sent this: the coordinator
  // keeps the offset from its own, for pooltool doctor's clock-skew check.
  std::int64_t unix_ms = 0;
};
struct ListAgentsReply {
  std::uint64_t epoch = 0;  // bumps on every join or leave
  std::vector<AgentRecord> agents;
};

struct AllocateItem {
  Key128 key;
  std::uint64_t length = 0;
};
struct AllocateRequest {
  NamespaceId ns = 0;
  std::string writer_host;  // the writer's host id, for local-first placement
  std::vector<AllocateItem> items;
};
enum class AllocateOutcome : std::uint8_t { kPlaced = 0, kExists = 1, kPending = 2, kError = 3 };
struct AllocateResult {
  AllocateOutcome outcome = AllocateOutcome::kError;
  StatusWire error;           // kError
  LocationWire location;      // kPlaced
  std::uint64_t lease = 0;    // kPlaced: the write lease to commit or abort
  std::uint32_t lease_ms = 0; // kPlaced: time left on the lease when issued
};
struct AllocateReply {
  std::vector<AllocateResult> results;
  // High availability: the epoch of the leader that issued these leases
  // (coordinator/leader.h; 0 without etcd). Sent back with their commit or
  // abort (LeaseBatch::epoch); any other leader refuses them.
  std::uint64_t epoch{};
};

struct LeaseBatch {  // Commit and Abort requests
  std::vector<std::uint64_t> leases;
  // The epoch of the allocate reply that issued the leases: a coordinator
  // whose epoch differs refuses the whole call, naming both epochs.
  std::uint64_t epoch{};
};
struct StatusBatch {  // per-item results of Commit, Abort, Remove
  std::vector<StatusWire> results;
};

struct LookupRequest {
  NamespaceId ns = 0;
  bool take_lease = true;
  std::vector<Key128> keys;
};
struct LookupReply {
  std::uint64_t lease = 0;               // 0 when none was taken
  std::vector<LocationWire> locations;   // the present leading keys, in order
  std::uint64_t epoch{};                 // the leader's epoch (0 without etcd): sent back with the release
};
struct ReleaseRequest {
  std::uint64_t lease = 0;
  std::uint64_t epoch{};  // LookupReply::epoch of the lease; another leader refuses it
};
struct KeysRequest {  // Remove
  NamespaceId ns = 0;
  std::vector<Key128> keys;
};
struct WaitForRequest {
  NamespaceId ns = 0;
  std::uint32_t timeout_ms = 0;
  std::vector<Key128> keys;
};
struct WaitForReply {
  std::vector<bool> committed;
};

struct SlotWire {
  std::uint64_t header_offset = 0;
  std::uint64_t payload_offset = 0;
  std::uint64_t length = 0;
  std::uint64_t generation = 0;  // echoed back: tells a stale ack from a current one
};
struct InvalidateMessage {  // push to the agent, and the agent's ack request
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  std::vector<SlotWire> slots;
  // The pushing leader's epoch (0 without etcd): an agent refuses a push
  // stamped lower than the highest epoch it registered with (a deposed
  // leader). The acknowledgement echoes it.
  std::uint64_t epoch{};
};
struct AgentDownMessage {
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  std::uint64_t epoch = 0;
};

struct StatsReply {
  std::uint64_t agents_alive = 0;
  std::uint64_t agents_dead = 0;
  std::uint64_t capacity_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::uint64_t blocks = 0;
  std::uint64_t namespaces = 0;
  std::uint64_t lookup_hits = 0;
  std::uint64_t lookup_misses = 0;
  std::uint64_t uptime_ms = 0;
  std::uint64_t live_bytes = 0;        // committed + being written
  std::uint64_t reclaiming_bytes = 0;  // quarantined or awaiting invalidation
  std::uint64_t write_leases = 0;
  std::uint64_t read_leases = 0;
  std::uint64_t evictions = 0;
  std::uint64_t expired_write_leases = 0;
  std::int64_t unix_ms = 0;  // the coordinator's wall clock when it answered (clock-skew check)
  // High availability (--etcd): this process leads `shard` since `epoch`;
  // all three 0/false without etcd.
  bool leader = false;
  std::uint32_t shard = 0;
  std::uint64_t epoch = 0;
};

// kListNamespaces: empty request.
struct NamespaceRecord {
  NamespaceId id = 0;
  NamespaceDescriptor descriptor;
  std::uint64_t block_bytes = 0;
  std::uint64_t blocks = 0;        // committed
  std::uint64_t live_blocks = 0;   // committed or being written: what a quota counts
  std::uint64_t live_bytes = 0;    // their slot bytes
  std::uint64_t quota_blocks = 0;  // 0: none
  std::uint64_t quota_bytes = 0;   // 0: none
};
struct ListNamespacesReply {
  std::vector<NamespaceRecord> namespaces;
};

struct UsageRequest {
  bool all = true;  // every namespace, or only `ns`
  NamespaceId ns = 0;
};
// Committed blocks of one namespace on one agent; bytes are slot bytes
// (rounded up to the region's granule), what the blocks take from the pool.
struct UsageRow {
  NamespaceId ns = 0;
  std::uint32_t agent = 0;
  std::uint64_t blocks = 0;
  std::uint64_t bytes = 0;
};
struct UsageReply {
  std::vector<UsageRow> rows;  // one per (namespace, agent) holding blocks
};

struct EvictNamespaceRequest {
  NamespaceId ns = 0;
  bool dry_run = false;  // count what would go, remove nothing
  // Only blocks not written or looked up for this long (0: every block);
  // to the coordinator's once-a-second note of its LRU clock.
  std::uint64_t older_than_ms = 0;
};
struct EvictNamespaceReply {
  std::uint64_t blocks = 0;   // committed blocks found
  std::uint64_t bytes = 0;    // their slot bytes
  std::uint64_t removed = 0;  // removed now (0 with dry_run)
  std::uint64_t failed = 0;   // could not be removed (being written, or gone meanwhile)
};

// kAgentStats: empty request. What operators see of each agent (workers use
// kListAgents, which carries the addresses and rkeys they connect with).
struct AgentStatsRecord {
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  std::string host_id;
  std::string control_address;
  bool alive = false;
  std::uint64_t heartbeat_age_ms = 0;  // since the last heartbeat
  std::uint64_t region_bytes = 0;
  std::uint64_t capacity_bytes = 0;  // payload area
  std::uint64_t used_bytes = 0;
  std::uint64_t live_bytes = 0;
  std::uint64_t reclaiming_bytes = 0;
  std::uint64_t blocks = 0;
  std::uint64_t largest_free = 0;
  bool draining = false;  // pooltool drain: takes no new blocks
  bool drained = false;   // draining and holds nothing needed: safe to stop
  // The agent's clock minus the coordinator's at its last heartbeat (ms,
  // within the heartbeat's one-way delay); clock_known false before one came.
  bool clock_known = false;
  std::int64_t clock_offset_ms = 0;
  std::string tenant{};  // AgentRecord::tenant
};
struct AgentStatsReply {
  std::vector<AgentStatsRecord> agents;
};

// kDrain: pooltool asks for one step of an agent's drain; each step issues
// more moves (kPushDrainCopy to the agent) and reports progress.
enum class DrainMode : std::uint8_t { kStep = 0, kUndrain = 1 };
struct DrainRequest {
  std::uint32_t agent = 0;
  DrainMode mode = DrainMode::kStep;
  std::uint32_t max_in_flight = 64;  // moves outstanding at once for this agent
};
struct DrainReply {
  bool draining = false;
  bool drained = false;
  std::uint64_t blocks_left = 0;
  std::uint64_t writing = 0;
  std::uint64_t in_flight = 0;
  std::uint64_t moved = 0;
  std::uint64_t failed = 0;
  std::uint64_t unplaceable = 0;
  StatusWire placement;  // why blocks could not be placed (unplaceable > 0)
};

// kPushDrainCopy: the agent puts each block's payload, then a header with
// the new generation, into the target's region, and reports kDrainCopied.
struct DrainTarget {  // what the agent connects to
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  std::string worker_address;
  std::string packed_rkey;
  std::string host_id;
  std::uint64_t region_base = 0;
  std::uint64_t region_bytes = 0;
};
struct MoveWire {
  std::uint64_t id = 0;
  NamespaceId ns = 0;
  Key128 key;
  LocationWire from;  // in the receiving agent's own region
  LocationWire to;    // in a target's region (to.agent names the target)
};
struct DrainCopyMessage {
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  std::vector<DrainTarget> targets;
  std::vector<MoveWire> moves;
  std::uint64_t epoch{};  // as InvalidateMessage::epoch
};
struct MoveResultWire {
  std::uint64_t id = 0;
  StatusWire status;
};
struct DrainCopiedRequest {
  std::uint32_t agent = 0;
  std::uint64_t incarnation = 0;
  std::vector<MoveResultWire> results;
};

// encode(x) returns the payload; decode(payload, x) fills x.
#define KVPOOL_RPC_MESSAGE(T)  \
  std::string encode(const T&); \
  Status decode(std::string_view payload, T& out);
KVPOOL_RPC_MESSAGE(StatusWire)
KVPOOL_RPC_MESSAGE(RegisterNamespaceRequest)
KVPOOL_RPC_MESSAGE(RegisterNamespaceReply)
KVPOOL_RPC_MESSAGE(RegisterAgentRequest)
KVPOOL_RPC_MESSAGE(RegisterAgentReply)
KVPOOL_RPC_MESSAGE(RecoverBlocksRequest)
KVPOOL_RPC_MESSAGE(RecoverBlocksReply)
KVPOOL_RPC_MESSAGE(SetQuotaRequest)
KVPOOL_RPC_MESSAGE(HeartbeatRequest)
KVPOOL_RPC_MESSAGE(ListAgentsReply)
KVPOOL_RPC_MESSAGE(AllocateRequest)
KVPOOL_RPC_MESSAGE(AllocateReply)
KVPOOL_RPC_MESSAGE(LeaseBatch)
KVPOOL_RPC_MESSAGE(StatusBatch)
KVPOOL_RPC_MESSAGE(LookupRequest)
KVPOOL_RPC_MESSAGE(LookupReply)
KVPOOL_RPC_MESSAGE(ReleaseRequest)
KVPOOL_RPC_MESSAGE(KeysRequest)
KVPOOL_RPC_MESSAGE(WaitForRequest)
KVPOOL_RPC_MESSAGE(WaitForReply)
KVPOOL_RPC_MESSAGE(InvalidateMessage)
KVPOOL_RPC_MESSAGE(AgentDownMessage)
KVPOOL_RPC_MESSAGE(StatsReply)
KVPOOL_RPC_MESSAGE(ListNamespacesReply)
KVPOOL_RPC_MESSAGE(UsageRequest)
KVPOOL_RPC_MESSAGE(UsageReply)
KVPOOL_RPC_MESSAGE(EvictNamespaceRequest)
KVPOOL_RPC_MESSAGE(EvictNamespaceReply)
KVPOOL_RPC_MESSAGE(AgentStatsReply)
KVPOOL_RPC_MESSAGE(DrainRequest)
KVPOOL_RPC_MESSAGE(DrainReply)
KVPOOL_RPC_MESSAGE(DrainCopyMessage)
KVPOOL_RPC_MESSAGE(DrainCopiedRequest)
#undef KVPOOL_RPC_MESSAGE

}  // namespace kvpool::rpc
