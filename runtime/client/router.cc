#include "runtime/client/router.h"

#include <algorithm>
#include <optional>

#include "runtime/common/logging.h"

namespace kvpool {

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

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("runtime");
  return l;
}

Status shard_error(std::uint32_t shard, const Status& s) {
  return Status(s.code(), "coordinator shard " + std::to_string(shard) + ": " + s.message());
}

}  // namespace

Result<std::unique_ptr<Client::Router>> Client::Router::connect(const ClientOptions& options,
                                                                const std::string& endpoints, etcd::ShardMap map,
                                                                std::int64_t revision) {
  auto r = std::make_unique<Router>();
  r->options = options;
  r->endpoints = endpoints;
  const auto ids = map.shards();
  r->map = std::make_shared<const etcd::ShardMap>(std::move(map));
  // One Client per shard, connected in parallel (each dial asks etcd and
  // says hello).
  std::vector<std::optional<Result<std::unique_ptr<Client>>>> clients(ids.size());
  std::vector<std::thread> dials;
  for (std::size_t p = 0; p < ids.size(); ++p) {
    dials.emplace_back([&, p] {
      ClientOptions o = options;
      o.coordinator = "etcd://" + endpoints + "/" + std::to_string(ids[p]);
      clients[p] = Client::connect(o);
    });
  }
  for (auto& t : dials) t.join();
  for (std::size_t p = 0; p < ids.size(); ++p) {
    auto& c = *clients[p];
    if (!c) {
      return make_error(c.error().code(), "coordinator shard " + std::to_string(ids[p]) + " (shard map version " +
                                              std::to_string(r->map->version) + "): " + c.error().message());
    }
    r->clients[ids[p]].client = std::shared_ptr<Client>(std::move(*c));
  }
  r->fanout = std::make_unique<detail::TaskPool>(static_cast<int>(std::clamp<std::size_t>(ids.size(), 2, 16)));
  r->work = std::make_unique<detail::TaskPool>(2);
  auto eps = etcd::parse_endpoints(endpoints);
  if (!eps) return tl::unexpected(eps.error());
  Router* raw = r.get();
  auto w = etcd::Watch::start(
      {*eps, std::min(options.timeout, std::chrono::milliseconds(2000))}, etcd::kShardMapKey, false, revision + 1,
      [raw](const std::vector<etcd::WatchEvent>& events) {
        for (const auto& ev : events) {
          if (ev.type != etcd::WatchEvent::Type::kPut) {
            std::lock_guard lock(raw->mu);
            logger()->warn("the shard map was deleted from etcd; keeping version {}", raw->map->version);
            continue;
          }
          auto next = etcd::parse_shard_map(ev.kv.value);
          if (!next) {
            logger()->error("ignoring a malformed shard map: {}", next.error().message());
            continue;
          }
          raw->set_map(std::move(*next));
        }
      });
  if (!w) return tl::unexpected(w.error());
  r->watch = std::move(*w);
  logger()->info("connected to {} coordinator shards (shard map version {})", ids.size(), r->map->version);
  return r;
}

Client::Router::~Router() {
  // No call in flight, no map change, before the clients go.
  if (watch) watch->stop();
  work.reset();
  fanout.reset();
}

void Client::Router::set_map(etcd::ShardMap next) {
  std::lock_guard lock(mu);
  if (next.version < map->version) {
    logger()->warn("ignoring shard map version {}: older than {}", next.version, map->version);
    return;
  }
  logger()->info("shard map version {}: {}", next.version, next.describe());
  map = std::make_shared<const etcd::ShardMap>(std::move(next));
}

