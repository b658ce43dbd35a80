#pragma once
// A coordinator that lies, for tests of what a client does with a
// coordinator's mistakes: an rpc::Server that forwards every request to a
// real coordinator (one upstream connection) and lets the test rewrite a
// reply, push a message in front of it, or hold requests unanswered. The
// real coordinator still does all the work; the proxy only changes what the
// client is told.

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/rpc/server.h"
#include "tests/integration/pool_fixture.h"

namespace kvpool::testing {

class ProxyCoordinator {
 public:
  // Rewrites the payload of a successful reply to a request of `type`.
  using Rewrite = std::function<void(std::uint16_t type, std::string& reply)>;
  // Runs just before a reply to a request of `type` goes out on
  // `connection` (server().push there lands in front of the reply).
  using BeforeReply = std::function<void(std::uint16_t type, std::uint64_t connection)>;

  // Listens on 127.0.0.1:`port` (0: the OS picks) and forwards to
  // `upstream` (host:port), authenticated with the environment's secret.
  static std::unique_ptr<ProxyCoordinator> start(const std::string& upstream, std::uint16_t port = 0) {
    auto p = std::unique_ptr<ProxyCoordinator>(new ProxyCoordinator());
    p->upstream_ = raw_client(upstream);
    if (!p->upstream_) return nullptr;
    rpc::ServerOptions o;
    o.port = port;
    o.threads = 2;
    o.server_id = "proxy-coordinator";
    o.version = "0.1.0";
    ProxyCoordinator* self = p.get();
    auto s =
        rpc::Server::start(o, [self](rpc::Request req, rpc::Responder resp) { self->handle(std::move(req), resp); });
    if (!s) return nullptr;
    p->server_ = std::move(*s);
    return p;
  }

  ~ProxyCoordinator() {
    if (server_) server_->stop();
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(server_->port()); }
  std::uint16_t port() const { return server_->port(); }
  rpc::Server& server() { return *server_; }

  void set_rewrite(Rewrite r) {
    std::lock_guard lock(mu_);
    rewrite_ = std::move(r);
  }
  void set_before_reply(BeforeReply b) {
    std::lock_guard lock(mu_);
    before_reply_ = std::move(b);
  }
  // While held, requests get no answer (their Responders are kept, so the
  // client waits out its deadline).
  void set_hold(bool hold) {
    std::lock_guard lock(mu_);
    hold_ = hold;
  }
  std::size_t held() {
    std::lock_guard lock(mu_);
    return held_.size();
  }

 private:
  ProxyCoordinator() = default;

  void handle(rpc::Request req, const rpc::Responder& resp) {
    Rewrite rewrite;
    BeforeReply before;
    {
      std::lock_guard lock(mu_);
      if (hold_) {
        held_.push_back(resp);
        return;
      }
      rewrite = rewrite_;
      before = before_reply_;
    }
    const std::uint16_t type = req.type;
    const std::uint64_t connection = req.connection_id;
    upstream_->call_async(type, std::move(req.payload), Deadline::after(scaled(std::chrono::seconds(10))),
                          [resp, rewrite, before, type, connection](Result<std::string> r) {
                            if (!r) return resp.fail(r.error());
                            if (rewrite) rewrite(type, *r);
                            if (before) before(type, connection);
                            resp.reply(std::move(*r));
                          });
  }

  std::unique_ptr<rpc::Client> upstream_;
  std::mutex mu_;
  Rewrite rewrite_;                   // guarded by mu_
  BeforeReply before_reply_;          // guarded by mu_
  bool hold_ = false;                 // guarded by mu_
  std::vector<rpc::Responder> held_;  // guarded by mu_
  // Declared last: stopped (no handler running) before the rest goes.
  std::unique_ptr<rpc::Server> server_;
};

}  // namespace kvpool::testing
