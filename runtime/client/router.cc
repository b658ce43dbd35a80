#include "runtime/client/router.h"

#include <algorithm>
#include <optional>

#include "runtime/common/logging.h"

namespace kvpool {

namespace detail {

TaskPool::TaskPool(int threads) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] {
      for (;;) {
        std::function<void()> fn;
        {
          std::unique_lock lock(mu_);
          cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
          if (tasks_.empty()) return;
          fn = std::move(tasks_.front());
          tasks_.pop_front();
        }
        fn();
      }
    });
  }
}

TaskPool::~TaskPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void TaskPool::submit(std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    tasks_.push_back(std::move(fn));
  }
  cv_.notify_one();
}

}  // namespace detail

namespace {

// The caller's prefix given how many leading keys of each part were done:
// the first caller index whose part stopped before it (n when none did), and
// that part (nullopt when none).
std::size_t prefix_of(const Client::Router::Split& split, const std::vector<std::size_t>& done, std::size_t n,
                      std::optional<std::size_t>* stopped_part) {
  std::size_t prefix = n;
  for (std::size_t p = 0; p < split.index.size(); ++p) {
    if (done[p] < split.index[p].size() && split.index[p][done[p]] < prefix) {
      prefix = split.index[p][done[p]];
      *stopped_part = p;
    }
  }
  return prefix;
}

}  // namespace

Result<std::unique_ptr<Client::Router>> Client::Router::connect(const ClientOptions& options,
                                                                const std::string& endpoints, etcd::ShardMap map) {
  auto r = std::make_unique<Router>();
  r->options = options;
  r->map = std::move(map);
  r->ids = r->map.shards();
  for (std::size_t p = 0; p < r->ids.size(); ++p) r->position[r->ids[p]] = p;
  // One Client per shard, connected in parallel (each dial asks etcd and
  // says hello).
  std::vector<std::optional<Result<std::unique_ptr<Client>>>> clients(r->ids.size());
  std::vector<std::thread> dials;
  for (std::size_t p = 0; p < r->ids.size(); ++p) {
    dials.emplace_back([&, p] {
      ClientOptions o = options;
      o.coordinator = "etcd://" + endpoints + "/" + std::to_string(r->ids[p]);
      clients[p] = Client::connect(o);
    });
  }
  for (auto& t : dials) t.join();
  for (std::size_t p = 0; p < r->ids.size(); ++p) {
    auto& c = *clients[p];
    if (!c) {
      return make_error(c.error().code(), "coordinator shard " + std::to_string(r->ids[p]) + " (shard map version " +
                                              std::to_string(r->map.version) + "): " + c.error().message());
    }
    r->shards.push_back(std::move(*c));
  }
  const int threads = static_cast<int>(std::min<std::size_t>(r->ids.size(), 16)) - 1;
  r->fanout = std::make_unique<detail::TaskPool>(std::max(threads, 1));
  r->work = std::make_unique<detail::TaskPool>(2);
  log::get("runtime")->info("connected to {} coordinator shards (shard map version {})", r->ids.size(),
                            r->map.version);
  return r;
}

Client::Router::~Router() {
  // No call in flight before the clients go.
  work.reset();
  fanout.reset();
}

Client::Router::Split Client::Router::split(std::span<const Key128> keys) const {
  Split s;
  s.index.resize(ids.size());
  s.keys.resize(ids.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const std::size_t p = position.at(map.shard_of(keys[i]));
    s.index[p].push_back(i);
    s.keys[p].push_back(keys[i]);
  }
  return s;
}

void Client::Router::each(const Split& split, const std::function<void(std::size_t)>& fn) {
  std::vector<std::size_t> parts;
  for (std::size_t p = 0; p < split.index.size(); ++p) {
    if (!split.index[p].empty()) parts.push_back(p);
  }
  if (parts.empty()) return;
  std::mutex mu;
  std::condition_variable cv;
  std::size_t left = parts.size() - 1;
  for (std::size_t j = 1; j < parts.size(); ++j) {
    fanout->submit([&, p = parts[j]] {
      fn(p);
      std::lock_guard lock(mu);
      if (--left == 0) cv.notify_one();
    });
  }
  fn(parts[0]);  // the caller's thread takes one part
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return left == 0; });
}

