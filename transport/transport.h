#pragma once
// Transport: one UCX context and worker per process, the only door to UCX.
//
// A region owner (the agent) allocates its region here, publishes
// RegionInfo, runs a progress thread (over TCP, RMA is emulated in software
// and needs the target's worker to progress) and serves owner reads. A client
// (a worker) connects a Peer per owner and moves bytes with batch put/get.
//
// Which UCX transports carry the bytes is UCX's choice within `tls`: shared
// memory (posix) and TCP here, rc/dc/ud on RDMA NICs; the same code.
//
// Thread-safety: the worker runs in UCX's multi-thread mode, so every call
// may come from any thread, concurrently with the progress thread.
// Lifetime: destroy every Peer and MemoryRegion before their Transport.

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "kvpool/status.h"
#include "transport/memory.h"
#include "transport/peer.h"

namespace kvpool::transport {

// The UCX transports we ask for when neither the caller nor UCX_TLS says:
// every transport UCX finds on this host except sysv. Same-host peers then
// use posix shared memory (DESIGN.md: UCX's default pick of sysv reaches
// 4.3 GB/s, posix alone 12), registered buffers are reached by cma, remote
// hosts over rc/dc/ud where there is an RDMA NIC, else tcp. A negative list
// keeps UCX from warning about transports a host lacks.
inline constexpr std::string_view kDefaultTls = "^sysv";

enum class ProgressMode {
  // Sleep on the worker's event fd, but keep polling for a short while after
  // the last event first (ProgressOptions::spin): traffic comes in bursts,
  // and a wake-up per TCP segment halves put bandwidth. Idle costs no CPU.
  kEvent,
  kPoll,  // spin on ucp_worker_progress; lowest latency, burns a core
};

struct ProgressOptions {
  ProgressMode mode = ProgressMode::kEvent;
  // kEvent: how long to keep polling after the last event before sleeping.
  std::chrono::microseconds spin{200};
};

struct TransportOptions {
  // UCX_TLS syntax. Empty: the environment's UCX_TLS when set, else kDefaultTls.
  std::string tls;
  // Whether this process lends memory (agent) or only reaches it (worker):
  // an owner registers the owner-read and streamed-put handlers.
  bool serve_owner_reads = false;
};

// The UCX library's version as it reports itself at run time ("1.13.1"):
// what `pooltool doctor` prints.
std::string ucx_version();

class Transport {
 public:
  // Creates the UCX context and worker. kFailedPrecondition when UCX finds no
  // usable transport among `tls`.
  static Result<std::unique_ptr<Transport>> create(const TransportOptions& options);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // This worker's address as bytes, to publish through the control plane.
  const std::string& worker_address() const;
  // Identifies this host (kernel boot id): peers with equal ids share memory.
  const std::string& host_id() const;
  // The UCX_TLS value in force.
  const std::string& tls() const;

  // Allocates `bytes` through UCX as POSIX shared memory (page-aligned), so
  // same-host peers map it one-sided. kResourceExhausted when the host cannot
  // provide it.
  Result<MemoryRegion> allocate(std::size_t bytes);
  // Registers caller-owned memory for one-sided access; the caller keeps it
  // alive and unchanged in place until the region is destroyed.
  Result<MemoryRegion> register_memory(void* address, std::size_t bytes);

  // What a peer needs to reach `region` (worker address, packed rkey, base).
  Result<RegionInfo> describe(const MemoryRegion& region) const;

  // Connects to the worker at `worker_address`. With kPeer, a dead peer fails
  // pending and later operations (tcp, rc, dc, ud); UCX cannot detect it over
  // shared memory, so same-host peers use kNone and the control plane calls
  // Peer::mark_dead. kAuto picks kNone when `peer_host_id` equals ours and
  // our UCX_TLS allows shared memory (with "tcp" alone, kPeer: containers and
  // network namespaces of one host).
  Result<std::unique_ptr<Peer>> connect(std::string_view worker_address, ErrorMode mode,
                                        std::string_view peer_host_id = {});

  // Owner reads: a client may ask this process to put bytes of `region` into
  // the client's registered buffer (faster than UCX get over TCP). Requests
  // outside every served region are refused with an error reply, and so are
  // requests that do not carry the packed rkey describe() publishes for the
  // region the sources lie in: an owner read reaches what an RMA get with
  // that rkey would, no more (an agent's isolated tenant regions, SECURITY.md).
  // Call before describe(). The region must outlive the Transport or be
  // withdrawn with stop_serving(). Errors: packing the rkey failed.
  Status serve(const MemoryRegion& region);
  void stop_serving(const MemoryRegion& region);

  // Owner reads this process has served since it started (for metrics).
  // Thread-safe.
  struct OwnerReadStats {
    std::uint64_t requests = 0;  // served: every put of the request posted
    std::uint64_t bytes = 0;     // bytes those requests moved
    std::uint64_t errors = 0;    // refused (outside the served ranges, bad rkey) or failed to post
  };
  OwnerReadStats owner_read_stats() const;
  // Streamed puts (Peer::put_streamed) this process placed: requests whose
  // every byte landed, those bytes, and requests refused (outside the
  // served ranges, a wrong rkey, not eager). Thread-safe.
  OwnerReadStats owner_write_stats() const;

  // Starts a thread that progresses the worker until stop_progress_thread()
  // or destruction. kFailedPrecondition when one already runs.
  Status start_progress_thread(ProgressMode mode);
  Status start_progress_thread(const ProgressOptions& options);
  void stop_progress_thread();

  // Progresses the worker once from the calling thread (and runs queued
  // owner-read work); returns how many events were processed.
  unsigned progress();

  struct Impl;  // opaque: shared with Peer and UCX callbacks

 private:
  Transport();
  friend class Peer;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpool::transport
