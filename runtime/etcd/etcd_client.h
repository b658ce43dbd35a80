#pragma once
// A small etcd v3 client over etcd's JSON gateway (HTTP/1.1, /v3/...), with
// Boost.Beast. etcd's gRPC protos import gogoproto and Google API protos that
// Debian does not ship, so the gateway is the practical route; what kvpool
// needs (range, put, delete, compare-and-swap transactions, leases, watches)
// is all there. Keys and values are bytes (base64 on the wire).
//
// Every call has a deadline (options.timeout) covering all endpoints tried;
// a connection error, a timeout (one endpoint gets at most half the
// deadline) or an "unavailable" answer (no leader, leader changed) moves on
// to the next endpoint, round after round until the deadline, so a cluster
// that lost one member of three, even raft's leader, keeps working. One TCP connection per call: the coordinator and agent talk
// to etcd a few times a second, not per block.
//
// Errors: kUnavailable (no endpoint answered), kDeadlineExceeded,
// kNotFound (etcd's NotFound, e.g. an unknown lease), kInvalidArgument,
// kFailedPrecondition, kInternal (a malformed answer).
//
// Thread-safety: Client is safe to use from several threads at once.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvpool/status.h"

namespace kvpool::etcd {

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const { return host + ":" + std::to_string(port); }
};

// "127.0.0.1:2379,http://10.0.0.2:2379" -> endpoints. https is refused
// (kInvalidArgument): the gateway client speaks plain HTTP only.
Result<std::vector<Endpoint>> parse_endpoints(const std::string& text);

struct ClientOptions {
  std::vector<Endpoint> endpoints;
  std::chrono::milliseconds timeout{3000};
};

struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;
  std::int64_t version = 0;
  std::int64_t lease = 0;
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  std::int64_t revision = 0;  // the store's revision when answered
};

// One comparison of a transaction.
struct Compare {
  enum class Target { kCreate, kMod, kVersion, kValue };
  enum class Op { kEqual, kNotEqual, kGreater, kLess };
  std::string key;
  Target target = Target::kCreate;
  Op op = Op::kEqual;
  std::int64_t number = 0;  // revision or version
  std::string value;        // for kValue

  static Compare created(const std::string& key, std::int64_t rev, Op op = Op::kEqual) {
    return {key, Target::kCreate, op, rev, {}};
  }
  static Compare modified(const std::string& key, std::int64_t rev, Op op = Op::kEqual) {
    return {key, Target::kMod, op, rev, {}};
  }
  static Compare value_is(const std::string& key, const std::string& v, Op op = Op::kEqual) {
    return {key, Target::kValue, op, 0, v};
  }
};

// One operation of a transaction.
struct TxnOp {
  enum class Kind { kPut, kDelete, kRange };
  Kind kind = Kind::kRange;
  std::string key;
  std::string value;
  std::int64_t lease = 0;
  bool prefix = false;  // kDelete, kRange: every key starting with `key`

  static TxnOp put(const std::string& k, const std::string& v, std::int64_t lease = 0) {
    return {Kind::kPut, k, v, lease, false};
  }
  static TxnOp del(const std::string& k, bool prefix = false) { return {Kind::kDelete, k, {}, 0, prefix}; }
  static TxnOp get(const std::string& k, bool prefix = false) { return {Kind::kRange, k, {}, 0, prefix}; }
};

struct TxnResult {
  bool succeeded = false;
  std::int64_t revision = 0;
  // The answers of the kRange operations of the branch that ran, in order.
  std::vector<RangeResult> ranges;
};

struct Lease {
  std::int64_t id = 0;
  std::int64_t ttl = 0;  // seconds granted (etcd raises a short TTL to its minimum)
};

class Client {
 public:
  // kInvalidArgument when no endpoint is given.
  static Result<std::unique_ptr<Client>> create(const ClientOptions& options);

