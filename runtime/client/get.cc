// Client::Impl's read path, get(): the coordinator's lookup, then per agent
// a copy out of its mapped region (same host), UCX gets, or reads streamed
// by the agent (owner reads, over TCP); every block verified against its
// slot header before it is reported. The write path is in put.cc, the rest
// of the client in client.cc.
#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <map>

#include "kvpool/client.h"
#include "pool/slot_header.h"
#include "runtime/client/client_impl.h"
#include "runtime/client/streamed_chunk.h"
#include "runtime/common/logging.h"
#include "runtime/rpc/messages.h"
#include "transport/transport.h"

namespace kvpool {
namespace {

// Bytes moved per chunk of a get before its verification is handed off:
// small enough that the verifier reads a chunk while it is still in cache.
constexpr std::size_t kVerifyChunkBytes = 2 << 20;
// Owner-read chunks requested ahead of the one being waited for.
constexpr std::size_t kOwnerReadsInFlight = 3;

// One get() call's reads, after the lookup: per agent, its blocks read and
// verified; the result is the prefix of keys read and verified (ok_upto).
// Lives on get()'s stack: finish() waits for every verification handed to
// the verifier thread, which reads it, before the call returns.
struct BlockReader {
  struct Verdict {
    std::size_t first_bad = SIZE_MAX;
    Status status;
  };

  Client::Impl& impl;
  NamespaceId ns;
  std::span<const Key128> keys;
  std::span<const std::span<std::byte>> bufs;
  const rpc::LookupReply& lrep;
  std::uint64_t block_bytes;
  std::size_t n;
  std::size_t ok_upto;  // first index that failed (prefix semantics)
  Status stopped;
  std::shared_ptr<std::vector<std::byte>> headers_owner;
  std::vector<std::byte>& headers;
  std::uint32_t slices_per_block;
  std::size_t chunk_blocks;
  std::vector<std::future<Verdict>> verdicts;

  BlockReader(Client::Impl& impl, NamespaceId ns, std::span<const Key128> keys,
              std::span<const std::span<std::byte>> bufs, const rpc::LookupReply& lrep, std::uint64_t block_bytes)
      : impl(impl),
        ns(ns),
        keys(keys),
        bufs(bufs),
        lrep(lrep),
        block_bytes(block_bytes),
        n(std::min(lrep.locations.size(), keys.size())),
        ok_upto(n),
        stopped(n < keys.size() ? Status(StatusCode::kNotFound, "block " + std::to_string(n) + " is not in the pool")
                                : Status()),
        headers_owner(std::make_shared<std::vector<std::byte>>(pool::kSlotHeaderBytes * std::max<std::size_t>(n, 1))),
        headers(*headers_owner),
        // Transfers go in chunks, so a chunk is verified (header fields and
        // the payload's XXH3) while the next one moves: a streamed chunk
        // hashed as it arrived, a UCX get's on the verifier thread. At least
        // four chunks per batch, so small batches overlap too.
        slices_per_block(impl.slices(ns, block_bytes)),  // the namespace's, for hashing streamed chunks
        chunk_blocks(std::max<std::size_t>(1, std::min<std::size_t>(kVerifyChunkBytes / block_bytes, (n + 3) / 4))) {}

  // Ends the prefix at `first_index` if it is before the current end.
  void stop_at(std::size_t first_index, const Status& s) {
    if (first_index < ok_upto) {
      ok_upto = first_index;
      stopped = s;
    }
  }

