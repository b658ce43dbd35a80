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
// A shard whose call fails as a whole (its leader away) fails only its keys
// (put, remove: per-key errors) or cuts the prefix at its first key (get,
// lookup); when that leaves nothing, the call returns that shard's error.
//
// Thread-safety: as Client.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kvpool/client.h"
#include "runtime/etcd/shard_map.h"

namespace kvpool {

namespace detail {
// A few threads running submitted tasks (the router's parallel calls).
class TaskPool {
 public:
  explicit TaskPool(int threads);
  ~TaskPool();
  void submit(std::function<void()> fn);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};
}  // namespace detail

struct Client::Router {
  ClientOptions options;
  etcd::ShardMap map;
  std::vector<std::uint32_t> ids;            // shard ids, ascending
  std::vector<std::unique_ptr<Client>> shards;  // one per id, same order
  std::unordered_map<std::uint32_t, std::size_t> position;  // shard id -> index in ids
  std::unique_ptr<detail::TaskPool> fanout;  // one shard's part of a call
  std::unique_ptr<detail::TaskPool> work;    // put_async/get_async

  // The keys of a batch by shard: part p holds the caller's indices of the
  // keys shard ids[p] owns, in the caller's order.
  struct Split {
    std::vector<std::vector<std::size_t>> index;
    std::vector<std::vector<Key128>> keys;
  };

  // Connects to every shard of `map` (each through etcd://E/N).
  static Result<std::unique_ptr<Router>> connect(const ClientOptions& options, const std::string& endpoints,
                                                 etcd::ShardMap map);
  ~Router();

  Split split(std::span<const Key128> keys) const;
  // Runs fn(p) for every part p with keys, in parallel; returns when all ran.
  void each(const Split& split, const std::function<void(std::size_t)>& fn);

  Result<NamespaceId> register_namespace(const NamespaceDescriptor& descriptor);
  Result<std::uint64_t> block_bytes(NamespaceId ns) const;
  Status register_buffer(void* data, std::size_t size);
  Status unregister_buffer(void* data);
  Result<PutResult> put(NamespaceId ns, std::span<const Key128> keys,
                        std::span<const std::span<const std::byte>> blocks);
  Result<GetResult> get(NamespaceId ns, std::span<const Key128> keys, std::span<const std::span<std::byte>> buffers);
  Result<std::size_t> lookup(NamespaceId ns, std::span<const Key128> keys);
  Result<std::vector<Status>> remove(NamespaceId ns, std::span<const Key128> keys);
  Result<std::vector<bool>> wait_for(NamespaceId ns, std::span<const Key128> keys, std::chrono::milliseconds timeout);
  ClientStats stats() const;
};

}  // namespace kvpool
