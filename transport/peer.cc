#include "transport/peer.h"

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include "runtime/common/logging.h"
#include "transport/internal.h"

namespace kvpool::transport {
namespace {

// Whether UCX_TLS syntax `tls` lets UCX pick a shared-memory transport:
// "tcp" does not; "", "all", "^sysv" or "posix,tcp" do.
bool tls_allows_shared_memory(std::string_view tls) {
  if (tls.empty()) return true;
  const bool exclude = tls.front() == '^';
  if (exclude) tls.remove_prefix(1);
  bool all = false, all_shm = false, some_shm = false;
  while (!tls.empty()) {
    const auto comma = tls.find(',');
    const std::string_view t = tls.substr(0, comma);
    tls = comma == std::string_view::npos ? std::string_view() : tls.substr(comma + 1);
    all |= t == "all";
    all_shm |= t == "sm" || t == "shm";
    some_shm |= t == "mm" || t == "posix" || t == "sysv" || t == "cma" || t == "xpmem" || t == "knem";
  }
  // Excluding a few shared-memory transports leaves the others.
  return exclude ? !all_shm : all || all_shm || some_shm;
}


std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("transport");
  return l;
}

// A flush in flight: the waiter and UCX's callback each hold a reference, so
// a waiter that gives up at its deadline leaves the callback safe memory.
struct FlushWait {
  std::atomic<int> refs{2};
  std::atomic<bool> done{false};
  std::atomic<int> status{UCS_OK};
  void release() {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
};

void on_flush(void* request, ucs_status_t status, void* user_data) {
  auto* w = static_cast<FlushWait*>(user_data);
  w->status.store(status);
  w->done.store(true, std::memory_order_release);
  w->release();
  ucp_request_free(request);
}

void on_send_done(void* request, ucs_status_t /*status*/, void* user_data) {
  delete static_cast<std::string*>(user_data);
  ucp_request_free(request);
}

// Which UCX transports carry an endpoint's RMA, from ucp_ep_print_info:
//   lane[0]:  1:posix/memory.0 md[1] -> md[1]/posix/sysdev[255] am am_bw#0
//   put[0]: 0..<short>..4294967296..<bcopy>..(inf)
// "put[N]"/"get[N]" name the lanes RMA uses. With none (TCP in UCX 1.13),
// RMA is emulated over the active-message lanes: "tcp (emulated)".
std::string rma_transports_of(ucp_ep_h ep, std::string* full_text, RmaKind* kind) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  if (f == nullptr) return "unknown";
  ucp_ep_print_info(ep, f);
  std::fclose(f);
  std::string text(buf, len);
  std::free(buf);
  if (full_text != nullptr) *full_text = text;
  std::map<int, std::string> lane_tl;
  std::set<int> am_lanes, rma_lanes;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    int lane = -1;
    if (auto p = line.find("lane["); p != std::string::npos) {
      lane = std::atoi(line.c_str() + p + 5);
      auto colon = line.find(':', line.find(']', p));
      auto slash = line.find('/', colon);
      if (colon == std::string::npos || slash == std::string::npos) continue;
      auto start = line.find(':', colon + 1);  // "0:tcp/lo.0": skip the resource index
      if (start == std::string::npos || start > slash) start = colon;
      lane_tl[lane] = line.substr(start + 1, slash - start - 1);
      if (line.find(" am") != std::string::npos) am_lanes.insert(lane);
      continue;
    }
    for (const char* op : {"put[", "get["}) {
      if (auto p = line.find(op); p != std::string::npos && line.find_first_not_of("# ") == p) {
        rma_lanes.insert(std::atoi(line.c_str() + p + 4));
      }
    }
  }
  bool emulated = rma_lanes.empty();
  *kind = emulated ? RmaKind::kEmulated : RmaKind::kOneSided;
  std::set<std::string> tls;
  for (int lane : emulated ? am_lanes : rma_lanes) {
    if (auto it = lane_tl.find(lane); it != lane_tl.end()) tls.insert(it->second);
  }
  std::string out;
  for (const auto& tl : tls) out += (out.empty() ? "" : ",") + tl;
  if (out.empty()) return "none";
  return emulated ? out + " (emulated)" : out;
}

}  // namespace

