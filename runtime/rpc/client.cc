#include "runtime/rpc/client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cassert>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/common/logging.h"
#include "runtime/common/secret.h"
#include "runtime/rpc/auth.h"
#include "runtime/rpc/tls.h"

namespace kvpool::rpc {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("rpc");
  return l;
}

constexpr Clock::time_point kNever = Clock::time_point::max();

// Header and payload stay separate and go out in one gather write, so a
// request's payload is never copied.
struct OutFrame {
  HeaderBytes header;
  std::string payload;
  std::size_t sent = 0;  // leading bytes of header + payload already written (a caller's partial send)
};

using Done = std::function<void(Result<std::string>)>;

struct Pending {
  Done done;
  // When the deadline sweep fails the call; kNever for blocking calls, whose
  // caller times out by itself.
  Clock::time_point deadline = kNever;
};

// A blocking call's rendezvous with the io thread, on the caller's stack.
struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Result<std::string>> result;  // guarded by mu
};

}  // namespace

struct Client::Impl {
  explicit Impl(const ClientOptions& o)
      : options(o),
        peer(o.host + ":" + std::to_string(o.port)),
        describe("server at " + peer),
        socket(io),
        resolver(io),
        connect_timer(io),
        deadline_timer(io),
        reader(o.max_frame) {}

  ~Impl() {
    begin_close(Status(StatusCode::kUnavailable, "client closed"));
    work.reset();
    if (thread.joinable()) {
      assert(std::this_thread::get_id() != thread.get_id() && "Client destroyed on its own io thread");
      thread.join();
    }
  }

  void start_thread() {
    work.emplace(io.get_executor());
    thread = std::thread([this] { io.run(); });
    io_thread_id = thread.get_id();
  }

  // Dials options.host:port by `deadline`; on the caller's thread, waiting
  // for the io thread.
  Status dial(Deadline deadline);

  // Steps of Client::connect, on the caller's thread: the TLS handshake the
  // server's challenge asked for, and taking the server's hello reply.
  Status start_tls(const Secret& secret, Deadline deadline);
  void hello_done(HelloReply reply);

  // Registers the call and queues its frame; `done` runs exactly once.
  void start_call(std::uint16_t type, std::string payload, Clock::time_point sweep_at, std::uint64_t id, Done done);
  // Runs `done` with `status` on the io thread.
  void fail_on_io_thread(Done done, Status status) {
    asio::post(io, [done = std::move(done), status = std::move(status)]() mutable { done(tl::unexpected(status)); });
  }

  // Under mu, with no write active: writes what the socket takes of
  // `frame` now; true if some of it is left (frame.sent says how much went).
  bool send_now(OutFrame& frame);
  void write_next();
  void read_more();
  void on_read(const error_code& ec, std::size_t n);
  void on_frame(Frame frame);
  void arm_deadline_timer();
  void expire_calls();

  // Marks the connection closed so later calls fail at once, and has the io
  // thread fail the pending ones. Any thread.
  void begin_close(Status why) {
    {
      std::lock_guard lock(mu);
      if (open) {
        open = false;
        logger()->debug("{}: closing: {}", describe, why.message());
        lost = std::move(why);
      }
    }
    asio::post(io, [this] { lose(Status(), spdlog::level::debug); });
  }
  // io thread: closes the socket and fails every pending call with
  // kUnavailable. `why` is used if the connection was still open.
  void lose(Status why, spdlog::level::level_enum level);

  Status unavailable_locked() const {
    return Status(StatusCode::kUnavailable, "connection to " + describe + " is down: " + lost.message());
  }

  const ClientOptions options;
  const std::string peer;      // "host:port" as configured
  const std::string describe;  // "server at host:port", for messages and logs
  HelloReply server;           // written once by connect(), before the Client is handed out

  // Declared before the objects that use it, so it is destroyed after them.
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  tcp::socket socket;
  tcp::resolver resolver;
  asio::steady_timer connect_timer;
  // One timer for every call_async deadline, armed at the earliest: no
  // timer per call on the hot path, and precise (unlike a periodic sweep,
  // which would cost wakeups while idle and round deadlines up to its tick).
  asio::steady_timer deadline_timer;
  std::thread thread;
  std::thread::id io_thread_id;
  std::atomic<std::uint64_t> next_id{1};

