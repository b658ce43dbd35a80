#pragma once
// Client: one TCP connection to a control-protocol server (frame.h), shared
// by every thread of the process that talks to it.
//
// connect() reads the cluster secret, dials, answers the server's challenge
// with the hello and checks the server's proof in the hello reply (auth.h):
// the client and the server each prove they know the secret. Calls are
// pipelined on the one connection: any number of threads may call at once,
// and replies are matched to calls by request id in whatever order they
// come. One io thread per Client does all socket work and runs call_async
// callbacks and the push handler.
//
// Failure model: every call ends, with a reply or an error, by its deadline.
// - error reply from the server: its code and message;
// - deadline passed: kDeadlineExceeded (a late reply is dropped);
// - connection lost (server gone, protocol error, close()): every pending
//   and every later call fails with kUnavailable naming the reason.
// A lost connection is not re-established: make a new Client. (Reconnection
// is a later change; it would sit inside Impl, behind this interface.)

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "kvpool/status.h"
#include "runtime/common/units.h"
#include "runtime/rpc/frame.h"

namespace kvpool::rpc {

struct ClientOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  Role role = Role::kTool;
  std::string client_id;
  // Largest payload sent or accepted; a bigger reply from the server closes
  // the connection (kUnavailable).
  std::size_t max_frame = kDefaultMaxFrame;
  // The cluster secret file (runtime/common/secret.h); empty: discover it
  // (KVPOOL_SECRET_FILE, then the default path). Read on every connect().
  std::string secret_file;
};

class Client {
 public:
  // Connects and authenticates, all by `deadline`. The caller owns the
  // Client. kUnavailable when the server cannot be reached,
  // kDeadlineExceeded when the deadline passes first, kFailedPrecondition
  // when the secret file is missing or unsafe (before dialing), the server's
  // code when it refuses the hello (kPermissionDenied: it does not share our
  // secret; kFailedPrecondition: another protocol version),
  // kPermissionDenied when the server fails to prove it knows the secret,
  // kInvalidArgument on bad options.
  static Result<std::unique_ptr<Client>> connect(const ClientOptions& options, Deadline deadline);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  // close(), then joins the io thread. Must not run on the io thread (from a
  // callback or the push handler).
  ~Client();

  // Sends a request and blocks for its reply payload. Thread-safe.
  // kInvalidArgument when the payload exceeds max_frame, kDeadlineExceeded,
  // kUnavailable, or the server's error.
  Result<std::string> call(std::uint16_t type, std::string payload, Deadline deadline);

  // As call(), but `done` runs on the io thread with the result (exactly
  // once, also when the call fails before it is sent). `done` must not block:
  // it holds up every other reply. Thread-safe.
  void call_async(std::uint16_t type, std::string payload, Deadline deadline,
                  std::function<void(Result<std::string>)> done);

  // Runs for every unsolicited message from the server, on the io thread.
  // Thread-safe; replaces the previous handler. Pushes arriving with no
  // handler set are dropped (logged at debug).
  void set_push_handler(std::function<void(std::uint16_t type, std::string payload)> handler);

  // What the server said in its hello reply.
  const HelloReply& server() const;

  // False once the connection is lost or closed.
  bool connected() const;

  // Closes the connection; pending calls fail with kUnavailable. Idempotent,
  // thread-safe, does not wait (callbacks may still be running on the io
  // thread when it returns).
  void close();

  struct Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpool::rpc
