#include "runtime/rpc/messages.h"

#include "runtime/common/codec.h"

namespace kvpool::rpc {
namespace {

constexpr std::size_t kMaxString = 1 << 20;  // addresses, rkeys, ids, messages

void put(Writer& w, const Key128& k) {
  w.u64(k.lo);
  w.u64(k.hi);
}
Key128 get_key(Reader& r) {
  Key128 k;
  k.lo = r.u64();
  k.hi = r.u64();
  return k;
}
void put(Writer& w, const StatusWire& s) {
  w.u16(static_cast<std::uint16_t>(s.code));
  w.bytes(s.message);
}
StatusWire get_status(Reader& r) {
  StatusWire s;
  std::uint16_t code = r.u16();
  if (code > static_cast<std::uint16_t>(kLastStatusCode)) code = static_cast<std::uint16_t>(StatusCode::kInternal);
  s.code = static_cast<StatusCode>(code);
  s.message = r.bytes(kMaxString);
  return s;
}
void put(Writer& w, const LocationWire& l) {
  w.u32(l.agent);
  w.u64(l.incarnation);
  w.u64(l.payload_offset);
  w.u64(l.header_offset);
  w.u64(l.length);
  w.u64(l.generation);
}
LocationWire get_location(Reader& r) {
  LocationWire l;
  l.agent = r.u32();
  l.incarnation = r.u64();
  l.payload_offset = r.u64();
  l.header_offset = r.u64();
  l.length = r.u64();
  l.generation = r.u64();
  return l;
}
constexpr std::size_t kLocationBytes = 4 + 5 * 8;

void put(Writer& w, const AgentRecord& a) {
  w.u32(a.agent);
  w.u64(a.incarnation);
  w.bytes(a.worker_address);
  w.bytes(a.packed_rkey);
  w.bytes(a.host_id);
  w.bytes(a.control_address);
  w.u64(a.region_base);
  w.u64(a.region_bytes);
  w.boolean(a.alive);
  w.u64(a.used_bytes);
  w.u64(a.blocks);
  w.bytes(a.tenant);
}
AgentRecord get_agent(Reader& r) {
  AgentRecord a;
  a.agent = r.u32();
  a.incarnation = r.u64();
  a.worker_address = r.bytes(kMaxString);
  a.packed_rkey = r.bytes(kMaxString);
  a.host_id = r.bytes(kMaxString);
  a.control_address = r.bytes(kMaxString);
  a.region_base = r.u64();
  a.region_bytes = r.u64();
  a.alive = r.boolean();
  a.used_bytes = r.u64();
  a.blocks = r.u64();
  a.tenant = r.bytes(kMaxString);
  return a;
}

// A batch count the remaining bytes can hold, and at most kMaxBatch; over
// the cap the payload is refused with the limit in the message.
std::uint32_t get_count(Reader& r, std::size_t min_bytes) {
  std::uint32_t n = r.count(min_bytes);
  if (n > kMaxBatch) {
    r.refuse("a batch of " + std::to_string(n) + " items is over the limit of " + std::to_string(kMaxBatch) +
             ": split it");
    return 0;
  }
  return n;
}

}  // namespace

std::string encode(const StatusWire& m) {
  Writer w;
  put(w, m);
  return w.take();
}
Status decode(std::string_view p, StatusWire& m) {
  Reader r(p);
  m = get_status(r);
  return r.finish("status");
}

namespace {
void put(Writer& w, const NamespaceDescriptor& d) {
  w.bytes(d.model_id);
  w.bytes(d.dtype);
  w.u32(d.num_layers);
  w.u32(d.num_kv_heads);
  w.u32(d.head_dim);
  w.u32(d.tokens_per_block);
  w.bytes(d.layout);
  w.u32(d.tp_rank);
  w.u32(d.tp_size);
  w.u64(d.block_bytes);
}
NamespaceDescriptor get_descriptor(Reader& r) {
  NamespaceDescriptor d;
  d.model_id = r.bytes(4096);
  d.dtype = r.bytes(64);
  d.num_layers = r.u32();
  d.num_kv_heads = r.u32();
  d.head_dim = r.u32();
  d.tokens_per_block = r.u32();
  d.layout = r.bytes(256);
  d.tp_rank = r.u32();
  d.tp_size = r.u32();
  d.block_bytes = r.u64();
  return d;
}
}  // namespace

std::string encode(const RegisterNamespaceRequest& m) {
  Writer w;
  put(w, m.descriptor);
  return w.take();
}
Status decode(std::string_view p, RegisterNamespaceRequest& m) {
  Reader r(p);
  m.descriptor = get_descriptor(r);
  return r.finish("register namespace");
}

std::string encode(const RegisterNamespaceReply& m) {
  Writer w;
  w.u64(m.id);
  w.u64(m.block_bytes);
  return w.take();
}
Status decode(std::string_view p, RegisterNamespaceReply& m) {
  Reader r(p);
  m.id = r.u64();
  m.block_bytes = r.u64();
  return r.finish("register namespace reply");
}

std::string encode(const RegisterAgentRequest& m) {
  Writer w;
  put(w, m.agent);
  w.boolean(m.rejoin);
  return w.take();
}
Status decode(std::string_view p, RegisterAgentRequest& m) {
  Reader r(p);
  m.agent = get_agent(r);
  m.rejoin = r.boolean();
  return r.finish("register agent");
}

std::string encode(const RegisterAgentReply& m) {
  Writer w;
  w.u32(m.agent);
  w.u32(m.heartbeat_interval_ms);
  w.boolean(m.send_blocks);
  w.u64(m.epoch);
  w.u32(static_cast<std::uint32_t>(m.isolated.size()));
  for (const auto& t : m.isolated) {
    w.bytes(t.tenant);
    w.u64(t.region_bytes);
  }
  return w.take();
}
Status decode(std::string_view p, RegisterAgentReply& m) {
  Reader r(p);
  m.agent = r.u32();
  m.heartbeat_interval_ms = r.u32();
  m.send_blocks = r.boolean();
  m.epoch = r.u64();
  std::uint32_t n = get_count(r, 4 + 8);
  m.isolated.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    IsolatedRegionWire t;
    t.tenant = r.bytes(kMaxString);
    t.region_bytes = r.u64();
    m.isolated.push_back(std::move(t));
  }
  return r.finish("register agent reply");
}

