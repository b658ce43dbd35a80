#include "runtime/metrics/http_server.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "runtime/common/asio_status.h"
#include "runtime/common/logging.h"
#include "runtime/common/process_util.h"

namespace kvpool::metrics {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto kIdleTimeout = std::chrono::seconds(30);

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("metrics");
  return l;
}

}  // namespace

// Sessions and handlers point at Impl without owning it: stop() joins the
// io thread before Impl goes, and ~io_context destroys what is still queued.
struct MetricsServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::shared_ptr<const Registry> registry;
  std::thread thread;
  std::atomic<bool> stopped{false};
  std::uint16_t port = 0;

  // One HTTP connection: read a request, answer, repeat while keep-alive.
  struct Session : std::enable_shared_from_this<Session> {
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    http::request<http::string_body> req;
    http::response<http::string_body> res;
    Impl* server;

    Session(tcp::socket s, Impl* srv) : stream(std::move(s)), server(srv) {}

    void read() {
      req = {};
      stream.expires_after(kIdleTimeout);
      http::async_read(stream, buffer, req,
                       [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
    }

    void on_read(beast::error_code ec) {
      if (ec) {
        beast::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        return;
      }
      res = {};
      res.version(req.version());
      res.keep_alive(req.keep_alive());
      res.set(http::field::server, "kvpool");
      std::string target(req.target());
      if (auto q = target.find('?'); q != std::string::npos) target.resize(q);
      if (req.method() != http::verb::get && req.method() != http::verb::head) {
        res.result(http::status::method_not_allowed);
        res.set(http::field::content_type, "text/plain");
        res.body() = "method not allowed\n";
      } else if (target == "/metrics") {
        res.result(http::status::ok);
        res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        res.body() = server->registry->render();
      } else if (target == "/") {
        res.result(http::status::ok);
        res.set(http::field::content_type, "text/plain");
        res.body() = "kvpool metrics: GET /metrics\n";
      } else {
        res.result(http::status::not_found);
        res.set(http::field::content_type, "text/plain");
        res.body() = "not found\n";
      }
      res.prepare_payload();
      if (req.method() == http::verb::head) res.body().clear();
      http::async_write(stream, res, [self = shared_from_this()](beast::error_code wec, std::size_t) {
        if (wec || !self->res.keep_alive()) {
          beast::error_code ignored;
          self->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
          return;
        }
        self->read();
      });
    }
  };

  void accept() {
    acceptor.async_accept([self = this](beast::error_code ec, tcp::socket socket) {
      if (ec) {
        if (ec != asio::error::operation_aborted) logger()->warn("metrics accept: {}", ec.message());
        if (self->stopped.load() || !self->acceptor.is_open()) return;
      } else {
        std::make_shared<Session>(std::move(socket), self)->read();
      }
      self->accept();
    });
  }
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsServer::~MetricsServer() { stop(); }

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& host, std::uint16_t port,
                                                            std::shared_ptr<const Registry> registry) {
  auto impl = std::make_unique<Impl>();
  impl->registry = std::move(registry);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) return make_error(StatusCode::kInvalidArgument, "metrics address '" + host + "' is not an IP address");
  tcp::endpoint endpoint(address, port);
  const std::string where = host + ":" + std::to_string(port);
  if (impl->acceptor.open(endpoint.protocol(), ec); ec) return tl::unexpected(to_status(ec, "metrics " + where));
  if (impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec); ec) {
    return tl::unexpected(to_status(ec, "metrics " + where));
  }
  if (impl->acceptor.bind(endpoint, ec); ec) return tl::unexpected(to_status(ec, "metrics bind " + where));
  if (impl->acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return tl::unexpected(to_status(ec, "metrics listen " + where));
  }
  impl->port = impl->acceptor.local_endpoint().port();
  impl->accept();
  impl->thread = std::thread([raw = impl.get()] { raw->io.run(); });
  logger()->info("metrics on http://{}:{}/metrics", host, impl->port);
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

std::uint16_t MetricsServer::port() const { return impl_->port; }

void MetricsServer::stop() {
  if (!impl_ || impl_->stopped.exchange(true)) return;
  // Stopping the io_context abandons every session; their handlers (and the
  // sessions they hold) are destroyed with the io_context. With the thread
  // joined, nothing else touches the acceptor: close it, so new connections
  // are refused at once instead of waiting in the backlog.
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  boost::system::error_code ignored;
  impl_->acceptor.close(ignored);
}

Result<std::unique_ptr<MetricsServer>> start_from_flags(const std::string& listen, const std::string& port_file,
                                                        std::shared_ptr<const Registry> registry) {
  if (listen.empty()) return std::unique_ptr<MetricsServer>();
  auto hp = parse_host_port(listen);
  if (!hp) return make_error(StatusCode::kInvalidArgument, "--metrics: " + hp.error().message());
  auto server = MetricsServer::start(hp->first, hp->second, std::move(registry));
  if (!server) return tl::unexpected(server.error());
  if (!port_file.empty()) {
    if (Status s = write_port_file(port_file, (*server)->port()); !s.ok()) return tl::unexpected(s);
  }
  return server;
}

}  // namespace kvpool::metrics
