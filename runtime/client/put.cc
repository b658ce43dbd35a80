// Client::Impl's write path, put(): the block writer. The coordinator places
// the blocks (allocate, with its retries); per agent, payloads are copied
// into its mapped region (same host) or sent by UCX, then headers, each only
// while its write lease lasts; then the leases are committed or aborted.
// The read path is in get.cc, the rest of the client in client.cc.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <string_view>

#include "kvpool/client.h"
#include "pool/slot_header.h"
#include "runtime/client/client_impl.h"
#include "runtime/client/ordered_hasher.h"
#include "runtime/client/router_merge.h"
#include "runtime/common/stream_copy.h"
#include "runtime/rpc/messages.h"
#include "transport/transport.h"

namespace kvpool {
namespace {

// A put through UCX (tcp) sends each block in pieces of this size, each
// checksummed just before it is posted (OrderedHasher), so the transport's
// copy of the piece reads it from cache: hashing each block from memory
// beside the send cost about 10 ms of CPU per 128 MiB batch on a host whose
// two cores both carry socket copies.
constexpr std::size_t kPutPieceBytes = 256 << 10;

// Whether puts over emulated RMA (tcp) are streamed to the agent
// (Peer::put_streamed), the default; KVPOOL_TCP_PUTS=rma keeps UCX's put
// emulation, for benchmarks that compare the two in one build.
bool streamed_puts() {
  static const bool on = [] {
    const char* v = std::getenv("KVPOOL_TCP_PUTS");
    return v == nullptr || std::string_view(v) != "rma";
  }();
  return on;
}

// How many pieces ahead of the post the verifier thread may hash.
constexpr std::size_t kPutHashLead = 1;
// Over real RMA: pieces on the wire at once, and the verifier's lead.
constexpr std::size_t kRdmaPutWindow = 16;

// One put() call's blocks on their way: allocate (with retries), write per
// agent, then commit or abort the leases. Holds the call's state so each
// step is a function of its own; it lives on put()'s stack and the client
// (`impl`) outlives it.
struct BlockWriter {
  // The blocks of one agent, and how they are written.
  struct Group {
    std::uint32_t agent_id = 0;
    std::vector<std::size_t> idx;
    Result<std::shared_ptr<AgentConn>> conn;
    std::byte* mapped = nullptr;
  };

  Client::Impl& impl;
  NamespaceId ns;
  std::span<const Key128> keys;
  std::span<const std::span<const std::byte>> blocks;
  std::uint64_t block_bytes;
  PutResult result;
  rpc::AllocateReply arep;
  std::vector<Clock::time_point> lease_ends;
  std::vector<std::uint64_t> checksums;
  SliceTables tables;
  std::vector<char> hashed;
  std::size_t head_bytes = 0;
  std::vector<std::byte> headers;
  rpc::LeaseBatch commit, abort;
  std::vector<std::size_t> commit_index;

  BlockWriter(Client::Impl& impl, NamespaceId ns, std::span<const Key128> keys,
              std::span<const std::span<const std::byte>> blocks, std::uint64_t block_bytes)
      : impl(impl),
        ns(ns),
        keys(keys),
        blocks(blocks),
        block_bytes(block_bytes),
        checksums(keys.size()),
        tables(impl.slices(ns, block_bytes), keys.size()),
        hashed(keys.size(), 0) {
    result.outcomes.assign(keys.size(), PutOutcome::kFailed);
    result.errors.assign(keys.size(), Status());
  }

