// The zero-copy mapped API of include/kvpool/client.h (MappedPut, MappedGet:
// the GPU path's access to same-host pool slots), split from client.cc.
#include "runtime/client/client_impl.h"
#include "runtime/client/router_merge.h"

namespace kvpool {
namespace {

// The base of the agent's region as mapped here, or why it is not.
Result<std::byte*> mapped_base(const Result<std::shared_ptr<AgentConn>>& conn) {
  if (!conn) return tl::unexpected(conn.error());
  return (*conn)->region.mapped();
}

// The checksums a mapped get hands out for block `i`: each slice's, from the
// table the header vouches for (read once, into our memory, then checked).
Result<std::vector<std::uint64_t>> slice_checksums(const std::byte* base, const rpc::LocationWire& loc, NamespaceId ns,
                                                   const Key128& key, std::size_t i, std::uint32_t slices) {
  std::array<std::byte, pool::kSlotHeaderBytes> bytes;
  std::memcpy(bytes.data(), base + loc.header_offset, bytes.size());
  auto h = check_header(bytes, ns, key, loc, i);
  if (!h) return tl::unexpected(h.error());
  if (h->slices != slices) {
    return make_error(StatusCode::kDataLoss, "block " + std::to_string(i) + ": " + std::to_string(h->slices) +
                                                 " slices where the namespace's blocks have " + std::to_string(slices));
  }
  std::vector<std::uint64_t> table;
  if (h->slices > 1) {
    const std::byte* at = base + loc.header_offset + pool::kSlotHeaderBytes;
    table = pool::decode_table(std::vector<std::byte>(at, at + pool::table_bytes(h->slices)));
    if (pool::table_checksum(table) != h->payload_checksum) {
      return make_error(StatusCode::kDataLoss, "block " + std::to_string(i) + ": slice table mismatch");
    }
  } else {
    table.push_back(h->payload_checksum);
  }
  return table;
}

}  // namespace

struct MappedPutState {
  // The client that began the put: a MappedPut dropped unfinished aborts
  // through it.
  Client* client = nullptr;
  NamespaceId ns = 0;
  std::vector<Key128> keys;
  std::uint64_t block_bytes = 0;
  std::uint32_t slices = 1;
  std::vector<rpc::AllocateResult> results;
  std::uint64_t epoch = 0;  // of the leader that issued the leases (AllocateReply::epoch)
  std::vector<Clock::time_point> lease_ends;
  // Keeps each written-to agent's region mapped until the put is finished.
  std::vector<std::shared_ptr<AgentConn>> conns;  // per key; null unless kWritten
  bool done = false;
  std::unique_ptr<RoutedMappedPut> routed;  // through the shard router: the shards' puts
};

struct MappedGetState {
  Client* client = nullptr;  // the client that began the get: a dropped MappedGet finishes through it
  std::uint64_t lease = 0;
  std::uint64_t epoch = 0;  // LookupReply::epoch, sent back with the release
  std::uint64_t block_bytes = 0;
  std::vector<std::shared_ptr<AgentConn>> conns;  // keeps the regions mapped until finish
  bool done = false;
  std::unique_ptr<RoutedMappedGet> routed;  // through the shard router: the shards' gets
};

// A session dropped unfinished gives its leases back at once (abort, or a
// release of the read lease), instead of holding the space or blocking
// eviction until the leases run out.
MappedPut::MappedPut() = default;
MappedPut::MappedPut(MappedPut&&) noexcept = default;
MappedPut& MappedPut::operator=(MappedPut&& other) noexcept {
  if (this != &other) {
    end();
    outcomes = std::move(other.outcomes);
    errors = std::move(other.errors);
    slots = std::move(other.slots);
    slices = other.slices;
    state = std::move(other.state);
  }
  return *this;
}
MappedPut::~MappedPut() { end(); }
void MappedPut::end() noexcept {
  if (state && !state->done && state->client != nullptr) state->client->abort_mapped_put(*this);
}
MappedGet::MappedGet() = default;
MappedGet::MappedGet(MappedGet&&) noexcept = default;
MappedGet& MappedGet::operator=(MappedGet&& other) noexcept {
  if (this != &other) {
    end();
    found = other.found;
    slots = std::move(other.slots);
    slices = other.slices;
    checksums = std::move(other.checksums);
    stopped = std::move(other.stopped);
    state = std::move(other.state);
  }
  return *this;
}
MappedGet::~MappedGet() { end(); }
void MappedGet::end() noexcept {
  if (state && !state->done && state->client != nullptr) state->client->finish_mapped_get(*this, 0);
}

Result<MappedPut> Client::begin_mapped_put(NamespaceId ns, std::span<const Key128> keys) {
  if (router_) {
    MappedPut out;
    auto routed = std::make_unique<RoutedMappedPut>();
    if (Status s = router_->begin_mapped_put(ns, keys, out, *routed); !s.ok()) return tl::unexpected(s);
    out.state = std::make_unique<MappedPutState>();
    out.state->client = this;
    out.state->ns = ns;
    out.state->keys.assign(keys.begin(), keys.end());
    out.state->routed = std::move(routed);
    return out;
  }
  auto bb = impl_->block_bytes(ns);
  if (!bb) return tl::unexpected(bb.error());
  MappedPut out;
  out.state = std::make_unique<MappedPutState>();
  auto& st = *out.state;
  st.client = this;
  st.ns = ns;
  st.keys.assign(keys.begin(), keys.end());
  st.block_bytes = *bb;
  st.slices = out.slices = impl_->slices(ns, *bb);
  out.outcomes.assign(keys.size(), PutOutcome::kFailed);
  out.errors.assign(keys.size(), Status());
  out.slots.assign(keys.size(), MappedSlot{});
  st.conns.assign(keys.size(), nullptr);
  if (keys.empty()) {
    st.done = true;
    return out;
  }
  std::vector<std::uint64_t> sizes(keys.size(), *bb);
  rpc::AllocateReply arep;
  if (Status s = impl_->allocate(ns, keys, sizes, arep, st.lease_ends); !s.ok()) return tl::unexpected(s);
  st.results = std::move(arep.results);
  st.epoch = arep.epoch;
  rpc::LeaseBatch abort;
  abort.epoch = st.epoch;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto& r = st.results[i];
    switch (r.outcome) {
      case rpc::AllocateOutcome::kExists: out.outcomes[i] = PutOutcome::kExists; continue;
      case rpc::AllocateOutcome::kPending: out.outcomes[i] = PutOutcome::kPending; continue;
      case rpc::AllocateOutcome::kError: out.errors[i] = r.error.to_status(); continue;
      case rpc::AllocateOutcome::kPlaced: break;
    }
    auto conn = impl_->agent(r.location.agent, r.location.incarnation);
    auto base = mapped_base(conn);
    if (!base) {
      out.errors[i] = base.error();
      abort.leases.push_back(r.lease);
      continue;
    }
    // Checked here, where the location comes in: finish_mapped_put writes
    // the header where this location says, and the caller DMAs block_bytes
    // into the payload.
    if (Status c = check_slot(r.location, (*conn)->region.length(), *bb, i, st.slices); !c.ok()) {
      logger()->warn("mapped put: {}", c.message());
      out.errors[i] = c;
      abort.leases.push_back(r.lease);
      continue;
    }
    out.outcomes[i] = PutOutcome::kWritten;
    out.slots[i] = MappedSlot{*base + r.location.payload_offset, *base, (*conn)->region.length(),
                              r.location.incarnation};
    st.conns[i] = *conn;
  }
  impl_->abort_leases(abort);
  return out;
}

