#pragma once
// Internal to transport/: state shared by Transport and Peer, and the owner
// read wire format.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transport/transport.h"
#include "transport/ucx_util.h"

namespace kvpool::transport {

// Active message ids of the owner-read protocol.
inline constexpr unsigned kAmReadRequest = 0x4b31;
inline constexpr unsigned kAmReadReply = 0x4b32;
inline constexpr unsigned kAmReadData = 0x4b33;  // a piece of a streamed owner read
inline constexpr std::uint32_t kReadFlagPeerErrors = 1u;  // the reader's endpoint has peer error handling
inline constexpr std::uint32_t kReadFlagStream = 2u;      // send the bytes as kAmReadData messages
// The header of a kAmReadData message: u64 request id, u32 op index within
// the request, u64 offset into the op; the piece's bytes are the data.
inline constexpr std::size_t kReadDataHeaderBytes = 20;
inline constexpr std::uint32_t kReadRequestMagic = 0x524f564bu;  // "KVOR"
// An owner-read request is small and sent eagerly; refuse anything bigger
// rather than size an allocation by a peer's claim.
inline constexpr std::size_t kMaxReadRequestBytes = 64 * 1024;
inline constexpr std::size_t kMaxReadOps = 1024;
inline constexpr std::size_t kMaxReadRkeys = kMaxOwnerReadRegions;

// Wire format, little-endian:
//   request: u32 magic, u64 request id, u32 reader address length, the
//            reader's worker address, u32 flags (kReadFlag*), u32 rkey count
//            (1..kMaxReadRkeys; 0 for a streamed read, which writes nothing
//            one-sided),
//            each as u32 length + bytes (the reader's registered regions),
//            u32 op count, count x (u64 source address in the owner, u64
//            destination address in the reader, u64 length, u32 index of
//            the rkey covering the destination), u32 length + bytes: the
//            packed rkey of the owner's region the sources lie in, as the
//            owner published it (the reader's capability for that region:
//            an owner read reaches no more than an RMA get would)
//   reply:   u64 request id, i32 ucs_status_t
// A streamed read's bytes come before its reply, over the endpoint the
// request came in on, as kAmReadData messages of at most kStreamPieceBytes;
// `dst` and `rkey` of its ops are 0 (the reader keeps the destinations).
struct ReadOp {
  std::uint64_t src = 0;
  std::uint64_t dst = 0;
  std::uint64_t length = 0;
  std::uint32_t rkey = 0;  // index into ReadRequest::rkeys
};
struct ReadRequest {
  std::uint64_t id = 0;
  std::string reader_address;  // the owner connects back to put and reply
  bool reader_peer_errors = false;  // the back endpoint must match the reader's mode
  std::vector<std::string> rkeys;
  std::vector<ReadOp> ops;
  std::string source_rkey;  // the owner region's packed rkey (not empty)
  bool stream = false;      // kReadFlagStream: no rkeys; ops' dst and rkey unused
};
std::string encode_read_request(const ReadRequest& req);
// kInvalidArgument with the reason for a malformed request.
Result<ReadRequest> decode_read_request(const void* data, std::size_t length);
// A kAmReadData message's header.
struct ReadPieceHeader {
  std::uint64_t id = 0;
  std::uint32_t op = 0;
  std::uint64_t offset = 0;
};
// Field lists (runtime/common/codec.h): the wire formats above, both ways.
template <class Io>
void fields(Io& io, ReadOp& op) {
  io(op.src, op.dst, op.length, op.rkey);
}
template <class Io>
void fields(Io& io, ReadPieceHeader& h) {
  io(h.id, h.op, h.offset);
}

// Streamed puts (Peer::put_streamed, stream_write.cc). Wire format,
// little-endian: kAmWriteData: header u64 write id, u64 destination address
// in the owner, u64 rkey tag (XXH3-64 of the packed rkey the owner published
// for the region: the writer's capability, as for an RMA put); data: the
// bytes, at most kStreamPieceBytes, sent eagerly. kAmWriteDone: data u64
// write id, u64 bytes sent in all. kAmWriteReply: data u64 write id, i32
// ucs_status_t, once every byte is placed (or the write failed). Both
// writer messages carry a reply endpoint: whichever completes the write (the
// end, or its last piece if it overtook the end on another lane) answers.
inline constexpr unsigned kAmWriteData = 0x4b34;
inline constexpr unsigned kAmWriteDone = 0x4b35;
inline constexpr unsigned kAmWriteReply = 0x4b36;
inline constexpr std::size_t kWriteDataHeaderBytes = 24;
// Writes an owner keeps track of before it forgets stale ones (writers that
// died mid-write).
inline constexpr std::size_t kMaxOwnerWrites = 1024;
inline constexpr std::int32_t kNoReply = 1;  // not a ucs_status_t (those are <= 0)
std::uint64_t rkey_tag(std::string_view packed_rkey);
// The reply both protocols end with (u64 request or write id, i32
// ucs_status_t), sent eagerly as active message am_id over ep.
struct StatusReply {
  std::uint64_t id = 0;
  std::int32_t status = 0;
};
template <class Io>
void fields(Io& io, StatusReply& r) {
  io(r.id, r.status);
}
void send_status_reply(ucp_ep_h ep, unsigned am_id, std::uint64_t id, ucs_status_t status);
// False unless data is exactly one StatusReply.
bool decode_status_reply(const void* data, std::size_t length, StatusReply& out);
// A streamed put on the owner, by write id.
struct OwnerWrite {
  std::uint64_t placed = 0;
  std::uint64_t expected = 0;  // known once told
  bool told = false;           // kAmWriteDone came
  ucs_status_t status = UCS_OK;
  std::chrono::steady_clock::time_point touched = std::chrono::steady_clock::now();
};
ucs_status_t on_write_data(void* arg, const void* header, size_t header_length, void* data, size_t length,
                           const ucp_am_recv_param_t* param);
ucs_status_t on_write_done(void* arg, const void* header, size_t header_length, void* data, size_t length,
                           const ucp_am_recv_param_t* param);
ucs_status_t on_write_reply(void* arg, const void* header, size_t header_length, void* data, size_t length,
                            const ucp_am_recv_param_t* param);

// A client's owner read waiting for its reply.
struct PendingRead {
  std::atomic<bool> done{false};
  std::atomic<int> status{UCS_OK};
  // Streamed reads only. The pieces' destinations: op j of this request is
  // the caller's op first_op + j, of lengths[j] bytes; sink (or, when
  // empty, a copy to locals[j]) places each piece under mu, and forgotten
  // (set under mu) drops the pieces that come after the caller stopped
  // waiting, so none is written once OwnerRead::wait returned.
  bool stream = false;
  std::mutex mu;
  bool forgotten = false;  // guarded by mu
  ReadSink sink;
  std::size_t first_op = 0;
  std::vector<void*> locals;
  std::vector<std::uint64_t> lengths;
  std::uint64_t expected = 0;           // the bytes of every op
  std::atomic<std::uint64_t> received{0};
};

struct Transport::Impl {
  // Teardown order (the destructor): stop the progress thread, destroy the
  // worker, then ucp_cleanup. Peers and regions are gone by then (contract).
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  std::string address;
  std::string host_id;
  std::string tls;

