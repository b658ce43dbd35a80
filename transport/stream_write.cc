// Streamed puts (Peer::put_streamed): a client's bytes sent to the region's
// owner as active messages, which the owner's handler copies into place, the
// mirror of a streamed owner read (transport.cc). Over TCP UCX emulates a put
// in software: its bytes are copied into UCX's buffers, sent, received into
// the target's buffers and copied out by the target's progress thread, with
// a flush round trip per batch; here each piece is one eager message whose
// bytes the owner's handler copies once, straight from the receive buffer.
#include <sched.h>

#include <array>
#include <cstring>

#include "runtime/common/codec.h"
#include "runtime/common/logging.h"
#include "runtime/common/stream_copy.h"
#include "transport/internal.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvpool::transport {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("transport");
  return l;
}

// A piece's header on its way: UCX 1.13 reads an active message's header
// until the send completes.
struct WriteHeader {
  std::array<std::byte, kWriteDataHeaderBytes> bytes;
};

// The writer keeps each piece's request (to know when its bytes have left
// the caller's memory) and frees it; the callback only frees the header.
void on_write_piece_sent(void* /*request*/, ucs_status_t /*status*/, void* user_data) {
  delete static_cast<WriteHeader*>(user_data);
}

// Pieces a streamed put keeps queued in UCX at once.
constexpr std::size_t kStreamWindow = 8;

bool reply_endpoint(const ucp_am_recv_param_t* param) {
  return (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 && param->reply_ep != nullptr;
}

// Removes a streamed put's reply slot when the writer stops waiting: a reply
// that comes after we stopped waiting finds no one.
struct ForgetReply {
  Transport::Impl& impl;
  std::uint64_t id;
  ~ForgetReply() {
    std::lock_guard lock(impl.put_replies_mu);
    impl.put_replies.erase(id);
  }
};

// A new streamed put's id, with a slot for its reply.
std::uint64_t open_reply(Transport::Impl& impl) {
  const std::uint64_t id = impl.next_write_id.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(impl.put_replies_mu);
    impl.put_replies[id] = kNoReply;
  }
  return id;
}

std::int32_t read_reply(Transport::Impl& impl, std::uint64_t id) {
  std::lock_guard lock(impl.put_replies_mu);
  return impl.put_replies[id];
}

// Sends one piece of a streamed put: `n` bytes of `data` to `addr` at the
// owner. A send still in flight joins `out`.
Status send_piece(ucp_ep_h ep, std::uint64_t id, std::uint64_t addr, std::uint64_t tag, const std::byte* data,
                  std::uint64_t n, std::vector<ucs_status_ptr_t>& out, const char* what) {
  Writer w;
  w.u64(id);
  w.u64(addr);
  w.u64(tag);
  const std::string encoded = w.take();
  auto* header = new WriteHeader;
  std::memcpy(header->bytes.data(), encoded.data(), kWriteDataHeaderBytes);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  // Eager, so the owner's handler has the bytes at once; the reply
  // endpoint lets whichever message completes the write answer it.
  p.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
  p.cb.send = on_write_piece_sent;
  p.user_data = header;
  ucs_status_ptr_t sp = ucp_am_send_nbx(ep, kAmWriteData, header->bytes.data(), kWriteDataHeaderBytes, data, n, &p);
  if (UCS_PTR_IS_PTR(sp)) {
    out.push_back(sp);
  } else {
    delete header;
    if (UCS_PTR_IS_ERR(sp)) return to_status(UCS_PTR_STATUS(sp), what);
  }
  return Status();
}

// Tells the owner how many bytes the streamed put `id` sent in all.
Status send_write_done(ucp_ep_h ep, std::uint64_t id, std::uint64_t total, std::vector<ucs_status_ptr_t>& out,
                       const char* what) {
  Writer w;
  w.u64(id);
  w.u64(total);
  const std::string end = w.take();
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
  ucs_status_ptr_t sp = ucp_am_send_nbx(ep, kAmWriteDone, nullptr, 0, end.data(), end.size(), &p);
  if (UCS_PTR_IS_ERR(sp)) return to_status(UCS_PTR_STATUS(sp), what);
  if (sp != nullptr) out.push_back(sp);
  return Status();
}

}  // namespace

std::uint64_t rkey_tag(std::string_view packed_rkey) { return XXH3_64bits(packed_rkey.data(), packed_rkey.size()); }