std::string encode(const RecoverBlocksRequest& m) {
  Writer w;
  w.u32(m.agent);
  w.u64(m.incarnation);
  w.boolean(m.last);
  w.u32(static_cast<std::uint32_t>(m.blocks.size()));
  for (const auto& b : m.blocks) {
    w.u64(b.ns);
    put(w, b.key);
    w.u64(b.payload_offset);
    w.u64(b.length);
    w.u64(b.generation);
  }
  return w.take();
}
Status decode(std::string_view p, RecoverBlocksRequest& m) {
  Reader r(p);
  m.agent = r.u32();
  m.incarnation = r.u64();
  m.last = r.boolean();
  std::uint32_t n = get_count(r, 48);
  m.blocks.resize(n);
  for (auto& b : m.blocks) {
    b.ns = r.u64();
    b.key = get_key(r);
    b.payload_offset = r.u64();
    b.length = r.u64();
    b.generation = r.u64();
  }
  return r.finish("recover blocks");
}

std::string encode(const SetQuotaRequest& m) {
  Writer w;
  w.u64(m.ns);
  w.u64(m.quota_blocks);
  w.u64(m.quota_bytes);
  return w.take();
}
Status decode(std::string_view p, SetQuotaRequest& m) {
  Reader r(p);
  m.ns = r.u64();
  m.quota_blocks = r.u64();
  m.quota_bytes = r.u64();
  return r.finish("set quota");
}

std::string encode(const RecoverBlocksReply& m) {
  Writer w;
  w.u64(m.adopted);
  w.u64(m.dropped);
  return w.take();
}
Status decode(std::string_view p, RecoverBlocksReply& m) {
  Reader r(p);
  m.adopted = r.u64();
  m.dropped = r.u64();
  return r.finish("recover blocks reply");
}

std::string encode(const HeartbeatRequest& m) {
  Writer w;
  w.u32(m.agent);
  w.u64(m.incarnation);
  w.i64(m.unix_ms);
  return w.take();
}
Status decode(std::string_view p, HeartbeatRequest& m) {
  Reader r(p);
  m.agent = r.u32();
  m.incarnation = r.u64();
  m.unix_ms = r.i64();
  return r.finish("heartbeat");
}

