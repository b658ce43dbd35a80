#include "runtime/rpc/server.h"

#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <cassert>
#include <mutex>
#include <optional>
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

// One frame waiting to be written: the header and the payload stay separate
// and go out as one gather write, so a reply's payload is never copied.
struct OutFrame {
  HeaderBytes header;
  std::string payload;
};

OutFrame make_frame(std::uint16_t type, std::uint64_t request_id, std::uint32_t flags, std::string payload) {
  FrameHeader h;
  h.type = type;
  h.request_id = request_id;
  h.payload_size = static_cast<std::uint32_t>(payload.size());
  h.flags = flags;
  // Callers check the size against max_frame first; the limit here only
  // guards the u32 field.
  auto bytes = encode_header(h, UINT32_MAX);
  assert(bytes);
  return OutFrame{*bytes, std::move(payload)};
}

OutFrame make_error_frame(std::uint16_t type, std::uint64_t request_id, const Status& status) {
  Status s = status.ok() ? Status(StatusCode::kInternal, "error reply with an ok status") : status;
  return make_frame(type, request_id, kFlagReply | kFlagError, encode_error(s));
}

// Pause before accepting again after accept() failed (out of file
// descriptors, say): retrying at once would spin.
constexpr auto kAcceptRetry = std::chrono::milliseconds(100);

}  // namespace

namespace detail {
class Connection;

// What the copies of one Responder share.
struct PendingReply {
  PendingReply(std::weak_ptr<Connection> c, std::uint64_t id, std::uint16_t t)
      : conn(std::move(c)), request_id(id), type(t) {}
  ~PendingReply();
  // Weak: a reply held for a WaitFor must not keep a dead connection's
  // socket open.
  std::weak_ptr<Connection> conn;
  std::uint64_t request_id;
  std::uint16_t type;
  std::atomic<bool> answered{false};
};
}  // namespace detail

// Shared by the Server and every connection (see server_ in Connection).
struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(const ServerOptions& o, Handler h, Secret s)
      : options(o),
        handler(std::move(h)),
        secret(std::move(s)),
        io(o.threads),
        accept_strand(asio::make_strand(io)),
        acceptor(accept_strand),
        accept_timer(accept_strand) {}

  void accept();
  void on_accept(const error_code& ec, tcp::socket socket);
  // Drops a closed connection from the table; on_disconnect for one that
  // had said hello, unless the server is stopping.
  void remove(std::uint64_t id, bool greeted);

  const ServerOptions options;
  const Handler handler;
  const Secret secret;
  std::unique_ptr<TlsContext> tls;  // set by start() when options.tls; read-only after
  // Declared before everything that refers to it, so it is destroyed last.
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  // The listener's operations and stop()'s close of it run on one strand:
  // with several io threads, an accept completing while stop() closes the
  // listener would otherwise race, and re-arm on a closed acceptor forever.
  asio::strand<asio::io_context::executor_type> accept_strand;
  tcp::acceptor acceptor;
  asio::steady_timer accept_timer;
  bool listening = true;  // accept_strand only
  std::uint16_t port = 0;
  std::vector<std::thread> threads;
  std::atomic<std::uint64_t> next_connection_id{1};

  std::mutex mu;
  // Every open connection, so stop() can close them and push() find them.
  std::unordered_map<std::uint64_t, std::shared_ptr<detail::Connection>> connections;  // guarded by mu
  bool stopping = false;                                                               // guarded by mu

  std::mutex stop_mu;    // serializes stop() callers
  bool stopped = false;  // guarded by stop_mu
};

namespace detail {

// One accepted socket. Reads, the hello, dispatch and closing run on the
// socket's strand; send() may be called from any thread.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(std::shared_ptr<Server::Impl> server, tcp::socket socket, std::uint64_t id, std::string peer)
      : server_(std::move(server)),
        socket_(std::move(socket)),
        hello_timer_(socket_.get_executor()),
        id_(id),
        peer_(std::move(peer)),
        reader_(server_->options.max_frame) {}

  bool greeted() const { return greeted_.load(std::memory_order_acquire); }
  std::size_t max_frame() const { return server_->options.max_frame; }
  const std::string& describe() const { return description_; }