struct Peer::State {
  std::atomic<bool> dead{false};
  mutable std::mutex mu;
  Status failure;  // guarded by mu
  void fail(Status s) {
    std::lock_guard lock(mu);
    if (!dead.load()) failure = std::move(s);
    dead.store(true, std::memory_order_release);
  }
};

namespace {
void on_peer_error(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* state = static_cast<Peer::State*>(arg);
  logger()->warn("peer failed: {}", ucs_status_string(status));
  state->fail(Status(StatusCode::kUnavailable, std::string("peer failed: ") + ucs_status_string(status)));
}
}  // namespace

RemoteRegion::RemoteRegion(RemoteRegion&& other) noexcept
    : rkey_(std::exchange(other.rkey_, nullptr)),
      base_(std::exchange(other.base_, 0)),
      length_(std::exchange(other.length_, 0)),
      packed_rkey_(std::move(other.packed_rkey_)) {}

RemoteRegion& RemoteRegion::operator=(RemoteRegion&& other) noexcept {
  if (this != &other) {
    if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
    rkey_ = std::exchange(other.rkey_, nullptr);
    base_ = std::exchange(other.base_, 0);
    length_ = std::exchange(other.length_, 0);
    packed_rkey_ = std::move(other.packed_rkey_);
  }
  return *this;
}

RemoteRegion::~RemoteRegion() {
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
}

Result<std::byte*> RemoteRegion::mapped() const {
  void* ptr = nullptr;
  ucs_status_t st = ucp_rkey_ptr(rkey_, base_, &ptr);
  if (st != UCS_OK) {
    return make_error(StatusCode::kUnimplemented,
                      std::string("region is not mapped into this process: ") + ucs_status_string(st));
  }
  return static_cast<std::byte*>(ptr);
}

Status RemoteRegion::prefault() const { return prefault(0, length_); }

Status RemoteRegion::prefault(std::uint64_t offset, std::uint64_t length) const {
  auto ptr = mapped();
  if (!ptr) return Status();
  if (offset > length_ || length > length_ - offset) {
    return Status(StatusCode::kInvalidArgument, "prefault: range outside the region");
  }
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  auto begin = (reinterpret_cast<std::uintptr_t>(*ptr) + offset) & ~(page - 1);
  auto end = reinterpret_cast<std::uintptr_t>(*ptr) + offset + length;
  if (end <= begin) return Status();
  if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0) return Status();
  if (errno != EINVAL) {
    return Status(StatusCode::kInternal, std::string("prefaulting a mapped region: ") + std::strerror(errno));
  }
  // Kernels before 5.14 lack MADV_POPULATE_WRITE: a read per page maps it.
  for (auto p = begin; p < end; p += page) (void)*reinterpret_cast<volatile const char*>(p);
  return Status();
}

Peer::Peer(Transport* owner, ErrorMode mode) : owner_(owner), mode_(mode), state_(std::make_shared<State>()) {}

Result<std::unique_ptr<Peer>> Transport::connect(std::string_view worker_address, ErrorMode mode,
                                                 std::string_view peer_host_id) {
  if (worker_address.empty()) return make_error(StatusCode::kInvalidArgument, "connect: empty worker address");
  if (mode == ErrorMode::kAuto) {
    // Same host but TCP only (containers, network namespaces, UCX_TLS=tcp):
    // no shared memory, so peer mode works and is needed to see failures
    // and to close an endpoint without flushing what is queued on it.
    mode = (!peer_host_id.empty() && peer_host_id == impl_->host_id && tls_allows_shared_memory(impl_->tls))
               ? ErrorMode::kNone
               : ErrorMode::kPeer;
  }
  std::unique_ptr<Peer> peer(new Peer(this, mode));
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  p.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
  p.err_mode = mode == ErrorMode::kPeer ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  if (mode == ErrorMode::kPeer) {
    p.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.err_handler.cb = on_peer_error;
    p.err_handler.arg = peer->state_.get();
  }
  ucs_status_t st = ucp_ep_create(impl_->worker, &p, &peer->ep_);
  if (st != UCS_OK) {
    std::string hint = mode == ErrorMode::kPeer ? " (peer failure detection needs a network transport; over "
                                                  "shared memory alone connect with ErrorMode::kNone)"
                                                : "";
    return tl::unexpected(to_status(st, "connecting to a peer with UCX_TLS=" + impl_->tls + hint));
  }
  std::string info;
  peer->rma_transports_ = rma_transports_of(peer->ep_, &info, &peer->rma_kind_);
  logger()->debug("endpoint up, error mode {}, RMA over {}\n{}", mode == ErrorMode::kPeer ? "peer" : "none",
                  peer->rma_transports_, info);
  return peer;
}