std::string encode(const ListAgentsReply& m) {
  Writer w;
  w.u64(m.epoch);
  w.u32(static_cast<std::uint32_t>(m.agents.size()));
  for (const auto& a : m.agents) put(w, a);
  return w.take();
}
Status decode(std::string_view p, ListAgentsReply& m) {
  Reader r(p);
  m.epoch = r.u64();
  std::uint32_t n = get_count(r, 4 + 8 + 16 + 16 + 1 + 16 + 4);
  m.agents.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) m.agents.push_back(get_agent(r));
  return r.finish("list agents reply");
}

std::string encode(const AllocateRequest& m) {
  Writer w;
  w.u64(m.ns);
  w.bytes(m.writer_host);
  w.u32(static_cast<std::uint32_t>(m.items.size()));
  for (const auto& it : m.items) {
    put(w, it.key);
    w.u64(it.length);
  }
  return w.take();
}
Status decode(std::string_view p, AllocateRequest& m) {
  Reader r(p);
  m.ns = r.u64();
  m.writer_host = r.bytes(4096);
  std::uint32_t n = get_count(r, 24);
  m.items.resize(n);
  for (auto& it : m.items) {
    it.key = get_key(r);
    it.length = r.u64();
  }
  return r.finish("allocate");
}

std::string encode(const AllocateReply& m) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(m.results.size()));
  for (const auto& res : m.results) {
    w.u8(static_cast<std::uint8_t>(res.outcome));
    switch (res.outcome) {
      case AllocateOutcome::kPlaced:
        put(w, res.location);
        w.u64(res.lease);
        w.u32(res.lease_ms);
        break;
      case AllocateOutcome::kError:
        put(w, res.error);
        break;
      default:
        break;
    }
  }
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, AllocateReply& m) {
  Reader r(p);
  std::uint32_t n = get_count(r, 1);
  m.results.resize(n);
  for (auto& res : m.results) {
    res = AllocateResult();  // decoding into a reused reply leaves nothing stale
    std::uint8_t o = r.u8();
    if (o > 3) return Status(StatusCode::kInvalidArgument, "allocate reply: bad outcome");
    res.outcome = static_cast<AllocateOutcome>(o);
    if (res.outcome == AllocateOutcome::kPlaced) {
      res.location = get_location(r);
      res.lease = r.u64();
      res.lease_ms = r.u32();
    } else if (res.outcome == AllocateOutcome::kError) {
      res.error = get_status(r);
    }
  }
  m.epoch = r.u64();
  return r.finish("allocate reply");
}

std::string encode(const LeaseBatch& m) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(m.leases.size()));
  for (auto l : m.leases) w.u64(l);
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, LeaseBatch& m) {
  Reader r(p);
  std::uint32_t n = get_count(r, 8);
  m.leases.resize(n);
  for (auto& l : m.leases) l = r.u64();
  m.epoch = r.u64();
  return r.finish("lease batch");
}

std::string encode(const StatusBatch& m) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(m.results.size()));
  for (const auto& s : m.results) put(w, s);
  return w.take();
}
Status decode(std::string_view p, StatusBatch& m) {
  Reader r(p);
  std::uint32_t n = get_count(r, 6);
  m.results.resize(n);
  for (auto& s : m.results) s = get_status(r);
  return r.finish("status batch");
}

std::string encode(const LookupRequest& m) {
  Writer w;
  w.u64(m.ns);
  w.boolean(m.take_lease);
  w.u32(static_cast<std::uint32_t>(m.keys.size()));
  for (const auto& k : m.keys) put(w, k);
  return w.take();
}
Status decode(std::string_view p, LookupRequest& m) {
  Reader r(p);
  m.ns = r.u64();
  m.take_lease = r.boolean();
  std::uint32_t n = get_count(r, 16);
  m.keys.resize(n);
  for (auto& k : m.keys) k = get_key(r);
  return r.finish("lookup");
}

std::string encode(const LookupReply& m) {
  Writer w;
  w.u64(m.lease);
  w.u32(static_cast<std::uint32_t>(m.locations.size()));
  for (const auto& l : m.locations) put(w, l);
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, LookupReply& m) {
  Reader r(p);
  m.lease = r.u64();
  std::uint32_t n = get_count(r, kLocationBytes);
  m.locations.resize(n);
  for (auto& l : m.locations) l = get_location(r);
  m.epoch = r.u64();
  return r.finish("lookup reply");
}