  void start() {
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
      auto nonce = random_bytes(kAuthNonceBytes);
      if (!nonce) {
        self->close(nonce.error().message(), spdlog::level::err);
        return;
      }
      TlsContext* tls = self->server_->tls.get();
      self->challenge_ = AuthChallenge{kAuthHmacSha256, tls ? kAuthFlagTls : std::uint8_t{0}, std::move(*nonce)};
      // The challenge goes first: the client's hello must answer it.
      OutFrame challenge = make_frame(kAuthChallenge, 0, 0, encode_auth_challenge(self->challenge_));
      if (tls == nullptr) {
        self->send(std::move(challenge));
        self->read_more();
      } else {
        self->start_tls(std::move(challenge), *tls);
      }
      // A peer that never says hello would hold a descriptor forever.
      self->hello_timer_.expires_after(self->server_->options.hello_timeout);
      self->hello_timer_.async_wait([self](const error_code& ec) {
        if (ec || self->greeted()) return;
        self->close("no hello within " + std::to_string(self->server_->options.hello_timeout.count()) + " ms",
                    spdlog::level::warn);
      });
    });
  }

  // Queues a frame; thread-safe. Dropped once the connection is closed.
  void send(OutFrame frame) { enqueue(std::move(frame), false); }

 private:
  // Writes the challenge in plaintext (nothing else is queued before the
  // hello), then runs the server side of the TLS handshake; frames are read
  // and written through TLS from then on.
  void start_tls(OutFrame challenge, TlsContext& tls) {  // strand
    auto frame = std::make_shared<OutFrame>(std::move(challenge));
    std::array<asio::const_buffer, 2> buffers = {asio::buffer(frame->header), asio::buffer(frame->payload)};
    asio::async_write(socket_, buffers, [self = shared_from_this(), frame, &tls](const error_code& ec, std::size_t) {
      if (self->done_) return;
      if (ec) {
        self->close(to_status(ec, "write").message(), spdlog::level::debug);
        return;
      }
      self->tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(self->socket_, tls.ctx);
      self->tls_->async_handshake(asio::ssl::stream_base::server, [self](const error_code& ec) {
        if (self->done_) return;
        if (ec) {
          self->close(tls_handshake_status(ec, "TLS handshake").message(), spdlog::level::warn);
          return;
        }
        self->read_more();
      });
    });
  }

 public:
  // For Server::stop(): refuses further sends now, closes on the strand.
  void abort() {
    {
      std::lock_guard lock(write_mu_);
      closed_ = true;
      queued_.clear();
    }
    asio::post(socket_.get_executor(),
               [self = shared_from_this()] { self->close("server stopping", spdlog::level::debug); });
  }

  // True while replies can still go out: for the dropped-request warning.
  bool accepting_sends() {
    std::lock_guard lock(write_mu_);
    return !closed_ && !linger_close_;
  }

 private:
  void enqueue(OutFrame frame, bool then_close) {
    {
      std::lock_guard lock(write_mu_);
      if (closed_ || linger_close_) return;
      queued_.push_back(std::move(frame));
      if (then_close) linger_close_ = true;
      // One post per burst: replies queued while a write is in flight ride
      // along with the next gather write.
      if (write_active_) return;
      write_active_ = true;
    }
    asio::post(socket_.get_executor(), [self = shared_from_this()] { self->write_next(); });
  }

  void write_next() {  // strand
    bool close_now = false;
    {
      std::lock_guard lock(write_mu_);
      if (closed_) {
        write_active_ = false;
        return;
      }
      if (queued_.empty()) {
        write_active_ = false;
        close_now = linger_close_;
      } else {
        writing_.swap(queued_);
      }
    }
    if (close_now) close("closed after the error reply", spdlog::level::debug);
    if (writing_.empty()) return;
    buffers_.clear();
    for (const OutFrame& f : writing_) {
      buffers_.push_back(asio::buffer(f.header));
      if (!f.payload.empty()) buffers_.push_back(asio::buffer(f.payload));
    }
    auto written = [self = shared_from_this()](const error_code& ec, std::size_t) {
      self->writing_.clear();
      if (ec) {
        self->close(to_status(ec, "write").message(), spdlog::level::info);
        return;
      }
      self->write_next();
    };
    if (tls_) {
      asio::async_write(*tls_, buffers_, std::move(written));
    } else {
      asio::async_write(socket_, buffers_, std::move(written));
    }
  }

  void read_more() {  // strand
    if (done_) return;
    std::span<char> space = reader_.buffer();
    auto got = [self = shared_from_this()](const error_code& ec, std::size_t n) { self->on_read(ec, n); };
    if (tls_) {
      tls_->async_read_some(asio::buffer(space.data(), space.size()), std::move(got));
    } else {
      socket_.async_read_some(asio::buffer(space.data(), space.size()), std::move(got));
    }
  }

  void on_read(const error_code& ec, std::size_t n) {  // strand
    if (done_) return;
    if (ec) {
      if (ec == asio::error::eof && reader_.buffered() > 0) {
        close("peer hung up mid-frame, " + std::to_string(reader_.buffered()) + " bytes of a frame unread",
              spdlog::level::debug);
      } else if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) {
        close("closed by the peer", greeted() ? spdlog::level::info : spdlog::level::debug);
      } else {
        close(to_status(ec, "read").message(), spdlog::level::info);
      }
      return;
    }
    reader_.commit(n);
    while (!done_ && !stop_reading_) {
      auto frame = reader_.next();
      if (!frame) {
        close(frame.error().message(), spdlog::level::warn);
        return;
      }
      if (!*frame) break;
      dispatch(std::move(**frame));
    }
    if (!stop_reading_) read_more();
  }

  void dispatch(Frame frame) {  // strand
    const FrameHeader& h = frame.header;
    if (h.is_reply() || h.is_error()) {
      close("unexpected reply frame (type " + std::to_string(h.type) + ", request " + std::to_string(h.request_id) +
                ") from a client",
            spdlog::level::warn);
      return;
    }
    if (!greeted()) {
      on_hello(frame);
      return;
    }
    if (h.type == kHello) {
      // Harmless, so the connection stays; the client has a bug.
      logger()->warn("{}: second hello ignored", description_);
      send(make_error_frame(h.type, h.request_id,
                            Status(StatusCode::kFailedPrecondition, "hello already done on this connection")));
      return;
    }
    auto pending = std::make_shared<PendingReply>(weak_from_this(), h.request_id, h.type);
    Request request{id_, peer_role_, peer_id_, tenant_, h.type, h.request_id, std::move(frame.payload)};
    server_->handler(std::move(request), Responder(std::move(pending)));
  }

  void on_hello(const Frame& frame) {  // strand
    const FrameHeader& h = frame.header;
    if (h.type != kHello) {
      reject(h, Status(StatusCode::kPermissionDenied,
                       "not authenticated: the first frame on a connection must be a hello with the client's proof, "
                       "got type " +
                           std::to_string(h.type)));
      return;
    }
    auto hello = decode_hello(frame.payload);
    if (!hello) {
      reject(h, hello.error());
      return;
    }
    if (hello->version != kProtocolVersion) {
      reject(h, Status(StatusCode::kFailedPrecondition, "client speaks protocol version " +
                                                            std::to_string(hello->version) + ", server speaks " +
                                                            std::to_string(kProtocolVersion)));
      return;
    }
    auto proof = decode_client_proof(hello->auth);
    if (!proof) {
      reject(h, Status(StatusCode::kPermissionDenied,
                       "authentication failed: the hello carries no valid proof (" + proof.error().message() +
                           "); is the client older than protocol version " + std::to_string(kProtocolVersion) + "?"));
      return;
    }
    // A tenant proves its own key; everyone else the cluster secret.
    std::string_view key = server_->secret.key();
    if (proof->scheme == kAuthHmacSha256Tenant) {
      const TenantTable* tenants = server_->options.tenants.get();
      const Tenant* tenant = tenants != nullptr ? tenants->find(proof->tenant) : nullptr;
      if (tenant == nullptr) {
        reject(h, Status(StatusCode::kPermissionDenied,
                         "authentication failed: no tenant '" + proof->tenant + "' on this server (its --tenants file)"));
        return;
      }
      key = tenant->key;
    }
    if (!constant_time_equal(proof->mac, client_mac(key, challenge_, proof->client_nonce, *hello, proof->tenant))) {
      reject(h, Status(StatusCode::kPermissionDenied,
                       proof->tenant.empty()
                           ? std::string("authentication failed: the client does not know this cluster's secret "
                                         "(check its --secret-file / KVPOOL_SECRET_FILE against the server's)")
                           : "authentication failed: the client does not know tenant '" + proof->tenant +
                                 "''s key (check its credential against the server's --tenants file)"));
      return;
    }
    tenant_ = proof->tenant;
    peer_role_ = hello->role;
    peer_id_ = hello->id;
    description_ = "connection " + std::to_string(id_) + " (" + std::string(role_name(peer_role_)) + " '" + peer_id_ +
                   "' at " + peer_ + ")";
    greeted_.store(true, std::memory_order_release);
    hello_timer_.cancel();
    logger()->info("{}: hello, authenticated{}", description_, tenant_.empty() ? "" : " as tenant '" + tenant_ + "'");
    HelloReply reply{server_->options.role, server_->options.server_id, server_->options.version, {}};
    reply.auth = server_mac(key, challenge_, proof->client_nonce, *hello, reply, tenant_);
    send(make_frame(kHello, h.request_id, kFlagReply, encode_hello_reply(reply)));
  }

  // Answers a protocol error with an error reply, then closes once it is
  // written; reads stop now.
  void reject(const FrameHeader& h, const Status& status) {  // strand
    logger()->warn("{}: {}; closing", description_, status.message());
    stop_reading_ = true;
    enqueue(make_error_frame(h.type, h.request_id, status), true);
  }

  void close(const std::string& reason, spdlog::level::level_enum level) {  // strand
    if (done_) return;
    done_ = true;
    stop_reading_ = true;
    {
      std::lock_guard lock(write_mu_);
      closed_ = true;
      queued_.clear();
    }
    logger()->log(level, "{}: {}", description_, reason);
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    hello_timer_.cancel();
    server_->remove(id_, greeted());
  }

  // First member: the io_context inside must outlive socket_, even when the
  // last reference to this connection is dropped by a Responder after the
  // Server is gone.
  std::shared_ptr<Server::Impl> server_;
  tcp::socket socket_;
  asio::steady_timer hello_timer_;  // strand only
  const std::uint64_t id_;
  const std::string peer_;                                                            // "address:port"
  std::string description_ = "connection " + std::to_string(id_) + " from " + peer_;  // strand; fixed after hello

  // Strand only.
  FrameReader reader_;
  bool done_ = false;
  bool stop_reading_ = false;
  Role peer_role_ = Role::kTool;
  std::string tenant_;  // set by the hello
  std::string peer_id_;
  AuthChallenge challenge_;  // this connection's challenge
  // Set once the TLS handshake has begun; then every read and write goes
  // through it. Wraps socket_ by reference.
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;
  std::vector<OutFrame> writing_;            // the frames of the write in flight
  std::vector<asio::const_buffer> buffers_;  // their gather list, reused
  std::atomic<bool> greeted_{false};         // set on the strand, read by push()

  std::mutex write_mu_;
  std::vector<OutFrame> queued_;  // guarded by write_mu_
  bool write_active_ = false;     // guarded by write_mu_: a write_next is posted or in flight
  bool closed_ = false;           // guarded by write_mu_: sends are dropped
  bool linger_close_ = false;     // guarded by write_mu_: close once the queue drains
};

