#include "transport/transport.h"

#include <poll.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>

#include "runtime/common/codec.h"
#include "runtime/common/logging.h"
#include "runtime/common/stream_copy.h"
#include "transport/internal.h"

namespace kvpool::transport {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("transport");
  return l;
}

std::string read_host_id() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (f && std::getline(f, id) && !id.empty()) return id;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return host;
}


ucs_status_t on_read_request(void* arg, const void* /*header*/, size_t /*header_length*/, void* data,
                             size_t length, const ucp_am_recv_param_t* param) {
  auto* impl = static_cast<Transport::Impl*>(arg);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 || length > kMaxReadRequestBytes) {
    // Requests are sent eagerly and are small; a rendezvous one is not ours,
    // and without decoding it there is no one to answer.
    logger()->warn("owner read request of {} bytes dropped (limit {}, eager only)", length, kMaxReadRequestBytes);
    return UCS_OK;
  }
  auto req = decode_read_request(data, length);
  if (!req) {
    // Without a decoded reader address there is no one to answer.
    logger()->warn("{}", req.error().message());
    return UCS_OK;
  }
  if (req->stream) {
    // Served here, inside the progress call: the reply endpoint UCX lends
    // for this message is valid only until we return.
    const bool has_reply_ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 && param->reply_ep != nullptr;
    if (!has_reply_ep) {
      logger()->warn("streamed owner read request {} came without a reply endpoint: dropped", req->id);
      impl->owner_read_errors.fetch_add(1, std::memory_order_relaxed);
      return UCS_OK;
    }
    impl->stream_read(param->reply_ep, *req);
    return UCS_OK;
  }
  // A put-based read connects back to the reader first: not inside a
  // progress call.
  impl->post([impl, r = std::move(*req)]() mutable { impl->handle_read_request(std::move(r)); });
  return UCS_OK;
}

// Pieces of at least this many bytes are copied with non-temporal stores
// when no sink places them (a read's destination is seldom read again soon);
// smaller ones (slot headers) with memcpy.
constexpr std::size_t kStreamCopyBytes = 4096;

// A piece of a streamed owner read, on the reader: placed by the read's sink
// unless the reader stopped waiting for it.
ucs_status_t on_read_data(void* arg, const void* header, size_t header_length, void* data, size_t length,
                          const ucp_am_recv_param_t* param) {
  auto* impl = static_cast<Transport::Impl*>(arg);
  if (header_length != kReadDataHeaderBytes) {
    logger()->warn("owner read data with a {}-byte header dropped", header_length);
    return UCS_OK;
  }
  ReadPieceHeader piece;
  Reader(std::string_view(static_cast<const char*>(header), header_length))(piece);
  const std::uint64_t id = piece.id;
  const std::uint32_t op = piece.op;
  const std::uint64_t offset = piece.offset;
  std::shared_ptr<PendingRead> pending;
  {
    std::lock_guard lock(impl->reads_mu);
    auto it = impl->reads.find(id);
    if (it == impl->reads.end()) return UCS_OK;  // the reader gave up (deadline)
    pending = it->second;
  }
  std::lock_guard lock(pending->mu);
  if (pending->forgotten || pending->status.load() != UCS_OK) return UCS_OK;
  auto fail = [&](const char* why) {
    logger()->warn("owner read {}: {} ({} bytes at offset {} of op {}): the read fails", id, why, length, offset,
                   op);
    pending->status.store(UCS_ERR_MESSAGE_TRUNCATED);
    pending->done.store(true, std::memory_order_release);
    return UCS_OK;
  };
  if (!pending->stream) return fail("data for a read that asked for puts");
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return fail("data sent by rendezvous, not eagerly");
  if (op >= pending->lengths.size() || offset > pending->lengths[op] || length > pending->lengths[op] - offset) {
    return fail("data outside the op");
  }
  const std::span<const std::byte> bytes(static_cast<const std::byte*>(data), length);
  if (pending->sink) {
    pending->sink(pending->first_op + op, offset, bytes);
  } else if (length >= kStreamCopyBytes) {
    stream_copy(static_cast<std::byte*>(pending->locals[op]) + offset, bytes.data(), length);
  } else {
    std::memcpy(static_cast<std::byte*>(pending->locals[op]) + offset, bytes.data(), length);
  }
  pending->received.fetch_add(length, std::memory_order_release);
  return UCS_OK;
}