std::string encode(const ReleaseRequest& m) {
  Writer w;
  w.u64(m.lease);
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, ReleaseRequest& m) {
  Reader r(p);
  m.lease = r.u64();
  m.epoch = r.u64();
  return r.finish("release");
}

std::string encode(const KeysRequest& m) {
  Writer w;
  w.u64(m.ns);
  w.u32(static_cast<std::uint32_t>(m.keys.size()));
  for (const auto& k : m.keys) put(w, k);
  return w.take();
}
Status decode(std::string_view p, KeysRequest& m) {
  Reader r(p);
  m.ns = r.u64();
  std::uint32_t n = get_count(r, 16);
  m.keys.resize(n);
  for (auto& k : m.keys) k = get_key(r);
  return r.finish("keys request");
}

std::string encode(const WaitForRequest& m) {
  Writer w;
  w.u64(m.ns);
  w.u32(m.timeout_ms);
  w.u32(static_cast<std::uint32_t>(m.keys.size()));
  for (const auto& k : m.keys) put(w, k);
  return w.take();
}
Status decode(std::string_view p, WaitForRequest& m) {
  Reader r(p);
  m.ns = r.u64();
  m.timeout_ms = r.u32();
  std::uint32_t n = get_count(r, 16);
  m.keys.resize(n);
  for (auto& k : m.keys) k = get_key(r);
  return r.finish("wait for");
}

std::string encode(const WaitForReply& m) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(m.committed.size()));
  for (bool b : m.committed) w.boolean(b);
  return w.take();
}
Status decode(std::string_view p, WaitForReply& m) {
  Reader r(p);
  std::uint32_t n = get_count(r, 1);
  m.committed.resize(n);
  for (std::uint32_t i = 0; i < n; ++i) m.committed[i] = r.boolean();
  return r.finish("wait for reply");
}

std::string encode(const InvalidateMessage& m) {
  Writer w;
  w.u32(m.agent);
  w.u64(m.incarnation);
  w.u32(static_cast<std::uint32_t>(m.slots.size()));
  for (const auto& s : m.slots) {
    w.u64(s.header_offset);
    w.u64(s.payload_offset);
    w.u64(s.length);
    w.u64(s.generation);
  }
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, InvalidateMessage& m) {
  Reader r(p);
  m.agent = r.u32();
  m.incarnation = r.u64();
  std::uint32_t n = get_count(r, 32);
  m.slots.resize(n);
  for (auto& s : m.slots) {
    s.header_offset = r.u64();
    s.payload_offset = r.u64();
    s.length = r.u64();
    s.generation = r.u64();
  }
  m.epoch = r.u64();
  return r.finish("invalidate");
}

std::string encode(const AgentDownMessage& m) {
  Writer w;
  w.u32(m.agent);
  w.u64(m.incarnation);
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, AgentDownMessage& m) {
  Reader r(p);
  m.agent = r.u32();
  m.incarnation = r.u64();
  m.epoch = r.u64();
  return r.finish("agent down");
}

std::string encode(const StatsReply& m) {
  Writer w;
  for (auto v : {m.agents_alive, m.agents_dead, m.capacity_bytes, m.used_bytes, m.blocks, m.namespaces,
                 m.lookup_hits, m.lookup_misses, m.uptime_ms, m.live_bytes, m.reclaiming_bytes, m.write_leases,
                 m.read_leases, m.evictions, m.expired_write_leases}) {
    w.u64(v);
  }
  w.i64(m.unix_ms);
  w.boolean(m.leader);
  w.u32(m.shard);
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, StatsReply& m) {
  Reader r(p);
  for (auto* v : {&m.agents_alive, &m.agents_dead, &m.capacity_bytes, &m.used_bytes, &m.blocks, &m.namespaces,
                  &m.lookup_hits, &m.lookup_misses, &m.uptime_ms, &m.live_bytes, &m.reclaiming_bytes,
                  &m.write_leases, &m.read_leases, &m.evictions, &m.expired_write_leases}) {
    *v = r.u64();
  }
  m.unix_ms = r.i64();
  m.leader = r.boolean();
  m.shard = r.u32();
  m.epoch = r.u64();
  return r.finish("stats");
}

