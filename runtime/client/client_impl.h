#pragma once
// Internal to libkvpool's single-cluster client (client.cc, put.cc, get.cc, mapped.cc):
// Client::Impl and what those files use of it. Not a public header; include
// it from those files only.

#include "kvpool/client.h"
#include <unistd.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "pool/slot_header.h"
#include "runtime/common/logging.h"
#include "runtime/common/process_util.h"
#include "runtime/common/stream_copy.h"
#include "runtime/client/router.h"
#include "runtime/client/ordered_hasher.h"
#include "runtime/client/streamed_chunk.h"
#include "runtime/client/task_pool.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/shard_map.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"
#include "transport/transport.h"

namespace kvpool {
namespace client_internal {

inline std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("runtime");
  return l;
}


// An agent incarnation this client talks to. Shared with calls in flight, so
// dropping it from the map (agent down) never pulls a Peer from under them.
struct AgentConn {
  rpc::AgentRecord record;
  std::unique_ptr<transport::Peer> peer;
  transport::RemoteRegion region;
  bool owner_reads = false;  // reads asked of the agent (TCP) instead of UCX get
  // Populates our page tables for a same-host agent's mapped region in the
  // background: otherwise every first put into a 4 KiB page takes a fault
  // (measured: 2.4 GB/s cold against 8.4 warm at 64 KiB). Chunked, so
  // dropping the agent stops it quickly.
  std::atomic<bool> stop_prefault{false};
  std::thread prefaulter;
  void start_prefault() {
    if (!region.mapped()) return;
    prefaulter = std::thread([this] {
      constexpr std::uint64_t kChunk = 64ull << 20;
      for (std::uint64_t off = 0; off < region.length() && !stop_prefault.load(); off += kChunk) {
        if (!region.prefault(off, std::min(kChunk, region.length() - off)).ok()) return;
      }
    });
  }
  ~AgentConn() {
    stop_prefault = true;
    if (prefaulter.joinable()) prefaulter.join();
    region = transport::RemoteRegion();
    peer.reset();
  }
};

// The slice tables of a put's blocks (pool/slot_header.h, "Layer slices"):
// every block of a namespace has the same slices, so one stride.
struct SliceTables {
  std::uint32_t slices = 1;
  std::vector<std::uint64_t> entries;  // slices per block, in key order; empty for one slice
  SliceTables(std::uint32_t n, std::size_t blocks) : slices(n), entries(n > 1 ? n * blocks : 0) {}
  std::uint64_t* of(std::size_t block) { return slices > 1 ? entries.data() + block * slices : nullptr; }
};

// Writes a block's slice table (when it has one) and then its header into a
// mapped region: the table before the header that vouches for it.
inline void write_header_mapped(std::byte* region, std::uint64_t header_offset, const pool::SlotHeader& h,
                         const std::uint64_t* table) {
  if (h.slices > 1) {
    pool::encode_table(std::span<const std::uint64_t>(table, h.slices),
                       std::span<std::byte>(region + header_offset + pool::kSlotHeaderBytes, pool::table_bytes(h.slices)));
    std::atomic_thread_fence(std::memory_order_release);  // x86: keeps the compiler from sinking the table
  }
  std::array<std::byte, pool::kSlotHeaderBytes> bytes;
  pool::encode(h, std::span<std::byte, pool::kSlotHeaderBytes>(bytes));
  std::memcpy(region + header_offset, bytes.data(), bytes.size());
}

// Merges ops that are adjacent both locally and remotely (the headers of
// neighbouring slots sit next to each other in the header table): over TCP
// every op is a software-emulated RMA message, so 64 headers of 64 bytes
// cost far more as 64 ops than as one.
inline std::vector<transport::RmaOp> coalesce(std::vector<transport::RmaOp> ops) {
  std::vector<transport::RmaOp> out;
  for (const auto& op : ops) {
    if (!out.empty()) {
      auto& last = out.back();
      if (static_cast<std::byte*>(last.local) + last.length == op.local &&
          last.remote_offset + last.length == op.remote_offset) {
        last.length += op.length;
        continue;
      }
    }
    out.push_back(op);
  }
  return out;
}

// Where a block's slot lies, as the coordinator placed it, checked before
// any mapped write or read of it (client.cc has the rules).
Status check_slot(const rpc::LocationWire& loc, std::uint64_t region_bytes, std::uint64_t length, std::size_t block,
                  std::uint32_t slices = 1);

// The header a put writes last for a block, vouching for its payload.
inline pool::SlotHeader slot_header(NamespaceId ns, const Key128& key, std::uint64_t length, std::uint64_t generation,
                                    std::uint64_t checksum, std::uint32_t slices) {
  pool::SlotHeader h;
  h.namespace_id = ns;
  h.key = key;
  h.payload_length = length;
  h.generation = generation;
  h.payload_checksum = checksum;
  h.slices = slices;
  return h;
}

// A block's header as read, decoded and checked against the location the
// coordinator gave for `key` (block number `block`, for the message): the
// one header check of every read site. kDataLoss when it is not that block.
Result<pool::SlotHeader> check_header(std::span<const std::byte, pool::kSlotHeaderBytes> bytes, NamespaceId ns,
                                      const Key128& key, const rpc::LocationWire& loc, std::size_t block);

}  // namespace client_internal