  // Owner side: the ranges owner reads may touch, and work queued by UCX
  // callbacks to run outside ucp_worker_progress.
  std::mutex served_mu;
  struct Served {
    std::uint64_t begin = 0, end = 0;  // [begin, end)
    std::string packed_rkey;          // what describe() publishes for it
    std::uint64_t tag = 0;            // rkey_tag(packed_rkey)
  };
  std::vector<Served> served;  // guarded by served_mu
  std::mutex work_mu;
  std::deque<std::function<void()>> work;  // guarded by work_mu
  std::atomic<bool> has_work{false};
  // Owner reads served (requests whose puts were all posted), their bytes,
  // and requests refused or failed: Transport::owner_read_stats().
  std::atomic<std::uint64_t> owner_reads{0};
  std::atomic<std::uint64_t> owner_read_bytes{0};
  std::atomic<std::uint64_t> owner_read_errors{0};
  // Streamed puts: in progress by write id, and done (Transport::owner_write_stats()).
  std::mutex writes_mu;
  std::unordered_map<std::uint64_t, OwnerWrite> writes;  // guarded by writes_mu
  std::atomic<std::uint64_t> owner_writes{0};
  std::atomic<std::uint64_t> owner_write_bytes{0};
  std::atomic<std::uint64_t> owner_write_errors{0};
  // The write, made on its first message (forgetting stale ones when there
  // are many). writes_mu held.
  std::unordered_map<std::uint64_t, OwnerWrite>::iterator owner_write(std::uint64_t id);
  // Answers the write over `ep` once it is complete or failed. writes_mu held.
  void settle_write(std::unordered_map<std::uint64_t, OwnerWrite>::iterator it, ucp_ep_h ep);
  // Copies `length` bytes to `addr` if they lie in the served region whose
  // rkey tag is `tag` (under served_mu: stop_serving waits for the copy).
  bool place_if_served(std::uint64_t addr, const void* data, std::uint64_t length, std::uint64_t tag);

  // Client side: owner reads waiting for replies, by request id.
  std::mutex reads_mu;
  std::unordered_map<std::uint64_t, std::shared_ptr<PendingRead>> reads;  // guarded by reads_mu
  std::atomic<std::uint64_t> next_read_id{1};
  // Streamed puts waiting for their reply: kNoReply, then the status. Ids
  // start at a random point: an owner keys every writer's writes by id.
  std::mutex put_replies_mu;
  std::unordered_map<std::uint64_t, std::int32_t> put_replies;  // guarded by put_replies_mu
  std::atomic<std::uint64_t> next_write_id{0};

  std::thread progress_thread;
  std::atomic<bool> stop_progress{false};

  void post(std::function<void()> fn);
  void run_work();
  // Whether [addr, addr + length) lies in the served region whose packed
  // rkey is `rkey`: a reader must hold the region's rkey, as for RMA.
  bool in_served_range(std::uint64_t addr, std::uint64_t length, std::string_view rkey);
  // Endpoints from the owner back to its readers, by reader worker address.
  // UCX's reply endpoint of an active message cannot carry RMA (1.13
  // asserts on a put over it), so the owner connects to the reader itself.
  std::mutex readers_mu;
  std::unordered_map<std::string, ucp_ep_h> readers;  // guarded by readers_mu
  ucp_ep_h reader_endpoint(const std::string& address, bool peer_errors);
  void drop_reader(ucp_ep_h ep);
  // Whether `ep` is still one of `readers` (not closed by drop_reader).
  bool reader_open(ucp_ep_h ep);
  void close_readers();

  // Serves a put-based read (outside any progress call: it may connect).
  void handle_read_request(ReadRequest req);
  // Serves a streamed read (kReadFlagStream) over `ep`, the endpoint its
  // request came in on: the pieces, then the reply. Called inside the
  // progress call that delivered the request.
  void stream_read(ucp_ep_h ep, const ReadRequest& req);
  void send_read_reply(ucp_ep_h ep, std::uint64_t id, ucs_status_t status);
};

}  // namespace kvpool::transport