std::string encode(const ListNamespacesReply& m) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(m.namespaces.size()));
  for (const auto& n : m.namespaces) {
    w.u64(n.id);
    put(w, n.descriptor);
    w.u64(n.block_bytes);
    w.u64(n.blocks);
    for (auto v : {n.live_blocks, n.live_bytes, n.quota_blocks, n.quota_bytes}) w.u64(v);
  }
  return w.take();
}
Status decode(std::string_view p, ListNamespacesReply& m) {
  Reader r(p);
  // id, the descriptor's fixed part (3 empty strings, 6 u32, a u64), block_bytes, blocks
  std::uint32_t n = get_count(r, 8 + 3 * 4 + 6 * 4 + 8 + 8 + 8 + 4 * 8);
  m.namespaces.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    NamespaceRecord rec;
    rec.id = r.u64();
    rec.descriptor = get_descriptor(r);
    rec.block_bytes = r.u64();
    rec.blocks = r.u64();
    for (auto* v : {&rec.live_blocks, &rec.live_bytes, &rec.quota_blocks, &rec.quota_bytes}) *v = r.u64();
    m.namespaces.push_back(std::move(rec));
  }
  return r.finish("list namespaces reply");
}

std::string encode(const UsageRequest& m) {
  Writer w;
  w.boolean(m.all);
  w.u64(m.ns);
  return w.take();
}
Status decode(std::string_view p, UsageRequest& m) {
  Reader r(p);
  m.all = r.boolean();
  m.ns = r.u64();
  return r.finish("usage");
}

std::string encode(const UsageReply& m) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(m.rows.size()));
  for (const auto& row : m.rows) {
    w.u64(row.ns);
    w.u32(row.agent);
    w.u64(row.blocks);
    w.u64(row.bytes);
  }
  return w.take();
}
Status decode(std::string_view p, UsageReply& m) {
  Reader r(p);
  std::uint32_t n = get_count(r, 8 + 4 + 8 + 8);
  m.rows.resize(n);
  for (auto& row : m.rows) {
    row.ns = r.u64();
    row.agent = r.u32();
    row.blocks = r.u64();
    row.bytes = r.u64();
  }
  return r.finish("usage reply");
}

std::string encode(const EvictNamespaceRequest& m) {
  Writer w;
  w.u64(m.ns);
  w.boolean(m.dry_run);
  w.u64(m.older_than_ms);
  return w.take();
}
Status decode(std::string_view p, EvictNamespaceRequest& m) {
  Reader r(p);
  m.ns = r.u64();
  m.dry_run = r.boolean();
  m.older_than_ms = r.u64();
  return r.finish("evict namespace");
}

std::string encode(const EvictNamespaceReply& m) {
  Writer w;
  for (auto v : {m.blocks, m.bytes, m.removed, m.failed}) w.u64(v);
  return w.take();
}
Status decode(std::string_view p, EvictNamespaceReply& m) {
  Reader r(p);
  for (auto* v : {&m.blocks, &m.bytes, &m.removed, &m.failed}) *v = r.u64();
  return r.finish("evict namespace reply");
}

std::string encode(const AgentStatsReply& m) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(m.agents.size()));
  for (const auto& a : m.agents) {
    w.u32(a.agent);
    w.u64(a.incarnation);
    w.bytes(a.host_id);
    w.bytes(a.control_address);
    w.boolean(a.alive);
    for (auto v : {a.heartbeat_age_ms, a.region_bytes, a.capacity_bytes, a.used_bytes, a.live_bytes, a.reclaiming_bytes,
                   a.blocks, a.largest_free}) {
      w.u64(v);
    }
    w.boolean(a.draining);
    w.boolean(a.drained);
    w.boolean(a.clock_known);
    w.i64(a.clock_offset_ms);
    w.bytes(a.tenant);
  }
  return w.take();
}
Status decode(std::string_view p, AgentStatsReply& m) {
  Reader r(p);
  std::uint32_t n = get_count(r, 4 + 8 + 4 + 4 + 1 + 8 * 8 + 3 + 8 + 4);
  m.agents.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    AgentStatsRecord a;
    a.agent = r.u32();
    a.incarnation = r.u64();
    a.host_id = r.bytes(kMaxString);
    a.control_address = r.bytes(kMaxString);
    a.alive = r.boolean();
    for (auto* v : {&a.heartbeat_age_ms, &a.region_bytes, &a.capacity_bytes, &a.used_bytes, &a.live_bytes,
                    &a.reclaiming_bytes, &a.blocks, &a.largest_free}) {
      *v = r.u64();
    }
    a.draining = r.boolean();
    a.drained = r.boolean();
    a.clock_known = r.boolean();
    a.clock_offset_ms = r.i64();
    a.tenant = r.bytes(kMaxString);
    m.agents.push_back(std::move(a));
  }
  return r.finish("agent stats reply");
}