  // io thread only.
  FrameReader reader;
  bool reading_paused = false;  // the challenge came; connect() resumes reading
  // TLS, when the server's challenge asks for it: created by connect()
  // before the hello, used by every read and write after. Wraps `socket`.
  std::unique_ptr<TlsContext> tls_context;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls;
  std::vector<OutFrame> writing;            // the frames of the write in flight
  std::vector<asio::const_buffer> buffers;  // their gather list, reused

  mutable std::mutex mu;
  bool open = false;                                                // guarded by mu: calls are accepted
  Status lost = Status(StatusCode::kUnavailable, "not connected");  // guarded by mu: why open is false
  std::unordered_map<std::uint64_t, Pending> pending;               // guarded by mu
  std::set<std::pair<Clock::time_point, std::uint64_t>> deadlines;  // guarded by mu: call_async sweep order
  Clock::time_point timer_at = kNever;  // guarded by mu: deadline_timer's expiry (or a post to arm it is on its way)
  std::vector<OutFrame> queued;         // guarded by mu
  bool write_active = false;            // guarded by mu: write_next posted or in flight
  bool direct_writes = false;           // guarded by mu: callers may write (plain TCP, after the hello)

  std::mutex push_mu;
  std::function<void(std::uint16_t, std::string)> push_handler;  // guarded by push_mu

  // The server's auth challenge, handed from the io thread to connect():
  // its payload, or why the connection was lost before it came.
  std::promise<Result<std::string>> challenge;
  bool challenge_pending = true;  // guarded by mu: `challenge` is not set yet
};

Status Client::Impl::dial(Deadline deadline) {
  struct Dial {
    std::promise<error_code> done;
    bool finished = false;  // io thread only
    bool timed_out = false;
  };
  auto state = std::make_shared<Dial>();
  asio::post(io, [this, state, at = deadline.at()] {
    auto finish = [this, state](const error_code& ec) {
      if (state->finished) return;
      state->finished = true;
      connect_timer.cancel();
      state->done.set_value(ec);
    };
    if (at != kNever) {
      connect_timer.expires_at(at);
      connect_timer.async_wait([this, state, finish](const error_code& ec) {
        if (ec || state->finished) return;
        state->timed_out = true;
        resolver.cancel();
        error_code ignored;
        socket.close(ignored);
        finish(asio::error::timed_out);
      });
    }
    error_code ec;
    auto address = asio::ip::make_address(options.host, ec);
    if (!ec) {
      socket.async_connect(tcp::endpoint(address, options.port), finish);
      return;
    }
    resolver.async_resolve(options.host, std::to_string(options.port),
                           [this, state, finish](const error_code& ec, tcp::resolver::results_type results) {
                             if (state->finished) return;
                             if (ec) {
                               finish(ec);
                               return;
                             }
                             asio::async_connect(socket, results,
                                                 [finish](const error_code& ec, const tcp::endpoint&) { finish(ec); });
                           });
  });
  error_code ec = state->done.get_future().get();
  if (state->timed_out) {
    return Status(StatusCode::kDeadlineExceeded, "connect to " + peer + ": deadline passed before the server answered");
  }
  if (ec) return to_status(ec, "connect to " + peer);
  // Control messages are small and latency-bound: never wait for Nagle.
  socket.set_option(tcp::no_delay(true), ec);
  return Status();
}

