#include "runtime/rpc/messages.h"

#include "runtime/common/codec.h"

// Each struct's wire format is its field list (codec.h): the one place that
// says what goes on the wire, in order, for encode and decode alike. The
// lists are templates in the structs' own namespaces, where the codec's
// lookup finds them.

namespace kvpool {

template <class Io>
void fields(Io& io, Key128& k) {
  io(k.lo, k.hi);
}

template <class Io>
void fields(Io& io, NamespaceDescriptor& d) {
  io.bytes(d.model_id, 4096);
  io.bytes(d.dtype, 64);
  io(d.num_layers, d.num_kv_heads, d.head_dim, d.tokens_per_block);
  io.bytes(d.layout, 256);
  io(d.tp_rank, d.tp_size, d.block_bytes);
}

namespace rpc {

template <class Io>
void fields(Io& io, StatusWire& m) {
  io(m.code, m.message);
}

template <class Io>
void fields(Io& io, LocationWire& m) {
  io(m.agent, m.incarnation, m.payload_offset, m.header_offset, m.length, m.generation);
}

template <class Io>
void fields(Io& io, RegisterNamespaceRequest& m) {
  io(m.descriptor);
}

template <class Io>
void fields(Io& io, RegisterNamespaceReply& m) {
  io(m.id, m.block_bytes);
}

template <class Io>
void fields(Io& io, AgentRecord& m) {
  io(m.agent, m.incarnation, m.worker_address, m.packed_rkey, m.host_id, m.control_address, m.region_base,
     m.region_bytes, m.alive, m.used_bytes, m.blocks, m.tenant);
}

template <class Io>
void fields(Io& io, IsolatedRegionWire& m) {
  io(m.tenant, m.region_bytes);
}

template <class Io>
void fields(Io& io, RegisterAgentRequest& m) {
  io(m.agent, m.rejoin);
}

template <class Io>
void fields(Io& io, RegisterAgentReply& m) {
  io(m.agent, m.heartbeat_interval_ms, m.send_blocks, m.epoch);
  io.list(m.isolated);
}

template <class Io>
void fields(Io& io, RecoveredBlockWire& m) {
  io(m.ns, m.key, m.payload_offset, m.length, m.generation);
}

template <class Io>
void fields(Io& io, RecoverBlocksRequest& m) {
  io(m.agent, m.incarnation, m.last);
  io.list(m.blocks);
}

template <class Io>
void fields(Io& io, SetQuotaRequest& m) {
  io(m.ns, m.quota_blocks, m.quota_bytes);
}

template <class Io>
void fields(Io& io, RecoverBlocksReply& m) {
  io(m.adopted, m.dropped);
}

template <class Io>
void fields(Io& io, HeartbeatRequest& m) {
  io(m.agent, m.incarnation, m.unix_ms);
}

template <class Io>
void fields(Io& io, ListAgentsReply& m) {
  io(m.epoch);
  io.list(m.agents);
}

template <class Io>
void fields(Io& io, AllocateItem& m) {
  io(m.key, m.length);
}

template <class Io>
void fields(Io& io, AllocateRequest& m) {
  io(m.ns);
  io.bytes(m.writer_host, 4096);
  io.list(m.items);
}

// Only a placed result carries a location and lease, only an error its
// status.
template <class Io>
void fields(Io& io, AllocateResult& m) {
  io.enumeration(m.outcome, AllocateOutcome::kError, [](unsigned) { return std::string("bad outcome"); });
  if (m.outcome == AllocateOutcome::kPlaced) {
    io(m.location, m.lease, m.lease_ms);
  } else if (m.outcome == AllocateOutcome::kError) {
    io(m.error);
  }
}

template <class Io>
void fields(Io& io, AllocateReply& m) {
  io.list(m.results, 1);  // kExists and kPending are the outcome byte alone
  io(m.epoch);
}

template <class Io>
void fields(Io& io, LeaseBatch& m) {
  io.list(m.leases);
  io(m.epoch);
}

template <class Io>
void fields(Io& io, StatusBatch& m) {
  io.list(m.results);
}

template <class Io>
void fields(Io& io, LookupRequest& m) {
  io(m.ns, m.take_lease);
  io.list(m.keys);
}

template <class Io>
void fields(Io& io, LookupReply& m) {
  io(m.lease);
  io.list(m.locations);
  io(m.epoch);
}

template <class Io>
void fields(Io& io, ReleaseRequest& m) {
  io(m.lease, m.epoch);
}

template <class Io>
void fields(Io& io, KeysRequest& m) {
  io(m.ns);
  io.list(m.keys);
}

template <class Io>
void fields(Io& io, WaitForRequest& m) {
  io(m.ns, m.timeout_ms);
  io.list(m.keys);
}

template <class Io>
void fields(Io& io, WaitForReply& m) {
  io.list(m.committed);
}

template <class Io>
void fields(Io& io, SlotWire& m) {
  io(m.header_offset, m.payload_offset, m.length, m.generation);
}

template <class Io>
void fields(Io& io, InvalidateMessage& m) {
  io(m.agent, m.incarnation);
  io.list(m.slots);
  io(m.epoch);
}

template <class Io>
void fields(Io& io, AgentDownMessage& m) {
  io(m.agent, m.incarnation, m.epoch);
}

template <class Io>
void fields(Io& io, StatsReply& m) {
  io(m.agents_alive, m.agents_dead, m.capacity_bytes, m.used_bytes, m.blocks, m.namespaces, m.lookup_hits,
     m.lookup_misses, m.uptime_ms, m.live_bytes, m.reclaiming_bytes, m.write_leases, m.read_leases, m.evictions,
     m.expired_write_leases, m.unix_ms, m.leader, m.shard, m.epoch);
}

template <class Io>
void fields(Io& io, NamespaceRecord& m) {
  io(m.id, m.descriptor, m.block_bytes, m.blocks, m.live_blocks, m.live_bytes, m.quota_blocks, m.quota_bytes);
}

template <class Io>
void fields(Io& io, ListNamespacesReply& m) {
  io.list(m.namespaces);
}

template <class Io>
void fields(Io& io, UsageRequest& m) {
  io(m.all, m.ns);
}

template <class Io>
void fields(Io& io, UsageRow& m) {
  io(m.ns, m.agent, m.blocks, m.bytes);
}

template <class Io>
void fields(Io& io, UsageReply& m) {
  io.list(m.rows);
}

template <class Io>
void fields(Io& io, EvictNamespaceRequest& m) {
  io(m.ns, m.dry_run, m.older_than_ms);
}

template <class Io>
void fields(Io& io, EvictNamespaceReply& m) {
  io(m.blocks, m.bytes, m.removed, m.failed);
}

template <class Io>
void fields(Io& io, AgentStatsRecord& m) {
  io(m.agent, m.incarnation, m.host_id, m.control_address, m.alive, m.heartbeat_age_ms, m.region_bytes,
     m.capacity_bytes, m.used_bytes, m.live_bytes, m.reclaiming_bytes, m.blocks, m.largest_free, m.draining, m.drained,
     m.clock_known, m.clock_offset_ms, m.tenant);
}

template <class Io>
void fields(Io& io, AgentStatsReply& m) {
  io.list(m.agents);
}

template <class Io>
void fields(Io& io, DrainRequest& m) {
  io(m.agent);
  io.enumeration(m.mode, DrainMode::kUndrain, [](unsigned v) { return "unknown drain mode " + std::to_string(v); });
  io(m.max_in_flight);
}

template <class Io>
void fields(Io& io, DrainReply& m) {
  io(m.draining, m.drained, m.blocks_left, m.writing, m.in_flight, m.moved, m.failed, m.unplaceable, m.placement);
}

template <class Io>
void fields(Io& io, DrainTarget& m) {
  io(m.agent, m.incarnation, m.worker_address, m.packed_rkey, m.host_id, m.region_base, m.region_bytes);
}

template <class Io>
void fields(Io& io, MoveWire& m) {
  io(m.id, m.ns, m.key, m.from, m.to);
}

template <class Io>
void fields(Io& io, DrainCopyMessage& m) {
  io(m.agent, m.incarnation);
  io.list(m.targets);
  io.list(m.moves);
  io(m.epoch);
}

template <class Io>
void fields(Io& io, MoveResultWire& m) {
  io(m.id, m.status);
}

template <class Io>
void fields(Io& io, DrainCopiedRequest& m) {
  io(m.agent, m.incarnation);
  io.list(m.results);
}

namespace {

// Strings without a limit of their own (addresses, rkeys, ids, messages) and
// batches: one request cannot make the server do unbounded work.
constexpr Reader::Limits kLimits{1 << 20, kMaxBatch};

}  // namespace

// The name starts each decode error: "allocate reply: trailing bytes".
#define KVPOOL_RPC_CODEC(T, name)                             \
  std::string encode(const T& m) { return encode_fields(m); } \
  Status decode(std::string_view p, T& m) { return decode_fields(p, m, name, kLimits); }
KVPOOL_RPC_CODEC(StatusWire, "status")
KVPOOL_RPC_CODEC(RegisterNamespaceRequest, "register namespace")
KVPOOL_RPC_CODEC(RegisterNamespaceReply, "register namespace reply")
KVPOOL_RPC_CODEC(RegisterAgentRequest, "register agent")
KVPOOL_RPC_CODEC(RegisterAgentReply, "register agent reply")
KVPOOL_RPC_CODEC(RecoverBlocksRequest, "recover blocks")
KVPOOL_RPC_CODEC(RecoverBlocksReply, "recover blocks reply")
KVPOOL_RPC_CODEC(SetQuotaRequest, "set quota")
KVPOOL_RPC_CODEC(HeartbeatRequest, "heartbeat")
KVPOOL_RPC_CODEC(ListAgentsReply, "list agents reply")
KVPOOL_RPC_CODEC(AllocateRequest, "allocate")
KVPOOL_RPC_CODEC(AllocateReply, "allocate reply")
KVPOOL_RPC_CODEC(LeaseBatch, "lease batch")
KVPOOL_RPC_CODEC(StatusBatch, "status batch")
KVPOOL_RPC_CODEC(LookupRequest, "lookup")
KVPOOL_RPC_CODEC(LookupReply, "lookup reply")
KVPOOL_RPC_CODEC(ReleaseRequest, "release")
KVPOOL_RPC_CODEC(KeysRequest, "keys request")
KVPOOL_RPC_CODEC(WaitForRequest, "wait for")
KVPOOL_RPC_CODEC(WaitForReply, "wait for reply")
KVPOOL_RPC_CODEC(InvalidateMessage, "invalidate")
KVPOOL_RPC_CODEC(AgentDownMessage, "agent down")
KVPOOL_RPC_CODEC(StatsReply, "stats")
KVPOOL_RPC_CODEC(ListNamespacesReply, "list namespaces reply")
KVPOOL_RPC_CODEC(UsageRequest, "usage")
KVPOOL_RPC_CODEC(UsageReply, "usage reply")
KVPOOL_RPC_CODEC(EvictNamespaceRequest, "evict namespace")
KVPOOL_RPC_CODEC(EvictNamespaceReply, "evict namespace reply")
KVPOOL_RPC_CODEC(AgentStatsReply, "agent stats reply")
KVPOOL_RPC_CODEC(DrainRequest, "drain")
KVPOOL_RPC_CODEC(DrainReply, "drain reply")
KVPOOL_RPC_CODEC(DrainCopyMessage, "drain copy")
KVPOOL_RPC_CODEC(DrainCopiedRequest, "drain copied")
#undef KVPOOL_RPC_CODEC

}  // namespace rpc
}  // namespace kvpool
