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
#include "runtime/client/router_merge.h"
#include "runtime/client/ordered_hasher.h"
#include "runtime/client/streamed_chunk.h"
#include "runtime/client/task_pool.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/shard_map.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"
#include "transport/transport.h"
#include "runtime/client/client_impl.h"

namespace kvpool {
namespace {

std::string default_client_id() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return std::string(host) + ":" + std::to_string(getpid());
}

}  // namespace

void Client::Impl::run_split(std::size_t n, const std::function<void(std::size_t)>& body) {
  struct Split {
    std::size_t n = 0;
    const std::function<void(std::size_t)>* body = nullptr;
    std::atomic<std::size_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    bool closed = false;  // guarded by mu: the caller has returned or is about to
    int active = 0;       // guarded by mu: helpers inside body
    void work() {
      for (std::size_t j = next.fetch_add(1); j < n; j = next.fetch_add(1)) (*body)(j);
    }
  };
  auto split = std::make_shared<Split>();
  split->n = n;
  split->body = &body;
  if (n > 1) {
    verifier->submit([split] {
      {
        std::lock_guard lock(split->mu);
        if (split->closed) return;  // came too late: body may be gone
        ++split->active;
      }
      split->work();
      std::lock_guard lock(split->mu);
      if (--split->active == 0) split->cv.notify_all();
    });
  }
  split->work();
  std::unique_lock lock(split->mu);
  split->closed = true;
  split->cv.wait(lock, [&] { return split->active == 0; });
}

Status Client::Impl::allocate(NamespaceId ns, std::span<const Key128> keys, std::span<const std::uint64_t> sizes,
                                rpc::AllocateReply& arep, std::vector<Clock::time_point>& lease_ends,
                                const std::function<void(const std::atomic<bool>&)>& while_waiting) {
  rpc::AllocateRequest areq;
  areq.ns = ns;
  areq.writer_host = transport->host_id();
  for (std::size_t i = 0; i < keys.size(); ++i) areq.items.push_back({keys[i], sizes[i]});
  // Write leases run from when the coordinator issued them; counting from
  // before the request went out keeps our view of each deadline early.
  lease_ends.assign(keys.size(), Clock::time_point::max());
  auto issued_after = Clock::now();
  if (!while_waiting) {
    if (Status s = call(rpc::kAllocate, areq, arep); !s.ok()) return s;
  } else {
    auto c = control();
    if (!c) return c.error();
    struct Reply {
      std::mutex mu;
      std::condition_variable cv;
      std::optional<Result<std::string>> bytes;  // guarded by mu
      std::atomic<bool> arrived{false};
    };
    auto reply = std::make_shared<Reply>();
    (*c)->call_async(rpc::kAllocate, rpc::encode(areq), deadline(), [reply](Result<std::string> r) {
      std::lock_guard lock(reply->mu);
      reply->bytes.emplace(std::move(r));
      reply->arrived.store(true, std::memory_order_release);
      reply->cv.notify_all();
    });
    while_waiting(reply->arrived);
    std::unique_lock lock(reply->mu);
    reply->cv.wait(lock, [&] { return reply->bytes.has_value(); });
    if (!*reply->bytes) {
      forget_leader(*c, reply->bytes->error());
      return reply->bytes->error();
    }
    if (Status s = rpc::decode(**reply->bytes, arep); !s.ok()) return s;
  }
  if (arep.results.size() != keys.size()) {
    return Status(StatusCode::kInternal, "allocate: reply has the wrong number of results");
  }
  // kUnavailable for a key means its space is being reclaimed (evicted, and
  // the agent's invalidation not yet acknowledged): ask again shortly, for
  // up to half the call's timeout.
  auto retry_until = Deadline::after(options.timeout / 2);
  for (int attempt = 1;; ++attempt) {
    std::vector<std::size_t> retry;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const auto& r = arep.results[i];
      if (r.outcome == rpc::AllocateOutcome::kError && r.error.code == StatusCode::kUnavailable) retry.push_back(i);
    }
    if (retry.empty() || retry_until.expired()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(2 * attempt, 50)));
    rpc::AllocateRequest again;
    again.ns = ns;
    again.writer_host = areq.writer_host;
    for (std::size_t i : retry) again.items.push_back(areq.items[i]);
    rpc::AllocateReply rrep;
    const auto again_after = Clock::now();
    // Leases of another leader's epoch could not be committed with the rest.
    if (Status s = call(rpc::kAllocate, again, rrep);
        !s.ok() || rrep.results.size() != retry.size() || rrep.epoch != arep.epoch) {
      break;
    }
    for (std::size_t j = 0; j < retry.size(); ++j) {
      arep.results[retry[j]] = std::move(rrep.results[j]);
      lease_ends[retry[j]] = again_after + std::chrono::milliseconds(arep.results[retry[j]].lease_ms);
    }
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (lease_ends[i] == Clock::time_point::max()) {
      lease_ends[i] = issued_after + std::chrono::milliseconds(arep.results[i].lease_ms);
    }
  }

  return Status();
}