void Client::Impl::start_call(std::uint16_t type, std::string payload, Clock::time_point sweep_at, std::uint64_t id,
                              Done done) {
  FrameHeader h;
  h.type = type;
  h.request_id = id;
  h.payload_size = static_cast<std::uint32_t>(payload.size());
  auto header = encode_header(h, options.max_frame);
  assert(header);  // the caller checked the size
  bool post_write = false;
  bool post_timer = false;
  {
    std::lock_guard lock(mu);
    if (!open) {
      Status s = unavailable_locked();
      fail_on_io_thread(std::move(done), std::move(s));
      return;
    }
    pending.emplace(id, Pending{std::move(done), sweep_at});
    if (sweep_at != kNever) {
      deadlines.emplace(sweep_at, id);
      if (sweep_at < timer_at) {
        timer_at = sweep_at;
        post_timer = true;
      }
    }
    OutFrame frame{*header, std::move(payload)};
    // Nothing is being written: send from this thread, sparing a wake-up of
    // the io thread per call (a round trip on loopback costs a few of them).
    // Never blocks; what the socket does not take now goes the usual way,
    // ahead of any later frame.
    const bool all_sent = !write_active && direct_writes && !send_now(frame);
    if (!all_sent) {
      queued.push_back(std::move(frame));
      // One post per burst: requests queued while a write is in flight ride
      // along with the next gather write.
      if (!write_active) {
        write_active = true;
        post_write = true;
      }
    }
  }
  if (post_write) asio::post(io, [this] { write_next(); });
  if (post_timer) asio::post(io, [this] { arm_deadline_timer(); });
}