Client::Router::View Client::Router::view() {
  View v;
  std::vector<std::uint32_t> missing;
  {
    std::lock_guard lock(mu);
    v.map = map;
    v.ids = map->shards();
    const auto now = Clock::now();
    for (std::uint32_t id : v.ids) {
      auto it = clients.find(id);
      if (it == clients.end() || (!it->second.client && now >= it->second.next_try)) missing.push_back(id);
    }
  }
  for (std::uint32_t id : missing) {
    // A shard the map names for the first time (or one that failed): connect
    // it, with this client's namespaces and buffers.
    std::lock_guard one(connect_mu);
    {
      std::lock_guard lock(mu);
      auto it = clients.find(id);
      if (it != clients.end() && (it->second.client || Clock::now() < it->second.next_try)) continue;
    }
    ClientOptions o = options;
    o.coordinator = "etcd://" + endpoints + "/" + std::to_string(id);
    auto c = Client::connect(o);
    ShardClient sc;
    if (c) {
      sc.client = std::shared_ptr<Client>(std::move(*c));
      std::vector<NamespaceDescriptor> ds;
      std::vector<std::pair<void*, std::size_t>> bs;
      {
        std::lock_guard lock(mu);
        ds = descriptors;
        bs = buffers;
      }
      for (const auto& d : ds) {
        if (auto r = sc.client->register_namespace(d); !r) sc.error = r.error();
      }
      for (const auto& [p, n] : bs) {
        if (Status st = sc.client->register_buffer(p, n); !st.ok()) sc.error = st;
      }
      if (!sc.error.ok()) sc.client.reset();
    } else {
      sc.error = c.error();
    }
    if (!sc.client) {
      sc.next_try = Clock::now() + std::chrono::seconds(1);
      logger()->warn("coordinator shard {}: {}", id, sc.error.to_string());
    } else {
      logger()->info("connected to coordinator shard {}", id);
    }
    std::lock_guard lock(mu);
    clients[id] = std::move(sc);
  }
  std::lock_guard lock(mu);
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    v.position[v.ids[p]] = p;
    auto it = clients.find(v.ids[p]);
    v.clients.push_back(it == clients.end() ? nullptr : it->second.client);
    v.errors.push_back(it == clients.end() || it->second.client
                           ? Status()
                           : shard_error(v.ids[p], Status(StatusCode::kUnavailable, it->second.error.message())));
  }
  return v;
}

Client::Router::Split Client::Router::split(const View& v, std::span<const Key128> keys, bool via_from) const {
  Split s;
  s.index.resize(v.ids.size());
  s.keys.resize(v.ids.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto& range = v.map->range_of(etcd::key_point(keys[i]));
    const std::uint32_t shard = via_from && range.from ? *range.from : range.shard;
    const std::size_t p = v.position.at(shard);
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
  std::mutex m;
  std::condition_variable cv;
  std::size_t left = parts.size() - 1;
  for (std::size_t j = 1; j < parts.size(); ++j) {
    fanout->submit([&, p = parts[j]] {
      fn(p);
      std::lock_guard lock(m);
      if (--left == 0) cv.notify_one();
    });
  }
  fn(parts[0]);  // the caller's thread takes one part
  std::unique_lock lock(m);
  cv.wait(lock, [&] { return left == 0; });
}

Result<NamespaceId> Client::Router::register_namespace(const NamespaceDescriptor& descriptor) {
  View v = view();
  std::optional<NamespaceId> id;
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (!v.clients[p]) return tl::unexpected(v.errors[p]);
    auto r = v.clients[p]->register_namespace(descriptor);
    if (!r) return tl::unexpected(shard_error(v.ids[p], r.error()));
    id = *r;
  }
  std::lock_guard lock(mu);
  bool known = false;
  for (const auto& d : descriptors) known |= namespace_id(d) == *id;
  if (!known) descriptors.push_back(descriptor);
  return *id;
}

Result<std::uint64_t> Client::Router::block_bytes(NamespaceId ns) {
  View v = view();
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (v.clients[p]) return v.clients[p]->block_bytes(ns);
  }
  return tl::unexpected(v.errors.empty() ? Status(StatusCode::kUnavailable, "no shard") : v.errors[0]);
}

Status Client::Router::register_buffer(void* data, std::size_t size) {
  View v = view();
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (!v.clients[p]) continue;  // registered when it connects
    if (Status s = v.clients[p]->register_buffer(data, size); !s.ok()) {
      for (std::size_t q = 0; q < p; ++q) {
        if (v.clients[q]) (void)v.clients[q]->unregister_buffer(data);
      }
      return s;
    }
  }
  std::lock_guard lock(mu);
  buffers.emplace_back(data, size);
  return Status();
}