PendingReply::~PendingReply() {
  if (answered.load(std::memory_order_acquire)) return;
  auto c = conn.lock();
  if (!c || !c->accepting_sends()) return;
  logger()->warn("{}: request {} (type {}) dropped by the handler without a reply", c->describe(), request_id, type);
  c->send(make_error_frame(type, request_id, Status(StatusCode::kInternal, "request dropped by the server")));
}

}  // namespace detail

std::shared_ptr<detail::Connection> Responder::claim() const {
  if (!state_) return nullptr;
  if (state_->answered.exchange(true, std::memory_order_acq_rel)) {
    logger()->debug("second answer to request {} dropped", state_->request_id);
    return nullptr;
  }
  return state_->conn.lock();
}

void Responder::reply(std::string payload) const {
  auto c = claim();
  if (!c) return;
  if (payload.size() > c->max_frame()) {
    logger()->warn("{}: reply to request {} (type {}) is {} bytes, over max_frame {}; sending an error instead",
                   c->describe(), state_->request_id, state_->type, payload.size(), c->max_frame());
    c->send(make_error_frame(state_->type, state_->request_id,
                             Status(StatusCode::kInternal,
                                    "reply of " + std::to_string(payload.size()) + " bytes exceeds the frame limit")));
    return;
  }
  c->send(make_frame(state_->type, state_->request_id, kFlagReply, std::move(payload)));
}