bool Client::Impl::send_now(OutFrame& frame) {
  iovec iov[2] = {{frame.header.data(), frame.header.size()}, {frame.payload.data(), frame.payload.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = frame.payload.empty() ? 1 : 2;
  const ssize_t n = ::sendmsg(socket.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  // An error (EAGAIN included) is left to the io thread's write to find.
  if (n > 0) frame.sent = static_cast<std::size_t>(n);
  return frame.sent < frame.header.size() + frame.payload.size();
}

void Client::Impl::write_next() {
  {
    std::lock_guard lock(mu);
    if (queued.empty() || !open) {
      write_active = false;
      queued.clear();
      return;
    }
    writing.swap(queued);
  }
  buffers.clear();
  for (const OutFrame& f : writing) {
    if (f.sent < f.header.size()) buffers.push_back(asio::buffer(f.header) + f.sent);
    const std::size_t payload_sent = f.sent > f.header.size() ? f.sent - f.header.size() : 0;
    if (payload_sent < f.payload.size()) buffers.push_back(asio::buffer(f.payload) + payload_sent);
  }
  auto written = [this](const error_code& ec, std::size_t) {
    writing.clear();
    if (ec) {
      lose(to_status(ec, "write"), spdlog::level::warn);
      {
        std::lock_guard lock(mu);
        write_active = false;
      }
      return;
    }
    write_next();
  };
  if (tls) {
    asio::async_write(*tls, buffers, std::move(written));
  } else {
    asio::async_write(socket, buffers, std::move(written));
  }
}

void Client::Impl::read_more() {
  std::span<char> space = reader.buffer();
  auto got = [this](const error_code& ec, std::size_t n) { on_read(ec, n); };
  if (tls) {
    tls->async_read_some(asio::buffer(space.data(), space.size()), std::move(got));
  } else {
    socket.async_read_some(asio::buffer(space.data(), space.size()), std::move(got));
  }
}

void Client::Impl::on_read(const error_code& ec, std::size_t n) {
  if (ec) {
    if (ec == asio::error::operation_aborted) return;  // we closed it; lose() ran
    if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) {
      lose(Status(StatusCode::kUnavailable, "the server closed the connection"), spdlog::level::warn);
    } else {
      lose(to_status(ec, "read"), spdlog::level::warn);
    }
    return;
  }
  reader.commit(n);
  for (;;) {
    auto frame = reader.next();
    if (!frame) {
      lose(Status(StatusCode::kUnavailable, "protocol error from the server: " + frame.error().message()),
           spdlog::level::warn);
      return;
    }
    if (!*frame) break;
    on_frame(std::move(**frame));
    // After the challenge, connect() resumes reading (through TLS if the
    // server asked for it): a read posted now would take its handshake.
    if (reading_paused) return;
  }
  read_more();
}

void Client::Impl::on_frame(Frame frame) {
  const FrameHeader& h = frame.header;
  bool first = false;
  {
    std::lock_guard lock(mu);
    first = challenge_pending;
    challenge_pending = false;
  }
  if (first && h.type == kAuthChallenge && h.is_reply() && h.is_error()) {
    // The server refused the connection before any handshake (a limit).
    Status refused = decode_error(frame.payload);
    challenge.set_value(tl::unexpected(refused));
    lose(refused, spdlog::level::warn);
    return;
  }
  if (first || h.type == kAuthChallenge) {
    if (!first || h.type != kAuthChallenge || h.flags != 0) {
      std::string why = first ? "its first frame (type " + std::to_string(h.type) +
                                    ") is not an auth challenge: not a kvpool server of protocol version " +
                                    std::to_string(kProtocolVersion) + "?"
                              : "a second auth challenge";
      Status lost_status(StatusCode::kUnavailable, "protocol error from the server: " + why);
      if (first) challenge.set_value(tl::unexpected(lost_status));
      lose(lost_status, spdlog::level::warn);
      return;
    }
    reading_paused = true;
    challenge.set_value(std::move(frame.payload));
    return;
  }
  if (!h.is_reply()) {
    if (h.is_error()) {
      lose(Status(StatusCode::kUnavailable, "protocol error from the server: error flag on a non-reply frame"),
           spdlog::level::warn);
      return;
    }
    std::function<void(std::uint16_t, std::string)> handler;
    {
      std::lock_guard lock(push_mu);
      handler = push_handler;
    }
    if (handler) {
      handler(h.type, std::move(frame.payload));
    } else {
      logger()->debug("{}: push of type {} dropped: no push handler", describe, h.type);
    }
    return;
  }
  Done done;
  {
    std::lock_guard lock(mu);
    auto it = pending.find(h.request_id);
    if (it != pending.end()) {
      done = std::move(it->second.done);
      if (it->second.deadline != kNever) deadlines.erase({it->second.deadline, h.request_id});
      pending.erase(it);
    }
  }
  if (!done) {
    // The call gave up (deadline) before its reply came.
    logger()->debug("{}: late reply to request {} (type {}) dropped", describe, h.request_id, h.type);
    return;
  }
  if (h.is_error()) {
    done(tl::unexpected(decode_error(frame.payload)));
  } else {
    done(std::move(frame.payload));
  }
}

void Client::Impl::arm_deadline_timer() {
  Clock::time_point next;
  {
    std::lock_guard lock(mu);
    next = deadlines.empty() ? kNever : deadlines.begin()->first;
    timer_at = next;
  }
  if (next == kNever) {
    deadline_timer.cancel();
    return;
  }
  deadline_timer.expires_at(next);  // cancels the previous wait
  deadline_timer.async_wait([this](const error_code& ec) {
    if (!ec) expire_calls();
  });
}

void Client::Impl::expire_calls() {
  std::vector<std::pair<std::uint64_t, Done>> expired;
  Clock::time_point now = Clock::now();
  {
    std::lock_guard lock(mu);
    while (!deadlines.empty() && deadlines.begin()->first <= now) {
      std::uint64_t id = deadlines.begin()->second;
      deadlines.erase(deadlines.begin());
      auto it = pending.find(id);
      if (it == pending.end()) continue;
      expired.emplace_back(id, std::move(it->second.done));
      pending.erase(it);
    }
  }
  for (auto& [id, done] : expired) {
    done(make_error(StatusCode::kDeadlineExceeded,
                    "no reply to request " + std::to_string(id) + " from " + describe + " before the deadline"));
  }
  arm_deadline_timer();
}

void Client::Impl::lose(Status why, spdlog::level::level_enum level) {
  std::unordered_map<std::uint64_t, Pending> failed;
  Status reason;
  bool was_open = false;
  bool challenge_unset = false;
  {
    std::lock_guard lock(mu);
    challenge_unset = challenge_pending;
    challenge_pending = false;
    if (open) {
      was_open = true;
      open = false;
      lost = std::move(why);
    }
    failed.swap(pending);
    deadlines.clear();
    timer_at = kNever;
    queued.clear();
    reason = unavailable_locked();
  }
  if (was_open) logger()->log(level, "{}", reason.message());
  error_code ignored;
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
  deadline_timer.cancel();
  connect_timer.cancel();
  for (auto& [id, p] : failed) p.done(tl::unexpected(reason));
  if (challenge_unset) challenge.set_value(tl::unexpected(reason));
}

Status Client::Impl::start_tls(const Secret& secret, Deadline deadline) {
  auto context = make_tls_context(false, secret.key(), secret.tenant());
  if (!context) return context.error();
  tls_context = std::move(*context);
  auto handshake = std::make_shared<std::promise<error_code>>();
  auto handshake_done = handshake->get_future();
  asio::post(io, [this, handshake] {
    tls = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket, tls_context->ctx);
    tls->async_handshake(asio::ssl::stream_base::client,
                         [handshake](const error_code& ec) { handshake->set_value(ec); });
  });
  if (deadline.at() != kNever && handshake_done.wait_until(deadline.at()) != std::future_status::ready) {
    return Status(StatusCode::kDeadlineExceeded, "TLS handshake not done before the deadline");
  }
  if (error_code ec = handshake_done.get()) return tls_handshake_status(ec, "TLS handshake");
  return Status();
}

void Client::Impl::hello_done(HelloReply reply) {
  server = std::move(reply);
  {
    std::lock_guard lock(mu);
    direct_writes = tls == nullptr;  // set on the io thread before the hello was sent
  }
  logger()->info("connected to {} '{}' (version '{}') at {} as {} '{}'", role_name(server.role), server.server_id,
                 server.server_version, peer, role_name(options.role), options.client_id);
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() = default;  // ~Impl closes and joins

Result<std::unique_ptr<Client>> Client::connect(const ClientOptions& options, Deadline deadline) {
  if (options.client_id.size() > kMaxIdBytes) {
    return make_error(StatusCode::kInvalidArgument, "client id longer than " + std::to_string(kMaxIdBytes) + " bytes");
  }
  if (options.max_frame < 64) return make_error(StatusCode::kInvalidArgument, "max_frame below 64 bytes");
  // Before dialing: a missing or unsafe secret file is the caller's to fix.
  auto secret = load_secret(options.secret_file);
  if (!secret) return tl::unexpected(secret.error());
  auto impl = std::make_unique<Impl>(options);
  auto challenge_future = impl->challenge.get_future();
  impl->start_thread();
  if (Status s = impl->dial(deadline); !s.ok()) return tl::unexpected(std::move(s));
  {
    std::lock_guard lock(impl->mu);
    impl->open = true;
  }
  asio::post(impl->io, [raw = impl.get()] { raw->read_more(); });

  std::unique_ptr<Client> client(new Client(std::move(impl)));
  const std::string& peer = client->impl_->peer;
  auto fail = [&client, &peer](StatusCode code, const std::string& message) {
    client->close();
    return make_error(code, "hello to " + peer + ": " + message);
  };
  if (deadline.at() != kNever && challenge_future.wait_until(deadline.at()) != std::future_status::ready) {
    return fail(StatusCode::kDeadlineExceeded, "no auth challenge from the server before the deadline");
  }
  Result<std::string> challenge_bytes = challenge_future.get();
  if (!challenge_bytes) return fail(challenge_bytes.error().code(), challenge_bytes.error().message());
  auto challenge = decode_auth_challenge(*challenge_bytes);
  if (!challenge) return fail(StatusCode::kUnavailable, "bad auth challenge: " + challenge.error().message());
  auto client_nonce = random_bytes(kAuthNonceBytes);
  if (!client_nonce) return fail(client_nonce.error().code(), client_nonce.error().message());
  Impl& im = *client->impl_;
  if ((challenge->flags & kAuthFlagTls) != 0) {
    if (Status s = im.start_tls(*secret, deadline); !s.ok()) return fail(s.code(), s.message());
  }
  asio::post(im.io, [&im] {
    im.reading_paused = false;
    im.read_more();
  });

  Hello hello{kProtocolVersion, options.role, options.client_id, {}};
  const std::string& tenant = secret->tenant();
  hello.auth = encode_client_proof(ClientProof{tenant.empty() ? kAuthHmacSha256 : kAuthHmacSha256Tenant, *client_nonce,
                                               client_mac(secret->key(), *challenge, *client_nonce, hello, tenant),
                                               tenant});
  auto reply = client->call(kHello, encode_hello(hello), deadline);
  if (!reply) {
    if (reply.error().code() == StatusCode::kPermissionDenied) {
      return fail(StatusCode::kPermissionDenied,
                  reply.error().message() + " (this client's secret file: " + secret->path() + ")");
    }
    return fail(reply.error().code(), reply.error().message());
  }
  auto server = decode_hello_reply(*reply);
  if (!server) return fail(StatusCode::kUnavailable, server.error().message());
  if (!constant_time_equal(server->auth,
                           server_mac(secret->key(), *challenge, *client_nonce, hello, *server, tenant))) {
    logger()->warn("{}: the server did not prove it knows the cluster secret (ours: {}); refusing it", peer,
                   secret->path());
    return fail(StatusCode::kPermissionDenied, "the server did not prove it knows the cluster secret in " +
                                                   secret->path() +
                                                   ": refusing it (a server with another secret, or an impostor)");
  }
  client->impl_->hello_done(std::move(*server));
  return client;
}

Result<std::string> Client::call(std::uint16_t type, std::string payload, Deadline deadline) {
  Impl& impl = *impl_;
  if (std::this_thread::get_id() == impl.io_thread_id) {
    // The reply could only be read by this very thread.
    return make_error(StatusCode::kFailedPrecondition, "Client::call from the client's io thread would deadlock");
  }
  if (payload.size() > impl.options.max_frame) {
    return make_error(StatusCode::kInvalidArgument, "request of " + std::to_string(payload.size()) +
                                                        " bytes exceeds max_frame " +
                                                        std::to_string(impl.options.max_frame));
  }
  if (deadline.expired()) return make_error(StatusCode::kDeadlineExceeded, "deadline passed before the call");
  {
    std::lock_guard lock(impl.mu);
    if (!impl.open) return tl::unexpected(impl.unavailable_locked());
  }
  Waiter waiter;
  std::uint64_t id = impl.next_id.fetch_add(1, std::memory_order_relaxed);
  impl.start_call(type, std::move(payload), kNever, id, [&waiter](Result<std::string> r) {
    // Notify under the lock: once it is released the caller may return and
    // destroy the waiter.
    std::lock_guard lock(waiter.mu);
    waiter.result.emplace(std::move(r));
    waiter.cv.notify_one();
  });
  std::unique_lock lock(waiter.mu);
  auto ready = [&waiter] { return waiter.result.has_value(); };
  if (deadline.at() == kNever) {
    waiter.cv.wait(lock, ready);
  } else if (!waiter.cv.wait_until(lock, deadline.at(), ready)) {
    lock.unlock();
    bool withdrawn = false;
    {
      std::lock_guard impl_lock(impl.mu);
      withdrawn = impl.pending.erase(id) > 0;
    }
    if (withdrawn) {
      return make_error(StatusCode::kDeadlineExceeded, "no reply to request " + std::to_string(id) + " (type " +
                                                           std::to_string(type) + ") from " + impl.describe +
                                                           " before the deadline");
    }
    // The io thread took the call an instant ago and is completing it.
    lock.lock();
    waiter.cv.wait(lock, ready);
  }
  return std::move(*waiter.result);
}

void Client::call_async(std::uint16_t type, std::string payload, Deadline deadline,
                        std::function<void(Result<std::string>)> done) {
  Impl& impl = *impl_;
  if (payload.size() > impl.options.max_frame) {
    impl.fail_on_io_thread(
        std::move(done),
        Status(StatusCode::kInvalidArgument, "request of " + std::to_string(payload.size()) +
                                                 " bytes exceeds max_frame " + std::to_string(impl.options.max_frame)));
    return;
  }
  if (deadline.expired()) {
    impl.fail_on_io_thread(std::move(done), Status(StatusCode::kDeadlineExceeded, "deadline passed before the call"));
    return;
  }
  std::uint64_t id = impl.next_id.fetch_add(1, std::memory_order_relaxed);
  impl.start_call(type, std::move(payload), deadline.at(), id, std::move(done));
}

void Client::set_push_handler(std::function<void(std::uint16_t type, std::string payload)> handler) {
  std::lock_guard lock(impl_->push_mu);
  impl_->push_handler = std::move(handler);
}

const HelloReply& Client::server() const { return impl_->server; }

bool Client::connected() const {
  std::lock_guard lock(impl_->mu);
  return impl_->open;
}

void Client::close() { impl_->begin_close(Status(StatusCode::kUnavailable, "closed by the client")); }

}  // namespace kvpool::rpc
