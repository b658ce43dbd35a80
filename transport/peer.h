#pragma once
// Peer: the connection from this process to one remote worker (an agent),
// and the batch RMA operations on the regions it publishes.
//
// Every wait has a deadline. A batch that fails or times out leaves the Peer
// unusable only if the failure is the peer's (dead, unreachable); a batch
// that hit its deadline may still be in flight: the local buffers it reads
// or writes must stay alive until the Peer is closed or destroyed.
//
// Thread-safety: one Peer may be used from several threads at once; the
// batch calls progress the shared worker while they wait.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvpool/status.h"
#include "runtime/common/units.h"
#include "transport/memory.h"

struct ucp_ep;
struct ucp_rkey;

namespace kvpool::transport {

class Transport;

enum class ErrorMode {
  kAuto,  // kNone for a same-host peer our UCX_TLS may reach by shared memory, else kPeer
  kPeer,  // UCX reports a dead peer (network transports only)
  kNone,  // liveness comes from the control plane: Peer::mark_dead
};

// How UCX carries an endpoint's RMA (Peer::rma_kind).
enum class RmaKind {
  kOneSided,  // RMA lanes: shared memory, RDMA, a loopback to this worker
  kEmulated,  // no RMA lane: UCX emulates put and get over active messages (tcp)
};

// One transfer of a batch: `length` bytes between local memory and
// `remote_offset` bytes into the remote region.
struct RmaOp {
  void* local = nullptr;
  std::uint64_t remote_offset = 0;
  std::uint64_t length = 0;
};

// A region of the peer's, imported from its RegionInfo: an unpacked rkey
// bound to the Peer's endpoint. Move-only; destroy before its Peer.
class RemoteRegion {
 public:
  RemoteRegion() = default;
  RemoteRegion(RemoteRegion&& other) noexcept;
  RemoteRegion& operator=(RemoteRegion&& other) noexcept;
  RemoteRegion(const RemoteRegion&) = delete;
  RemoteRegion& operator=(const RemoteRegion&) = delete;
  ~RemoteRegion();

  std::uint64_t base() const { return base_; }
  std::uint64_t length() const { return length_; }
  // A direct pointer to the region when it is mapped into this process
  // (same-host shared memory, ucp_rkey_ptr); kUnimplemented otherwise.
  Result<std::byte*> mapped() const;
  // For a mapped region, populates this process's page tables for all of it
  // (MADV_POPULATE_WRITE), so the first put to each page does not take a
  // fault: a fresh 2 GiB mapping otherwise costs 512k faults, and puts run at
  // a sixth of their speed until every page has been touched once. OK (and a
  // no-op) for regions reached over the network.
  Status prefault() const;
  // The same for [offset, offset + length) of the region only: callers that
  // populate a large region in the background go chunk by chunk.
  Status prefault(std::uint64_t offset, std::uint64_t length) const;

 private:
  friend class Peer;
  ucp_rkey* rkey_ = nullptr;
  std::uint64_t base_ = 0;
  std::uint64_t length_ = 0;
  std::string packed_rkey_;  // as imported: owner reads present it
};

// How many local regions one owner read may write into.
inline constexpr std::size_t kMaxOwnerReadRegions = 8;

struct BatchOptions {
  // The registered region the local pointers fall in; without it UCX
  // registers local memory on the fly (a cost on RDMA NICs).
  const MemoryRegion* local = nullptr;
  // While waiting for completion, yield the CPU (sched_yield) after each
  // progress call that found nothing to do. Busy polling is fastest when
  // the waiter has a core to itself; on a host where the far end's progress
  // thread or our own helper threads need that core, spinning starves them.
  bool yield_when_idle = false;
};

class Peer;
struct PendingRead;
struct ReadRequest;

// Places the bytes of a streamed owner read as they arrive: `bytes` are
// those of op `op`, starting `offset` bytes into it. Called on whichever
// thread progresses the worker, one piece at a time per read; a piece is
// valid only during the call. An op's pieces come in order of offset over
// one endpoint (TCP), but a sink must not depend on it for correctness.
using ReadSink = std::function<void(std::size_t op, std::uint64_t offset, std::span<const std::byte> bytes)>;

// Size of the pieces of a streamed owner read: with their headers within
// one TCP segment (UCX_TCP_TX_SEG_SIZE, 256 KiB, transport.cc), so each is
// one message that the reader's worker hands over from its receive buffer,
// still in cache (a larger one is reassembled into another buffer first).
// 512 KiB pieces in 520 KiB segments moved no faster end to end, and the
// larger receive segments made raw puts swing between 2.5 and 4.8 GB/s.
inline constexpr std::size_t kStreamPieceBytes = (256 << 10) - 256;

// An owner read in flight (Peer::start_read_by_owner or
// start_stream_by_owner). Move-only; wait() once. Destroying it without
// waiting forgets the request: a reply that comes later finds no one
// waiting. After a put-based read the owner may still write into the local
// memory, so a caller that gives up keeps that memory alive as for a
// failed read_by_owner; a stream's late pieces are dropped instead.
class OwnerRead {
 public:
  OwnerRead() = default;
  OwnerRead(OwnerRead&& other) noexcept;
  OwnerRead& operator=(OwnerRead&& other) noexcept;
  OwnerRead(const OwnerRead&) = delete;
  OwnerRead& operator=(const OwnerRead&) = delete;
  ~OwnerRead();