void on_reader_error(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* impl = static_cast<Transport::Impl*>(arg);
  logger()->info("reader endpoint failed: {}", ucs_status_string(status));
  impl->post([impl, ep] { impl->drop_reader(ep); });
}

ucs_status_t on_read_reply(void* arg, const void* /*header*/, size_t /*header_length*/, void* data,
                           size_t length, const ucp_am_recv_param_t* /*param*/) {
  auto* impl = static_cast<Transport::Impl*>(arg);
  StatusReply reply;
  if (!decode_status_reply(data, length, reply)) {
    logger()->warn("malformed owner read reply of {} bytes dropped", length);
    return UCS_OK;
  }
  std::shared_ptr<PendingRead> pending;
  {
    std::lock_guard lock(impl->reads_mu);
    auto it = impl->reads.find(reply.id);
    if (it == impl->reads.end()) return UCS_OK;  // the reader gave up (deadline)
    pending = it->second;
    // A stream's pieces may still be on their way (another lane): its
    // entry goes when the reader stops waiting.
    if (!pending->stream) impl->reads.erase(it);
  }
  // A stream that already failed on a bad piece keeps that error.
  int ok = UCS_OK;
  pending->status.compare_exchange_strong(ok, reply.status);
  pending->done.store(true, std::memory_order_release);
  return UCS_OK;
}

// State of one owner read in flight on the owner: freed when its flush ends.
struct OwnerReadJob {
  Transport::Impl* impl;
  ucp_ep_h ep;
  std::vector<ucp_rkey_h> rkeys;
  std::uint64_t id;
};

void finish_owner_read(OwnerReadJob* job, ucs_status_t status) {
  job->impl->post([job, status] {
    for (ucp_rkey_h rkey : job->rkeys) ucp_rkey_destroy(rkey);
    // A failed reader's endpoint is closed (drop_reader) before the flush of
    // its last job ends: there is no one to answer, and ep is freed.
    if (job->impl->reader_open(job->ep)) job->impl->send_read_reply(job->ep, job->id, status);
    delete job;
  });
}

void on_owner_read_flushed(void* request, ucs_status_t status, void* user_data) {
  finish_owner_read(static_cast<OwnerReadJob*>(user_data), status);
  ucp_request_free(request);
}

// A piece of a streamed read on its way: UCX 1.13 reads an active message's
// header until the send completes (no flag makes it copy the header).
struct PieceHeader {
  std::array<std::byte, kReadDataHeaderBytes> bytes;
};

void on_piece_sent(void* request, ucs_status_t /*status*/, void* user_data) {
  delete static_cast<PieceHeader*>(user_data);
  ucp_request_free(request);
}

void on_reply_sent(void* request, ucs_status_t /*status*/, void* user_data) {
  delete static_cast<std::string*>(user_data);
  ucp_request_free(request);
}

}  // namespace

std::string encode_read_request(const ReadRequest& req) {
  Writer w;
  const std::uint32_t flags = (req.reader_peer_errors ? kReadFlagPeerErrors : 0u) | (req.stream ? kReadFlagStream : 0u);
  w(kReadRequestMagic, req.id, req.reader_address, flags);
  w.list(req.rkeys);
  w.list(req.ops);
  w(req.source_rkey);
  return w.take();
}

Result<ReadRequest> decode_read_request(const void* data, std::size_t length) {
  auto bad = [](const char* why) {
    return make_error(StatusCode::kInvalidArgument, std::string("owner read request: ") + why);
  };
  Reader r(std::string_view(static_cast<const char*>(data), length));
  ReadRequest req;
  if (r.u32() != kReadRequestMagic) return bad("bad magic");
  std::uint32_t flags = 0;
  r(req.id, req.reader_address, flags);
  req.reader_peer_errors = (flags & kReadFlagPeerErrors) != 0;
  req.stream = (flags & kReadFlagStream) != 0;
  const std::uint32_t rkey_count = r.u32();
  if (!r.ok() || req.reader_address.empty()) return bad("truncated header");
  if ((req.stream ? rkey_count != 0 : rkey_count == 0) || rkey_count > kMaxReadRkeys) return bad("bad rkey count");
  req.rkeys.resize(rkey_count);
  for (std::string& rkey : req.rkeys) {
    r(rkey);
    if (!r.ok() || rkey.empty()) return bad("rkey length overruns the message");
  }
  const std::uint32_t count = r.count(Reader::min_wire_bytes<ReadOp>());
  if (!r.ok() || count > kMaxReadOps) return bad("op count does not match the message");
  req.ops.resize(count);
  for (ReadOp& op : req.ops) {
    r(op);
    if (op.rkey >= rkey_count && !req.stream) return bad("op names an rkey that is not there");
  }
  r(req.source_rkey);
  if (!r.ok() || req.source_rkey.empty()) return bad("no source rkey");
  if (!r.done()) return bad("op count does not match the message");
  return req;
}