Status Client::Router::unregister_buffer(void* data) {
  {
    std::lock_guard lock(mu);
    std::erase_if(buffers, [&](const auto& b) { return b.first == data; });
  }
  View v = view();
  Status first;
  for (auto& c : v.clients) {
    if (!c) continue;
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
  View v = view();
  const Split s = split(v, keys, false);
  std::vector<std::optional<Result<PutResult>>> parts(v.ids.size());
  each(s, [&](std::size_t p) {
    if (!v.clients[p]) {
      parts[p] = tl::unexpected(v.errors[p]);
      return;
    }
    std::vector<std::span<const std::byte>> bs;
    bs.reserve(s.index[p].size());
    for (std::size_t i : s.index[p]) bs.push_back(blocks[i]);
    parts[p] = v.clients[p]->put(ns, s.keys[p], bs);
  });
  PutResult out;
  out.outcomes.assign(keys.size(), PutOutcome::kFailed);
  out.errors.assign(keys.size(), Status());
  std::optional<Status> all_failed;
  bool any_answered = false;
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
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

Result<GetResult> Client::Router::get_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                           std::span<const std::span<std::byte>> buffers, bool via_from) {
  const Split s = split(v, keys, via_from);
  std::vector<std::optional<Result<GetResult>>> parts(v.ids.size());
  each(s, [&](std::size_t p) {
    if (!v.clients[p]) {
      parts[p] = tl::unexpected(v.errors[p]);
      return;
    }
    std::vector<std::span<std::byte>> bs;
    bs.reserve(s.index[p].size());
    for (std::size_t i : s.index[p]) bs.push_back(buffers[i]);
    parts[p] = v.clients[p]->get(ns, s.keys[p], bs);
  });
  std::vector<std::size_t> done(v.ids.size(), 0);
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
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

Result<GetResult> Client::Router::get(NamespaceId ns, std::span<const Key128> keys,
                                      std::span<const std::span<std::byte>> buffers) {
  if (keys.size() != buffers.size()) {
    return make_error(StatusCode::kInvalidArgument, "get: " + std::to_string(keys.size()) + " keys but " +
                                                        std::to_string(buffers.size()) + " buffers");
  }
  View v = view();
  GetResult out;
  bool via_from = false;
  std::size_t switched_at = SIZE_MAX;
  for (;;) {
    auto r = get_pass(v, ns, keys.subspan(out.loaded), buffers.subspan(out.loaded), via_from);
    if (!r) {
      if (out.loaded == 0) return tl::unexpected(r.error());
      out.stopped = r.error();
      return out;
    }
    out.loaded += r->loaded;
    out.stopped = r->stopped;
    if (out.loaded == keys.size()) return out;
    // A miss at a key of a moving range may be on the other side of the move.
    const auto& range = v.map->range_of(etcd::key_point(keys[out.loaded]));
    if (!range.from || r->stopped.code() != StatusCode::kNotFound) return out;
    if (r->loaded == 0 && switched_at == out.loaded) return out;  // on neither side
    switched_at = out.loaded;
    via_from = !via_from;
  }
}

Result<std::size_t> Client::Router::lookup_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                                bool via_from) {
  const Split s = split(v, keys, via_from);
  std::vector<std::optional<Result<std::size_t>>> parts(v.ids.size());
  each(s, [&](std::size_t p) {
    if (!v.clients[p]) {
      parts[p] = tl::unexpected(v.errors[p]);
      return;
    }
    parts[p] = v.clients[p]->lookup(ns, s.keys[p]);
  });
  std::vector<std::size_t> done(v.ids.size(), 0);
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (parts[p] && *parts[p]) done[p] = **parts[p];
  }
  std::optional<std::size_t> at;
  const std::size_t prefix = prefix_of(s, done, keys.size(), &at);
  if (at && !*parts[*at]) return tl::unexpected(parts[*at]->error());
  return prefix;
}

