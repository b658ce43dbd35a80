#pragma once
// Client::Router: a Client over several coordinator shards
// (coordinator/README.md, "Sharding"). It reads the shard map from etcd
// (/kvpool/shardmap), holds one plain Client per shard (etcd://E/N: that
// shard's leader, looked up on every redial) and sends each key of a batch
// to its shard: one call per shard, the shards in parallel, the per-key
// results merged back into the caller's order. get/lookup keep prefix
// semantics across shards: the prefix ends at the first key, in the
// caller's order, that its shard did not load.
//
// Moving ranges (a shard being added, coordinator/README.md "Adding a
// shard"): writes go to the new owner; a read that misses there at a key of
// a moving range asks the shard it moves from, and the other way round,
// until the prefix ends at a key missed three times in a row (new, old,
// new: the mover copies before it removes). remove() asks both. The
// router follows the map in etcd (a watch): a new version applies to the
// next call, and a shard it names for the first time is connected then.
//
// A shard whose call fails as a whole (its leader away) fails only its keys
// (put, remove: per-key errors) or cuts the prefix at its first key (get,
// lookup); when that leaves nothing, the call returns that shard's error.
//
// Thread-safety: as Client.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kvpool/client.h"
#include "runtime/client/task_pool.h"
#include "runtime/common/units.h"
#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/shard_map.h"

namespace kvpool {

// The shards' parts of a mapped put or get through the router: each part's
// client, the caller's indices of its keys (ascending), and what that
// shard's client handed out.
struct RoutedMappedPut {
  struct Part {
    std::shared_ptr<Client> client;
    std::vector<std::size_t> index;
    MappedPut sub;
  };
  std::vector<Part> parts;
};
struct RoutedMappedGet {
  struct Part {
    std::shared_ptr<Client> client;
    std::vector<std::size_t> index;
    MappedGet sub;
    std::size_t end = 0;  // the caller's keys [.., end) its pass handed out
  };
  std::vector<Part> parts;
};

struct Client::Router {
  ClientOptions options;
  std::string endpoints;  // etcd's, HOST:PORT,...
  std::unique_ptr<detail::TaskPool> fanout;  // one shard's part of a call
  std::unique_ptr<detail::TaskPool> work;    // put_async/get_async
  std::unique_ptr<etcd::Watch> watch;        // follows the shard map
  std::mutex etcd_mu;
  std::unique_ptr<etcd::Client> etcd;        // reads the map on a refusal; guarded by etcd_mu

  // One shard's client; null while it cannot be reached (tried again after
  // a second).
  struct ShardClient {
    std::shared_ptr<Client> client;
    Status error;
    Clock::time_point next_try{};
  };
  mutable std::mutex mu;
  std::shared_ptr<const etcd::ShardMap> map;          // guarded by mu
  std::map<std::uint32_t, ShardClient> clients;       // guarded by mu
  std::vector<NamespaceDescriptor> descriptors;       // registered on every shard, new ones too; guarded by mu
  std::vector<std::pair<void*, std::size_t>> buffers;  // likewise; guarded by mu
  std::mutex connect_mu;                              // one shard connect at a time

  // What one call works with: the map and a client per shard it names.
  struct View {
    std::shared_ptr<const etcd::ShardMap> map;
    std::vector<std::uint32_t> ids;
    std::vector<std::shared_ptr<Client>> clients;  // null: unreachable (errors[p])
    std::vector<Status> errors;
    std::unordered_map<std::uint32_t, std::size_t> position;
  };
  // The keys of a batch by shard: part p holds the caller's indices of the
  // keys shard ids[p] gets, in the caller's order.
  struct Split {
    std::vector<std::vector<std::size_t>> index;
    std::vector<std::vector<Key128>> keys;
  };

  // Connects to every shard of `map` (each through etcd://E/N) and follows
  // the map from `revision` on.
  static Result<std::unique_ptr<Router>> connect(const ClientOptions& options, const std::string& endpoints,
                                                 std::unique_ptr<etcd::Client> etcd, etcd::ShardMap map,
                                                 std::int64_t revision);
  ~Router();