using namespace client_internal;  // NOLINT: this internal header's includers (client.cc, put.cc, get.cc, mapped.cc)

struct Client::Impl {
  // Destruction order: the work queue first (no call in flight), then agent
  // connections (peers, rkeys), registered buffers, the RPC client, and the
  // transport last.
  ClientOptions options;
  std::unique_ptr<transport::Transport> transport;

  // The coordinator connection, redialled with backoff when it breaks
  // (control()).
  std::mutex control_mu;              // held for moments only, never across a dial
  std::shared_ptr<rpc::Client> rpc;   // guarded by control_mu
  bool dialling = false;              // guarded by control_mu: one dial at a time
  Clock::time_point next_dial{};      // guarded by control_mu
  std::chrono::milliseconds backoff{0};  // guarded by control_mu
  Status dial_error;                  // guarded by control_mu

  mutable std::mutex mu;
  std::unordered_map<NamespaceId, std::uint64_t> namespaces;                 // guarded by mu
  std::unordered_map<NamespaceId, NamespaceDescriptor> descriptors;          // registered again on redial; guarded by mu
  std::map<std::uintptr_t, std::unique_ptr<transport::MemoryRegion>> buffers;  // by start; guarded by mu
  std::unordered_map<std::uint32_t, std::shared_ptr<AgentConn>> agents;       // guarded by mu
  std::uint64_t agents_epoch = 0;                                             // guarded by mu
  // AgentDown reports as (number, agent, incarnation), newest last, so that
  // agent() does not keep a connection whose agent was reported down while
  // it connected. Only reports newer than the start of a connect count: an
  // agent cut off and then healed comes back with the same incarnation.
  struct DownReport {
    std::uint64_t seq;
    std::uint32_t agent;
    std::uint64_t incarnation;
  };
  std::deque<DownReport> down_reports;  // guarded by mu
  std::uint64_t down_seq = 0;           // guarded by mu: the last report's number
  static constexpr std::size_t kDownReportsKept = 1024;
  std::mutex refresh_mu;  // one agent-list refresh at a time

  std::atomic<std::uint64_t> bytes_put{0};
  std::atomic<std::uint64_t> bytes_got{0};
  std::atomic<std::uint64_t> verify_failures{0};
  std::string transports_seen;  // guarded by mu
  // Header scratch of UCX gets that failed (deadline, dead peer): a get
  // may still complete into it when a cut link returns, so it lives as long
  // as the transport (~Impl resets the transport before members go).
  std::vector<std::shared_ptr<std::vector<std::byte>>> parked_scratch;  // guarded by mu

  std::unique_ptr<detail::TaskPool> work;
  std::unique_ptr<detail::TaskPool> verifier;  // checks chunks of a get while the next chunk moves

  ~Impl() {
    work.reset();
    verifier.reset();
    {
      std::lock_guard lock(mu);
      agents.clear();
      buffers.clear();
    }
    rpc.reset();
    transport.reset();
  }

  Deadline deadline() const { return Deadline::after(options.timeout); }