void Responder::fail(const Status& status) const {
  auto c = claim();
  if (!c) return;
  c->send(make_error_frame(state_->type, state_->request_id, status));
}

void fail_unknown_type(const Request& request, const Responder& responder) {
  logger()->warn("connection {} ({} '{}'): unknown message type {}", request.connection_id,
                 role_name(request.peer_role), request.peer_id, request.type);
  responder.fail(Status(StatusCode::kUnimplemented, "unknown message type " + std::to_string(request.type)));
}

void Server::Impl::accept() {
  // A strand per connection: with several io threads, one connection's
  // handlers still run one at a time.
  acceptor.async_accept(asio::make_strand(io),
                        [this](const error_code& ec, tcp::socket socket) { on_accept(ec, std::move(socket)); });
}

void Server::Impl::on_accept(const error_code& ec, tcp::socket socket) {  // accept_strand
  if (!listening || ec == asio::error::operation_aborted) return;
  if (ec) {
    logger()->warn("{}; retrying in {} ms", to_status(ec, "accept").message(), kAcceptRetry.count());
    accept_timer.expires_after(kAcceptRetry);
    accept_timer.async_wait([this](const error_code& e) {
      if (!e && listening) accept();
    });
    return;
  }
  error_code opt_ec;
  // Control messages are small and latency-bound: never wait for Nagle.
  socket.set_option(tcp::no_delay(true), opt_ec);
  error_code ep_ec;
  auto remote = socket.remote_endpoint(ep_ec);
  std::string peer =
      ep_ec ? std::string("unknown peer") : remote.address().to_string() + ":" + std::to_string(remote.port());
  std::size_t open = 0;
  {
    std::lock_guard lock(mu);
    open = connections.size();
  }
  if (open >= options.max_connections) {
    // In place of the challenge, so the client reports why.
    Status why(StatusCode::kResourceExhausted,
               "too many connections: the server holds its limit of " + std::to_string(options.max_connections));
    FrameHeader h;
    h.type = kAuthChallenge;
    h.flags = kFlagReply | kFlagError;
    std::string payload = encode_error(why);
    h.payload_size = static_cast<std::uint32_t>(payload.size());
    if (auto bytes = encode_header(h, options.max_frame)) {
      error_code wec;
      std::array<asio::const_buffer, 2> out{asio::buffer(*bytes), asio::buffer(payload)};
      asio::write(socket, out, wec);
    }
    logger()->warn("{}: refused: {}", peer, why.message());
    socket.close(opt_ec);
    accept();
    return;
  }
  std::uint64_t id = next_connection_id.fetch_add(1, std::memory_order_relaxed);
  auto conn = std::make_shared<detail::Connection>(shared_from_this(), std::move(socket), id, std::move(peer));
  {
    std::lock_guard lock(mu);
    if (stopping) return;  // conn's destructor closes the socket
    connections.emplace(id, conn);
  }
  logger()->debug("{}: accepted", conn->describe());
  conn->start();
  accept();
}