  Status allocate();
  std::vector<Group> place();
  void write(Group& g);
  void write_mapped(AgentConn& conn, std::byte* base, const std::vector<std::size_t>& idx);
  void write_remote(Group& g);
  Status put_payloads(AgentConn& conn, const std::vector<std::size_t>& idx, const Deadline& put_deadline, bool& posted);
  std::vector<transport::RmaOp> header_ops_for(const std::vector<std::size_t>& idx);
  void settle();
};

Status BlockWriter::allocate() {
  // The payload checksums the headers carry: while the coordinator places
  // the blocks, this thread hashes payloads in order (one thread, so the
  // coordinator and our io thread have the other core); the rest are hashed
  // below, while or as they are written.
  std::vector<std::uint64_t> sizes;
  for (const auto& b : blocks) sizes.push_back(b.size());
  auto hash_ahead = [&](const std::atomic<bool>& arrived) {
    for (std::size_t i = 0; i < keys.size() && !arrived.load(std::memory_order_acquire); ++i) {
      checksums[i] = pool::block_checksum(blocks[i], tables.slices, tables.of(i));
      hashed[i] = 1;
    }
  };
  return impl.allocate(ns, keys, sizes, arep, lease_ends, hash_ahead);
}

// The placed blocks by agent, with the agents' connections; the others'
// outcomes set from the allocate reply.
std::vector<BlockWriter::Group> BlockWriter::place() {
  std::map<std::uint32_t, std::vector<std::size_t>> by_agent;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto& r = arep.results[i];
    switch (r.outcome) {
      case rpc::AllocateOutcome::kExists:
        result.outcomes[i] = PutOutcome::kExists;
        break;
      case rpc::AllocateOutcome::kPending:
        result.outcomes[i] = PutOutcome::kPending;
        break;
      case rpc::AllocateOutcome::kError:
        result.errors[i] = r.error.to_status();
        break;
      case rpc::AllocateOutcome::kPlaced:
        by_agent[r.location.agent].push_back(i);
        break;
    }
  }
  // The agents' connections. A same-host agent's region mapped into this
  // process (shared memory) is written with one pass per block that copies
  // and hashes (pool::copy_payload_checksum), split over this thread and the
  // verifier thread; other agents get UCX puts, piece by piece, each piece
  // hashed just before it is posted (OrderedHasher).
  std::vector<Group> groups;
  for (auto& [agent_id, idx] : by_agent) {
    const auto incarnation = arep.results[idx.front()].location.incarnation;
    Group g{agent_id, std::move(idx), impl.agent(agent_id, incarnation), nullptr};
    if (g.conn) {
      if (auto m = (*g.conn)->region.mapped()) g.mapped = *m;
    }
    groups.push_back(std::move(g));
  }
  return groups;
}

void BlockWriter::write(Group& g) {
  if (g.mapped != nullptr) {
    write_mapped(**g.conn, g.mapped, g.idx);
    return;
  }
  write_remote(g);
}

// The blocks `idx` placed on an agent whose region is mapped here at
// `base`: payloads copied and hashed in one pass, then headers, each only
// while its write lease lasts. Adds to commit (written blocks), abort
// (blocks never touched) and result.errors.
void BlockWriter::write_mapped(AgentConn& conn, std::byte* base, const std::vector<std::size_t>& idx) {
  const std::uint64_t region_bytes = conn.region.length();
  std::vector<Status> status(idx.size());
  std::vector<char> touched(idx.size(), 0);  // the block's slot may hold some of our bytes
  impl.run_split(idx.size(), [&](std::size_t j) {
    const std::size_t i = idx[j];
    const auto& loc = arep.results[i].location;
    if (Status c = check_slot(loc, region_bytes, blocks[i].size(), i, tables.slices); !c.ok()) {
      status[j] = c;
      return;
    }
    // Fencing (DESIGN.md, "Data flows"): no write after the lease's end. A
    // copy ends within the call, so nothing of ours lands later.
    if (Clock::now() >= lease_ends[i]) {
      status[j] = Status(StatusCode::kDeadlineExceeded, "put: the write lease ran out before the data was written");
      return;
    }
    // Shared memory shows no dead peer: the control plane marks it.
    if (Status h = conn.peer->health(); !h.ok()) {
      status[j] = h;
      return;
    }
    touched[j] = 1;
    if (hashed[i]) {
      stream_copy(base + loc.payload_offset, blocks[i].data(), loc.length);
    } else {
      checksums[i] = pool::stream_payload_checksum(base + loc.payload_offset, blocks[i].data(), loc.length,
                                                   tables.slices, tables.of(i));
    }
  });
  // Every payload byte is stored before any header that vouches for it
  // (mfence: orders the copies' streaming stores too).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const auto now = Clock::now();
  const Status health = conn.peer->health();
  for (std::size_t j = 0; j < idx.size(); ++j) {
    const std::size_t i = idx[j];
    if (status[j].ok() && now >= lease_ends[i]) {
      status[j] = Status(StatusCode::kDeadlineExceeded, "put: the write lease ran out before the header was written");
    }
    if (status[j].ok() && !health.ok()) status[j] = health;
    if (!status[j].ok()) {
      result.errors[i] = status[j];
      // A touched slot is left to its lease's expiry and quarantine.
      if (!touched[j]) abort.leases.push_back(arep.results[i].lease);
      continue;
    }
    const auto& loc = arep.results[i].location;
    const auto h = slot_header(ns, keys[i], loc.length, loc.generation, checksums[i], tables.slices);
    write_header_mapped(base, loc.header_offset, h, tables.of(i));
    commit.leases.push_back(arep.results[i].lease);
    commit_index.push_back(i);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

// The blocks of an agent reached through UCX: payloads, then headers, all
// inside the earliest of their leases. Adds to commit, abort and
// result.errors.
void BlockWriter::write_remote(Group& g) {
  auto& conn = g.conn;
  Status s = conn ? Status() : conn.error();
  // Fencing (DESIGN.md, "Data flows"): no put is posted after its write
  // lease's deadline, and none may still be moving after it, so the
  // coordinator's quarantine of an expired lease covers every late byte.
  Clock::time_point lease_end = impl.deadline().at();
  for (std::size_t i : g.idx) lease_end = std::min(lease_end, lease_ends[i]);
  const Deadline put_deadline(lease_end);
  auto lease_left = [&] {
    return put_deadline.expired()
               ? Status(StatusCode::kDeadlineExceeded, "put: the write lease ran out before the data was written")
               : Status();
  };
  bool posted = false;  // some op of this batch may still be in flight
  if (s.ok()) s = lease_left();
  if (s.ok()) {
    s = put_payloads(**conn, g.idx, put_deadline, posted);
    if (s.ok()) {
      auto header_ops = header_ops_for(g.idx);
      s = lease_left();
      if (s.ok()) s = (*conn)->peer->put((*conn)->region, header_ops, put_deadline, {.yield_when_idle = true});
    }
  }
  if (!s.ok() && posted) {
    // Ops may still be queued in UCX: close the endpoint so nothing more
    // of them is sent (the next operation reconnects), and leave the
    // leases to expire into the coordinator's quarantine instead of
    // aborting them, which would hand the space to another writer now.
    impl.drop_agent(g.agent_id, **conn, s);
  }
  for (std::size_t i : g.idx) {
    if (s.ok()) {
      commit.leases.push_back(arep.results[i].lease);
      commit_index.push_back(i);
    } else {
      result.errors[i] = s;
      if (!posted) abort.leases.push_back(arep.results[i].lease);
    }
  }
}

// The payloads of `idx`, piece by piece; returns once they are complete at
// the agent. `posted` turns true once an op may be in flight.
Status BlockWriter::put_payloads(AgentConn& conn, const std::vector<std::size_t>& idx, const Deadline& put_deadline,
                                 bool& posted) {
  // One op per piece; the verifier thread hashes up to kPutHashLead
  // pieces ahead of the post, this thread any piece it has not reached.
  // Emulated RMA (tcp): payloads stream to the agent (put_streamed) in
  // pieces of one message each.
  const bool emulated = conn.peer->rma_kind() == transport::RmaKind::kEmulated;
  const bool streamed = emulated && streamed_puts();
  const std::size_t piece_bytes = streamed ? transport::kStreamPieceBytes : kPutPieceBytes;
  std::vector<transport::RmaOp> piece_ops;
  std::vector<detail::OrderedHasher::Piece> pieces;
  for (std::size_t i : idx) {
    const auto& loc = arep.results[i].location;
    if (loc.length != blocks[i].size()) {
      return Status(StatusCode::kInternal, "put: a placement of " + std::to_string(loc.length) +
                                               " bytes for a block of " + std::to_string(blocks[i].size()));
    }
    for (std::size_t at = 0; at < loc.length; at += piece_bytes) {
      const std::size_t len = std::min<std::size_t>(piece_bytes, loc.length - at);
      piece_ops.push_back({const_cast<std::byte*>(blocks[i].data()) + at, loc.payload_offset + at, len});
      pieces.push_back({i, at, len});
    }
  }
  const transport::MemoryRegion* local = impl.registered(blocks[idx.front()].data(), blocks[idx.front()].size());
  // Emulated RMA (tcp): a piece leaves once UCX has copied it, so the
  // next is posted then, right after its checksum. Real RMA: a piece
  // leaves when the target has it; keep many on the wire, hashed
  // further ahead (not measured: no RDMA NIC here).
  const std::size_t window = emulated ? 1 : kRdmaPutWindow;
  auto hasher =
      std::make_shared<detail::OrderedHasher>(std::move(pieces), blocks, checksums, hashed,
                                              emulated ? kPutHashLead : kRdmaPutWindow, tables.slices, tables.of(0));
  impl.verifier->submit([hasher] { hasher->run_helper(); });
  // put_each and put_streamed return once the payloads are complete
  // at the agent; only then do the headers go. Emulated RMA (tcp):
  // the payloads go as messages the agent copies into the slots (one
  // copy there instead of UCX's put emulation; Peer::put_streamed).
  posted = true;
  auto ready = [&hasher](std::size_t j) {
    hasher->posted(j);
    return hasher->ready(j);
  };
  Status s = streamed ? conn.peer->put_streamed(conn.region, piece_ops, ready, put_deadline, {.yield_when_idle = true})
                      : conn.peer->put_each(conn.region, piece_ops, ready, put_deadline,
                                            {.local = local, .yield_when_idle = true}, window);
  hasher->stop();  // returns once the helper has left `blocks` and `checksums`
  return s;
}

// Called once put_each returned OK: every block of idx is hashed.
std::vector<transport::RmaOp> BlockWriter::header_ops_for(const std::vector<std::size_t>& idx) {
  std::vector<transport::RmaOp> ops;
  for (std::size_t i : idx) {
    const auto& loc = arep.results[i].location;
    const auto h = slot_header(ns, keys[i], blocks[i].size(), loc.generation, checksums[i], tables.slices);
    std::byte* at = headers.data() + i * head_bytes;
    pool::encode(h, std::span<std::byte, pool::kSlotHeaderBytes>(at, pool::kSlotHeaderBytes));
    if (tables.slices > 1) {
      pool::encode_table(std::span<const std::uint64_t>(tables.of(i), tables.slices),
                         std::span<std::byte>(at + pool::kSlotHeaderBytes, head_bytes - pool::kSlotHeaderBytes));
    }
    ops.push_back({at, loc.header_offset, head_bytes});
  }
  return coalesce(std::move(ops));
}

void BlockWriter::settle() {
  impl.abort_leases(abort);
  impl.commit_leases(commit, commit_index, block_bytes, result);
  detail::count_outcomes(result);
}

}  // namespace

Result<PutResult> Client::Impl::put(NamespaceId ns, std::span<const Key128> keys,
                                    std::span<const std::span<const std::byte>> blocks) {
  if (keys.size() != blocks.size()) {
    return make_error(StatusCode::kInvalidArgument,
                      "put: " + std::to_string(keys.size()) + " keys but " + std::to_string(blocks.size()) + " blocks");
  }
  auto bb = block_bytes(ns);
  if (!bb) return tl::unexpected(bb.error());
  for (const auto& b : blocks) {
    if (b.size() != *bb) {
      return make_error(StatusCode::kInvalidArgument, "put: a block of " + std::to_string(b.size()) +
                                                          " bytes in a namespace of " + std::to_string(*bb) +
                                                          "-byte blocks");
    }
  }
  BlockWriter w(*this, ns, keys, blocks, *bb);
  if (keys.empty()) return std::move(w.result);
  if (Status s = w.allocate(); !s.ok()) return tl::unexpected(s);

  // Payloads are written first and headers last, so a valid header means a
  // complete payload (DESIGN.md). For agents reached through UCX the payload
  // checksums, which the headers carry, are computed on the verifier thread
  // while the payloads move: one thread hashes at about the speed another
  // copies, so in series they would halve a put.
  // Each block's header and then its slice table, put in one operation
  // (pool/slot_header.h: a scan checks the table against the header).
  w.head_bytes = pool::kSlotHeaderBytes + pool::table_bytes(w.tables.slices);
  w.headers.resize(w.head_bytes * keys.size());
  auto groups = w.place();
  // Back to the leader that issued the leases; another refuses them.
  w.commit.epoch = w.abort.epoch = w.arep.epoch;
  for (auto& g : groups) w.write(g);
  w.settle();
  return std::move(w.result);
}

}  // namespace kvpool