  // A connected coordinator client: the current one, or a new one when the
  // connection broke and the backoff since the last failed dial has passed
  // (50 ms doubling to 2 s). A new connection registers this client's
  // namespaces again (a restarted coordinator knows none) and refreshes the
  // agent table before it is used. Calls that fail while the coordinator is
  // away surface kUnavailable; nothing is retried behind the caller's back.
  // The dial runs outside control_mu: calls made meanwhile, a get's lease
  // release among them, fail at once with kUnavailable instead of waiting
  // out a dial that may take the whole timeout.
  Result<std::shared_ptr<rpc::Client>> control() {
    {
      std::lock_guard lock(control_mu);
      if (rpc != nullptr && rpc->connected()) return rpc;
      if (dialling) {
        return make_error(StatusCode::kUnavailable,
                          "coordinator " + options.coordinator + " unreachable: another call is reconnecting");
      }
      if (Status wait = backing_off(); !wait.ok()) return tl::unexpected(wait);
      dialling = true;
    }
    auto dialled = dial();
    std::lock_guard lock(control_mu);
    dialling = false;
    if (!dialled) {
      // Behind etcd a new leader is up within about a lease TTL: look again soon.
      const std::chrono::milliseconds most(etcd::is_etcd_address(options.coordinator) ? 500 : 2000);
      backoff = std::clamp(backoff * 2, std::chrono::milliseconds(50), most);
      next_dial = Clock::now() + backoff;
      dial_error = dialled.error();
      return tl::unexpected(dialled.error());
    }
    if (rpc != nullptr) logger()->info("reconnected to the coordinator at {}", options.coordinator);
    backoff = std::chrono::milliseconds(0);
    rpc = std::move(*dialled);
    return rpc;
  }

  // kUnavailable while the backoff after a failed dial lasts. Under control_mu.
  Status backing_off() const {
    const auto now = Clock::now();
    if (now < next_dial) {
      return Status(StatusCode::kUnavailable,
                    "coordinator " + options.coordinator + " unreachable (" + dial_error.to_string() +
                            "); next try in " +
                            std::to_string(
                                std::chrono::duration_cast<std::chrono::milliseconds>(next_dial - now).count()) +
                            " ms");
    }
    return Status();
  }

  Result<std::shared_ptr<rpc::Client>> dial() {
    // etcd://...: the shard's current leader, looked up on every dial.
    auto target = etcd::resolve_coordinator(options.coordinator, std::min(options.timeout, std::chrono::milliseconds(2000)));
    if (!target) return tl::unexpected(target.error());
    auto hp = parse_host_port(*target);
    if (!hp) return tl::unexpected(hp.error());
    rpc::ClientOptions ro;
    ro.host = hp->first;
    ro.port = hp->second;
    ro.role = rpc::Role::kWorker;
    ro.client_id = options.client_id;
    ro.secret_file = options.secret_file;
    auto rc = rpc::Client::connect(ro, deadline());
    if (!rc) return tl::unexpected(rc.error());
    std::shared_ptr<rpc::Client> c(std::move(*rc));
    c->set_push_handler([this](std::uint16_t type, std::string payload) { on_push(type, payload); });
    std::vector<NamespaceDescriptor> known;
    {
      std::lock_guard l(mu);
      for (const auto& [id, d] : descriptors) known.push_back(d);
    }
    for (const auto& d : known) {
      auto reply = c->call(rpc::kRegisterNamespace, rpc::encode(rpc::RegisterNamespaceRequest{d}), deadline());
      if (!reply) return tl::unexpected(reply.error());
    }
    if (Status st = refresh_agents(*c); !st.ok()) return tl::unexpected(st);
    return c;
  }

  template <typename Req, typename Rep>
  Status call(std::uint16_t type, const Req& req, Rep& rep) {
    auto c = control();
    if (!c) return c.error();
    auto reply = (*c)->call(type, rpc::encode(req), deadline());
    if (!reply) {
      forget_leader(*c, reply.error());
      return reply.error();
    }
    return rpc::decode(*reply, rep);
  }

  // Behind etcd, a coordinator that times out or refuses (no longer the
  // leader) may have been replaced: drop the connection so the next call
  // looks the leader up again.
  void forget_leader(const std::shared_ptr<rpc::Client>& c, const Status& error) {
    if (!etcd::is_etcd_address(options.coordinator)) return;
    if (error.code() != StatusCode::kUnavailable && error.code() != StatusCode::kDeadlineExceeded) return;
    std::lock_guard lock(control_mu);
    if (rpc == c) rpc.reset();
  }