void Transport::Impl::post(std::function<void()> fn) {
  {
    std::lock_guard lock(work_mu);
    work.push_back(std::move(fn));
  }
  has_work.store(true, std::memory_order_release);
  ucp_worker_signal(worker);
}

void Transport::Impl::run_work() {
  if (!has_work.load(std::memory_order_acquire)) return;
  std::deque<std::function<void()>> batch;
  {
    std::lock_guard lock(work_mu);
    batch.swap(work);
    has_work.store(false, std::memory_order_release);
  }
  for (auto& fn : batch) fn();
}

bool Transport::Impl::in_served_range(std::uint64_t addr, std::uint64_t length, std::string_view rkey) {
  std::lock_guard lock(served_mu);
  for (const Served& s : served) {
    if (addr >= s.begin && addr <= s.end && length <= s.end - addr && rkey == s.packed_rkey) return true;
  }
  return false;
}

ucp_ep_h Transport::Impl::reader_endpoint(const std::string& address, bool peer_errors) {
  std::lock_guard lock(readers_mu);
  auto it = readers.find(address);
  if (it != readers.end()) return it->second;
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  p.address = reinterpret_cast<const ucp_address_t*>(address.data());
  // UCX matches this endpoint with the reader's own endpoint to us and
  // refuses (unsupported operation) when their error modes differ.
  p.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  if (peer_errors) {
    p.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.err_handler.cb = on_reader_error;
    p.err_handler.arg = this;
  }
  ucp_ep_h ep = nullptr;
  ucs_status_t st = ucp_ep_create(worker, &p, &ep);
  if (st != UCS_OK) {
    logger()->warn("connecting back to a reader: {}", ucs_status_string(st));
    return nullptr;
  }
  readers.emplace(address, ep);
  return ep;
}

void Transport::Impl::drop_reader(ucp_ep_h ep) {
  {
    std::lock_guard lock(readers_mu);
    bool found = false;
    for (auto it = readers.begin(); it != readers.end(); ++it) {
      if (it->second == ep) {
        readers.erase(it);
        found = true;
        break;
      }
    }
    if (!found) return;
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
  if (UCS_PTR_IS_PTR(req)) ucp_request_free(req);
}

bool Transport::Impl::reader_open(ucp_ep_h ep) {
  std::lock_guard lock(readers_mu);
  for (const auto& [address, open] : readers) {
    if (open == ep) return true;
  }
  return false;
}

void Transport::Impl::close_readers() {
  std::unordered_map<std::string, ucp_ep_h> all;
  {
    std::lock_guard lock(readers_mu);
    all.swap(readers);
  }
  std::vector<ucs_status_ptr_t> pending;
  for (auto& [addr, ep] : all) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = 0;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
    if (UCS_PTR_IS_PTR(req)) pending.push_back(req);
  }
  auto deadline = Deadline::after(std::chrono::seconds(1));
  for (ucs_status_ptr_t req : pending) {
    while (ucp_request_check_status(req) == UCS_INPROGRESS && !deadline.expired()) ucp_worker_progress(worker);
    ucp_request_free(req);
  }
}