void Server::Impl::remove(std::uint64_t id, bool greeted) {
  bool notify = false;
  {
    std::lock_guard lock(mu);
    if (connections.erase(id) == 0) return;  // stop() took it
    notify = greeted && !stopping && options.on_disconnect;
  }
  if (notify) options.on_disconnect(id);
}

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(); }

std::uint16_t Server::port() const { return impl_->port; }

Result<std::unique_ptr<Server>> Server::start(const ServerOptions& options, Handler handler) {
  if (options.threads < 1) return make_error(StatusCode::kInvalidArgument, "server needs at least one io thread");
  if (options.server_id.size() > kMaxIdBytes || options.version.size() > kMaxIdBytes) {
    return make_error(StatusCode::kInvalidArgument, "server id or version longer than " + std::to_string(kMaxIdBytes));
  }
  if (options.max_frame < 64) return make_error(StatusCode::kInvalidArgument, "max_frame below 64 bytes");
  if (!handler) return make_error(StatusCode::kInvalidArgument, "server without a handler");
  if (options.hello_timeout.count() <= 0)
    return make_error(StatusCode::kInvalidArgument, "hello_timeout must be positive");

  auto secret = options.create_secret ? load_or_create_secret(options.secret_file) : load_secret(options.secret_file);
  if (!secret) return tl::unexpected(secret.error());
  if (!secret->tenant().empty()) {
    return make_error(StatusCode::kFailedPrecondition,
                      "secret file " + secret->path() + " is tenant '" + secret->tenant() +
                          "''s credential, not a cluster secret: a server needs the cluster secret");
  }
  logger()->info("{} '{}' authenticates connections with the cluster secret at {}{}", role_name(options.role),
                 options.server_id, secret->path(), options.tls ? ", TLS on" : "");
  auto impl = std::make_shared<Impl>(options, std::move(handler), std::move(*secret));
  if (options.tls) {
    auto tls = make_tls_context(true, impl->secret.key(), {}, options.tenants.get());
    if (!tls) return tl::unexpected(tls.error());
    impl->tls = std::move(*tls);
  }
  std::string where = options.host + ":" + std::to_string(options.port);
  error_code ec;
  tcp::endpoint endpoint;
  auto address = asio::ip::make_address(options.host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, options.port);
  } else {
    tcp::resolver resolver(impl->io);
    auto results = resolver.resolve(options.host, std::to_string(options.port), ec);
    if (ec) return tl::unexpected(to_status(ec, "resolve " + where));
    if (results.empty()) return make_error(StatusCode::kUnavailable, "resolve " + where + ": no addresses");
    endpoint = results.begin()->endpoint();
  }
  tcp::acceptor& acceptor = impl->acceptor;
  if (acceptor.open(endpoint.protocol(), ec); ec) return tl::unexpected(to_status(ec, "open listener for " + where));
  // A restarted coordinator must rebind at once, not after TIME_WAIT.
  if (acceptor.set_option(tcp::acceptor::reuse_address(true), ec); ec) {
    return tl::unexpected(to_status(ec, "set SO_REUSEADDR on " + where));
  }
  if (acceptor.bind(endpoint, ec); ec) return tl::unexpected(to_status(ec, "bind " + where));
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return tl::unexpected(to_status(ec, "listen on " + where));
  }
  auto local = acceptor.local_endpoint(ec);
  if (ec) return tl::unexpected(to_status(ec, "local address of " + where));
  impl->port = local.port();

  impl->accept();
  impl->work.emplace(impl->io.get_executor());
  impl->threads.reserve(static_cast<std::size_t>(options.threads));
  for (int i = 0; i < options.threads; ++i) {
    impl->threads.emplace_back([raw = impl.get()] { raw->io.run(); });
  }
  logger()->info("{} '{}' listening on {}:{} ({} io thread{})", role_name(options.role), options.server_id,
                 local.address().to_string(), impl->port, options.threads, options.threads == 1 ? "" : "s");
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

