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

// A key of a moving range that one side missed is asked on the other side,
// then on the first again: the mover copies a block to the new owner before
// it removes it from the old, so a block missed at the new owner and then at
// the old one (removed there meanwhile) is at the new owner by the third
// ask. A key missed three times in a row is on neither side.
constexpr int kAskedEnough = 3;

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("runtime");
  return l;
}

Status shard_error(std::uint32_t shard, const Status& s) {
  return Status(s.code(), "coordinator shard " + std::to_string(shard) + ": " + s.message());
}

}  // namespace

Result<std::unique_ptr<Client::Router>> Client::Router::connect(const ClientOptions& options,
                                                                const std::string& endpoints,
                                                                std::unique_ptr<etcd::Client> etcd,
                                                                etcd::ShardMap map, std::int64_t revision) {
  auto r = std::make_unique<Router>();
  r->options = options;
  r->endpoints = endpoints;
  r->etcd = std::move(etcd);
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
  logger()->info("connected to {} coordinator shard{} (shard map version {})", ids.size(), ids.size() == 1 ? "" : "s",
                 r->map->version);
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
  if (next.version == map->version) return;  // read by refresh() and then seen by the watch
  logger()->info("shard map version {}: {}", next.version, next.describe());
  map = std::make_shared<const etcd::ShardMap>(std::move(next));
}

bool Client::Router::refresh(std::int64_t seen) {
  Result<etcd::ShardMap> m = tl::unexpected(Status());
  {
    std::lock_guard lock(etcd_mu);
    if (!etcd) return false;
    m = etcd::read_shard_map(*etcd);
  }
  if (!m) {
    logger()->warn("reading the shard map after a refusal: {}", m.error().to_string());
    return false;
  }
  if (m->version <= seen) return false;
  set_map(std::move(*m));
  return true;
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

namespace {

bool refused_by_map(const Status& s) { return s.code() == StatusCode::kFailedPrecondition; }

void count_outcomes(PutResult& out) {
  out.written = out.deduplicated = out.pending = out.failed = 0;
  for (auto o : out.outcomes) {
    switch (o) {
      case PutOutcome::kWritten: ++out.written; break;
      case PutOutcome::kExists: ++out.deduplicated; break;
      case PutOutcome::kPending: ++out.pending; break;
      case PutOutcome::kFailed: ++out.failed; break;
    }
  }
}

// The keys of `out` refused for the shard map (kFailedPrecondition), in
// order.
std::vector<std::size_t> refused_keys(const std::vector<PutOutcome>& outcomes, const std::vector<Status>& errors) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    if (outcomes[i] == PutOutcome::kFailed && refused_by_map(errors[i])) out.push_back(i);
  }
  return out;
}

// After the passes: a whole-call kInvalidArgument/kFailedPrecondition fails
// the call (as on one shard); so does a call no shard answered.
std::optional<Status> whole_call_error(const std::vector<Status>& errors, const std::vector<bool>& whole) {
  std::optional<Status> first;
  bool any_answered = whole.empty();
  for (std::size_t i = 0; i < whole.size(); ++i) {
    if (!whole[i]) {
      any_answered = true;
      continue;
    }
    const auto c = errors[i].code();
    if (c == StatusCode::kInvalidArgument || c == StatusCode::kFailedPrecondition) return errors[i];
    if (!first) first = errors[i];
  }
  if (!any_answered && first) return first;
  return std::nullopt;
}

}  // namespace

void Client::Router::put_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                              std::span<const std::span<const std::byte>> blocks,
                              const std::vector<std::size_t>& which, PutResult& out, std::vector<bool>& whole) {
  std::vector<Key128> ks;
  ks.reserve(which.size());
  for (std::size_t i : which) ks.push_back(keys[i]);
  Split s = split(v, ks, false);
  for (auto& part : s.index) {
    for (auto& i : part) i = which[i];  // the caller's indices
  }
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
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (!parts[p]) continue;
    const auto& r = *parts[p];
    for (std::size_t j = 0; j < s.index[p].size(); ++j) {
      const std::size_t i = s.index[p][j];
      if (!r) {
        out.outcomes[i] = PutOutcome::kFailed;
        out.errors[i] = r.error();
        whole[i] = true;
      } else {
        out.outcomes[i] = r->outcomes[j];
        out.errors[i] = r->errors[j];
        whole[i] = false;
      }
    }
  }
}

