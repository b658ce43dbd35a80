#include "runtime/client/router.h"

#include <algorithm>
#include <optional>

#include "runtime/common/logging.h"

// The router's connections and map: its shards' clients, the shard map it
// follows, how a batch splits by shard, and what every shard must know (the
// namespaces, the registered buffers). The calls are in router_calls.cc and
// router_mapped.cc.

namespace kvpool {

namespace {

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

Client::Router::ShardClient Client::Router::dial(std::uint32_t id) {
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
  return sc;
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
    ShardClient sc = dial(id);
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

Client::Router::Split Client::Router::split_some(const View& v, std::span<const Key128> keys,
                                                 const std::vector<std::size_t>& which) const {
  std::vector<Key128> ks;
  ks.reserve(which.size());
  for (std::size_t i : which) ks.push_back(keys[i]);
  Split s = split(v, ks, false);
  for (auto& part : s.index) {
    for (auto& i : part) i = which[i];  // the caller's indices
  }
  return s;
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