Result<NamespaceId> Client::Router::register_namespace(const NamespaceDescriptor& descriptor) {
  std::optional<NamespaceId> id;
  for (std::size_t p = 0; p < shards.size(); ++p) {
    auto r = shards[p]->register_namespace(descriptor);
    if (!r) {
      return make_error(r.error().code(),
                        "coordinator shard " + std::to_string(ids[p]) + ": " + r.error().message());
    }
    id = *r;
  }
  return *id;
}

Result<std::uint64_t> Client::Router::block_bytes(NamespaceId ns) const { return shards[0]->block_bytes(ns); }

Status Client::Router::register_buffer(void* data, std::size_t size) {
  for (std::size_t p = 0; p < shards.size(); ++p) {
    if (Status s = shards[p]->register_buffer(data, size); !s.ok()) {
      for (std::size_t q = 0; q < p; ++q) (void)shards[q]->unregister_buffer(data);
      return s;
    }
  }
  return Status();
}

Status Client::Router::unregister_buffer(void* data) {
  Status first;
  for (auto& c : shards) {
    if (Status s = c->unregister_buffer(data); !s.ok() && first.ok()) first = s;
  }
  return first;
}

Result<PutResult> Client::Router::put(NamespaceId ns, std::span<const Key128> keys,
                                      std::span<const std::span<const std::byte>> blocks) {
  if (keys.size() != blocks.size()) {
    return make_error(StatusCode::kInvalidArgument, "put: " + std::to_string(keys.size()) + " keys but " +
                                                        std::to_string(blocks.size()) + " blocks");
  }
  const Split s = split(keys);
  std::vector<std::optional<Result<PutResult>>> parts(ids.size());
  each(s, [&](std::size_t p) {
    std::vector<std::span<const std::byte>> bs;
    bs.reserve(s.index[p].size());
    for (std::size_t i : s.index[p]) bs.push_back(blocks[i]);
    parts[p] = shards[p]->put(ns, s.keys[p], bs);
  });
  PutResult out;
  out.outcomes.assign(keys.size(), PutOutcome::kFailed);
  out.errors.assign(keys.size(), Status());
  std::optional<Status> all_failed;
  bool any_answered = false;
  for (std::size_t p = 0; p < ids.size(); ++p) {
    if (!parts[p]) continue;
    const auto& r = *parts[p];
    if (!r) {
      // Bad arguments fail the whole call, as on one shard.
      if (r.error().code() == StatusCode::kInvalidArgument || r.error().code() == StatusCode::kFailedPrecondition) {
        return tl::unexpected(r.error());
      }
      if (!all_failed) all_failed = r.error();
      for (std::size_t i : s.index[p]) out.errors[i] = r.error();
      continue;
    }
    any_answered = true;
    for (std::size_t j = 0; j < s.index[p].size(); ++j) {
      out.outcomes[s.index[p][j]] = r->outcomes[j];
      out.errors[s.index[p][j]] = r->errors[j];
    }
  }
  if (!any_answered && all_failed) return tl::unexpected(*all_failed);
  for (auto o : out.outcomes) {
    switch (o) {
      case PutOutcome::kWritten: ++out.written; break;
      case PutOutcome::kExists: ++out.deduplicated; break;
      case PutOutcome::kPending: ++out.pending; break;
      case PutOutcome::kFailed: ++out.failed; break;
    }
  }
  return out;
}

