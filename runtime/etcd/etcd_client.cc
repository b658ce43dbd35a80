#include "runtime/etcd/etcd_client.h"

#include <sys/socket.h>

#include <algorithm>
#include <mutex>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "runtime/common/logging.h"
#include "runtime/common/units.h"
#include "runtime/etcd/gateway_json.h"

namespace kvpool::etcd {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("etcd");
  return l;
}

// gRPC status codes as the gateway reports them ("code" of an error body).
StatusCode from_grpc(int code) {
  switch (code) {
    case 3: return StatusCode::kInvalidArgument;
    case 4: return StatusCode::kDeadlineExceeded;
    case 5: return StatusCode::kNotFound;
    case 9: return StatusCode::kFailedPrecondition;
    case 8: return StatusCode::kResourceExhausted;
    case 14: return StatusCode::kUnavailable;
    default: return StatusCode::kInternal;
  }
}

json range_request(const std::string& key, bool prefix) {
  json r = {{"key", base64_encode(key)}};
  if (prefix) r["range_end"] = base64_encode(prefix_end(key));
  return r;
}

json op_json(const TxnOp& op) {
  switch (op.kind) {
    case TxnOp::Kind::kPut: {
      json p = {{"key", base64_encode(op.key)}, {"value", base64_encode(op.value)}};
      if (op.lease != 0) p["lease"] = std::to_string(op.lease);
      return {{"request_put", p}};
    }
    case TxnOp::Kind::kDelete: return {{"request_delete_range", range_request(op.key, op.prefix)}};
    case TxnOp::Kind::kRange: return {{"request_range", range_request(op.key, op.prefix)}};
  }
  return {};
}

json compare_json(const Compare& c) {
  static const char* kTargets[] = {"CREATE", "MOD", "VERSION", "VALUE"};
  static const char* kOps[] = {"EQUAL", "NOT_EQUAL", "GREATER", "LESS"};
  json j = {{"key", base64_encode(c.key)},
            {"target", kTargets[static_cast<int>(c.target)]},
            {"result", kOps[static_cast<int>(c.op)]}};
  switch (c.target) {
    case Compare::Target::kCreate: j["create_revision"] = std::to_string(c.number); break;
    case Compare::Target::kMod: j["mod_revision"] = std::to_string(c.number); break;
    case Compare::Target::kVersion: j["version"] = std::to_string(c.number); break;
    case Compare::Target::kValue: j["value"] = base64_encode(c.value); break;
  }
  return j;
}

Result<json> parse(const std::string& text, const std::string& what) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error(StatusCode::kInternal, "etcd " + what + ": malformed answer '" + text.substr(0, 200) + "'");
  }
  return j;
}

struct HttpAnswer {
  unsigned status = 0;
  std::string body;
};

// One request on a fresh connection, bounded by `deadline`. Network errors
// are kUnavailable (try the next endpoint); a timeout is kDeadlineExceeded.
Result<HttpAnswer> http_exchange(const Endpoint& ep, http::verb verb, const std::string& path,
                                 const std::string& body, Deadline deadline) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  tcp::resolver resolver(io);
  beast::flat_buffer buffer;
  http::request<http::string_body> req{verb, path, 11};
  req.set(http::field::host, ep.to_string());
  req.set(http::field::content_type, "application/json");
  req.keep_alive(false);
  req.body() = body;
  req.prepare_payload();
  http::response<http::string_body> res;
  boost::system::error_code result;
  const char* stage = "resolve";
  auto fail = [&](boost::system::error_code ec) { result = ec; };

  stream.expires_after(deadline.remaining());
  resolver.async_resolve(ep.host, std::to_string(ep.port), [&](boost::system::error_code ec,
                                                                tcp::resolver::results_type hosts) {
    if (ec) return fail(ec);
    stage = "connect";
    stream.async_connect(hosts, [&](boost::system::error_code ec, const tcp::endpoint&) {
      if (ec) return fail(ec);
      stage = "write";
      http::async_write(stream, req, [&](boost::system::error_code ec, std::size_t) {
        if (ec) return fail(ec);
        stage = "read";
        http::async_read(stream, buffer, res, [&](boost::system::error_code ec, std::size_t) {
          if (ec) return fail(ec);
          boost::system::error_code ignored;
          stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        });
      });
    });
  });
  // The resolver has no timeout of its own: bound the whole run.
  io.run_for(deadline.remaining() + std::chrono::milliseconds(50));
  if (!io.stopped()) {
    stream.close();
    io.run();
    return make_error(StatusCode::kDeadlineExceeded, "etcd " + ep.to_string() + " " + path + ": no answer in time");
  }
  if (result) {
    if (result == beast::error::timeout) {
      return make_error(StatusCode::kDeadlineExceeded,
                        "etcd " + ep.to_string() + " " + path + ": timed out at " + stage);
    }
    return make_error(StatusCode::kUnavailable,
                      "etcd " + ep.to_string() + " " + path + ": " + stage + ": " + result.message());
  }
  return HttpAnswer{res.result_int(), std::move(res.body())};
}

}  // namespace