  std::map<std::uint32_t, std::vector<std::size_t>> by_agent();
  Verdict verify_chunk(const std::vector<std::size_t>& chunk,
                       const std::vector<std::optional<std::uint64_t>>& digests) const;
  void read(std::uint32_t agent_id, std::vector<std::size_t>& all_idx);
  std::vector<Status> copy_mapped(AgentConn& conn, std::byte* base, const std::vector<std::size_t>& idx);
  void read_mapped(AgentConn& c, std::byte* base, const std::vector<std::size_t>& all_idx);
  void read_remote(AgentConn& c, const std::vector<std::size_t>& all_idx);
  std::vector<transport::RmaOp> chunk_ops(const std::vector<std::size_t>& idx);
  void verify(std::vector<std::size_t> idx, std::vector<std::optional<std::uint64_t>> digests);
  void park_headers();
  GetResult finish();
};

// The blocks found, by agent, up to the first whose length is not the
// namespace's.
std::map<std::uint32_t, std::vector<std::size_t>> BlockReader::by_agent() {
  std::map<std::uint32_t, std::vector<std::size_t>> out;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& loc = lrep.locations[i];
    if (loc.length != block_bytes) {
      ok_upto = std::min(ok_upto, i);
      stopped = Status(StatusCode::kDataLoss, "block length differs from the namespace's");
      break;
    }
    out[loc.agent].push_back(i);
  }
  return out;
}

// Checks a chunk's headers against their locations and each payload
// against its header's checksum: `digests[j]`, when there, is the
// checksum of block chunk[j] as it arrived (a streamed read), else the
// payload is hashed here from the caller's buffer.
BlockReader::Verdict BlockReader::verify_chunk(const std::vector<std::size_t>& chunk,
                                               const std::vector<std::optional<std::uint64_t>>& digests) const {
  Verdict v;
  for (std::size_t j = 0; j < chunk.size(); ++j) {
    const std::size_t i = chunk[j];
    const auto& loc = lrep.locations[i];
    auto h = check_header(std::span<const std::byte, pool::kSlotHeaderBytes>(
                              headers.data() + i * pool::kSlotHeaderBytes, pool::kSlotHeaderBytes),
                          ns, keys[i], loc, i);
    Status st;
    if (!h) {
      st = h.error();
    } else if (j < digests.size() && digests[j]) {
      if (*digests[j] != h->payload_checksum) {
        st = Status(StatusCode::kDataLoss, "payload checksum mismatch (torn or overwritten block)");
      }
    } else {
      st = pool::verify_payload(*h, std::span<const std::byte>(bufs[i].data(), loc.length));
    }
    if (!st.ok()) {
      v.first_bad = i;
      v.status = st;
      return v;
    }
  }
  return v;
}

// The blocks of one agent that are still inside the prefix.
void BlockReader::read(std::uint32_t agent_id, std::vector<std::size_t>& all_idx) {
  std::erase_if(all_idx, [&](std::size_t i) { return i >= ok_upto; });
  if (all_idx.empty()) return;
  auto conn = impl.agent(agent_id, lrep.locations[all_idx.front()].incarnation);
  if (!conn) {
    ok_upto = std::min(ok_upto, all_idx.front());
    stopped = conn.error();
    return;
  }
  auto& c = **conn;
  if (auto mapped = c.region.mapped()) {
    read_mapped(c, *mapped, all_idx);
    return;
  }
  read_remote(c, all_idx);
}

// The blocks `idx` of an agent whose region is mapped here at `base`: each
// block's header is checked, then its payload copied and hashed in one
// pass. Returns the status of each (OK: verified data).
std::vector<Status> BlockReader::copy_mapped(AgentConn& conn, std::byte* base, const std::vector<std::size_t>& idx) {
  const std::uint64_t region_bytes = conn.region.length();
  std::vector<Status> status(idx.size());
  impl.run_split(idx.size(), [&](std::size_t j) {
    const std::size_t i = idx[j];
    const auto& loc = lrep.locations[i];
    // by_agent() has checked loc.length against the namespace's block size.
    if (Status c = check_slot(loc, region_bytes, loc.length, i); !c.ok()) {
      status[j] = c;
      return;
    }
    if (Status h = conn.peer->health(); !h.ok()) {
      status[j] = h;
      return;
    }
    std::array<std::byte, pool::kSlotHeaderBytes> bytes;
    std::memcpy(bytes.data(), base + loc.header_offset, bytes.size());
    auto h = check_header(bytes, ns, keys[i], loc, i);
    if (!h) {
      status[j] = h.error();
    } else if (pool::copy_payload_checksum(bufs[i].data(), base + loc.payload_offset, loc.length, h->slices) !=
               h->payload_checksum) {
      // The bytes checked are the caller's copy, not the slot's: what is
      // returned is what was verified.
      status[j] = Status(StatusCode::kDataLoss,
                         "block " + std::to_string(i) + ": payload checksum mismatch (torn or overwritten block)");
    }
  });
  return status;
}

void BlockReader::read_mapped(AgentConn& c, std::byte* base, const std::vector<std::size_t>& all_idx) {
  auto status = copy_mapped(c, base, all_idx);
  for (std::size_t j = 0; j < all_idx.size(); ++j) {
    if (status[j].ok()) continue;
    if (all_idx[j] < ok_upto) {
      if (status[j].code() == StatusCode::kDataLoss) {
        ++impl.verify_failures;
        logger()->warn("get: {}", status[j].message());
      }
      ok_upto = all_idx[j];
      stopped = status[j];
    }
    break;
  }
}

// The blocks of an agent reached through UCX (gets) or over TCP (owner
// reads), chunk by chunk; each chunk's verification handed to verify().
void BlockReader::read_remote(AgentConn& c, const std::vector<std::size_t>& all_idx) {
  // Streamed reads are kept up to kOwnerReadsInFlight chunks deep: the
  // agent serves the next chunk's request while this one's bytes arrive,
  // instead of one request round trip per chunk.
  struct InFlight {
    std::vector<std::size_t> idx;
    transport::OwnerRead read;
    std::shared_ptr<detail::StreamedChunk> chunk;
  };
  std::deque<InFlight> in_flight;
  bool failed = false;
  auto fail_at = [&](std::size_t first_index, const Status& s, bool park) {
    if (park) park_headers();
    stop_at(first_index, s);
    failed = true;
  };
  auto finish_oldest = [&] {
    InFlight f = std::move(in_flight.front());
    in_flight.pop_front();
    Status s = f.read.wait(impl.deadline(), /*yield_when_idle=*/true);
    if (!s.ok()) {
      fail_at(f.idx.front(), s, false);
      return;
    }
    std::vector<std::optional<std::uint64_t>> digests;
    for (std::size_t j = 0; j < f.idx.size(); ++j) digests.push_back(f.chunk->digest(j));
    verify(std::move(f.idx), std::move(digests));
  };
  for (std::size_t first = 0; first < all_idx.size() && !failed; first += chunk_blocks) {
    std::vector<std::size_t> idx(all_idx.begin() + first,
                                 all_idx.begin() + std::min(all_idx.size(), first + chunk_blocks));
    std::vector<transport::RmaOp> ops = chunk_ops(idx);
    if (!c.owner_reads) {
      const transport::MemoryRegion* local = impl.registered(bufs[idx.front()].data(), block_bytes);
      Status s = c.peer->get(c.region, ops, impl.deadline(), {.local = local, .yield_when_idle = true});
      if (!s.ok()) {
        fail_at(idx.front(), s, true);
        break;
      }
      verify(std::move(idx), {});
      continue;
    }
    // The agent sends the chunk's bytes; each piece is copied to its
    // buffer and hashed while it is in cache, so verification makes no
    // second pass over memory (on two busy cores that pass cost a tenth
    // of the read's speed).
    auto chunk = std::make_shared<detail::StreamedChunk>(std::move(ops), idx.size(), slices_per_block);
    auto read = c.peer->start_stream_by_owner(
        c.region, chunk->ops, [chunk](std::size_t op, std::uint64_t offset, std::span<const std::byte> bytes) {
          chunk->place(op, offset, bytes);
        });
    if (!read) {
      // Chunks sent before this one may still arrive whole.
      while (!in_flight.empty() && !failed) finish_oldest();
      fail_at(idx.front(), read.error(), false);
      break;
    }
    in_flight.push_back({std::move(idx), std::move(*read), std::move(chunk)});
    while (in_flight.size() > kOwnerReadsInFlight && !failed) finish_oldest();
  }
  while (!in_flight.empty() && !failed) finish_oldest();
  // After a failure the reads still out are forgotten: nothing of theirs
  // is written after this.
  in_flight.clear();
}

// A chunk's ops: the payloads, then the headers (coalesced).
std::vector<transport::RmaOp> BlockReader::chunk_ops(const std::vector<std::size_t>& idx) {
  std::vector<transport::RmaOp> ops;
  for (std::size_t i : idx) {
    const auto& loc = lrep.locations[i];
    ops.push_back({bufs[i].data(), loc.payload_offset, loc.length});
  }
  std::vector<transport::RmaOp> header_ops;
  for (std::size_t i : idx) {
    header_ops.push_back(
        {headers.data() + i * pool::kSlotHeaderBytes, lrep.locations[i].header_offset, pool::kSlotHeaderBytes});
  }
  for (const auto& op : coalesce(std::move(header_ops))) ops.push_back(op);
  return ops;
}

void BlockReader::verify(std::vector<std::size_t> idx, std::vector<std::optional<std::uint64_t>> digests) {
  auto promise = std::make_shared<std::promise<Verdict>>();
  verdicts.push_back(promise->get_future());
  if (digests.size() == idx.size() &&
      std::all_of(digests.begin(), digests.end(), [](const auto& d) { return d.has_value(); })) {
    // Only header fields and digests left to compare: no reason to
    // hand it over.
    promise->set_value(verify_chunk(idx, digests));
    return;
  }
  // The payloads are hashed from memory on the verifier thread while
  // the next chunk moves: on one core, copy-then-hash reaches only
  // 0.6-0.8 of a plain copy.
  impl.verifier->submit([promise, chunk = std::move(idx), digests = std::move(digests), this]() mutable {
    promise->set_value(verify_chunk(chunk, digests));
  });
}

void BlockReader::park_headers() {
  // A UCX get whose flush ran out (a frozen agent) may complete on a
  // later progress, into the header scratch: keep it as long as the
  // transport. (A streamed read writes nothing once waited for.)
  std::lock_guard lock(impl.mu);
  if (impl.parked_scratch.empty() || impl.parked_scratch.back() != headers_owner) {
    impl.parked_scratch.push_back(headers_owner);
  }
}

// Waits for every verification handed off, then gives the read lease back.
GetResult BlockReader::finish() {
  for (auto& f : verdicts) {
    Verdict v = f.get();
    if (v.first_bad != SIZE_MAX && v.first_bad < ok_upto) {
      ++impl.verify_failures;
      logger()->warn("get: {}", v.status.message());
      ok_upto = v.first_bad;
      stopped = v.status;
    }
  }
  impl.release_read_lease(lrep.lease, lrep.epoch);
  GetResult result;
  result.loaded = ok_upto;
  result.stopped = ok_upto < keys.size() ? stopped : Status();
  impl.bytes_got += ok_upto * block_bytes;
  return result;
}

}  // namespace