// Where a block's slot lies, as the coordinator placed it: its header and
// `length` payload bytes inside the region, and `length` what the caller
// expects, or a coordinator bug (or a lying coordinator) that must not turn
// into a stray write or read of the mapped region. The one check of every
// mapped site: written without sums, so no offset can wrap
// (`off + len > size` does; `len > size || off > size - len` does not).
Status client_internal::check_slot(const rpc::LocationWire& loc, std::uint64_t region_bytes, std::uint64_t length,
                                   std::size_t block, std::uint32_t slices) {
  // The header and the slice table after it.
  const std::uint64_t head = pool::kSlotHeaderBytes + pool::table_bytes(slices);
  if (loc.length == length && length <= region_bytes && loc.payload_offset <= region_bytes - length &&
      region_bytes >= head && loc.header_offset <= region_bytes - head) {
    return Status();
  }
  return Status(StatusCode::kDataLoss,
                "block " + std::to_string(block) + ": location outside the region (payload at " +
                    std::to_string(loc.payload_offset) + ", " + std::to_string(loc.length) + " bytes where " +
                    std::to_string(length) + " were expected, header at " + std::to_string(loc.header_offset) +
                    ", region of " + std::to_string(region_bytes) + " bytes)");
}

Result<pool::SlotHeader> client_internal::check_header(std::span<const std::byte, pool::kSlotHeaderBytes> bytes,
                                                       NamespaceId ns, const Key128& key,
                                                       const rpc::LocationWire& loc, std::size_t block) {
  auto h = pool::decode(bytes);
  if (!h) return make_error(StatusCode::kDataLoss, "block " + std::to_string(block) + ": " + h.error().message());
  if (h->namespace_id != ns || !(h->key == key) || h->payload_length != loc.length ||
      h->generation != loc.generation) {
    return make_error(StatusCode::kDataLoss, "block " + std::to_string(block) + ": header does not match its location");
  }
  return h;
}

void Client::Impl::abort_leases(const rpc::LeaseBatch& abort) {
  if (!abort.leases.empty()) {
    rpc::StatusBatch ignored;
    (void)call(rpc::kAbort, abort, ignored);  // the lease expires anyway
  }
}