std::string encode(const DrainRequest& m) {
  Writer w;
  w.u32(m.agent);
  w.u8(static_cast<std::uint8_t>(m.mode));
  w.u32(m.max_in_flight);
  return w.take();
}
Status decode(std::string_view p, DrainRequest& m) {
  Reader r(p);
  m.agent = r.u32();
  const std::uint8_t mode = r.u8();
  if (mode > static_cast<std::uint8_t>(DrainMode::kUndrain)) r.refuse("unknown drain mode " + std::to_string(mode));
  m.mode = static_cast<DrainMode>(mode);
  m.max_in_flight = r.u32();
  return r.finish("drain");
}

std::string encode(const DrainReply& m) {
  Writer w;
  w.boolean(m.draining);
  w.boolean(m.drained);
  for (auto v : {m.blocks_left, m.writing, m.in_flight, m.moved, m.failed, m.unplaceable}) w.u64(v);
  put(w, m.placement);
  return w.take();
}
Status decode(std::string_view p, DrainReply& m) {
  Reader r(p);
  m.draining = r.boolean();
  m.drained = r.boolean();
  for (auto* v : {&m.blocks_left, &m.writing, &m.in_flight, &m.moved, &m.failed, &m.unplaceable}) *v = r.u64();
  m.placement = get_status(r);
  return r.finish("drain reply");
}

std::string encode(const DrainCopyMessage& m) {
  Writer w;
  w.u32(m.agent);
  w.u64(m.incarnation);
  w.u32(static_cast<std::uint32_t>(m.targets.size()));
  for (const auto& t : m.targets) {
    w.u32(t.agent);
    w.u64(t.incarnation);
    w.bytes(t.worker_address);
    w.bytes(t.packed_rkey);
    w.bytes(t.host_id);
    w.u64(t.region_base);
    w.u64(t.region_bytes);
  }
  w.u32(static_cast<std::uint32_t>(m.moves.size()));
  for (const auto& mv : m.moves) {
    w.u64(mv.id);
    w.u64(mv.ns);
    put(w, mv.key);
    put(w, mv.from);
    put(w, mv.to);
  }
  w.u64(m.epoch);
  return w.take();
}
Status decode(std::string_view p, DrainCopyMessage& m) {
  Reader r(p);
  m.agent = r.u32();
  m.incarnation = r.u64();
  std::uint32_t n = get_count(r, 4 + 8 + 3 * 4 + 8 + 8);
  m.targets.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    DrainTarget t;
    t.agent = r.u32();
    t.incarnation = r.u64();
    t.worker_address = r.bytes(kMaxString);
    t.packed_rkey = r.bytes(kMaxString);
    t.host_id = r.bytes(kMaxString);
    t.region_base = r.u64();
    t.region_bytes = r.u64();
    m.targets.push_back(std::move(t));
  }
  n = get_count(r, 8 + 8 + 16 + 2 * kLocationBytes);
  m.moves.resize(n);
  for (auto& mv : m.moves) {
    mv.id = r.u64();
    mv.ns = r.u64();
    mv.key = get_key(r);
    mv.from = get_location(r);
    mv.to = get_location(r);
  }
  m.epoch = r.u64();
  return r.finish("drain copy");
}

std::string encode(const DrainCopiedRequest& m) {
  Writer w;
  w.u32(m.agent);
  w.u64(m.incarnation);
  w.u32(static_cast<std::uint32_t>(m.results.size()));
  for (const auto& res : m.results) {
    w.u64(res.id);
    put(w, res.status);
  }
  return w.take();
}
Status decode(std::string_view p, DrainCopiedRequest& m) {
  Reader r(p);
  m.agent = r.u32();
  m.incarnation = r.u64();
  std::uint32_t n = get_count(r, 8 + 2 + 4);
  m.results.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    MoveResultWire res;
    res.id = r.u64();
    res.status = get_status(r);
    m.results.push_back(std::move(res));
  }
  return r.finish("drain copied");
}

}  // namespace kvpool::rpc