  Status refresh_agents(rpc::Client& c) {
    std::lock_guard refresh(refresh_mu);
    auto reply = c.call(rpc::kListAgents, std::string(), deadline());
    if (!reply) return reply.error();
    rpc::ListAgentsReply list;
    if (Status s = rpc::decode(*reply, list); !s.ok()) return s;
    std::lock_guard lock(mu);
    agents_epoch = list.epoch;
    for (auto it = agents.begin(); it != agents.end();) {
      bool still = false;
      for (const auto& a : list.agents) {
        still |= a.agent == it->first && a.incarnation == it->second->record.incarnation && a.alive;
      }
      if (!still) {
        it->second->peer->mark_dead("agent left the pool");
        it = agents.erase(it);
      } else {
        ++it;
      }
    }
    return Status();
  }

  // The connection to agent `id` at `incarnation`, made on first use.
  Result<std::shared_ptr<AgentConn>> agent(std::uint32_t id, std::uint64_t incarnation) {
    std::uint64_t reports_before = 0;
    {
      std::lock_guard lock(mu);
      auto it = agents.find(id);
      if (it != agents.end() && it->second->record.incarnation == incarnation) return it->second;
      reports_before = down_seq;
    }
    auto c = control();
    if (!c) return tl::unexpected(c.error());
    auto reply = (*c)->call(rpc::kListAgents, std::string(), deadline());
    if (!reply) return tl::unexpected(reply.error());
    rpc::ListAgentsReply list;
    if (Status s = rpc::decode(*reply, list); !s.ok()) return tl::unexpected(s);
    for (const auto& rec : list.agents) {
      if (rec.agent != id || rec.incarnation != incarnation) continue;
      if (!rec.alive) break;
      auto conn = std::make_shared<AgentConn>();
      conn->record = rec;
      auto peer = transport->connect(rec.worker_address, transport::ErrorMode::kAuto, rec.host_id);
      if (!peer) return tl::unexpected(peer.error());
      conn->peer = std::move(*peer);
      transport::RegionInfo info{rec.worker_address, rec.packed_rkey, rec.region_base, rec.region_bytes,
                                 rec.host_id};
      auto region = conn->peer->import_region(info);
      if (!region) return tl::unexpected(region.error());
      conn->region = std::move(*region);
      // Over TCP UCX emulates get in software (DESIGN.md: 5-60x slower than
      // put): ask the agent to send the bytes instead.
      conn->owner_reads = conn->peer->rma_kind() == transport::RmaKind::kEmulated;
      if (options.prefault_mapped_regions) conn->start_prefault();
      logger()->debug("connected to agent {} incarnation {} over {}", id, incarnation,
                      conn->peer->rma_transports());
      std::lock_guard lock(mu);
      // An AgentDown push that came while we connected found no entry to
      // drop: keeping this connection would keep a dead agent's endpoint
      // and mapped segment until the next redial.
      if (std::any_of(down_reports.begin(), down_reports.end(), [&](const DownReport& r) {
            return r.seq > reports_before && r.agent == id && r.incarnation == incarnation;
          })) {
        conn->peer->mark_dead("the coordinator reports agent " + std::to_string(id) + " down");
        return make_error(StatusCode::kUnavailable, "agent " + std::to_string(id) + " incarnation " +
                                                        std::to_string(incarnation) +
                                                        " was reported down while this client connected to it");
      }
      auto [it, inserted] = agents.insert_or_assign(id, conn);
      if (transports_seen.find(conn->peer->rma_transports()) == std::string::npos) {
        transports_seen += (transports_seen.empty() ? "" : ", ") + conn->peer->rma_transports();
      }
      return it->second;
    }
    return make_error(StatusCode::kUnavailable,
                      "agent " + std::to_string(id) + " incarnation " + std::to_string(incarnation) + " is gone");
  }