void Transport::Impl::handle_read_request(ReadRequest req) {
  ucp_ep_h ep = reader_endpoint(req.reader_address, req.reader_peer_errors);
  if (ep == nullptr) return;
  for (const ReadOp& op : req.ops) {
    if (!in_served_range(op.src, op.length, req.source_rkey)) {
      logger()->warn("owner read request {}: {} bytes at {:#x} outside the served region its rkey names", req.id,
                     op.length,
                     op.src);
      owner_read_errors.fetch_add(1, std::memory_order_relaxed);
      send_read_reply(ep, req.id, UCS_ERR_INVALID_ADDR);
      return;
    }
  }
  auto* job = new OwnerReadJob{this, ep, {}, req.id};
  ucs_status_t st = UCS_OK;
  for (const std::string& packed : req.rkeys) {
    ucp_rkey_h rkey = nullptr;
    st = ucp_ep_rkey_unpack(ep, packed.data(), &rkey);
    if (st != UCS_OK) {
      logger()->warn("owner read request {}: unpacking the reader's rkey: {}", req.id, ucs_status_string(st));
      break;
    }
    job->rkeys.push_back(rkey);
  }
  ucp_request_param_t param{};
  for (const ReadOp& op : req.ops) {
    if (st != UCS_OK) break;
    ucs_status_ptr_t sp =
        ucp_put_nbx(ep, reinterpret_cast<void*>(op.src), op.length, op.dst, job->rkeys[op.rkey], &param);
    if (UCS_PTR_IS_ERR(sp)) {
      st = UCS_PTR_STATUS(sp);
      break;
    }
    if (sp != nullptr) ucp_request_free(sp);
  }
  if (st != UCS_OK) {
    owner_read_errors.fetch_add(1, std::memory_order_relaxed);
    finish_owner_read(job, st);
    return;
  }
  std::uint64_t moved = 0;
  for (const ReadOp& op : req.ops) moved += op.length;
  owner_reads.fetch_add(1, std::memory_order_relaxed);
  owner_read_bytes.fetch_add(moved, std::memory_order_relaxed);
  ucp_request_param_t fparam{};
  fparam.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  fparam.cb.send = on_owner_read_flushed;
  fparam.user_data = job;
  ucs_status_ptr_t fp = ucp_ep_flush_nbx(ep, &fparam);
  if (fp == nullptr) {
    finish_owner_read(job, UCS_OK);
  } else if (UCS_PTR_IS_ERR(fp)) {
    finish_owner_read(job, UCS_PTR_STATUS(fp));
  }
}

void Transport::Impl::stream_read(ucp_ep_h ep, const ReadRequest& req) {
  for (const ReadOp& op : req.ops) {
    if (!in_served_range(op.src, op.length, req.source_rkey)) {
      logger()->warn("owner read request {}: {} bytes at {:#x} outside the served region its rkey names", req.id,
                     op.length, op.src);
      owner_read_errors.fetch_add(1, std::memory_order_relaxed);
      send_read_reply(ep, req.id, UCS_ERR_INVALID_ADDR);
      return;
    }
  }
  ucs_status_t st = UCS_OK;
  std::uint64_t moved = 0;
  for (std::size_t j = 0; j < req.ops.size() && st == UCS_OK; ++j) {
    const ReadOp& op = req.ops[j];
    for (std::uint64_t offset = 0; offset < op.length && st == UCS_OK;) {
      const std::uint64_t n = std::min<std::uint64_t>(kStreamPieceBytes, op.length - offset);
      const std::string encoded = encode_fields(ReadPieceHeader{req.id, static_cast<std::uint32_t>(j), offset});
      auto* header = new PieceHeader;
      std::memcpy(header->bytes.data(), encoded.data(), kReadDataHeaderBytes);
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
      // Eager: a rendezvous piece would be a get the reader's handler must
      // start, which over TCP UCX emulates through us again.
      p.flags = UCP_AM_SEND_FLAG_EAGER;
      p.cb.send = on_piece_sent;
      p.user_data = header;
      // The bytes go from the served region itself: it outlives the send.
      ucs_status_ptr_t sp = ucp_am_send_nbx(ep, kAmReadData, header->bytes.data(), kReadDataHeaderBytes,
                                            reinterpret_cast<const void*>(op.src + offset), n, &p);
      if (!UCS_PTR_IS_PTR(sp)) {
        delete header;
        if (UCS_PTR_IS_ERR(sp)) st = UCS_PTR_STATUS(sp);
      }
      offset += n;
      moved += n;
    }
  }
  if (st != UCS_OK) {
    logger()->warn("owner read request {}: sending its bytes: {}", req.id, ucs_status_string(st));
    owner_read_errors.fetch_add(1, std::memory_order_relaxed);
  } else {
    owner_reads.fetch_add(1, std::memory_order_relaxed);
    owner_read_bytes.fetch_add(moved, std::memory_order_relaxed);
  }
  // After the pieces on the same endpoint, so it arrives after them (the
  // reader also counts the bytes).
  send_read_reply(ep, req.id, st);
}

void Transport::Impl::send_read_reply(ucp_ep_h ep, std::uint64_t id, ucs_status_t status) {
  send_status_reply(ep, kAmReadReply, id, status);
}

