#pragma once
// Server: the listening side of the control protocol (frame.h), over TCP.
//
// Each accepted connection must authenticate (auth.h): the server sends a
// challenge at once, the client's hello must carry its proof, and only a
// hello whose proof checks out is answered with the server's role, id,
// version and proof; only then are frames handed to the Handler. A wrong or
// missing proof gets a kPermissionDenied error reply (logged at warn with the
// peer's address) and the connection closes; so does any frame before the
// hello. An unauthenticated peer is answered nothing else.
// Requests on a connection are pipelined: the server keeps reading while
// earlier requests are pending, and each reply goes out when the handler
// completes it, in completion order, matched by request id.
//
// Bad input closes only the connection it came on: a bad magic, a foreign
// protocol version, a length over max_frame or an unknown flag bit is logged
// at warn with the peer's address; a peer hanging up mid-frame is logged at
// debug. Nothing is allocated from a length that has not been checked
// against max_frame.
//
// Threads: `threads` io threads run every socket operation and every Handler
// call; the calls of one connection never overlap (a strand per connection),
// those of different connections may. Handlers must not block: a request
// that waits (WaitFor) keeps its Responder and replies later from any
// thread.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "kvpool/status.h"
#include "runtime/common/tenants.h"
#include "runtime/rpc/frame.h"

namespace kvpool::rpc {

struct Request {
  std::uint64_t connection_id = 0;  // unique per Server, never reused
  Role peer_role = Role::kTool;     // from the connection's hello
  std::string peer_id;              // from the connection's hello
  // The tenant the peer authenticated as (tenants.h); empty for a peer that
  // proved the cluster secret (full access). The handler enforces it.
  std::string tenant;
  std::uint16_t type = 0;
  std::uint64_t request_id = 0;
  std::string payload;
};

namespace detail {
struct PendingReply;
class Connection;
}  // namespace detail

// The way to answer one Request. Copyable; every copy answers the same
// request, and only the first reply() or fail() of all copies is sent (a
// second is dropped and logged at debug). Thread-safe: call it from any
// thread, now or seconds later. Once the connection is gone (client left,
// server stopped or destroyed) both calls are harmless no-ops.
//
// If every copy is destroyed without an answer, the client gets kInternal
// ("request dropped by the server") rather than waiting out its deadline.
class Responder {
 public:
  Responder() = default;  // answers nothing

  // Sends `payload` as the reply. A payload over the server's max_frame is
  // replaced by a kInternal error reply (logged at warn).
  void reply(std::string payload) const;
  // Sends an error reply with the status's code and message. An ok status
  // is sent as kInternal: an error reply must read as an error.
  void fail(const Status& status) const;

 private:
  friend class detail::Connection;
  explicit Responder(std::shared_ptr<detail::PendingReply> state) : state_(std::move(state)) {}
  // Marks the request answered; the connection to answer on, or null where
  // there is none or the request was answered already.
  std::shared_ptr<detail::Connection> claim() const;
  std::shared_ptr<detail::PendingReply> state_;
};

// Called on an io thread for every request after the hello. It owns the
// Request; it answers now or later through the Responder.
using Handler = std::function<void(Request, Responder)>;

// For a handler's default case: fails the request with kUnimplemented naming
// the type, and logs the peer and type at warn.
void fail_unknown_type(const Request& request, const Responder& responder);

struct ServerOptions {
  std::string host = "127.0.0.1";  // an address or a name; "0.0.0.0" for all
  std::uint16_t port = 0;          // 0: the OS picks; see Server::port()
  std::size_t max_frame = kDefaultMaxFrame;
  int threads = 1;
  Role role = Role::kCoordinator;
  std::string server_id;
  std::string version;
  // A connection that has not completed its hello by then is closed (warn).
  std::chrono::milliseconds hello_timeout{10000};
  // Open connections at most: one more is told kResourceExhausted ("too
  // many connections") in place of the challenge, and closed.
  std::size_t max_connections = 16384;
  // The cluster secret that authenticates every connection: this file, or
  // when empty the discovery order of runtime/common/secret.h
  // (KVPOOL_SECRET_FILE, then the default path). Read once, by start().
  std::string secret_file;
  // When no secret file exists there, create one (kvpool-coordinator and
  // kvpool-agent --standalone do); otherwise start() fails.
  bool create_secret = false;
  // Run every connection inside TLS 1.3 keyed by the secret (tls.h), from
  // the hello on: encrypts the control traffic. Clients follow the server's
  // choice (it is in the challenge); a plaintext hello is then refused.
  bool tls = false;
  // Tenants who may authenticate with their own keys (auth.h); null or
  // empty: only the cluster secret is accepted. Each Request says which.
  std::shared_ptr<const TenantTable> tenants;
  // Called once, on an io thread, when a connection that completed its hello
  // closes for any reason but Server::stop(); no Handler call for that
  // connection starts afterwards. Lets the coordinator drop what a vanished
  // client held. With threads > 1, calls for different connections (and
  // Handler calls) may run at the same time.
  std::function<void(std::uint64_t connection_id)> on_disconnect;
};

class Server {
 public:
  // Loads the secret, binds, listens and starts the io threads.
  // kInvalidArgument on bad options (threads < 1, id too long, host not an
  // address), kFailedPrecondition when the port is taken or the secret file
  // is missing or unsafe (secret.h), kUnavailable when the host does not
  // resolve.
  static Result<std::unique_ptr<Server>> start(const ServerOptions& options, Handler handler);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  // Calls stop().
  ~Server();

  // The bound port (the OS's pick when options.port was 0).
  std::uint16_t port() const;

  // Closes the listener and every connection, then joins the io threads.
  // Idempotent. Pending Responders become no-ops; on_disconnect is not
  // called. Must not be called from a Handler or on_disconnect (it would
  // join its own thread).
  void stop();

  // Sends an unsolicited message (request id 0, flags 0) on a connection.
  // Thread-safe. kNotFound when the connection is unknown or gone (or has not
  // finished its hello), kInvalidArgument when the payload exceeds
  // max_frame. OK means queued, not delivered.
  Status push(std::uint64_t connection_id, std::uint16_t type, std::string payload);

  struct Impl;

 private:
  explicit Server(std::shared_ptr<Impl> impl);
  // Shared with every connection (which holds it so the io_context outlives
  // any socket, even one whose last reference a Responder drops after stop).
  std::shared_ptr<Impl> impl_;
};

}  // namespace kvpool::rpc