  // Closes the endpoint to an agent whose operation may have ops left in
  // flight, and forgets it (if still current) so the next use reconnects.
  void drop_agent(std::uint32_t id, AgentConn& conn, const Status& why) {
    conn.peer->mark_dead(why.to_string());
    std::lock_guard lock(mu);
    auto it = agents.find(id);
    if (it != agents.end() && it->second.get() == &conn) agents.erase(it);
  }

  void on_push(std::uint16_t type, const std::string& payload) {
    if (type != rpc::kPushAgentDown) return;
    rpc::AgentDownMessage down;
    if (!rpc::decode(payload, down).ok()) return;
    std::lock_guard lock(mu);
    down_reports.push_back({++down_seq, down.agent, down.incarnation});
    if (down_reports.size() > kDownReportsKept) down_reports.pop_front();
    auto it = agents.find(down.agent);
    if (it != agents.end() && it->second->record.incarnation == down.incarnation) {
      // Shared-memory endpoints cannot see a dead peer: fail its operations
      // now, and drop the mapping so the dead segment can be freed.
      it->second->peer->mark_dead("the coordinator reports agent " + std::to_string(down.agent) + " down");
      agents.erase(it);
    }
  }

  // The registered region containing [p, p+n), if any.
  const transport::MemoryRegion* registered(const void* p, std::size_t n) const {
    auto addr = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard lock(mu);
    auto it = buffers.upper_bound(addr);
    if (it == buffers.begin()) return nullptr;
    --it;
    const auto& r = *it->second;
    auto begin = reinterpret_cast<std::uintptr_t>(r.data());
    return addr >= begin && addr + n <= begin + r.size() ? it->second.get() : nullptr;
  }

  // The layer slices of this namespace's blocks (pool::slices_for).
  std::uint32_t slices(NamespaceId ns, std::uint64_t block_bytes) const {
    std::lock_guard lock(mu);
    auto it = descriptors.find(ns);
    return it == descriptors.end() ? 1 : pool::slices_for(block_bytes, it->second.num_layers);
  }

  Result<std::uint64_t> block_bytes(NamespaceId ns) const {
    std::lock_guard lock(mu);
    auto it = namespaces.find(ns);
    if (it == namespaces.end()) {
      return make_error(StatusCode::kFailedPrecondition,
                        "namespace " + std::to_string(ns) + " is not registered by this client");
    }
    return it->second;
  }

  // Allocate with the retries of keys whose space is being reclaimed; on OK,
  // arep has one result per key and lease_ends the local end of each lease.
  // `while_waiting`, if given, runs on this thread while the first request
  // is out, with a flag that turns true when its reply has come: work to
  // overlap with the round trip, to be cut short soon after the flag is set.
  Status allocate(NamespaceId ns, std::span<const Key128> keys, std::span<const std::uint64_t> sizes,
                  rpc::AllocateReply& arep, std::vector<Clock::time_point>& lease_ends,
                  const std::function<void(const std::atomic<bool>&)>& while_waiting = {});
  Result<PutResult> put(NamespaceId ns, std::span<const Key128> keys,
                        std::span<const std::span<const std::byte>> blocks);
  Result<GetResult> get(NamespaceId ns, std::span<const Key128> keys, std::span<const std::span<std::byte>> buffers);
  // Runs body(j) for every j in [0, n) on the calling thread and the
  // verifier thread together, each taking the next j; returns once every
  // body it started has returned. The caller alone does them all if the
  // verifier is busy with another call's work.
  void run_split(std::size_t n, const std::function<void(std::size_t)>& body);
  // Gives back the leases of blocks never written to (errors ignored: the
  // leases expire anyway).
  void abort_leases(const rpc::LeaseBatch& abort);
  // Commits the leases of written blocks, `commit_index` their indices in
  // `result`: kWritten for each the coordinator took, else its error.
  void commit_leases(const rpc::LeaseBatch& commit, const std::vector<std::size_t>& commit_index,
                     std::uint64_t block_bytes, PutResult& result);
  // The coordinator's lookup of `keys`, with a read lease (get.cc).
  Result<rpc::LookupReply> lookup_leased(NamespaceId ns, std::span<const Key128> keys);
  // Gives a read lease back, without waiting (0: none was taken).
  void release_read_lease(std::uint64_t lease, std::uint64_t epoch);
};

}  // namespace kvpool