Result<std::size_t> Client::Router::lookup(NamespaceId ns, std::span<const Key128> keys) {
  View v = view();
  std::size_t found = 0;
  bool via_from = false;
  std::size_t switched_at = SIZE_MAX;
  for (;;) {
    auto r = lookup_pass(v, ns, keys.subspan(found), via_from);
    if (!r) {
      if (found == 0) return tl::unexpected(r.error());
      return found;
    }
    found += *r;
    if (found == keys.size()) return found;
    const auto& range = v.map->range_of(etcd::key_point(keys[found]));
    if (!range.from) return found;
    if (*r == 0 && switched_at == found) return found;
    switched_at = found;
    via_from = !via_from;
  }
}

Result<std::vector<Status>> Client::Router::remove(NamespaceId ns, std::span<const Key128> keys) {
  View v = view();
  std::vector<Status> out(keys.size());
  bool any_answered = keys.empty();
  std::optional<Status> failed;
  // Keys of a moving range are removed on both sides of the move: ok when
  // either had it.
  for (bool via_from : {false, true}) {
    const Split s = split(v, keys, via_from);
    if (via_from) {
      bool moving = false;
      for (const auto& r : v.map->ranges) moving |= r.from.has_value();
      if (!moving) break;
    }
    std::vector<std::optional<Result<std::vector<Status>>>> parts(v.ids.size());
    each(s, [&](std::size_t p) {
      if (!v.clients[p]) {
        parts[p] = tl::unexpected(v.errors[p]);
        return;
      }
      if (via_from) {
        // Only the moving keys, the others were asked already.
        std::vector<Key128> ks;
        for (const auto& k : s.keys[p]) {
          if (v.map->range_of(etcd::key_point(k)).from) ks.push_back(k);
        }
        if (ks.empty()) return;
        auto r = v.clients[p]->remove(ns, ks);
        if (!r) {
          parts[p] = tl::unexpected(r.error());
          return;
        }
        std::vector<Status> all(s.keys[p].size());
        for (std::size_t j = 0, k = 0; j < s.keys[p].size(); ++j) {
          all[j] = v.map->range_of(etcd::key_point(s.keys[p][j])).from ? (*r)[k++]
                                                                        : Status(StatusCode::kNotFound, "");
        }
        parts[p] = std::move(all);
        return;
      }
      parts[p] = v.clients[p]->remove(ns, s.keys[p]);
    });
    for (std::size_t p = 0; p < v.ids.size(); ++p) {
      if (!parts[p]) continue;
      const auto& r = *parts[p];
      if (!r) {
        if (via_from) continue;
        if (!failed) failed = r.error();
        for (std::size_t i : s.index[p]) out[i] = r.error();
        continue;
      }
      any_answered = true;
      for (std::size_t j = 0; j < s.index[p].size() && j < r->size(); ++j) {
        Status& o = out[s.index[p][j]];
        if (!via_from) {
          o = (*r)[j];
        } else if (!o.ok() && (*r)[j].ok()) {
          o = Status();  // removed on the side it moves from
        }
      }
    }
  }
  if (!any_answered && failed) return tl::unexpected(*failed);
  return out;
}

Result<std::vector<bool>> Client::Router::wait_for(NamespaceId ns, std::span<const Key128> keys,
                                                   std::chrono::milliseconds timeout) {
  View v = view();
  const Split s = split(v, keys, false);
  std::vector<std::optional<Result<std::vector<bool>>>> parts(v.ids.size());
  each(s, [&](std::size_t p) {
    if (!v.clients[p]) {
      parts[p] = tl::unexpected(v.errors[p]);
      return;
    }
    parts[p] = v.clients[p]->wait_for(ns, s.keys[p], timeout);
  });
  std::vector<bool> out(keys.size(), false);
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (!parts[p]) continue;
    const auto& r = *parts[p];
    if (!r) return tl::unexpected(r.error());
    for (std::size_t j = 0; j < s.index[p].size() && j < r->size(); ++j) out[s.index[p][j]] = (*r)[j];
  }
  return out;
}

ClientStats Client::Router::stats() {
  ClientStats out;
  std::vector<std::shared_ptr<Client>> cs;
  {
    std::lock_guard lock(mu);
    for (const auto& [id, c] : clients) {
      if (c.client) cs.push_back(c.client);
    }
  }
  for (const auto& c : cs) {
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