// ---- owner side -------------------------------------------------------------

bool Transport::Impl::place_if_served(std::uint64_t addr, const void* data, std::uint64_t length, std::uint64_t tag) {
  std::lock_guard lock(served_mu);
  for (const Served& s : served) {
    if (addr >= s.begin && addr <= s.end && length <= s.end - addr && tag == s.tag) {
      // A put's bytes are read again only by a get: no need to keep them in cache.
      stream_copy(reinterpret_cast<std::byte*>(addr), static_cast<const std::byte*>(data), length);
      return true;
    }
  }
  return false;
}


// Called with writes_mu held: replies once the write's every byte is placed
// (or it failed) and the writer said how many to expect; the write is then
// forgotten.
void Transport::Impl::settle_write(std::unordered_map<std::uint64_t, OwnerWrite>::iterator it, ucp_ep_h ep) {
  OwnerWrite& w = it->second;
  if (!w.told || (w.status == UCS_OK && w.placed < w.expected)) return;
  if (w.status == UCS_OK && w.placed > w.expected) w.status = UCS_ERR_MESSAGE_TRUNCATED;
  if (w.status == UCS_OK) {
    owner_writes.fetch_add(1, std::memory_order_relaxed);
    owner_write_bytes.fetch_add(w.placed, std::memory_order_relaxed);
  } else {
    owner_write_errors.fetch_add(1, std::memory_order_relaxed);
  }
  send_status_reply(ep, kAmWriteReply, it->first, w.status);
  writes.erase(it);
}

std::unordered_map<std::uint64_t, OwnerWrite>::iterator Transport::Impl::owner_write(
    std::uint64_t id) {
  auto it = writes.find(id);
  if (it != writes.end()) return it;
  if (writes.size() >= kMaxOwnerWrites) {
    // Writers that died or gave up mid-write never send their last message:
    // forget the writes that have not moved for a while.
    const auto cut = std::chrono::steady_clock::now() - std::chrono::seconds(30);
    std::erase_if(writes, [&](const auto& kv) { return kv.second.touched < cut; });
  }
  return writes.emplace(id, OwnerWrite{}).first;
}

ucs_status_t on_write_data(void* arg, const void* header, size_t header_length, void* data, size_t length,
                           const ucp_am_recv_param_t* param) {
  auto* impl = static_cast<Transport::Impl*>(arg);
  if (header_length != kWriteDataHeaderBytes || !reply_endpoint(param)) {
    logger()->warn("streamed put data with a {}-byte header or no reply endpoint dropped", header_length);
    impl->owner_write_errors.fetch_add(1, std::memory_order_relaxed);
    return UCS_OK;
  }
  Reader r(std::string_view(static_cast<const char*>(header), header_length));
  const std::uint64_t id = r.u64();
  const std::uint64_t addr = r.u64();
  const std::uint64_t tag = r.u64();
  std::lock_guard lock(impl->writes_mu);
  auto it = impl->owner_write(id);
  OwnerWrite& w = it->second;
  w.touched = std::chrono::steady_clock::now();
  if (w.status != UCS_OK) return UCS_OK;  // failed: later pieces are not placed
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    logger()->warn("streamed put {}: a piece sent by rendezvous, not eagerly: the put fails", id);
    w.status = UCS_ERR_UNSUPPORTED;
  } else if (!impl->place_if_served(addr, data, length, tag)) {
    logger()->warn("streamed put {}: {} bytes at {:#x} outside the served region its rkey names: the put fails", id,
                   length, addr);
    w.status = UCS_ERR_INVALID_ADDR;
  } else {
    w.placed += length;
  }
  impl->settle_write(it, param->reply_ep);
  return UCS_OK;
}

ucs_status_t on_write_done(void* arg, const void* /*header*/, size_t /*header_length*/, void* data, size_t length,
                           const ucp_am_recv_param_t* param) {
  auto* impl = static_cast<Transport::Impl*>(arg);
  Reader r(std::string_view(static_cast<const char*>(data), length));
  const std::uint64_t id = r.u64();
  const std::uint64_t total = r.u64();
  if (!r.done() || !reply_endpoint(param) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    logger()->warn("malformed streamed put end of {} bytes dropped", length);
    impl->owner_write_errors.fetch_add(1, std::memory_order_relaxed);
    return UCS_OK;
  }
  std::lock_guard lock(impl->writes_mu);
  auto it = impl->owner_write(id);
  it->second.told = true;
  it->second.expected = total;
  it->second.touched = std::chrono::steady_clock::now();
  impl->settle_write(it, param->reply_ep);
  return UCS_OK;
}