Peer::~Peer() {
  if (ep_ == nullptr) return;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  // Force only where UCX allows it (peer error mode); a flush close of a
  // dead shared-memory peer completes locally.
  p.flags = (mode_ == ErrorMode::kPeer && state_->dead.load()) ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep_, &p);
  if (UCS_PTR_IS_PTR(req)) {
    auto deadline = Deadline::after(std::chrono::seconds(1));
    while (ucp_request_check_status(req) == UCS_INPROGRESS && !deadline.expired()) owner_->progress();
    if (ucp_request_check_status(req) == UCS_INPROGRESS) {
      logger()->warn("closing an endpoint took over 1 s; leaving it to the worker's teardown");
    }
    ucp_request_free(req);
  }
}

Result<RemoteRegion> Peer::import_region(const RegionInfo& info) {
  if (info.packed_rkey.empty() || info.length == 0) {
    return make_error(StatusCode::kInvalidArgument, "import_region: empty rkey or region");
  }
  RemoteRegion r;
  ucs_status_t st = ucp_ep_rkey_unpack(ep_, info.packed_rkey.data(), &r.rkey_);
  if (st != UCS_OK) return tl::unexpected(to_status(st, "unpacking a peer's remote key"));
  r.base_ = info.base;
  r.length_ = info.length;
  r.packed_rkey_ = info.packed_rkey;
  return r;
}

Status Peer::health() const {
  if (!state_->dead.load(std::memory_order_acquire)) return Status();
  std::lock_guard lock(state_->mu);
  return state_->failure;
}

void Peer::mark_dead(std::string reason) {
  logger()->info("peer marked dead: {}", reason);
  state_->fail(Status(StatusCode::kUnavailable, "peer marked dead: " + reason));
}

Status Peer::fence() {
  ucs_status_t st = ucp_worker_fence(owner_->impl_->worker);
  return to_status(st, "fence");
}

Status Peer::flush(Deadline deadline, const char* what, bool yield_when_idle) {
  auto* w = new FlushWait();
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = on_flush;
  p.user_data = w;
  ucs_status_ptr_t req = ucp_ep_flush_nbx(ep_, &p);
  if (!UCS_PTR_IS_PTR(req)) {
    w->release();  // the callback's reference: it will not run
    w->release();
    return to_status(UCS_PTR_STATUS(req), what);
  }
  Status result;
  while (!w->done.load(std::memory_order_acquire)) {
    if (state_->dead.load(std::memory_order_acquire)) {
      result = health();
      break;
    }
    if (deadline.expired()) {
      result = Status(StatusCode::kDeadlineExceeded, std::string(what) + ": deadline passed before completion");
      break;
    }
    if (owner_->progress() == 0 && yield_when_idle) sched_yield();
  }
  if (result.ok()) result = to_status(static_cast<ucs_status_t>(w->status.load()), what);
  w->release();
  return result;
}

Status Peer::check_ops(const char* what, const RemoteRegion& remote, std::span<const RmaOp> ops) {
  if (remote.rkey_ == nullptr) return Status(StatusCode::kInvalidArgument, std::string(what) + ": no remote region");
  for (const RmaOp& op : ops) {
    if (op.local == nullptr || op.length == 0 || op.remote_offset > remote.length_ ||
        op.length > remote.length_ - op.remote_offset) {
      return Status(StatusCode::kInvalidArgument, std::string(what) + ": op of " + std::to_string(op.length) +
                                                      " bytes at offset " + std::to_string(op.remote_offset) +
                                                      " does not fit the remote region of " +
                                                      std::to_string(remote.length_) + " bytes");
    }
  }
  return Status();
}

void* Peer::post_rma(bool is_put, const RemoteRegion& remote, const RmaOp& op, const BatchOptions& options) {
  ucp_request_param_t p{};
  const MemoryRegion* local = options.local;
  if (local != nullptr && local->valid()) {
    auto* lp = static_cast<std::byte*>(op.local);
    // Only an op inside the registered region may name its handle.
    if (lp >= local->data() && lp + op.length <= local->data() + local->size()) {
      p.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
      p.memh = local->handle();
    }
  }
  return is_put ? ucp_put_nbx(ep_, op.local, op.length, remote.base_ + op.remote_offset, remote.rkey_, &p)
                : ucp_get_nbx(ep_, op.local, op.length, remote.base_ + op.remote_offset, remote.rkey_, &p);
}