void Client::Impl::commit_leases(const rpc::LeaseBatch& commit, const std::vector<std::size_t>& commit_index,
                                 std::uint64_t block_bytes, PutResult& result) {
  if (!commit.leases.empty()) {
    rpc::StatusBatch crep;
    Status s = call(rpc::kCommit, commit, crep);
    for (std::size_t j = 0; j < commit_index.size(); ++j) {
      std::size_t i = commit_index[j];
      Status ks = !s.ok() ? s : (j < crep.results.size() ? crep.results[j].to_status()
                                                         : Status(StatusCode::kInternal, "commit reply too short"));
      if (ks.ok()) {
        result.outcomes[i] = PutOutcome::kWritten;
        bytes_put += block_bytes;
      } else {
        result.errors[i] = ks;
      }
    }
  }
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(std::unique_ptr<Router> router) : router_(std::move(router)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::connect(const ClientOptions& options) {
  if (etcd::is_etcd_address(options.coordinator)) {
    auto e = etcd::parse_etcd_address(options.coordinator);
    if (!e) return tl::unexpected(e.error());
    if (!e->has_shard) {
      // No /SHARD: routed by the shard map, even with one shard (or none),
      // so that the client follows the map when shards are added.
      std::string endpoints;  // as Router::connect takes them: HOST:PORT,...
      for (const auto& ep : e->endpoints) endpoints += (endpoints.empty() ? "" : ",") + ep.to_string();
      auto ec = etcd::Client::create({e->endpoints, std::min(options.timeout, std::chrono::milliseconds(2000))});
      if (!ec) return tl::unexpected(ec.error());
      std::int64_t revision = 0;
      auto map = etcd::read_shard_map(**ec, &revision);
      if (!map) return tl::unexpected(map.error());
      auto router = Router::connect(options, endpoints, std::move(*ec), std::move(*map), revision);
      if (!router) return tl::unexpected(router.error());
      return std::unique_ptr<Client>(new Client(std::move(*router)));
    }
  } else if (auto hp = parse_host_port(options.coordinator); !hp) {
    return tl::unexpected(hp.error());
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (impl->options.client_id.empty()) impl->options.client_id = default_client_id();
  auto t = transport::Transport::create({.tls = options.tls});
  if (!t) return tl::unexpected(t.error());
  impl->transport = std::move(*t);
  auto rc = impl->dial();
  if (!rc) return tl::unexpected(rc.error());
  impl->rpc = std::move(*rc);
  impl->work = std::make_unique<detail::TaskPool>(2);
  impl->verifier = std::make_unique<detail::TaskPool>(1);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Result<NamespaceId> Client::register_namespace(const NamespaceDescriptor& descriptor) {
  if (router_) return router_->register_namespace(descriptor);
  auto bytes = block_bytes_of(descriptor);
  if (!bytes) return tl::unexpected(bytes.error());
  rpc::RegisterNamespaceReply rep;
  if (Status s = impl_->call(rpc::kRegisterNamespace, rpc::RegisterNamespaceRequest{descriptor}, rep); !s.ok()) {
    return tl::unexpected(s);
  }
  std::lock_guard lock(impl_->mu);
  impl_->namespaces[rep.id] = rep.block_bytes;
  impl_->descriptors[rep.id] = descriptor;
  return rep.id;
}

Result<std::uint64_t> Client::block_bytes(NamespaceId ns) const {
  if (router_) return router_->block_bytes(ns);
  return impl_->block_bytes(ns);
}

Status Client::register_buffer(void* data, std::size_t size) {
  if (router_) return router_->register_buffer(data, size);
  auto r = impl_->transport->register_memory(data, size);
  if (!r) return r.error();
  std::lock_guard lock(impl_->mu);
  impl_->buffers[reinterpret_cast<std::uintptr_t>(data)] = std::make_unique<transport::MemoryRegion>(std::move(*r));
  return Status();
}

Status Client::unregister_buffer(void* data) {
  if (router_) return router_->unregister_buffer(data);
  std::lock_guard lock(impl_->mu);
  if (impl_->buffers.erase(reinterpret_cast<std::uintptr_t>(data)) == 0) {
    return Status(StatusCode::kNotFound, "no buffer registered at that address");
  }
  return Status();
}

Result<PutResult> Client::put(NamespaceId ns, std::span<const Key128> keys,
                              std::span<const std::span<const std::byte>> blocks) {
  if (router_) return router_->put(ns, keys, blocks);
  return impl_->put(ns, keys, blocks);
}

Result<GetResult> Client::get(NamespaceId ns, std::span<const Key128> keys,
                              std::span<const std::span<std::byte>> buffers) {
  if (router_) return router_->get(ns, keys, buffers);
  return impl_->get(ns, keys, buffers);
}

Result<std::size_t> Client::lookup(NamespaceId ns, std::span<const Key128> keys) {
  if (router_) return router_->lookup(ns, keys);
  rpc::LookupRequest req;
  req.ns = ns;
  req.take_lease = false;
  req.keys.assign(keys.begin(), keys.end());
  rpc::LookupReply rep;
  if (Status s = impl_->call(rpc::kLookup, req, rep); !s.ok()) return tl::unexpected(s);
  return rep.locations.size();
}

Result<std::vector<Status>> Client::remove(NamespaceId ns, std::span<const Key128> keys) {
  if (router_) return router_->remove(ns, keys);
  rpc::KeysRequest req;
  req.ns = ns;
  req.keys.assign(keys.begin(), keys.end());
  rpc::StatusBatch rep;
  if (Status s = impl_->call(rpc::kRemove, req, rep); !s.ok()) return tl::unexpected(s);
  std::vector<Status> out;
  for (const auto& s : rep.results) out.push_back(s.to_status());
  return out;
}

Result<std::vector<bool>> Client::wait_for(NamespaceId ns, std::span<const Key128> keys,
                                           std::chrono::milliseconds timeout) {
  if (router_) return router_->wait_for(ns, keys, timeout);
  rpc::WaitForRequest req;
  req.ns = ns;
  req.timeout_ms = static_cast<std::uint32_t>(timeout.count());
  req.keys.assign(keys.begin(), keys.end());
  auto c = impl_->control();
  if (!c) return tl::unexpected(c.error());
  auto reply = (*c)->call(rpc::kWaitFor, rpc::encode(req), Deadline::after(timeout + impl_->options.timeout));
  if (!reply) return tl::unexpected(reply.error());
  rpc::WaitForReply rep;
  if (Status s = rpc::decode(*reply, rep); !s.ok()) return tl::unexpected(s);
  return rep.committed;
}

std::future<Result<PutResult>> Client::put_async(NamespaceId ns, std::span<const Key128> keys,
                                                 std::span<const std::span<const std::byte>> blocks) {
  auto promise = std::make_shared<std::promise<Result<PutResult>>>();
  auto future = promise->get_future();
  if (router_) {
    router_->work->submit([this, promise, ns, keys, blocks] { promise->set_value(router_->put(ns, keys, blocks)); });
    return future;
  }
  impl_->work->submit([this, promise, ns, keys, blocks] { promise->set_value(impl_->put(ns, keys, blocks)); });
  return future;
}

std::future<Result<GetResult>> Client::get_async(NamespaceId ns, std::span<const Key128> keys,
                                                 std::span<const std::span<std::byte>> buffers) {
  auto promise = std::make_shared<std::promise<Result<GetResult>>>();
  auto future = promise->get_future();
  if (router_) {
    router_->work->submit([this, promise, ns, keys, buffers] { promise->set_value(router_->get(ns, keys, buffers)); });
    return future;
  }
  impl_->work->submit([this, promise, ns, keys, buffers] { promise->set_value(impl_->get(ns, keys, buffers)); });
  return future;
}

ClientStats Client::stats() const {
  if (router_) return router_->stats();
  ClientStats s;
  std::lock_guard lock(impl_->mu);
  s.transports = impl_->transports_seen;
  s.bytes_put = impl_->bytes_put;
  s.bytes_got = impl_->bytes_got;
  s.verify_failures = impl_->verify_failures;
  return s;
}

}  // namespace kvpool