void send_status_reply(ucp_ep_h ep, unsigned am_id, std::uint64_t id, ucs_status_t status) {
  auto* buf = new std::string(encode_fields(StatusReply{id, static_cast<std::int32_t>(status)}));
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  param.cb.send = on_reply_sent;
  param.user_data = buf;
  ucs_status_ptr_t sp = ucp_am_send_nbx(ep, am_id, nullptr, 0, buf->data(), buf->size(), &param);
  if (sp == nullptr) {
    delete buf;
  } else if (UCS_PTR_IS_ERR(sp)) {
    logger()->warn("{} reply {}: {}", am_id == kAmReadReply ? "owner read" : "streamed put", id,
                   ucs_status_string(UCS_PTR_STATUS(sp)));
    delete buf;
  }
}

bool decode_status_reply(const void* data, std::size_t length, StatusReply& out) {
  return decode_fields(std::string_view(static_cast<const char*>(data), length), out, "status reply").ok();
}

std::string ucx_version() { return ucp_get_version_string(); }

Transport::Transport() : impl_(std::make_unique<Impl>()) {}

Transport::OwnerReadStats Transport::owner_read_stats() const {
  return {impl_->owner_reads.load(std::memory_order_relaxed), impl_->owner_read_bytes.load(std::memory_order_relaxed),
          impl_->owner_read_errors.load(std::memory_order_relaxed)};
}

Transport::OwnerReadStats Transport::owner_write_stats() const {
  return {impl_->owner_writes.load(std::memory_order_relaxed), impl_->owner_write_bytes.load(std::memory_order_relaxed),
          impl_->owner_write_errors.load(std::memory_order_relaxed)};
}

Transport::~Transport() {
  stop_progress_thread();
  if (impl_->worker != nullptr) {
    impl_->run_work();
    impl_->close_readers();
    ucp_worker_destroy(impl_->worker);
  }
  if (impl_->context != nullptr) ucp_cleanup(impl_->context);
}

namespace {

// Reads UCX's configuration with our defaults and `tls` (the options', else
// UCX_TLS, else ours) filled in. The caller releases the result.
Result<ucp_config_t*> read_ucx_config(const TransportOptions& options, std::string& tls) {
  // setenv is not thread-safe against getenv: several transports created at
  // once (a client per coordinator shard connects in parallel) read and
  // write the environment only one at a time, through ucp_config_read,
  // which reads it too.
  static std::mutex env_mu;
  std::unique_lock env_lock(env_mu);
  const char* env_tls = std::getenv("UCX_TLS");
  tls = !options.tls.empty() ? options.tls : (env_tls != nullptr ? env_tls : std::string(kDefaultTls));
  // Our defaults apply only where the operator has not set UCX's variable.
  // Set through the environment before ucp_config_read: UCX 1.13 reports
  // transport-level keys given to ucp_config_modify as invalid.
  static const std::pair<const char*, const char*> kDefaults[] = {
      // posix first: only memory the posix md allocated is reachable one-sided
      // by the posix transport (UCX's default allocates through sysv).
      {"UCX_ALLOC_PRIO", "md:posix,md:sysv,huge,thp,md:*,mmap,heap"},
      // Large TCP segments: 1 MiB puts go from ~0.8 to 3.3-4.3 GB/s (DESIGN.md);
      // a streamed read's pieces (kStreamPieceBytes) fit one.
      {"UCX_TCP_TX_SEG_SIZE", "256k"},
      {"UCX_TCP_RX_SEG_SIZE", "256k"},
      // Non-blocking connect: by default UCX 1.13 connects inside
      // ucp_ep_create, which blocks a caller for the kernel's whole SYN
      // timeout (~2 min) when the peer is cut off (tests/netns).
      {"UCX_TCP_CONN_NB", "y"},
  };
  // Only name TCP settings when TCP may be used: UCX warns about unused ones.
  bool tcp_possible = tls.find("tcp") != std::string::npos || tls == "all" || tls[0] == '^';
  for (const auto& [name, value] : kDefaults) {
    if (!tcp_possible && std::string_view(name).starts_with("UCX_TCP_")) continue;
    ::setenv(name, value, /*overwrite=*/0);
  }
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  env_lock.unlock();
  if (st != UCS_OK) return tl::unexpected(to_status(st, "reading the UCX configuration"));
  st = ucp_config_modify(config, "TLS", tls.c_str());
  if (st != UCS_OK) {
    ucp_config_release(config);
    return tl::unexpected(to_status(st, "setting UCX_TLS=" + tls));
  }
  return config;
}

Status install_am_handlers(Transport::Impl* impl, bool serve_owner_reads) {
  ucp_am_handler_param_t am{};
  am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                  UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  am.arg = impl;
  am.flags = UCP_AM_FLAG_WHOLE_MSG;
  struct Handler {
    unsigned id;
    ucp_am_recv_callback_t cb;
    bool owner;  // only where this process serves its regions
    const char* what;
  };
  const Handler handlers[] = {
      {kAmReadReply, on_read_reply, false, "the owner read reply handler"},
      {kAmReadData, on_read_data, false, "the owner read data handler"},
      {kAmWriteReply, on_write_reply, false, "the streamed put reply handler"},
      {kAmReadRequest, on_read_request, true, "the owner read handler"},
      {kAmWriteData, on_write_data, true, "the streamed put handler"},
      {kAmWriteDone, on_write_done, true, "the streamed put end handler"},
  };
  for (const Handler& h : handlers) {
    if (h.owner && !serve_owner_reads) continue;
    am.id = h.id;
    am.cb = h.cb;
    ucs_status_t st = ucp_worker_set_am_recv_handler(impl->worker, &am);
    if (st != UCS_OK) return to_status(st, std::string("installing ") + h.what);
  }
  return Status();
}

// ucp_mem_map of `bytes` at `address`; `flags` (UCP_MEM_MAP_ALLOCATE: UCX
// allocates them) are passed only when set.
ucs_status_t map_memory(ucp_context_h context, void* address, std::size_t bytes, unsigned flags, ucp_mem_h& memh) {
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = address;
  p.length = bytes;
  if (flags != 0) {
    p.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    p.flags = flags;
  }
  return ucp_mem_map(context, &p, &memh);
}

}  // namespace