std::string prefix_end(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    auto& c = reinterpret_cast<unsigned char&>(end.back());
    if (c < 0xff) {
      ++c;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

std::string base64_encode(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

Result<std::string> base64_decode(const std::string& text) {
  if (text.size() % 4 != 0) return make_error(StatusCode::kInvalidArgument, "base64: length not a multiple of 4");
  std::string out(3 * text.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return make_error(StatusCode::kInvalidArgument, "base64: malformed text");
  // EVP_DecodeBlock counts the padding as zero bytes.
  std::size_t pad = 0;
  if (!text.empty() && text.back() == '=') ++pad;
  if (text.size() > 1 && text[text.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

Result<std::vector<Endpoint>> parse_endpoints(const std::string& text) {
  std::vector<Endpoint> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? text.size() + 1 : comma + 1;
    if (item.empty()) continue;
    if (item.rfind("https://", 0) == 0) {
      return make_error(StatusCode::kInvalidArgument, "etcd endpoint '" + item + "': https is not supported");
    }
    if (item.rfind("http://", 0) == 0) item = item.substr(7);
    while (!item.empty() && item.back() == '/') item.pop_back();
    auto colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return make_error(StatusCode::kInvalidArgument, "etcd endpoint '" + item + "': expected HOST:PORT");
    }
    int port = 0;
    try {
      std::size_t used = 0;
      port = std::stoi(item.substr(colon + 1), &used);
      if (used != item.size() - colon - 1) port = 0;
    } catch (...) {
      port = 0;
    }
    if (port <= 0 || port > 65535) {
      return make_error(StatusCode::kInvalidArgument, "etcd endpoint '" + item + "': bad port");
    }
    out.push_back({item.substr(0, colon), static_cast<std::uint16_t>(port)});
  }
  if (out.empty()) return make_error(StatusCode::kInvalidArgument, "no etcd endpoint given");
  return out;
}

Result<std::unique_ptr<Client>> Client::create(const ClientOptions& options) {
  if (options.endpoints.empty()) return make_error(StatusCode::kInvalidArgument, "no etcd endpoint given");
  return std::unique_ptr<Client>(new Client(options));
}

Result<std::string> Client::post(const std::string& path, const std::string& body) const {
  const Deadline deadline = Deadline::after(options_.timeout);
  const std::size_t n = options_.endpoints.size();
  const std::size_t first = preferred_.load() % n;
  // One endpoint gets at most half the time (at least 300 ms), so a hung
  // member leaves time for the others.
  const auto per_try = std::max<std::chrono::nanoseconds>(options_.timeout / 2, std::chrono::milliseconds(300));
  Status last;
  // Round after round until the deadline: while a member is down or raft
  // elects a new leader (a second or two), members answer "unavailable"
  // (no leader, leader changed, request timed out) or not at all.
  for (std::size_t i = 0; !deadline.expired(); ++i) {
    if (i > 0 && i % n == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (deadline.expired()) break;
    const Endpoint& ep = options_.endpoints[(first + i) % n];
    const Deadline attempt(std::min(deadline.at(), Clock::now() + per_try));
    auto answer = http_exchange(ep, http::verb::post, path, body, attempt);
    if (!answer) {
      last = answer.error();
      continue;
    }
    if (answer->status == 200) {
      preferred_ = (first + i) % n;
      return std::move(answer->body);
    }
    // The gateway answers errors as {"error", "message", "code"}.
    json j = json::parse(answer->body, nullptr, false);
    int code = 2;
    std::string message = "HTTP " + std::to_string(answer->status);
    if (!j.is_discarded() && j.is_object()) {
      code = j.value("code", 2);
      message = j.value("message", message);
    }
    last = Status(from_grpc(code), "etcd " + ep.to_string() + " " + path + ": " + message);
    if (last.code() != StatusCode::kUnavailable && last.code() != StatusCode::kDeadlineExceeded) {
      return tl::unexpected(last);
    }
  }
  if (last.ok()) last = Status(StatusCode::kDeadlineExceeded, "etcd " + path + ": no endpoint answered in time");
  return tl::unexpected(last);
}

Result<RangeResult> Client::range(const std::string& key, bool prefix) const {
  auto text = post("/v3/kv/range", range_request(key, prefix).dump());
  if (!text) return tl::unexpected(text.error());
  auto j = parse(*text, "range");
  if (!j) return tl::unexpected(j.error());
  return gateway::range_result(*j);
}

Result<RangeResult> Client::get(const std::string& key) const { return range(key, false); }

Result<RangeResult> Client::get_prefix(const std::string& prefix) const { return range(prefix, true); }

Result<std::int64_t> Client::put(const std::string& key, const std::string& value, std::int64_t lease) const {
  json req = {{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0) req["lease"] = std::to_string(lease);
  auto text = post("/v3/kv/put", req.dump());
  if (!text) return tl::unexpected(text.error());
  auto j = parse(*text, "put");
  if (!j) return tl::unexpected(j.error());
  return gateway::header_revision(*j);
}

Result<std::int64_t> Client::del(const std::string& key, bool prefix) const {
  auto text = post("/v3/kv/deleterange", range_request(key, prefix).dump());
  if (!text) return tl::unexpected(text.error());
  auto j = parse(*text, "delete");
  if (!j) return tl::unexpected(j.error());
  return gateway::int_field(*j, "deleted");
}

Result<TxnResult> Client::txn(const std::vector<Compare>& compares, const std::vector<TxnOp>& success,
                              const std::vector<TxnOp>& failure) const {
  json req = {{"compare", json::array()}, {"success", json::array()}, {"failure", json::array()}};
  for (const auto& c : compares) req["compare"].push_back(compare_json(c));
  for (const auto& op : success) req["success"].push_back(op_json(op));
  for (const auto& op : failure) req["failure"].push_back(op_json(op));
  auto text = post("/v3/kv/txn", req.dump());
  if (!text) return tl::unexpected(text.error());
  auto j = parse(*text, "txn");
  if (!j) return tl::unexpected(j.error());
  TxnResult r;
  r.succeeded = j->value("succeeded", false);
  auto revision = gateway::header_revision(*j);
  if (!revision) return tl::unexpected(revision.error());
  r.revision = *revision;
  if (auto rs = j->find("responses"); rs != j->end() && rs->is_array()) {
    for (const auto& resp : *rs) {
      auto rr = resp.find("response_range");
      if (rr == resp.end()) continue;
      auto range = gateway::range_result(*rr);
      if (!range) return tl::unexpected(range.error());
      r.ranges.push_back(std::move(*range));
    }
  }
  return r;
}

Result<Lease> Client::lease_grant(std::int64_t ttl_seconds) const {
  auto text = post("/v3/lease/grant", json{{"TTL", std::to_string(ttl_seconds)}}.dump());
  if (!text) return tl::unexpected(text.error());
  auto j = parse(*text, "lease grant");
  if (!j) return tl::unexpected(j.error());
  if (auto err = j->find("error"); err != j->end() && err->is_string() && !err->get<std::string>().empty()) {
    return make_error(StatusCode::kUnavailable, "etcd lease grant: " + err->get<std::string>());
  }
  auto id = gateway::int_field(*j, "ID");
  if (!id) return tl::unexpected(id.error());
  auto ttl = gateway::int_field(*j, "TTL");
  if (!ttl) return tl::unexpected(ttl.error());
  Lease l{*id, *ttl};
  if (l.id == 0) return make_error(StatusCode::kInternal, "etcd lease grant: no lease id in the answer");
  return l;
}

Result<std::int64_t> Client::lease_keepalive(std::int64_t id) const {
  // A streaming call on the gateway: one request in, one answer out, wrapped
  // in {"result": ...}.
  auto text = post("/v3/lease/keepalive", json{{"ID", std::to_string(id)}}.dump());
  if (!text) return tl::unexpected(text.error());
  auto nl = text->find('\n');
  auto j = parse(nl == std::string::npos ? *text : text->substr(0, nl), "lease keepalive");
  if (!j) return tl::unexpected(j.error());
  if (auto err = j->find("error"); err != j->end()) {
    return make_error(StatusCode::kUnavailable, "etcd lease keepalive: " + err->dump());
  }
  auto res = j->find("result");
  if (res == j->end()) return make_error(StatusCode::kInternal, "etcd lease keepalive: no result");
  auto answered = gateway::int_field(*res, "TTL");
  if (!answered) return tl::unexpected(answered.error());
  const std::int64_t ttl = *answered;
  if (ttl <= 0) return make_error(StatusCode::kNotFound, "etcd lease " + std::to_string(id) + " has expired");
  return ttl;
}

Status Client::lease_revoke(std::int64_t id) const {
  auto text = post("/v3/lease/revoke", json{{"ID", std::to_string(id)}}.dump());
  if (!text) return text.error();
  return Status();
}

Status Client::health(const Endpoint& endpoint) const {
  auto answer = http_exchange(endpoint, http::verb::get, "/health", "", Deadline::after(options_.timeout));
  if (!answer) return answer.error();
  json j = json::parse(answer->body, nullptr, false);
  if (answer->status != 200 || j.is_discarded() || !j.is_object() || j.value("health", "") != "true") {
    return Status(StatusCode::kUnavailable, "etcd " + endpoint.to_string() + " unhealthy: " + answer->body);
  }
  return Status();
}

Result<Client::MemberStatus> Client::member_status(const Endpoint& endpoint) const {
  auto answer = http_exchange(endpoint, http::verb::post, "/v3/maintenance/status", "{}",
                              Deadline::after(options_.timeout));
  if (!answer) return tl::unexpected(answer.error());
  json j = json::parse(answer->body, nullptr, false);
  if (answer->status != 200 || j.is_discarded() || !j.is_object()) {
    return make_error(StatusCode::kUnavailable, "etcd " + endpoint.to_string() + " status: " + answer->body.substr(0, 200));
  }
  MemberStatus st;
  Status bad;
  auto take = [&bad](auto result, auto& out) {
    if (result) out = *result;
    else if (bad.ok()) bad = result.error();
  };
  if (auto h = j.find("header"); h != j.end() && h->is_object()) take(gateway::uint_field(*h, "member_id"), st.member_id);
  take(gateway::uint_field(j, "leader"), st.leader);
  take(gateway::uint_field(j, "raftTerm"), st.raft_term);
  take(gateway::int_field(j, "dbSize"), st.db_size);
  if (!bad.ok()) return tl::unexpected(Status(bad.code(), "etcd " + endpoint.to_string() + " status: " + bad.message()));
  if (auto v = j.find("version"); v != j.end() && v->is_string()) st.version = v->get<std::string>();
  return st;
}

// ---------------------------------------------------------------------------
// Watch

Result<std::unique_ptr<Watch>> Watch::start(const ClientOptions& options, const std::string& key, bool prefix,
                                            std::int64_t start_revision, OnEvents on_events, OnReset on_reset) {
  if (options.endpoints.empty()) return make_error(StatusCode::kInvalidArgument, "no etcd endpoint given");
  std::unique_ptr<Watch> w(new Watch());
  w->options_ = options;
  w->key_ = key;
  w->prefix_ = prefix;
  w->next_revision_ = start_revision;
  w->on_events_ = std::move(on_events);
  w->on_reset_ = std::move(on_reset);
  Watch* raw = w.get();
  w->thread_ = std::thread([raw] { raw->run(); });
  return w;
}

Watch::~Watch() { stop(); }

void Watch::stop() {
  stopping_ = true;
  // Wakes a blocking read on the stream; the thread sees stopping_ and ends.
  {
    std::lock_guard lock(fd_mutex_);
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Watch::run() {
  std::size_t next = 0;
  std::chrono::milliseconds backoff{50};
  while (!stopping_.load()) {
    const Endpoint& ep = options_.endpoints[next % options_.endpoints.size()];
    if (stream_once(ep)) backoff = std::chrono::milliseconds(50);
    if (stopping_.load()) break;
    ++next;
    const auto until = Clock::now() + backoff;
    while (!stopping_.load() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
}

namespace {

// A watch message's events and the revision after the last of them; an error
// if any key-value in it is malformed.
struct DecodedEvents {
  std::vector<WatchEvent> events;
  std::int64_t next = 0;
};

Result<DecodedEvents> decode_events(const json& res, std::int64_t next_revision) {
  std::vector<WatchEvent> events;
  std::int64_t next = next_revision;
  Status malformed;
  if (auto evs = res.find("events"); evs != res.end() && evs->is_array()) {
    for (const auto& e : *evs) {
      WatchEvent ev;
      ev.type = e.value("type", "PUT") == "DELETE" ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
      if (auto kv = e.find("kv"); kv != e.end()) {
        auto decoded = gateway::key_value(*kv);
        if (!decoded) {
          malformed = decoded.error();
          break;
        }
        ev.kv = std::move(*decoded);
      }
      next = std::max(next, ev.kv.mod_revision + 1);
      events.push_back(std::move(ev));
    }
  }
  if (!malformed.ok()) return tl::unexpected(malformed);
  return DecodedEvents{std::move(events), next};
}

bool connect_socket(asio::io_context& io, tcp::socket& sock, const Endpoint& ep) {
  boost::system::error_code ec;
  tcp::resolver resolver(io);
  auto hosts = resolver.resolve(ep.host, std::to_string(ep.port), ec);
  if (ec) return false;
  asio::connect(sock, hosts, ec);
  if (ec) return false;
  return true;
}

void write_watch_request(tcp::socket& sock, const Endpoint& ep, const std::string& key, bool prefix,
                         std::int64_t next_revision, boost::system::error_code& ec) {
  json create = range_request(key, prefix);
  if (next_revision > 0) create["start_revision"] = std::to_string(next_revision);
  http::request<http::string_body> req{http::verb::post, "/v3/watch", 11};
  req.set(http::field::host, ep.to_string());
  req.set(http::field::content_type, "application/json");
  req.body() = json{{"create_request", create}}.dump();
  req.prepare_payload();
  http::write(sock, req, ec);
}

}  // namespace

// One watch stream; returns whether it was established. Plain blocking I/O on
// this thread: stop() shuts the socket down to end a read.
bool Watch::stream_once(const Endpoint& ep) {
  asio::io_context io;
  tcp::socket sock(io);
  boost::system::error_code ec;
  if (!connect_socket(io, sock, ep)) return false;
  {
    std::lock_guard lock(fd_mutex_);
    if (stopping_.load()) return false;
    fd_ = sock.native_handle();
  }
  write_watch_request(sock, ep, key_, prefix_, next_revision_, ec);
  bool established = false;
  if (!ec) {
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);
    std::string pending;  // answer text not yet a whole message
    bool reset = false;
    auto on_chunk = [&](std::uint64_t, boost::string_view body, boost::system::error_code&) -> std::size_t {
      pending.append(body.data(), body.size());
      return body.size();
    };
    parser.on_chunk_body(on_chunk);
    http::read_header(sock, buffer, parser, ec);
    if (!ec && parser.get().result_int() != 200) {
      logger()->warn("etcd watch on {}: HTTP {}", ep.to_string(), parser.get().result_int());
      ec = asio::error::connection_refused;
    }
    while (!ec && !stopping_.load() && !reset) {
      http::read_some(sock, buffer, parser, ec);
      reset = drain_messages(ep, pending, established);
      if (parser.is_done()) break;
    }
  }
  {
    std::lock_guard lock(fd_mutex_);
    fd_ = -1;
  }
  sock.close(ec);
  return established;
}

// Applies the whole messages in `pending` and drops them from it; returns
// whether the stream must be reset (reconnected).
bool Watch::drain_messages(const Endpoint& ep, std::string& pending, bool& established) {
  // Messages are JSON objects one after another (newline-separated).
  for (;;) {
    auto nl = pending.find('\n');
    std::string text = nl == std::string::npos ? pending : pending.substr(0, nl);
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded()) {
      if (nl == std::string::npos) break;
      logger()->warn("etcd watch on {}: malformed message '{}'", ep.to_string(), text.substr(0, 200));
      pending.erase(0, nl + 1);
      continue;
    }
    pending.erase(0, nl == std::string::npos ? pending.size() : nl + 1);
    const json& res = j.contains("result") ? j["result"] : j;
    if (res.contains("error") || j.contains("error")) {
      logger()->warn("etcd watch on {}: {}", ep.to_string(), j.dump());
      return true;  // reconnect
    }
    if (res.value("created", false)) {
      established = true;
      ++connects_;
    }
    auto compact = gateway::int_field(res, "compact_revision");
    if (!compact) {
      logger()->warn("etcd watch on {}: {}; reconnecting", ep.to_string(), compact.error().message());
      return true;
    }
    if (const std::int64_t compacted = *compact; compacted > 0) {
      logger()->warn("etcd watch on {}: revision {} compacted (oldest {}); re-reading", ep.to_string(), next_revision_,
                     compacted);
      next_revision_ = 0;
      if (on_reset_) on_reset_();
      return true;
    }
    if (res.value("canceled", false)) return true;
    auto decoded = decode_events(res, next_revision_);
    if (!decoded) {
      // Nothing of this message is applied: the new watch starts again
      // from the last revision delivered.
      logger()->warn("etcd watch on {}: {}; reconnecting", ep.to_string(), decoded.error().message());
      return true;
    }
    next_revision_ = decoded->next;
    if (!decoded->events.empty() && on_events_) on_events_(decoded->events);
    if (nl == std::string::npos) break;
  }
  return false;
}

}  // namespace kvpool::etcd