Result<rpc::LookupReply> Client::Impl::lookup_leased(NamespaceId ns, std::span<const Key128> keys) {
  rpc::LookupRequest lreq;
  lreq.ns = ns;
  lreq.take_lease = true;
  lreq.keys.assign(keys.begin(), keys.end());
  rpc::LookupReply lrep;
  if (Status s = call(rpc::kLookup, lreq, lrep); !s.ok()) return tl::unexpected(s);
  return lrep;
}

void Client::Impl::release_read_lease(std::uint64_t lease, std::uint64_t epoch) {
  if (lease == 0) return;
  rpc::ReleaseRequest rel{lease, epoch};
  if (auto c = control()) (*c)->call_async(rpc::kRelease, rpc::encode(rel), deadline(), [](Result<std::string>) {});
}

Result<GetResult> Client::Impl::get(NamespaceId ns, std::span<const Key128> keys,
                                    std::span<const std::span<std::byte>> bufs) {
  if (keys.size() != bufs.size()) {
    return make_error(StatusCode::kInvalidArgument, "get: keys and buffers differ in number");
  }
  auto bb = block_bytes(ns);
  if (!bb) return tl::unexpected(bb.error());
  for (const auto& b : bufs) {
    if (b.size() < *bb) return make_error(StatusCode::kInvalidArgument, "get: a buffer smaller than the block size");
  }
  GetResult result;
  if (keys.empty()) return result;
  auto lrep = lookup_leased(ns, keys);
  if (!lrep) return tl::unexpected(lrep.error());
  BlockReader reader(*this, ns, keys, bufs, *lrep, *bb);
  for (auto& [agent_id, all_idx] : reader.by_agent()) reader.read(agent_id, all_idx);
  return reader.finish();
}

}  // namespace kvpool