Result<std::unique_ptr<Transport>> Transport::create(const TransportOptions& options) {
  std::unique_ptr<Transport> t(new Transport());
  Impl& impl = *t->impl_;

  auto config_read = read_ucx_config(options, impl.tls);
  if (!config_read) return tl::unexpected(config_read.error());
  ucp_config_t* config = *config_read;

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;
  ucs_status_t st = ucp_init(&params, config, &impl.context);
  ucp_config_release(config);
  if (st != UCS_OK) return tl::unexpected(to_status(st, "initializing UCX with UCX_TLS=" + impl.tls));

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_MULTI;
  st = ucp_worker_create(impl.context, &wparams, &impl.worker);
  if (st != UCS_OK) return tl::unexpected(to_status(st, "creating the UCX worker"));

  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  st = ucp_worker_get_address(impl.worker, &addr, &addr_len);
  if (st != UCS_OK) return tl::unexpected(to_status(st, "getting the UCX worker address"));
  impl.address.assign(reinterpret_cast<const char*>(addr), addr_len);
  ucp_worker_release_address(impl.worker, addr);
  impl.host_id = read_host_id();

  if (Status h = install_am_handlers(&impl, options.serve_owner_reads); !h.ok()) return tl::unexpected(h);
  // Streamed put ids start at a random point (the owner keys writes of
  // every writer by id).
  impl.next_write_id.store((static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}());
  logger()->debug("UCX worker up, UCX_TLS={}, address {} bytes", impl.tls, impl.address.size());
  return t;
}

const std::string& Transport::worker_address() const { return impl_->address; }
const std::string& Transport::host_id() const { return impl_->host_id; }
const std::string& Transport::tls() const { return impl_->tls; }

Result<MemoryRegion> Transport::allocate(std::size_t bytes) {
  if (bytes == 0) return make_error(StatusCode::kInvalidArgument, "allocating a region of 0 bytes");
  ucp_mem_h memh = nullptr;
  ucs_status_t st = map_memory(impl_->context, nullptr, bytes, UCP_MEM_MAP_ALLOCATE, memh);
  if (st != UCS_OK) {
    return tl::unexpected(to_status(st, "allocating a region of " + std::to_string(bytes) + " bytes through UCX"));
  }
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  st = ucp_mem_query(memh, &attr);
  if (st != UCS_OK) {
    ucp_mem_unmap(impl_->context, memh);
    return tl::unexpected(to_status(st, "querying an allocated region"));
  }
  return MemoryRegion(impl_->context, memh, static_cast<std::byte*>(attr.address), bytes, true);
}