// ---- writer side ------------------------------------------------------------

ucs_status_t on_write_reply(void* arg, const void* /*header*/, size_t /*header_length*/, void* data, size_t length,
                            const ucp_am_recv_param_t* /*param*/) {
  auto* impl = static_cast<Transport::Impl*>(arg);
  StatusReply reply;
  if (!decode_status_reply(data, length, reply)) {
    logger()->warn("malformed streamed put reply of {} bytes dropped", length);
    return UCS_OK;
  }
  std::lock_guard lock(impl->put_replies_mu);
  auto it = impl->put_replies.find(reply.id);
  if (it != impl->put_replies.end()) it->second = reply.status;  // else: the writer gave up
  return UCS_OK;
}

Status Peer::put_streamed(const RemoteRegion& remote, std::span<const RmaOp> ops,
                          const std::function<bool(std::size_t)>& ready, Deadline deadline,
                          const BatchOptions& options) {
  const char* what = "streamed put";
  if (Status h = health(); !h.ok()) return h;
  if (Status v = check_ops(what, remote, ops); !v.ok()) return v;
  if (ops.empty()) return Status();
  Transport::Impl& impl = *owner_->impl_;
  const std::uint64_t tag = rkey_tag(remote.packed_rkey_);
  const std::uint64_t id = open_reply(impl);
  ForgetReply forget{impl, id};
  std::vector<ucs_status_ptr_t> out;  // sends that may still read our memory
  auto release = [&] {
    // Sends still queued in UCX read the caller's memory: on failure the
    // caller closes the endpoint (put_each's contract), which cancels them.
    for (ucs_status_ptr_t req : out) ucp_request_free(req);
    out.clear();
  };
  auto failed = [&]() -> Status {
    if (Status h = health(); !h.ok()) return h;
    if (deadline.expired()) return Status(StatusCode::kDeadlineExceeded, std::string(what) + ": deadline passed");
    return Status();
  };
  // Up to kStreamWindow pieces queued in UCX at once (each one message).
  auto drain = [&](std::size_t keep) -> Status {
    while (true) {
      std::erase_if(out, [&](ucs_status_ptr_t req) {
        if (ucp_request_check_status(req) == UCS_INPROGRESS) return false;
        ucp_request_free(req);
        return true;
      });
      if (out.size() <= keep) return Status();
      if (Status s = failed(); !s.ok()) return s;
      if (owner_->progress() == 0 && options.yield_when_idle) sched_yield();
    }
  };
  std::uint64_t total = 0;
  Status s;
  for (std::size_t j = 0; j < ops.size() && s.ok(); ++j) {
    while (ready && !ready(j)) {
      if (s = failed(); !s.ok()) break;
      if (owner_->progress() == 0 && options.yield_when_idle) sched_yield();
    }
    const RmaOp& op = ops[j];
    for (std::uint64_t off = 0; off < op.length && s.ok();) {
      if (s = drain(kStreamWindow - 1); !s.ok()) break;
      // Fencing (DESIGN.md): nothing is sent after the deadline.
      if (s = failed(); !s.ok()) break;
      const std::uint64_t n = std::min<std::uint64_t>(kStreamPieceBytes, op.length - off);
      s = send_piece(ep_, id, remote.base_ + op.remote_offset + off, tag, static_cast<const std::byte*>(op.local) + off,
                     n, out, what);
      off += n;
      total += n;
    }
  }
  if (s.ok()) s = drain(0);
  if (!s.ok()) {
    release();
    return s;
  }
  if (Status d = send_write_done(ep_, id, total, out, what); !d.ok()) return d;
  // The reply says every byte is in place at the owner (the flush of put_each).
  while (true) {
    const std::int32_t reply = read_reply(impl, id);
    if (reply != kNoReply) {
      if (Status d = drain(0); !d.ok()) {
        release();
        return d;
      }
      return reply == UCS_OK ? Status() : to_status(static_cast<ucs_status_t>(reply), what);
    }
    if (s = failed(); !s.ok()) {
      release();
      return s;
    }
    if (owner_->progress() == 0 && options.yield_when_idle) sched_yield();
  }
}

}  // namespace kvpool::transport