Status Peer::put_each(const RemoteRegion& remote, std::span<const RmaOp> ops,
                      const std::function<bool(std::size_t)>& ready, Deadline deadline,
                      const BatchOptions& options, std::size_t window) {
  const char* what = "batch put";
  if (Status h = health(); !h.ok()) return h;
  if (Status v = check_ops(what, remote, ops); !v.ok()) return v;
  window = std::max<std::size_t>(window, 1);
  std::deque<ucs_status_ptr_t> out;  // ops posted that may not have left our memory yet
  // Progresses the worker until fewer than `window` posted ops have not
  // left (for UCX: their requests are complete locally; completion at the
  // target is the flush's) and ready(j).
  auto wait_for = [&](std::size_t j) -> Status {
    bool is_ready = false;
    while (true) {
      while (!out.empty()) {
        const ucs_status_t st = ucp_request_check_status(out.front());
        if (st == UCS_INPROGRESS) break;
        ucp_request_free(out.front());
        out.pop_front();
        if (st != UCS_OK) return to_status(st, what);
      }
      if (!is_ready) is_ready = !ready || ready(j);
      if (is_ready && out.size() < window) return Status();
      if (state_->dead.load(std::memory_order_acquire)) return health();
      if (deadline.expired()) {
        return Status(StatusCode::kDeadlineExceeded, std::string(what) + ": deadline passed before completion");
      }
      if (owner_->progress() == 0 && options.yield_when_idle) sched_yield();
    }
  };
  Status s;
  for (std::size_t j = 0; j < ops.size(); ++j) {
    s = wait_for(j);
    if (!s.ok()) break;
    // Fencing (DESIGN.md): nothing is posted after the deadline.
    if (deadline.expired()) {
      s = Status(StatusCode::kDeadlineExceeded, std::string(what) + ": deadline passed before every op was posted");
      break;
    }
    if (state_->dead.load(std::memory_order_acquire)) {
      s = health();
      break;
    }
    ucs_status_ptr_t req = post_rma(true, remote, ops[j], options);
    if (UCS_PTR_IS_ERR(req)) {
      s = to_status(UCS_PTR_STATUS(req), what);
      break;
    }
    if (req != nullptr) out.push_back(req);  // nullptr: done at once
  }
  // Released now, freed by UCX on completion; the flush waits for them.
  for (ucs_status_ptr_t req : out) ucp_request_free(req);
  // Even after a failure, earlier ops may be in flight: flush them.
  Status f = flush(deadline, what, options.yield_when_idle);
  if (!s.ok()) return s;
  if (!f.ok() && state_->dead.load()) return health();
  return f;
}

Status Peer::rma(bool is_put, const RemoteRegion& remote, std::span<const RmaOp> ops, std::span<const RmaOp> then,
                 Deadline deadline, const BatchOptions& options) {
  const char* what = is_put ? "batch put" : "batch get";
  if (Status h = health(); !h.ok()) return h;
  for (auto list : {ops, then}) {
    if (Status v = check_ops(what, remote, list); !v.ok()) return v;
  }
  auto post = [&](std::span<const RmaOp> list) -> Status {
    for (const RmaOp& op : list) {
      ucs_status_ptr_t req = post_rma(is_put, remote, op, options);
      if (UCS_PTR_IS_ERR(req)) return to_status(UCS_PTR_STATUS(req), what);
      // Released now, freed by UCX on completion; the flush waits for it.
      if (req != nullptr) ucp_request_free(req);
    }
    return Status();
  };
  Status s = post(ops);
  if (s.ok() && !then.empty()) {
    s = to_status(ucp_worker_fence(owner_->impl_->worker), "fence");
    if (s.ok()) s = post(then);
  }
  // Even after a failed post, earlier ops may be in flight: flush them.
  Status f = flush(deadline, what, options.yield_when_idle);
  if (!s.ok()) return s;
  if (!f.ok() && state_->dead.load()) return health();
  return f;
}

