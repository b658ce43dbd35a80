#pragma once
// kvpool::Client: what a prefill or decode worker links to write KV blocks
// into the pool and read them back.
//
// put() asks the coordinator for placements, writes each block's payload and
// then its slot header straight into the owning agent's memory (UCX put: no
// copy in the agent or the coordinator), and commits. get() looks up the
// longest present prefix of the keys, reads those blocks straight into the
// caller's buffers and verifies every header and payload checksum: a stale
// location or a torn block is a miss, never data.
//
// Thread-safety: every method may be called from several threads at once.
// Buffers: any host memory works; memory registered with register_buffer()
// moves without per-call registration (and is required for zero-copy reads
// over TCP, where the agent puts into the caller's buffer).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "kvpool/types.h"

namespace kvpool {

struct ClientOptions {
  // host:port, or etcd://HOST:PORT[,HOST:PORT...][/SHARD]: the coordinator
  // shard's leader, looked up in etcd on every (re)dial. Without /SHARD the
  // shard map in etcd (/kvpool/shardmap) decides: the client connects to
  // every shard's leader and sends each key of a batch to its shard (one
  // call per shard, in parallel), and follows the map as shards are added.
  std::string coordinator = "127.0.0.1:7400";
  std::string client_id;                       // default: host:pid
  // Deadline of each coordinator call and of each batch's data movement.
  std::chrono::milliseconds timeout{10000};
  // UCX transports (UCX_TLS syntax); empty: the environment's or kvpool's default.
  std::string tls;
  // The cluster secret file that authenticates the connection to the
  // coordinator (SECURITY.md); empty: KVPOOL_SECRET_FILE, else
  // /etc/kvpool/secret for root, ~/.config/kvpool/secret otherwise.
  std::string secret_file;
  // Populate this process's page tables for same-host agents' regions in a
  // background thread on first contact, so puts do not take a page fault per
  // 4 KiB (cold puts run at about a third of warm ones). Costs page tables
  // for the whole region (2 MiB per GiB) and a core for ~0.25 s per GiB: for
  // long-lived workers, not for short jobs.
  bool prefault_mapped_regions = false;
};

enum class PutOutcome {
  kWritten,  // written and committed by this call
  kExists,   // already in the pool: nothing written (dedupe)
  kPending,  // another writer holds the key: nothing written
  kFailed,   // see PutResult::errors
};

struct PutResult {
  std::vector<PutOutcome> outcomes;  // one per key
  std::vector<Status> errors;        // one per key; ok unless kFailed
  std::size_t written = 0;
  std::size_t deduplicated = 0;
  std::size_t pending = 0;
  std::size_t failed = 0;
};

struct GetResult {
  // Blocks loaded, from the first key on: keys[0..loaded) are in the buffers.
  std::size_t loaded = 0;
  // Why loading stopped before the end: kNotFound for a miss (the normal
  // case), kDataLoss for a block that failed verification, kUnavailable for
  // an agent that died.
  Status stopped;
};

// Where the client moved bytes, for logs and demos: e.g. "posix", "tcp".
struct ClientStats {
  std::string transports;
  std::uint64_t bytes_put = 0;
  std::uint64_t bytes_got = 0;
  std::uint64_t verify_failures = 0;
};

// Zero-copy access to pool slots of agents whose region is mapped into this
// process (a same-host agent over shared memory): what the GPU path
// (include/kvpool/gpu.h) uses to DMA straight between GPU memory and the
// slots, with no staging copy. Every begin_mapped_* is ended by its
// finish_mapped_* / abort_mapped_put, or by destroying the MappedPut /
// MappedGet, which aborts the put (or releases the get's read lease) through
// the client that began it: destroy both before that client, and drop a
// MappedPut only once no copy into its slots is still running.
struct MappedSlot {
  std::byte* payload = nullptr;  // the block's block_bytes payload bytes in the agent's region
  std::byte* region = nullptr;   // start of the mapped region holding it (register it with CUDA once)
  std::uint64_t region_bytes = 0;
  // The agent incarnation owning the region: a restarted agent's new region
  // may be mapped at the old one's address.
  std::uint64_t incarnation = 0;
};

struct MappedPutState;  // opaque: leases and locations
struct MappedPut {
  // One per key: kWritten marks a slot the caller must fill (not yet
  // committed: finish_mapped_put commits it); kExists, kPending: nothing to
  // write; kFailed: errors[i] says why (kUnimplemented when the key was
  // placed on an agent that is not mapped here: use put() for it).
  std::vector<PutOutcome> outcomes;
  std::vector<Status> errors;
  std::vector<MappedSlot> slots;  // filled for kWritten keys
  // Layer slices of each block (the slot header's, DESIGN.md "Keys"): the
  // namespace's layers when its block divides into them and the slice
  // table fits, else 1. finish_mapped_put takes `slices` checksums per key.
  std::uint32_t slices = 1;
  std::unique_ptr<MappedPutState> state;
  MappedPut();
  MappedPut(MappedPut&&) noexcept;
  MappedPut& operator=(MappedPut&&) noexcept;  // aborts the put it held, if unfinished
  MappedPut(const MappedPut&) = delete;
  MappedPut& operator=(const MappedPut&) = delete;
  ~MappedPut();  // aborts an unfinished put