  View view();
  void set_map(etcd::ShardMap next);
  // Reads the map from etcd: true when it is newer than `seen` (and now in
  // force), i.e. refused keys are worth sending again.
  bool refresh(std::int64_t seen);
  // via_from: keys of a moving range go to the shard they move from.
  Split split(const View& v, std::span<const Key128> keys, bool via_from) const;
  // Runs fn(p) for every part p with keys, in parallel; returns when all ran.
  void each(const Split& split, const std::function<void(std::size_t)>& fn);
  // The keys keys[i] for i in `which` by shard (as split, not via_from),
  // with the caller's indices i.
  Split split_some(const View& v, std::span<const Key128> keys, const std::vector<std::size_t>& which) const;
  // Calls fn(client, p) for every part p of `s` with keys, in parallel (as
  // each); a part whose shard is unreachable gets that shard's error. One
  // entry per part: nullopt for a part without keys.
  template <class T, class Fn>
  std::vector<std::optional<Result<T>>> ask(const View& v, const Split& s, Fn&& fn);
  // Connects shard `id` (etcd://E/id) with this client's namespaces and
  // buffers; on failure its error, and when to try again.
  ShardClient dial(std::uint32_t id);
  Result<GetResult> get_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                             std::span<const std::span<std::byte>> buffers, bool via_from);
  Result<std::size_t> lookup_pass(const View& v, NamespaceId ns, std::span<const Key128> keys, bool via_from);
  // get/lookup over one view: passes until the prefix ends on both sides of
  // a moving range.
  Result<GetResult> get_view(const View& v, NamespaceId ns, std::span<const Key128> keys,
                             std::span<const std::span<std::byte>> buffers);
  // *refused: the prefix ended at a shard's kFailedPrecondition.
  Result<std::size_t> lookup_view(const View& v, NamespaceId ns, std::span<const Key128> keys, bool* refused);
  // Puts keys[i] for i in `which` over `v`: outcomes and errors of those
  // keys set; whole[i] when the key's shard failed the call as a whole.
  void put_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                std::span<const std::span<const std::byte>> blocks, const std::vector<std::size_t>& which,
                PutResult& out, std::vector<bool>& whole);
  // The passes of a put or mapped put of n keys: pass(view, which) over
  // every key, then, when a shard refused keys for the map (outcomes and
  // errors, which the passes set) and etcd has a newer map, over those keys
  // again. The call's error as a whole, if any (after `whole`).
  std::optional<Status> put_passes(std::size_t n, const std::vector<PutOutcome>& outcomes,
                                   const std::vector<Status>& errors, const std::vector<bool>& whole,
                                   const std::function<void(const View&, const std::vector<std::size_t>&)>& pass);
  void mapped_put_pass(const View& v, NamespaceId ns, std::span<const Key128> keys,
                       const std::vector<std::size_t>& which, MappedPut& out, std::vector<bool>& whole,
                       RoutedMappedPut& routed);
  // One pass of a mapped get from keys[base] on; appends its parts to
  // routed and its slots to out. Returns how many keys it found.
  Result<std::size_t> mapped_get_pass(const View& v, NamespaceId ns, std::span<const Key128> keys, std::size_t base,
                                      bool via_from, MappedGet& out, RoutedMappedGet& routed);
  Status mapped_get_view(const View& v, NamespaceId ns, std::span<const Key128> keys, MappedGet& out,
                         RoutedMappedGet& routed);

  Result<NamespaceId> register_namespace(const NamespaceDescriptor& descriptor);
  Result<std::uint64_t> block_bytes(NamespaceId ns);
  Status register_buffer(void* data, std::size_t size);
  Status unregister_buffer(void* data);
  Result<PutResult> put(NamespaceId ns, std::span<const Key128> keys,
                        std::span<const std::span<const std::byte>> blocks);
  Result<GetResult> get(NamespaceId ns, std::span<const Key128> keys, std::span<const std::span<std::byte>> buffers);
  Result<std::size_t> lookup(NamespaceId ns, std::span<const Key128> keys);
  Result<std::vector<Status>> remove(NamespaceId ns, std::span<const Key128> keys);
  Result<std::vector<bool>> wait_for(NamespaceId ns, std::span<const Key128> keys, std::chrono::milliseconds timeout);
  Status begin_mapped_put(NamespaceId ns, std::span<const Key128> keys, MappedPut& out, RoutedMappedPut& routed);
  Result<PutResult> finish_mapped_put(RoutedMappedPut& routed, const MappedPut& put,
                                      std::span<const std::uint64_t> checksums);
  void abort_mapped_put(RoutedMappedPut& routed);
  Status begin_mapped_get(NamespaceId ns, std::span<const Key128> keys, MappedGet& out, RoutedMappedGet& routed);
  void finish_mapped_get(RoutedMappedGet& routed, std::size_t loaded);
  ClientStats stats();
};

template <class T, class Fn>
std::vector<std::optional<Result<T>>> Client::Router::ask(const View& v, const Split& s, Fn&& fn) {
  std::vector<std::optional<Result<T>>> parts(v.ids.size());
  each(s, [&](std::size_t p) {
    if (!v.clients[p]) {
      parts[p] = tl::unexpected(v.errors[p]);
      return;
    }
    parts[p] = fn(*v.clients[p], p);
  });
  return parts;
}

}  // namespace kvpool