Status Peer::put(const RemoteRegion& remote, std::span<const RmaOp> ops, Deadline deadline,
                 const BatchOptions& options) {
  return rma(true, remote, ops, {}, deadline, options);
}

Status Peer::put_ordered(const RemoteRegion& remote, std::span<const RmaOp> first, std::span<const RmaOp> then,
                         Deadline deadline, const BatchOptions& options) {
  return rma(true, remote, first, then, deadline, options);
}

Status Peer::get(const RemoteRegion& remote, std::span<const RmaOp> ops, Deadline deadline,
                 const BatchOptions& options) {
  return rma(false, remote, ops, {}, deadline, options);
}

Status Peer::read_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops, const MemoryRegion& local,
                           Deadline deadline) {
  const MemoryRegion* locals[] = {&local};
  return read_by_owner(remote, ops, locals, deadline);
}

Status Peer::read_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops,
                           std::span<const MemoryRegion* const> locals, Deadline deadline) {
  auto read = start_read_by_owner(remote, ops, locals);
  if (!read) return read.error();
  return read->wait(deadline);
}

Result<OwnerRead> Peer::start_read_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops,
                                            std::span<const MemoryRegion* const> locals) {
  if (Status h = health(); !h.ok()) return tl::unexpected(h);
  OwnerRead read;
  read.peer_ = this;
  if (ops.empty()) return read;
  if (locals.empty() || locals.size() > kMaxReadRkeys) {
    return make_error(StatusCode::kInvalidArgument, "owner read: 1 to 8 local regions");
  }
  Transport::Impl& impl = *owner_->impl_;
  std::vector<std::string> rkeys;
  for (const MemoryRegion* local : locals) {
    auto rkey = local->pack_rkey();
    if (!rkey) return tl::unexpected(rkey.error());
    rkeys.push_back(std::move(*rkey));
  }
  // One request per kMaxReadOps ops: a request must stay a small eager
  // message. They are all sent now; wait() waits for every one.
  for (std::size_t first = 0; first < ops.size(); first += kMaxReadOps) {
    ReadRequest req;
    req.reader_address = impl.address;
    req.reader_peer_errors = mode_ == ErrorMode::kPeer;
    req.rkeys = rkeys;
    for (const RmaOp& op : ops.subspan(first, std::min(kMaxReadOps, ops.size() - first))) {
      auto* lp = static_cast<std::byte*>(op.local);
      std::uint32_t which = 0;
      while (which < locals.size() &&
             (lp < locals[which]->data() || lp + op.length > locals[which]->data() + locals[which]->size())) {
        ++which;
      }
      if (op.length == 0 || which == locals.size() || op.remote_offset > remote.length_ ||
          op.length > remote.length_ - op.remote_offset) {
        return make_error(StatusCode::kInvalidArgument, "owner read: op of " + std::to_string(op.length) +
                                                            " bytes falls outside the local or the remote regions");
      }
      req.ops.push_back(
          {remote.base_ + op.remote_offset, reinterpret_cast<std::uint64_t>(op.local), op.length, which});
    }
    // The agent serves a read only from the region whose rkey it names.
    req.source_rkey = remote.packed_rkey_;
    if (Status st = send_read_request(req, std::make_shared<PendingRead>(), read); !st.ok()) {
      return tl::unexpected(st);
    }
  }
  return read;
}

Result<OwnerRead> Peer::start_stream_by_owner(const RemoteRegion& remote, std::span<const RmaOp> ops, ReadSink sink) {
  if (Status h = health(); !h.ok()) return tl::unexpected(h);
  OwnerRead read;
  read.peer_ = this;
  if (ops.empty()) return read;
  for (const RmaOp& op : ops) {
    if (op.length == 0 || op.remote_offset > remote.length_ || op.length > remote.length_ - op.remote_offset ||
        (op.local == nullptr && !sink)) {
      return make_error(StatusCode::kInvalidArgument,
                        "owner read: op of " + std::to_string(op.length) + " bytes falls outside the remote region");
    }
  }
  Transport::Impl& impl = *owner_->impl_;
  for (std::size_t first = 0; first < ops.size(); first += kMaxReadOps) {
    const auto part = ops.subspan(first, std::min(kMaxReadOps, ops.size() - first));
    ReadRequest req;
    req.reader_address = impl.address;
    req.reader_peer_errors = mode_ == ErrorMode::kPeer;
    req.stream = true;
    auto pending = std::make_shared<PendingRead>();
    pending->stream = true;
    pending->sink = sink;
    pending->first_op = first;
    for (const RmaOp& op : part) {
      req.ops.push_back({remote.base_ + op.remote_offset, 0, op.length, 0});
      pending->locals.push_back(op.local);
      pending->lengths.push_back(op.length);
      pending->expected += op.length;
    }
    req.source_rkey = remote.packed_rkey_;
    if (Status st = send_read_request(req, std::move(pending), read); !st.ok()) return tl::unexpected(st);
  }
  return read;
}