Result<PutResult> Client::Router::put(NamespaceId ns, std::span<const Key128> keys,
                                      std::span<const std::span<const std::byte>> blocks) {
  if (keys.size() != blocks.size()) {
    return make_error(StatusCode::kInvalidArgument, "put: " + std::to_string(keys.size()) + " keys but " +
                                                        std::to_string(blocks.size()) + " blocks");
  }
  View v = view();
  PutResult out;
  out.outcomes.assign(keys.size(), PutOutcome::kFailed);
  out.errors.assign(keys.size(), Status());
  std::vector<bool> whole(keys.size(), false);
  std::vector<std::size_t> all(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) all[i] = i;
  put_pass(v, ns, keys, blocks, all, out, whole);
  // Keys refused for the map: a coordinator is ahead of this router's map.
  if (auto refused = refused_keys(out.outcomes, out.errors); !refused.empty() && refresh(v.map->version)) {
    put_pass(view(), ns, keys, blocks, refused, out, whole);
  }
  if (auto e = whole_call_error(out.errors, whole)) return tl::unexpected(*e);
  count_outcomes(out);
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

Result<GetResult> Client::Router::get_view(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                           std::span<const std::span<std::byte>> buffers) {
  GetResult out;
  bool via_from = false;
  int asked = 0;  // passes that ended at out.loaded's key
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
    asked = r->loaded == 0 ? asked + 1 : 1;
    if (asked == kAskedEnough) return out;  // on neither side
    via_from = !via_from;
  }
}

Result<GetResult> Client::Router::get(NamespaceId ns, std::span<const Key128> keys,
                                      std::span<const std::span<std::byte>> buffers) {
  if (keys.size() != buffers.size()) {
    return make_error(StatusCode::kInvalidArgument, "get: " + std::to_string(keys.size()) + " keys but " +
                                                        std::to_string(buffers.size()) + " buffers");
  }
  View v = view();
  auto r = get_view(v, ns, keys, buffers);
  // Refused for the map at the prefix's end: read the map and go on from
  // there once.
  const bool refused = r ? r->loaded < keys.size() && refused_by_map(r->stopped) : refused_by_map(r.error());
  if (!refused || !refresh(v.map->version)) return r;
  const std::size_t from = r ? r->loaded : 0;
  auto more = get_view(view(), ns, keys.subspan(from), buffers.subspan(from));
  if (!more) {
    if (from == 0) return more;
    return r;
  }
  more->loaded += from;
  return more;
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

Result<std::size_t> Client::Router::lookup_view(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                                bool* refused) {
  std::size_t found = 0;
  bool via_from = false;
  int asked = 0;
  for (;;) {
    auto r = lookup_pass(v, ns, keys.subspan(found), via_from);
    if (!r) {
      *refused = refused_by_map(r.error());
      if (found == 0) return tl::unexpected(r.error());
      return found;
    }
    found += *r;
    if (found == keys.size()) return found;
    const auto& range = v.map->range_of(etcd::key_point(keys[found]));
    if (!range.from) return found;
    asked = *r == 0 ? asked + 1 : 1;
    if (asked == kAskedEnough) return found;
    via_from = !via_from;
  }
}

Result<std::size_t> Client::Router::lookup(NamespaceId ns, std::span<const Key128> keys) {
  View v = view();
  bool refused = false;
  auto r = lookup_view(v, ns, keys, &refused);
  // Refused for the map at the prefix's end: read the map and go on from
  // there once.
  if (!refused || !refresh(v.map->version)) return r;
  const std::size_t from = r ? *r : 0;
  auto more = lookup_view(view(), ns, keys.subspan(from), &refused);
  if (!more) return from == 0 ? more : r;
  return from + *more;
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

// ---- The mapped API (the GPU path) ----

void Client::Router::mapped_put_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                     const std::vector<std::size_t>& which, MappedPut& out, std::vector<bool>& whole,
                                     RoutedMappedPut& routed) {
  std::vector<Key128> ks;
  ks.reserve(which.size());
  for (std::size_t i : which) ks.push_back(keys[i]);
  Split s = split(v, ks, false);
  for (auto& part : s.index) {
    for (auto& i : part) i = which[i];
  }
  std::vector<std::optional<Result<MappedPut>>> parts(v.ids.size());
  each(s, [&](std::size_t p) {
    if (!v.clients[p]) {
      parts[p] = tl::unexpected(v.errors[p]);
      return;
    }
    parts[p] = v.clients[p]->begin_mapped_put(ns, s.keys[p]);
  });
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (!parts[p]) continue;
    auto& r = *parts[p];
    for (std::size_t j = 0; j < s.index[p].size(); ++j) {
      const std::size_t i = s.index[p][j];
      whole[i] = !r;
      out.outcomes[i] = r ? r->outcomes[j] : PutOutcome::kFailed;
      out.errors[i] = r ? r->errors[j] : r.error();
      out.slots[i] = r ? r->slots[j] : MappedSlot{};
    }
    if (r) {
      out.slices = r->slices;  // the namespace's, the same on every shard
      routed.parts.push_back({v.clients[p], s.index[p], std::move(*r)});
    }
  }
}