  // Progresses the worker until the owner reports every op complete, the
  // peer fails, or `deadline` passes. The Peer must still exist.
  // yield_when_idle: as BatchOptions::yield_when_idle.
  Status wait(Deadline deadline, bool yield_when_idle = false);

 private:
  friend class Peer;
  void forget();
  Peer* peer_ = nullptr;
  std::vector<std::pair<std::uint64_t, std::shared_ptr<PendingRead>>> parts_;
};

class Peer {
 public:
  ~Peer();  // closes the endpoint (flushing for up to 1 s, then forcibly)
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  // Unpacks the remote key of `info` for this endpoint.
  Result<RemoteRegion> import_region(const RegionInfo& info);

  // Puts every op's bytes into the remote region and returns once all are
  // complete at the target (a flush). kInvalidArgument for an op outside the
  // region; kUnavailable when the peer is dead or marked dead;
  // kDeadlineExceeded when `deadline` passes first.
  Status put(const RemoteRegion& remote, std::span<const RmaOp> ops, Deadline deadline,
             const BatchOptions& options = {});
  // Puts `first`, then `then`, with one completion: every op of `first` is
  // complete at the target before any op of `then` lands (a fence between
  // them), so a slot header put in `then` is never valid before its payload.
  Status put_ordered(const RemoteRegion& remote, std::span<const RmaOp> first, std::span<const RmaOp> then,
                     Deadline deadline, const BatchOptions& options = {});
  // Puts ops[0], ops[1], ... in order; ops[j] is posted only once ops[j -
  // window] has left this process's memory (its bytes handed to the network
  // or copied out: with window 1, every op before it) and ready(j) has
  // returned true. Window 1 suits software-emulated RMA (tcp), where an op
  // leaves once UCX has copied it out; on RDMA an op leaves only when the
  // target has it, so a wider window keeps the link busy. ready is called on this
  // thread, again and again while it returns false, the worker progressing
  // in between (so ops[j - 1] keeps moving while, say, another thread
  // checksums ops[j]'s bytes, which the transport then reads from cache).
  // No op is posted once `deadline` has passed. Returns once every op is
  // complete at the target (a flush), as put().
  Status put_each(const RemoteRegion& remote, std::span<const RmaOp> ops,
                  const std::function<bool(std::size_t)>& ready, Deadline deadline,
                  const BatchOptions& options = {}, std::size_t window = 1);
  // put_each's contract (ready(j) before op j is sent, nothing sent after
  // the deadline, OK once every byte is at the target; on failure bytes may
  // still be queued: close the endpoint), but the bytes go to the region's
  // owner as active messages its handler copies into place (stream_write.cc)
  // instead of one-sided puts. For transports where UCX emulates RMA (tcp):
  // each byte is copied once at the owner instead of through UCX's put
  // emulation. The owner checks every piece against the region's rkey, as an
  // RMA put would be. options.local is not needed (no registration).
  Status put_streamed(const RemoteRegion& remote, std::span<const RmaOp> ops,
                      const std::function<bool(std::size_t)>& ready, Deadline deadline,
                      const BatchOptions& options = {});
  // Reads every op's bytes from the remote region into local memory.
  Status get(const RemoteRegion& remote, std::span<const RmaOp> ops, Deadline deadline,
             const BatchOptions& options = {});
  // Asks the owner to put every op's bytes into local memory, which must lie
  // in `local` (registered with this Transport); returns when the owner
  // reports the data complete. Over TCP this is 5-60x faster than get.
  Status read_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops, const MemoryRegion& local,
                       Deadline deadline);
  // The same with each op's local memory in any of `locals` (up to 8
  // registered regions: payload buffers and a header scratch area, say).
  Status read_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops,
                       std::span<const MemoryRegion* const> locals, Deadline deadline);

  // The same, returning once the request is sent: several may be in
  // flight at once (the owner serves them in order), each waited for by
  // its OwnerRead.
  Result<OwnerRead> start_read_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops,
                                        std::span<const MemoryRegion* const> locals);
  // Asks the owner to send every op's bytes as messages over this endpoint
  // (no RMA, no registered memory), which `sink` places as they arrive; by
  // default each piece is copied to its op's local memory (with
  // non-temporal stores from 4 KiB up: a read's destination is seldom read
  // again soon, runtime/common/stream_copy.h). Over TCP this
  // moves each byte once less than an owner read (UCX's emulated put copies
  // it in and out of its buffers), and the sink sees each piece while it is
  // in cache (a checksum costs little there). Pieces that arrive after
  // OwnerRead::wait returned or the OwnerRead was destroyed are dropped:
  // nothing is written into local memory after that, so, unlike the other
  // reads, a failed stream leaves no write in flight. The owner answers
  // over the endpoint the request came in on, so a reconnected Peer is
  // served as the first was.
  Result<OwnerRead> start_stream_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops,
                                          ReadSink sink = {});

  // Ordering: every put issued before fence() completes at the target before
  // any put issued after it (payload before header).
  Status fence();

  // Marks the peer dead on a signal from outside (the control plane): every
  // pending and later operation fails with kUnavailable and `reason`.
  void mark_dead(std::string reason);
  // OK while the peer is usable, else why not.
  Status health() const;

  // The error mode the endpoint was created with (kPeer or kNone).
  ErrorMode error_mode() const { return mode_; }
  // The UCX transports carrying this endpoint's RMA lanes, e.g. "posix" or
  // "tcp (emulated)" (from ucp_ep_print_info); "self" for a loopback to this
  // worker. For logs and stats: decide on rma_kind().
  const std::string& rma_transports() const { return rma_transports_; }
  // Whether UCX moves RMA one-sided (shared memory, RDMA, loopback) or
  // emulates it over active messages (tcp in UCX 1.13), where the client
  // streams puts and asks the owner for reads instead.
  RmaKind rma_kind() const { return rma_kind_; }

  struct State;  // opaque: shared with UCX callbacks

 private:
  friend class Transport;
  friend class OwnerRead;
  Peer(Transport* owner, ErrorMode mode);
  Status rma(bool is_put, const RemoteRegion& remote, std::span<const RmaOp> ops, std::span<const RmaOp> then,
             Deadline deadline, const BatchOptions& options);
  Status flush(Deadline deadline, const char* what, bool yield_when_idle = false);
  static Status check_ops(const char* what, const RemoteRegion& remote, std::span<const RmaOp> ops);
  // Posts one put or get; the UCX request (or nullptr: done, or an error).
  void* post_rma(bool is_put, const RemoteRegion& remote, const RmaOp& op, const BatchOptions& options);
  void forget_reads(std::span<const std::pair<std::uint64_t, std::shared_ptr<PendingRead>>> parts);
  // Gives `req` an id, registers `pending` under it, adds both to `read` and
  // sends the request.
  Status send_read_request(ReadRequest& req, std::shared_ptr<PendingRead> pending, OwnerRead& read);

  Transport* owner_;
  ErrorMode mode_;
  ucp_ep* ep_ = nullptr;
  std::shared_ptr<State> state_;  // shared with UCX callbacks that may outlive a call
  std::string rma_transports_;
  RmaKind rma_kind_ = RmaKind::kOneSided;
};

}  // namespace kvpool::transport
