// The router's plain calls (router.h): put, get, lookup, remove and
// wait_for, each split by shard and merged back (router_merge.h).

#include <optional>

#include "runtime/client/router.h"
#include "runtime/client/router_merge.h"

namespace kvpool {

void Client::Router::put_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                              std::span<const std::span<const std::byte>> blocks,
                              const std::vector<std::size_t>& which, PutResult& out, std::vector<bool>& whole) {
  const Split s = split_some(v, keys, which);
  auto parts = ask<PutResult>(v, s, [&](Client& c, std::size_t p) {
    std::vector<std::span<const std::byte>> bs;
    bs.reserve(s.index[p].size());
    for (std::size_t i : s.index[p]) bs.push_back(blocks[i]);
    return c.put(ns, s.keys[p], bs);
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

std::optional<Status> Client::Router::put_passes(
    std::size_t n, const std::vector<PutOutcome>& outcomes, const std::vector<Status>& errors,
    const std::vector<bool>& whole, const std::function<void(const View&, const std::vector<std::size_t>&)>& pass) {
  View v = view();
  std::vector<std::size_t> all(n);
  for (std::size_t i = 0; i < n; ++i) all[i] = i;
  pass(v, all);
  // Keys refused for the map: a coordinator is ahead of this router's map.
  if (auto refused = detail::refused_keys(outcomes, errors); !refused.empty() && refresh(v.map->version)) {
    pass(view(), refused);
  }
  return detail::whole_call_error(errors, whole);
}

Result<PutResult> Client::Router::put(NamespaceId ns, std::span<const Key128> keys,
                                      std::span<const std::span<const std::byte>> blocks) {
  if (keys.size() != blocks.size()) {
    return make_error(StatusCode::kInvalidArgument, "put: " + std::to_string(keys.size()) + " keys but " +
                                                        std::to_string(blocks.size()) + " blocks");
  }
  PutResult out;
  out.outcomes.assign(keys.size(), PutOutcome::kFailed);
  out.errors.assign(keys.size(), Status());
  std::vector<bool> whole(keys.size(), false);
  auto e = put_passes(
      keys.size(), out.outcomes, out.errors, whole,
      [&](const View& v, const std::vector<std::size_t>& which) { put_pass(v, ns, keys, blocks, which, out, whole); });
  if (e) return tl::unexpected(*e);
  detail::count_outcomes(out);
  return out;
}

Result<GetResult> Client::Router::get_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                           std::span<const std::span<std::byte>> buffers, bool via_from) {
  const Split s = split(v, keys, via_from);
  auto parts = ask<GetResult>(v, s, [&](Client& c, std::size_t p) {
    std::vector<std::span<std::byte>> bs;
    bs.reserve(s.index[p].size());
    for (std::size_t i : s.index[p]) bs.push_back(buffers[i]);
    return c.get(ns, s.keys[p], bs);
  });
  std::vector<std::size_t> done(v.ids.size(), 0);
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (parts[p] && *parts[p]) done[p] = (*parts[p])->loaded;
  }
  std::optional<std::size_t> at;
  GetResult out;
  out.loaded = detail::prefix_of(s, done, keys.size(), &at);
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
  detail::OtherSide side;
  for (;;) {
    auto r = get_pass(v, ns, keys.subspan(out.loaded), buffers.subspan(out.loaded), side.via_from());
    if (!r) {
      if (out.loaded == 0) return tl::unexpected(r.error());
      out.stopped = r.error();
      return out;
    }
    out.loaded += r->loaded;
    out.stopped = r->stopped;
    if (out.loaded == keys.size()) return out;
    if (!side.again(*v.map, keys[out.loaded], r->stopped.code() == StatusCode::kNotFound, r->loaded)) return out;
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
  const bool refused =
      r ? r->loaded < keys.size() && detail::refused_by_map(r->stopped) : detail::refused_by_map(r.error());
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
  auto parts = ask<std::size_t>(v, s, [&](Client& c, std::size_t p) { return c.lookup(ns, s.keys[p]); });
  std::vector<std::size_t> done(v.ids.size(), 0);
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (parts[p] && *parts[p]) done[p] = **parts[p];
  }
  std::optional<std::size_t> at;
  const std::size_t prefix = detail::prefix_of(s, done, keys.size(), &at);
  if (at && !*parts[*at]) return tl::unexpected(parts[*at]->error());
  return prefix;
}

Result<std::size_t> Client::Router::lookup_view(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                                bool* refused) {
  std::size_t found = 0;
  detail::OtherSide side;
  for (;;) {
    auto r = lookup_pass(v, ns, keys.subspan(found), side.via_from());
    if (!r) {
      *refused = detail::refused_by_map(r.error());
      if (found == 0) return tl::unexpected(r.error());
      return found;
    }
    found += *r;
    if (found == keys.size()) return found;
    // A lookup ends only at a miss.
    if (!side.again(*v.map, keys[found], true, *r)) return found;
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

namespace {

// The second pass of a remove, on the side a moving range moves from: only
// the keys of `keys` in a moving range (the others were asked already), each
// one's status (kNotFound for the others); nullopt when none of them moves.
std::optional<Result<std::vector<Status>>> remove_moving(Client& c, NamespaceId ns, const std::vector<Key128>& keys,
                                                         const etcd::ShardMap& map) {
  std::vector<Key128> ks;
  for (const auto& k : keys) {
    if (map.range_of(etcd::key_point(k)).from) ks.push_back(k);
  }
  if (ks.empty()) return std::nullopt;
  auto r = c.remove(ns, ks);
  if (!r) return tl::unexpected(r.error());
  std::vector<Status> all(keys.size());
  for (std::size_t j = 0, k = 0; j < keys.size(); ++j) {
    all[j] = map.range_of(etcd::key_point(keys[j])).from ? (*r)[k++] : Status(StatusCode::kNotFound, "");
  }
  return all;
}

}  // namespace

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
    auto parts =
        ask<std::vector<Status>>(v, s, [&](Client& c, std::size_t p) -> std::optional<Result<std::vector<Status>>> {
          if (via_from) return remove_moving(c, ns, s.keys[p], *v.map);
          return c.remove(ns, s.keys[p]);
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
  auto parts =
      ask<std::vector<bool>>(v, s, [&](Client& c, std::size_t p) { return c.wait_for(ns, s.keys[p], timeout); });
  std::vector<bool> out(keys.size(), false);
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (!parts[p]) continue;
    const auto& r = *parts[p];
    if (!r) return tl::unexpected(r.error());
    for (std::size_t j = 0; j < s.index[p].size() && j < r->size(); ++j) out[s.index[p][j]] = (*r)[j];
  }
  return out;
}

}  // namespace kvpool