Status Client::Router::begin_mapped_put(NamespaceId ns, std::span<const Key128> keys, MappedPut& out,
                                        RoutedMappedPut& routed) {
  View v = view();
  out.outcomes.assign(keys.size(), PutOutcome::kFailed);
  out.errors.assign(keys.size(), Status());
  out.slots.assign(keys.size(), MappedSlot{});
  std::vector<bool> whole(keys.size(), false);
  std::vector<std::size_t> all(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) all[i] = i;
  mapped_put_pass(v, ns, keys, all, out, whole, routed);
  if (auto refused = refused_keys(out.outcomes, out.errors); !refused.empty() && refresh(v.map->version)) {
    mapped_put_pass(view(), ns, keys, refused, out, whole, routed);
  }
  if (auto e = whole_call_error(out.errors, whole)) {
    abort_mapped_put(routed);
    return *e;
  }
  return Status();
}

Result<PutResult> Client::Router::finish_mapped_put(RoutedMappedPut& routed, const MappedPut& put,
                                                    std::span<const std::uint64_t> checksums) {
  const std::uint32_t slices = put.slices;
  if (checksums.size() != put.outcomes.size() * slices) {
    abort_mapped_put(routed);
    return make_error(StatusCode::kInvalidArgument, "finish_mapped_put: " + std::to_string(slices) +
                                                        " checksums per key are needed (one per slice)");
  }
  PutResult out;
  out.outcomes = put.outcomes;
  out.errors = put.errors;
  // Keys not in a part (their shard failed the begin) keep their outcome
  // (kFailed); every part commits its own keys, the parts in parallel.
  std::vector<std::optional<Result<PutResult>>> results(routed.parts.size());
  Split s;  // a split over the parts, for each()
  s.index.resize(routed.parts.size());
  s.keys.resize(routed.parts.size());
  for (std::size_t p = 0; p < routed.parts.size(); ++p) s.index[p] = routed.parts[p].index;
  each(s, [&](std::size_t p) {
    auto& part = routed.parts[p];
    std::vector<std::uint64_t> sums;
    sums.reserve(part.index.size() * slices);
    for (std::size_t i : part.index) {
      const auto table = checksums.subspan(i * slices, slices);
      sums.insert(sums.end(), table.begin(), table.end());
    }
    results[p] = part.client->finish_mapped_put(part.sub, sums);
  });
  for (std::size_t p = 0; p < routed.parts.size(); ++p) {
    const auto& part = routed.parts[p];
    if (!results[p]) continue;
    const auto& r = *results[p];
    for (std::size_t j = 0; j < part.index.size(); ++j) {
      const std::size_t i = part.index[j];
      if (!r) {
        if (out.outcomes[i] == PutOutcome::kWritten) {
          out.outcomes[i] = PutOutcome::kFailed;
          out.errors[i] = r.error();
        }
        continue;
      }
      out.outcomes[i] = r->outcomes[j];
      out.errors[i] = r->errors[j];
    }
  }
  routed.parts.clear();
  count_outcomes(out);
  return out;
}

void Client::Router::abort_mapped_put(RoutedMappedPut& routed) {
  for (auto& part : routed.parts) part.client->abort_mapped_put(part.sub);
  routed.parts.clear();
}