  Result<RangeResult> get(const std::string& key) const;
  Result<RangeResult> get_prefix(const std::string& prefix) const;
  // The revision of the put.
  Result<std::int64_t> put(const std::string& key, const std::string& value, std::int64_t lease = 0) const;
  // Keys deleted.
  Result<std::int64_t> del(const std::string& key, bool prefix = false) const;
  Result<TxnResult> txn(const std::vector<Compare>& compares, const std::vector<TxnOp>& success,
                        const std::vector<TxnOp>& failure = {}) const;

  Result<Lease> lease_grant(std::int64_t ttl_seconds) const;
  // Renews once; the TTL left. kNotFound when the lease has expired or was
  // revoked (its keys are gone).
  Result<std::int64_t> lease_keepalive(std::int64_t id) const;
  // kNotFound when it is already gone.
  Status lease_revoke(std::int64_t id) const;

  // GET /health of one endpoint: ok when it reports healthy (it has a leader).
  Status health(const Endpoint& endpoint) const;

  // POST /v3/maintenance/status to one endpoint: its member id, the member
  // raft's leader is (0: none known), raft term, etcd version, database size.
  struct MemberStatus {
    std::uint64_t member_id = 0;
    std::uint64_t leader = 0;
    std::uint64_t raft_term = 0;
    std::string version;
    std::int64_t db_size = 0;
  };
  Result<MemberStatus> member_status(const Endpoint& endpoint) const;

  const ClientOptions& options() const { return options_; }

  // POST `body` (JSON) to `path` on the first endpoint that answers; the
  // decoded JSON answer text. Public for the pieces built on top (watch).
  Result<std::string> post(const std::string& path, const std::string& body) const;

 private:
  explicit Client(ClientOptions options) : options_(std::move(options)) {}
  Result<RangeResult> range(const std::string& key, bool prefix) const;  // get and get_prefix
  ClientOptions options_;
  mutable std::atomic<std::size_t> preferred_{0};  // the endpoint that answered last
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // for kDelete: key and mod_revision only
};

// A watch on one key or a prefix, from a revision on, delivered in order on
// the watch's own thread. When the stream breaks (a member dies, etcd
// restarts) it reconnects to the next endpoint and resumes after the last
// revision delivered, so no event is lost or repeated. If etcd has compacted
// the revisions it needs, `on_reset` runs (the caller must re-read the state)
// and the watch goes on from the current revision.
//
// Thread-safety: the callbacks run on the watch thread; stop() (or the
// destructor) from any other thread returns once the thread has ended.
class Watch {
 public:
  using OnEvents = std::function<void(const std::vector<WatchEvent>&)>;
  using OnReset = std::function<void()>;
  // start_revision 0: from now on.
  static Result<std::unique_ptr<Watch>> start(const ClientOptions& options, const std::string& key, bool prefix,
                                              std::int64_t start_revision, OnEvents on_events,
                                              OnReset on_reset = {});
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  void stop();
  // Times the stream was (re)established; for tests.
  std::uint64_t connects() const { return connects_.load(); }

 private:
  Watch() = default;
  void run();
  bool stream_once(const Endpoint& ep);
  bool drain_messages(const Endpoint& ep, std::string& pending, bool& established);

  ClientOptions options_;
  std::string key_;
  bool prefix_ = false;
  std::int64_t next_revision_ = 0;  // watch thread only
  OnEvents on_events_;
  OnReset on_reset_;
  std::atomic<bool> stopping_{false};
  // The stream's socket, shut down by stop(). Cleared under the mutex before
  // the socket closes, so stop() never shuts down a reused descriptor.
  std::mutex fd_mutex_;
  int fd_ = -1;
  std::atomic<std::uint64_t> connects_{0};
  std::thread thread_;
};

// The end of a prefix range: the prefix with its last byte incremented
// ("\0" for the whole key space when every byte is 0xff).
std::string prefix_end(const std::string& prefix);

std::string base64_encode(const std::string& bytes);
Result<std::string> base64_decode(const std::string& text);

}  // namespace kvpool::etcd
