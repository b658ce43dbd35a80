// The router's mapped calls (router.h; the GPU path, include/kvpool/client.h):
// a mapped put or get split by shard, each shard's part kept in
// RoutedMappedPut/RoutedMappedGet until it is finished or aborted.

#include <algorithm>
#include <optional>

#include "runtime/client/router.h"
#include "runtime/client/router_merge.h"

namespace kvpool {

void Client::Router::mapped_put_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                                     const std::vector<std::size_t>& which, MappedPut& out, std::vector<bool>& whole,
                                     RoutedMappedPut& routed) {
  const Split s = split_some(v, keys, which);
  auto parts = ask<MappedPut>(v, s, [&](Client& c, std::size_t p) { return c.begin_mapped_put(ns, s.keys[p]); });
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
  out.outcomes.assign(keys.size(), PutOutcome::kFailed);
  out.errors.assign(keys.size(), Status());
  out.slots.assign(keys.size(), MappedSlot{});
  std::vector<bool> whole(keys.size(), false);
  auto e = put_passes(keys.size(), out.outcomes, out.errors, whole,
                      [&](const View& v, const std::vector<std::size_t>& which) {
                        mapped_put_pass(v, ns, keys, which, out, whole, routed);
                      });
  if (e) {
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
  detail::count_outcomes(out);
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
  auto parts = ask<MappedGet>(v, s, [&](Client& c, std::size_t p) { return c.begin_mapped_get(ns, s.keys[p]); });
  std::vector<std::size_t> done(v.ids.size(), 0);
  // Where each key of this pass lies: its part and position there.
  std::vector<std::pair<std::size_t, std::size_t>> at_part(rest.size());
  for (std::size_t p = 0; p < v.ids.size(); ++p) {
    if (parts[p] && *parts[p]) done[p] = (*parts[p])->found;
    for (std::size_t j = 0; j < s.index[p].size(); ++j) at_part[s.index[p][j]] = {p, j};
  }
  std::optional<std::size_t> at;
  const std::size_t found = detail::prefix_of(s, done, rest.size(), &at);
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
  detail::OtherSide side;
  for (;;) {
    const std::size_t base = out.found;
    auto r = mapped_get_pass(v, ns, keys, base, side.via_from(), out, routed);
    if (!r) return r.error();
    if (out.found == keys.size()) return Status();
    if (!side.again(*v.map, keys[out.found], out.stopped.code() == StatusCode::kNotFound, *r)) return Status();
  }
}

Status Client::Router::begin_mapped_get(NamespaceId ns, std::span<const Key128> keys, MappedGet& out,
                                        RoutedMappedGet& routed) {
  View v = view();
  Status s = mapped_get_view(v, ns, keys, out, routed);
  const bool refused =
      !s.ok() ? detail::refused_by_map(s) : out.found < keys.size() && detail::refused_by_map(out.stopped);
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

}  // namespace kvpool