Result<std::size_t> Client::Router::mapped_get_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                                    std::size_t base, bool via_from, MappedGet& out,
                                                    RoutedMappedGet& routed) {
  const auto rest = keys.subspan(base);
  const Split s = split(v, rest, via_from);
  std::vector<std::optional<Result<MappedGet>>> parts(v.ids.size());
  each(s, [&](std::size_t p) {
    if (!v.clients[p]) {
      parts[p] = tl::unexpected(v.errors[p]);
      return;
    }
    parts[p] = v.clients[p]->begin_mapped_get(ns, s.keys[p]);
  });
  std::vector<std::size_t> done(v.ids.size(), 0);
  // Where each key of this pass lies: its part and position there.
  std::vector<std::pair<std::size_t, std::size_t>> at_part(rest.size());
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (parts[p] && *parts[p]) done[p] = (*parts[p])->found;
    for (std::size_t j = 0; j < s.index[p].size(); ++j) at_part[s.index[p][j]] = {p, j};
  }
  std::optional<std::size_t> at;
  const std::size_t found = prefix_of(s, done, rest.size(), &at);
  Status stopped;
  if (at) stopped = *parts[*at] ? (*parts[*at])->stopped : parts[*at]->error();
  for (std::size_t i = 0; i < found; ++i) {
    const auto [p, j] = at_part[i];
    const MappedGet& part = **parts[p];
    out.slices = part.slices;  // the namespace's, the same on every shard
    out.slots.push_back(part.slots[j]);
    out.checksums.insert(out.checksums.end(), part.checksums.begin() + j * part.slices,
                         part.checksums.begin() + (j + 1) * part.slices);
  }
  // Every part that handed out slots is kept, to be finished (its read
  // lease released) by finish_mapped_get.
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (!parts[p] || !*parts[p]) continue;
    std::vector<std::size_t> index;
    index.reserve(s.index[p].size());
    for (std::size_t i : s.index[p]) index.push_back(base + i);
    routed.parts.push_back({v.clients[p], std::move(index), std::move(**parts[p]), base + found});
  }
  out.found = base + found;
  out.stopped = out.found < keys.size() ? stopped : Status();
  if (at && !*parts[*at] && out.found == 0) return tl::unexpected(stopped);
  return found;
}

Status Client::Router::mapped_get_view(const View& v, NamespaceId ns, std::span<const Key128> keys, MappedGet& out,
                                       RoutedMappedGet& routed) {
  bool via_from = false;
  int asked = 0;
  for (;;) {
    const std::size_t base = out.found;
    auto r = mapped_get_pass(v, ns, keys, base, via_from, out, routed);
    if (!r) return r.error();
    if (out.found == keys.size()) return Status();
    // A miss at a key of a moving range may be on the other side of the move.
    const auto& range = v.map->range_of(etcd::key_point(keys[out.found]));
    if (!range.from || out.stopped.code() != StatusCode::kNotFound) return Status();
    asked = *r == 0 ? asked + 1 : 1;
    if (asked == kAskedEnough) return Status();
    via_from = !via_from;
  }
}

Status Client::Router::begin_mapped_get(NamespaceId ns, std::span<const Key128> keys, MappedGet& out,
                                        RoutedMappedGet& routed) {
  View v = view();
  Status s = mapped_get_view(v, ns, keys, out, routed);
  const bool refused = !s.ok() ? refused_by_map(s) : out.found < keys.size() && refused_by_map(out.stopped);
  if (refused && refresh(v.map->version)) s = mapped_get_view(view(), ns, keys, out, routed);
  if (!s.ok()) {
    finish_mapped_get(routed, 0);
    out.slots.clear();
    out.checksums.clear();
    out.found = 0;
  }
  return s;
}

void Client::Router::finish_mapped_get(RoutedMappedGet& routed, std::size_t loaded) {
  for (auto& part : routed.parts) {
    // The part's keys below `loaded` were handed out (all of them found
    // there: the prefix ends at the first key a part did not find).
    const auto n = static_cast<std::size_t>(
        std::lower_bound(part.index.begin(), part.index.end(), std::min(loaded, part.end)) - part.index.begin());
    part.client->finish_mapped_get(part.sub, std::min(n, part.sub.found));
  }
  routed.parts.clear();
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