Result<PutResult> Client::finish_mapped_put(MappedPut& put, std::span<const std::uint64_t> checksums) {
  if (!put.state || put.state->done) {
    return make_error(StatusCode::kFailedPrecondition, "finish_mapped_put: the put is already finished");
  }
  auto& st = *put.state;
  if (st.routed || router_) {
    if (!st.routed || !router_) {
      return make_error(StatusCode::kInvalidArgument, "finish_mapped_put: the put was begun by another client");
    }
    st.done = true;
    return router_->finish_mapped_put(*st.routed, put, checksums);
  }
  if (checksums.size() != st.keys.size() * st.slices) {
    return make_error(StatusCode::kInvalidArgument, "finish_mapped_put: " + std::to_string(st.slices) +
                                                        " checksums per key are needed (one per slice)");
  }
  st.done = true;
  PutResult result;
  result.outcomes = put.outcomes;
  result.errors = put.errors;
  rpc::LeaseBatch commit;
  commit.epoch = st.epoch;
  std::vector<std::size_t> commit_index;
  const auto now = Clock::now();
  // The payloads are complete (the caller waited for its DMA): order them
  // before the headers that vouch for them.
  std::atomic_thread_fence(std::memory_order_release);
  for (std::size_t i = 0; i < st.keys.size(); ++i) {
    if (put.outcomes[i] != PutOutcome::kWritten) continue;
    result.outcomes[i] = PutOutcome::kFailed;
    if (now >= st.lease_ends[i]) {
      // Too late to vouch for it: the space may already be someone else's.
      result.errors[i] = Status(StatusCode::kDeadlineExceeded, "put: the write lease ran out before the data was written");
      continue;
    }
    if (Status h = st.conns[i]->peer->health(); !h.ok()) {
      result.errors[i] = h;
      continue;
    }
    const auto& loc = st.results[i].location;
    const auto table = checksums.subspan(i * st.slices, st.slices);
    const auto h =
        slot_header(st.ns, st.keys[i], st.block_bytes, loc.generation, pool::table_checksum(table), st.slices);
    write_header_mapped(put.slots[i].region, loc.header_offset, h, table.data());
    commit.leases.push_back(st.results[i].lease);
    commit_index.push_back(i);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  impl_->commit_leases(commit, commit_index, st.block_bytes, result);
  st.conns.clear();
  detail::count_outcomes(result);
  return result;
}

void Client::abort_mapped_put(MappedPut& put) {
  if (!put.state || put.state->done) return;
  auto& st = *put.state;
  if (st.routed || router_) {
    if (st.routed && router_) {
      st.done = true;
      router_->abort_mapped_put(*st.routed);
    }
    return;
  }
  st.done = true;
  rpc::LeaseBatch abort;
  abort.epoch = st.epoch;
  for (std::size_t i = 0; i < st.keys.size(); ++i) {
    if (put.outcomes[i] == PutOutcome::kWritten) abort.leases.push_back(st.results[i].lease);
  }
  // A DMA that was started may not have stopped: the caller aborts only
  // once its copies are complete or known never to have started.
  impl_->abort_leases(abort);
  st.conns.clear();
}

Result<MappedGet> Client::begin_mapped_get(NamespaceId ns, std::span<const Key128> keys) {
  if (router_) {
    MappedGet out;
    auto routed = std::make_unique<RoutedMappedGet>();
    if (Status s = router_->begin_mapped_get(ns, keys, out, *routed); !s.ok()) return tl::unexpected(s);
    out.state = std::make_unique<MappedGetState>();
    out.state->client = this;
    out.state->routed = std::move(routed);
    return out;
  }
  auto bb = impl_->block_bytes(ns);
  if (!bb) return tl::unexpected(bb.error());
  MappedGet out;
  out.state = std::make_unique<MappedGetState>();
  auto& st = *out.state;
  st.client = this;
  st.block_bytes = *bb;
  out.slices = impl_->slices(ns, *bb);
  if (keys.empty()) return out;
  auto looked_up = impl_->lookup_leased(ns, keys);
  if (!looked_up) return tl::unexpected(looked_up.error());
  const rpc::LookupReply& lrep = *looked_up;
  st.lease = lrep.lease;
  st.epoch = lrep.epoch;
  const std::size_t n = std::min(lrep.locations.size(), keys.size());
  out.stopped = n < keys.size() ? Status(StatusCode::kNotFound, "block " + std::to_string(n) + " is not in the pool")
                                : Status();
  for (std::size_t i = 0; i < n; ++i) {
    const auto& loc = lrep.locations[i];
    auto conn = impl_->agent(loc.agent, loc.incarnation);
    auto base = mapped_base(conn);
    if (!base) {
      out.stopped = base.error();
      break;
    }
    if (Status c = check_slot(loc, (*conn)->region.length(), *bb, i, out.slices); !c.ok()) {
      out.stopped = c;
      ++impl_->verify_failures;
      logger()->warn("mapped get: {}", c.message());
      break;
    }
    auto table = slice_checksums(*base, loc, ns, keys[i], i, out.slices);
    if (!table) {
      out.stopped = table.error();
      ++impl_->verify_failures;
      logger()->warn("mapped get: {}", table.error().message());
      break;
    }
    out.slots.push_back(MappedSlot{*base + loc.payload_offset, *base, (*conn)->region.length(), loc.incarnation});
    out.checksums.insert(out.checksums.end(), table->begin(), table->end());
    st.conns.push_back(*conn);
    out.found = i + 1;
  }
  return out;
}

void Client::finish_mapped_get(MappedGet& get, std::size_t loaded) {
  if (!get.state || get.state->done) return;
  auto& st = *get.state;
  if (st.routed || router_) {
    if (st.routed && router_) {
      st.done = true;
      router_->finish_mapped_get(*st.routed, loaded);
    }
    return;
  }
  st.done = true;
  impl_->bytes_got += std::min(loaded, get.found) * st.block_bytes;
  impl_->release_read_lease(st.lease, st.epoch);
  st.conns.clear();
}

}  // namespace kvpool