Status Peer::send_read_request(ReadRequest& req, std::shared_ptr<PendingRead> pending, OwnerRead& read) {
  Transport::Impl& impl = *owner_->impl_;
  req.id = impl.next_read_id.fetch_add(1);
  auto* buf = new std::string(encode_read_request(req));
  if (buf->size() > kMaxReadRequestBytes) {
    delete buf;
    return Status(StatusCode::kInvalidArgument, "owner read request too large");
  }
  {
    std::lock_guard lock(impl.reads_mu);
    impl.reads.emplace(req.id, pending);
  }
  read.parts_.emplace_back(req.id, std::move(pending));
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  // A stream is answered over the endpoint UCX paired with ours (REPLY); a
  // put-based read over one the owner opens back to us.
  p.flags = UCP_AM_SEND_FLAG_EAGER | (req.stream ? UCP_AM_SEND_FLAG_REPLY : 0);
  p.cb.send = on_send_done;
  p.user_data = buf;
  ucs_status_ptr_t sreq = ucp_am_send_nbx(ep_, kAmReadRequest, nullptr, 0, buf->data(), buf->size(), &p);
  if (!UCS_PTR_IS_PTR(sreq)) {
    delete buf;
    if (UCS_PTR_IS_ERR(sreq)) return to_status(UCS_PTR_STATUS(sreq), "sending an owner read request");
  }
  return Status();
}

OwnerRead::OwnerRead(OwnerRead&& other) noexcept : peer_(other.peer_), parts_(std::move(other.parts_)) {
  other.parts_.clear();
}

OwnerRead& OwnerRead::operator=(OwnerRead&& other) noexcept {
  if (this != &other) {
    forget();
    peer_ = other.peer_;
    parts_ = std::move(other.parts_);
    other.parts_.clear();
  }
  return *this;
}

OwnerRead::~OwnerRead() { forget(); }

void OwnerRead::forget() {
  if (parts_.empty()) return;
  peer_->forget_reads(parts_);
  parts_.clear();
}

void Peer::forget_reads(std::span<const std::pair<std::uint64_t, std::shared_ptr<PendingRead>>> parts) {
  Transport::Impl& impl = *owner_->impl_;
  {
    std::lock_guard lock(impl.reads_mu);
    for (const auto& [id, pending] : parts) impl.reads.erase(id);
  }
  // A piece being placed right now finishes first; none is placed after.
  for (const auto& [id, pending] : parts) {
    if (!pending->stream) continue;
    std::lock_guard lock(pending->mu);
    pending->forgotten = true;
  }
}

Status OwnerRead::wait(Deadline deadline, bool yield_when_idle) {
  Status result;
  // A stream is complete when its reply came and so did all its bytes.
  auto complete = [](const PendingRead& p) {
    return p.done.load(std::memory_order_acquire) &&
           (!p.stream || p.status.load() != UCS_OK || p.received.load(std::memory_order_acquire) == p.expected);
  };
  for (const auto& [id, pending] : parts_) {
    while (result.ok() && !complete(*pending)) {
      if (peer_->state_->dead.load(std::memory_order_acquire)) {
        result = peer_->health();
      } else if (deadline.expired()) {
        result = Status(StatusCode::kDeadlineExceeded, "owner read: no reply before the deadline");
      } else if (peer_->owner_->progress() == 0 && yield_when_idle) {
        sched_yield();
      }
    }
    if (!result.ok()) break;
    if (Status s = to_status(static_cast<ucs_status_t>(pending->status.load()), "owner read"); !s.ok()) {
      result = s;
      break;
    }
  }
  forget();  // replies that come later find no one waiting
  return result;
}

}  // namespace kvpool::transport