Result<MemoryRegion> Transport::register_memory(void* address, std::size_t bytes) {
  if (address == nullptr || bytes == 0) {
    return make_error(StatusCode::kInvalidArgument, "registering an empty buffer");
  }
  ucp_mem_h memh = nullptr;
  ucs_status_t st = map_memory(impl_->context, address, bytes, 0, memh);
  if (st != UCS_OK) {
    return tl::unexpected(to_status(st, "registering " + std::to_string(bytes) + " bytes"));
  }
  return MemoryRegion(impl_->context, memh, static_cast<std::byte*>(address), bytes, false);
}

Result<RegionInfo> Transport::describe(const MemoryRegion& region) const {
  RegionInfo info;
  {
    // A served region's published rkey is the one owner reads are checked
    // against: the same bytes.
    std::lock_guard lock(impl_->served_mu);
    for (const auto& s : impl_->served) {
      if (s.begin == reinterpret_cast<std::uint64_t>(region.data())) info.packed_rkey = s.packed_rkey;
    }
  }
  if (info.packed_rkey.empty()) {
    auto rkey = region.pack_rkey();
    if (!rkey) return tl::unexpected(rkey.error());
    info.packed_rkey = std::move(*rkey);
  }
  info.worker_address = impl_->address;
  info.base = reinterpret_cast<std::uint64_t>(region.data());
  info.length = region.size();
  info.host_id = impl_->host_id;
  return info;
}

Status Transport::serve(const MemoryRegion& region) {
  auto begin = reinterpret_cast<std::uint64_t>(region.data());
  auto rkey = region.pack_rkey();
  if (!rkey) return rkey.error();
  std::lock_guard lock(impl_->served_mu);
  const std::uint64_t tag = rkey_tag(*rkey);
  impl_->served.push_back({begin, begin + region.size(), std::move(*rkey), tag});
  return Status();
}

void Transport::stop_serving(const MemoryRegion& region) {
  auto begin = reinterpret_cast<std::uint64_t>(region.data());
  std::lock_guard lock(impl_->served_mu);
  std::erase_if(impl_->served, [&](const auto& r) { return r.begin == begin; });
}

unsigned Transport::progress() {
  unsigned n = ucp_worker_progress(impl_->worker);
  if (impl_->has_work.load(std::memory_order_acquire)) {
    impl_->run_work();
    ++n;
  }
  return n;
}

Status Transport::start_progress_thread(ProgressMode mode) {
  return start_progress_thread(ProgressOptions{.mode = mode});
}

Status Transport::start_progress_thread(const ProgressOptions& options) {
  if (impl_->progress_thread.joinable()) {
    return Status(StatusCode::kFailedPrecondition, "a progress thread already runs");
  }
  int efd = -1;
  if (options.mode == ProgressMode::kEvent) {
    ucs_status_t st = ucp_worker_get_efd(impl_->worker, &efd);
    if (st != UCS_OK) return to_status(st, "getting the worker's event fd");
  }
  impl_->stop_progress.store(false);
  impl_->progress_thread = std::thread([this, options, efd] {
    auto last_event = Clock::now();
    while (!impl_->stop_progress.load(std::memory_order_relaxed)) {
      if (progress() != 0) {
        last_event = Clock::now();
        continue;
      }
      if (options.mode == ProgressMode::kPoll || Clock::now() - last_event < options.spin) continue;
      // Arm, then sleep until the worker has events (or 100 ms, so a stop
      // request that raced with arming is seen).
      ucs_status_t st = ucp_worker_arm(impl_->worker);
      if (st == UCS_ERR_BUSY) continue;
      if (st != UCS_OK) {
        logger()->error("arming the worker for events: {}; progress thread falls back to polling",
                        ucs_status_string(st));
        while (!impl_->stop_progress.load(std::memory_order_relaxed)) progress();
        return;
      }
      pollfd pfd{efd, POLLIN, 0};
      ::poll(&pfd, 1, 100);
      last_event = Clock::now();
    }
  });
  return Status();
}

void Transport::stop_progress_thread() {
  if (!impl_->progress_thread.joinable()) return;
  impl_->stop_progress.store(true);
  ucp_worker_signal(impl_->worker);
  impl_->progress_thread.join();
}

}  // namespace kvpool::transport