 private:
  void end() noexcept;
};

struct MappedGetState;  // opaque: the read lease
struct MappedGet {
  // Leading keys whose slot is mapped here and whose header verified
  // (namespace, key, length, generation, header checksum): slots[0..found).
  // The payloads are not verified yet: a caller checks each slice's XXH3-64
  // against checksums[i * slices + s] (slice s is the block_bytes / slices
  // bytes at payload + s * block_bytes / slices) before trusting its bytes.
  // The table of a block is verified against its header here, so a layer
  // can be checked as soon as its own bytes have arrived.
  std::size_t found = 0;
  std::vector<MappedSlot> slots;
  std::uint32_t slices = 1;
  std::vector<std::uint64_t> checksums;  // slices per found block
  // Why found < keys: kNotFound (a miss), kUnimplemented (the next block's
  // agent is not mapped here: get() it), kDataLoss, kUnavailable.
  Status stopped;
  std::unique_ptr<MappedGetState> state;
  MappedGet();
  MappedGet(MappedGet&&) noexcept;
  MappedGet& operator=(MappedGet&&) noexcept;  // finishes the get it held, if unfinished
  MappedGet(const MappedGet&) = delete;
  MappedGet& operator=(const MappedGet&) = delete;
  ~MappedGet();  // finish_mapped_get(*this, 0) if unfinished

 private:
  void end() noexcept;
};

class Client {
 public:
  // Connects to the coordinator (hello, agent list). kUnavailable when it
  // does not answer within options.timeout.
  static Result<std::unique_ptr<Client>> connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Idempotent; returns the namespace id (a hash of the descriptor).
  // kInvalidArgument for a descriptor whose block size is out of range.
  Result<NamespaceId> register_namespace(const NamespaceDescriptor& descriptor);
  // The block size of a registered namespace.
  Result<std::uint64_t> block_bytes(NamespaceId ns) const;

  // Registers [data, data+size) for zero-copy transfers until
  // unregister_buffer or destruction. The caller keeps the memory alive.
  Status register_buffer(void* data, std::size_t size);
  Status unregister_buffer(void* data);

  // Writes blocks[i] under keys[i] (each block exactly the namespace's block
  // size). Per-key outcomes; the call fails as a whole only when the
  // coordinator cannot be reached or the arguments are malformed.
  // Data moves only within each block's write lease: a batch that cannot
  // finish by then fails its keys with kDeadlineExceeded, its endpoint is
  // closed (the next call reconnects) and its space stays quarantined by
  // the coordinator until no late byte can land (DESIGN.md, fencing).
  Result<PutResult> put(NamespaceId ns, std::span<const Key128> keys,
                        std::span<const std::span<const std::byte>> blocks);
  // Loads the longest present prefix of keys into buffers (each at least the
  // block size), verifying every block. After a failure with
  // kDeadlineExceeded (a cut or frozen link), the agent may still write the
  // blocks it was asked for into `buffers` when the link returns: keep them
  // alive and do not trust their contents until a later get succeeds.
  Result<GetResult> get(NamespaceId ns, std::span<const Key128> keys, std::span<const std::span<std::byte>> buffers);
  // How many leading keys are in the pool (no lease, no data).
  Result<std::size_t> lookup(NamespaceId ns, std::span<const Key128> keys);
  // Per-key: ok, or kNotFound.
  Result<std::vector<Status>> remove(NamespaceId ns, std::span<const Key128> keys);
  // Returns when every key is committed or after `timeout`, with which ones
  // are: how a decode worker waits for a prefill worker's KV without polling.
  Result<std::vector<bool>> wait_for(NamespaceId ns, std::span<const Key128> keys,
                                     std::chrono::milliseconds timeout);

  // Asynchronous forms: the work runs on the client's I/O threads; the
  // caller keeps keys and buffers alive until the future is ready.
  std::future<Result<PutResult>> put_async(NamespaceId ns, std::span<const Key128> keys,
                                           std::span<const std::span<const std::byte>> blocks);
  std::future<Result<GetResult>> get_async(NamespaceId ns, std::span<const Key128> keys,
                                           std::span<const std::span<std::byte>> buffers);

  // Zero-copy put (see MappedSlot): allocates like put() and hands out the
  // payload location of every placed key. The caller fills the payloads
  // within the write lease (the client's timeout), then calls
  // finish_mapped_put with the XXH3-64 of each filled payload's slices
  // (checksums[i * put.slices + s] for every kWritten key i; others
  // ignored): it writes each slice table and then the headers (after the
  // payloads, so a valid header means a complete payload) and commits. Keys whose lease ran out fail with kDeadlineExceeded and are
  // left to the coordinator's quarantine. abort_mapped_put gives the space
  // back when the payloads could not be written.
  Result<MappedPut> begin_mapped_put(NamespaceId ns, std::span<const Key128> keys);
  Result<PutResult> finish_mapped_put(MappedPut& put, std::span<const std::uint64_t> checksums);
  void abort_mapped_put(MappedPut& put);
  // Zero-copy get: looks up the longest present prefix under a read lease
  // (eviction waits) and hands out where each block's payload lies. The
  // slots stay valid until finish_mapped_get(get, loaded), which releases
  // the lease and counts `loaded` blocks as read.
  Result<MappedGet> begin_mapped_get(NamespaceId ns, std::span<const Key128> keys);
  void finish_mapped_get(MappedGet& get, std::size_t loaded);

  ClientStats stats() const;

  struct Impl;  // opaque
  // Several coordinator shards (coordinator/README.md, "Sharding"): one
  // Client per shard, each key routed by the shard map in etcd. Set for an
  // etcd:// coordinator without /SHARD (one shard or several).
  struct Router;  // opaque

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  explicit Client(std::unique_ptr<Router> router);
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<Router> router_;
};

}  // namespace kvpool