Result<GetResult> Client::Router::get(NamespaceId ns, std::span<const Key128> keys,
                                      std::span<const std::span<std::byte>> buffers) {
  if (keys.size() != buffers.size()) {
    return make_error(StatusCode::kInvalidArgument, "get: " + std::to_string(keys.size()) + " keys but " +
                                                        std::to_string(buffers.size()) + " buffers");
  }
  const Split s = split(keys);
  std::vector<std::optional<Result<GetResult>>> parts(ids.size());
  each(s, [&](std::size_t p) {
    std::vector<std::span<std::byte>> bs;
    bs.reserve(s.index[p].size());
    for (std::size_t i : s.index[p]) bs.push_back(buffers[i]);
    parts[p] = shards[p]->get(ns, s.keys[p], bs);
  });
  std::vector<std::size_t> done(ids.size(), 0);
  for (std::size_t p = 0; p < ids.size(); ++p) {
    if (parts[p] && *parts[p]) done[p] = (*parts[p])->loaded;
  }
  std::optional<std::size_t> at;
  GetResult out;
  out.loaded = prefix_of(s, done, keys.size(), &at);
  if (at) {
    const auto& r = *parts[*at];
    if (!r) {
      if (out.loaded == 0) return tl::unexpected(r.error());
      out.stopped = r.error();
    } else {
      out.stopped = r->stopped;
    }
  }
  return out;
}

Result<std::size_t> Client::Router::lookup(NamespaceId ns, std::span<const Key128> keys) {
  const Split s = split(keys);
  std::vector<std::optional<Result<std::size_t>>> parts(ids.size());
  each(s, [&](std::size_t p) { parts[p] = shards[p]->lookup(ns, s.keys[p]); });
  std::vector<std::size_t> done(ids.size(), 0);
  for (std::size_t p = 0; p < ids.size(); ++p) {
    if (parts[p] && *parts[p]) done[p] = **parts[p];
  }
  std::optional<std::size_t> at;
  const std::size_t prefix = prefix_of(s, done, keys.size(), &at);
  if (at && !*parts[*at]) return tl::unexpected(parts[*at]->error());
  return prefix;
}

Result<std::vector<Status>> Client::Router::remove(NamespaceId ns, std::span<const Key128> keys) {
  const Split s = split(keys);
  std::vector<std::optional<Result<std::vector<Status>>>> parts(ids.size());
  each(s, [&](std::size_t p) { parts[p] = shards[p]->remove(ns, s.keys[p]); });
  std::vector<Status> out(keys.size());
  bool any_answered = keys.empty();
  std::optional<Status> failed;
  for (std::size_t p = 0; p < ids.size(); ++p) {
    if (!parts[p]) continue;
    const auto& r = *parts[p];
    if (!r) {
      if (!failed) failed = r.error();
      for (std::size_t i : s.index[p]) out[i] = r.error();
      continue;
    }
    any_answered = true;
    for (std::size_t j = 0; j < s.index[p].size() && j < r->size(); ++j) out[s.index[p][j]] = (*r)[j];
  }
  if (!any_answered && failed) return tl::unexpected(*failed);
  return out;
}

Result<std::vector<bool>> Client::Router::wait_for(NamespaceId ns, std::span<const Key128> keys,
                                                   std::chrono::milliseconds timeout) {
  const Split s = split(keys);
  std::vector<std::optional<Result<std::vector<bool>>>> parts(ids.size());
  each(s, [&](std::size_t p) { parts[p] = shards[p]->wait_for(ns, s.keys[p], timeout); });
  std::vector<bool> out(keys.size(), false);
  for (std::size_t p = 0; p < ids.size(); ++p) {
    if (!parts[p]) continue;
    const auto& r = *parts[p];
    if (!r) return tl::unexpected(r.error());
    for (std::size_t j = 0; j < s.index[p].size() && j < r->size(); ++j) out[s.index[p][j]] = (*r)[j];
  }
  return out;
}

ClientStats Client::Router::stats() const {
  ClientStats out;
  for (const auto& c : shards) {
    ClientStats s = c->stats();
    out.bytes_put += s.bytes_put;
    out.bytes_got += s.bytes_got;
    out.verify_failures += s.verify_failures;
    if (!s.transports.empty() && out.transports.find(s.transports) == std::string::npos) {
      out.transports += (out.transports.empty() ? "" : ",") + s.transports;
    }
  }
  return out;
}

}  // namespace kvpool