void Server::stop() {
  Impl& impl = *impl_;
  std::lock_guard stop_lock(impl.stop_mu);
  if (impl.stopped) return;
  impl.stopped = true;
  std::unordered_map<std::uint64_t, std::shared_ptr<detail::Connection>> connections;
  {
    std::lock_guard lock(impl.mu);
    impl.stopping = true;
    connections.swap(impl.connections);
  }
  asio::post(impl.accept_strand, [&impl] {
    impl.listening = false;
    error_code ignored;
    impl.acceptor.close(ignored);
    impl.accept_timer.cancel();
  });
  for (auto& [id, conn] : connections) conn->abort();
  connections.clear();
  // With the listener and every socket closed, run() returns once the
  // aborted operations have completed.
  impl.work.reset();
  for (std::thread& t : impl.threads) {
    assert(t.get_id() != std::this_thread::get_id() && "Server::stop() called from an io thread");
    if (t.joinable()) t.join();
  }
  impl.threads.clear();
  logger()->info("{} '{}' on port {} stopped", role_name(impl.options.role), impl.options.server_id, impl.port);
}

Status Server::push(std::uint64_t connection_id, std::uint16_t type, std::string payload) {
  if (payload.size() > impl_->options.max_frame) {
    return Status(StatusCode::kInvalidArgument, "push of " + std::to_string(payload.size()) +
                                                    " bytes exceeds max_frame " +
                                                    std::to_string(impl_->options.max_frame));
  }
  std::shared_ptr<detail::Connection> conn;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->connections.find(connection_id);
    if (it != impl_->connections.end()) conn = it->second;
  }
  if (!conn || !conn->greeted()) {
    return Status(StatusCode::kNotFound, "no open connection " + std::to_string(connection_id));
  }
  conn->send(make_frame(type, 0, 0, std::move(payload)));
  return Status();
}

}  // namespace kvpool::rpc
