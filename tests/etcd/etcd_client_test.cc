// The etcd client against a real etcd: key-value calls, compare-and-swap,
// leases (keepalive, expiry, revoke), watches (in order, across a member's
// death), and a three-member cluster losing one member.

#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>
#include <thread>

#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/leader_address.h"
#include "tests/common/etcd_cluster.h"

using namespace kvpool;
using namespace kvpool::etcd;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  auto d = Deadline::after(timeout);
  while (!d.expired()) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

std::unique_ptr<Client> client_of(const EtcdCluster& etcd) {
  auto c = Client::create(etcd.client_options(scaled(3s)));
  REQUIRE(c);
  return std::move(*c);
}

// Collects a watch's events.
struct Events {
  std::mutex mu;
  std::vector<WatchEvent> all;
  void add(const std::vector<WatchEvent>& evs) {
    std::lock_guard lock(mu);
    all.insert(all.end(), evs.begin(), evs.end());
  }
  std::size_t size() {
    std::lock_guard lock(mu);
    return all.size();
  }
  std::vector<WatchEvent> copy() {
    std::lock_guard lock(mu);
    return all;
  }
};

}  // namespace

TEST_CASE("base64 and endpoint parsing", "[etcd]") {
  for (std::string s : {std::string(), std::string("a"), std::string("ab"), std::string("abc"),
                        std::string("\0\xff\x01", 3), std::string(1000, '\x7f')}) {
    auto back = base64_decode(base64_encode(s));
    REQUIRE(back);
    CHECK(*back == s);
  }
  CHECK_FALSE(base64_decode("abc"));
  CHECK(prefix_end("/a/") == "/a0");
  CHECK(prefix_end(std::string("a\xff", 2)) == "b");

  auto eps = parse_endpoints("127.0.0.1:2379,http://10.0.0.2:2380/");
  REQUIRE(eps);
  REQUIRE(eps->size() == 2);
  CHECK((*eps)[1].host == "10.0.0.2");
  CHECK((*eps)[1].port == 2380);
  CHECK(parse_endpoints("").error().code() == StatusCode::kInvalidArgument);
  CHECK(parse_endpoints("https://x:1").error().code() == StatusCode::kInvalidArgument);
  CHECK(parse_endpoints("host").error().code() == StatusCode::kInvalidArgument);
  CHECK(parse_endpoints("host:99999").error().code() == StatusCode::kInvalidArgument);

  auto a = parse_etcd_address("etcd://127.0.0.1:1,127.0.0.1:2/3");
  REQUIRE(a);
  CHECK(a->endpoints.size() == 2);
  CHECK(a->shard == 3);
  CHECK(parse_etcd_address("etcd://127.0.0.1:1")->shard == 0);
  CHECK_FALSE(parse_etcd_address("etcd://127.0.0.1:1/x"));
  CHECK_FALSE(parse_etcd_address("127.0.0.1:1"));
  auto rec = decode_leader(encode_leader({"10.0.0.1:7400", 42, "host:1"}));
  REQUIRE(rec);
  CHECK(rec->address == "10.0.0.1:7400");
  CHECK(rec->epoch == 42);
  CHECK_FALSE(decode_leader("not json"));
}

TEST_CASE("an unreachable etcd is retried until the call's deadline, then kUnavailable", "[etcd]") {
  auto c = Client::create({{{"127.0.0.1", free_port()}, {"127.0.0.1", free_port()}}, 1000ms});
  REQUIRE(c);
  const auto t0 = Clock::now();
  auto r = (*c)->get("/x");
  REQUIRE_FALSE(r);
  CHECK(r.error().code() == StatusCode::kUnavailable);
  CHECK(Clock::now() - t0 >= 900ms);
  CHECK(Clock::now() - t0 < scaled(3s));
  auto leader = resolve_coordinator("etcd://127.0.0.1:" + std::to_string(free_port()), 1000ms);
  REQUIRE_FALSE(leader);
  CHECK(leader.error().code() == StatusCode::kUnavailable);
  CHECK(*resolve_coordinator("10.0.0.1:7400", 1000ms) == "10.0.0.1:7400");
}

TEST_CASE("etcd key-value calls, compare-and-swap and leases against a real etcd", "[etcd]") {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return;
  }
  auto etcd = EtcdCluster::start(1);
  REQUIRE(etcd);
  auto c = client_of(*etcd);

  SECTION("put, get, prefix get and delete, with binary keys and values") {
    const std::string bin("k\0\xff", 3);
    REQUIRE(c->put("/t/a", "1"));
    REQUIRE(c->put("/t/b", std::string("\0\x01", 2)));
    REQUIRE(c->put("/t" + bin, bin));
    REQUIRE(c->put("/u", "outside"));
    auto one = c->get("/t/a");
    REQUIRE(one);
    REQUIRE(one->kvs.size() == 1);
    CHECK(one->kvs[0].value == "1");
    CHECK(one->kvs[0].create_revision > 0);
    auto all = c->get_prefix("/t");
    REQUIRE(all);
    CHECK(all->kvs.size() == 3);
    auto b = c->get("/t" + bin);
    REQUIRE(b);
    REQUIRE(b->kvs.size() == 1);
    CHECK(b->kvs[0].value == bin);
    CHECK(c->get("/missing")->kvs.empty());
    CHECK(*c->del("/t", /*prefix=*/true) == 3);
    CHECK(c->get_prefix("/t")->kvs.empty());
    CHECK(c->get("/u")->kvs.size() == 1);
  }

  SECTION("a transaction creates a key only when absent, and compares values") {
    auto first = c->txn({Compare::created("/leader", 0)}, {TxnOp::put("/leader", "me")}, {TxnOp::get("/leader")});
    REQUIRE(first);
    CHECK(first->succeeded);
    auto second = c->txn({Compare::created("/leader", 0)}, {TxnOp::put("/leader", "you")}, {TxnOp::get("/leader")});
    REQUIRE(second);
    CHECK_FALSE(second->succeeded);
    REQUIRE(second->ranges.size() == 1);
    REQUIRE(second->ranges[0].kvs.size() == 1);
    CHECK(second->ranges[0].kvs[0].value == "me");
    auto swap = c->txn({Compare::value_is("/leader", "me")}, {TxnOp::put("/leader", "next")});
    REQUIRE(swap);
    CHECK(swap->succeeded);
    auto stale = c->txn({Compare::value_is("/leader", "me")}, {TxnOp::del("/leader")});
    REQUIRE(stale);
    CHECK_FALSE(stale->succeeded);
    CHECK(c->get("/leader")->kvs[0].value == "next");
  }

  SECTION("a lease kept alive holds its key; let go, it expires and the key goes; revoke is at once") {
    auto lease = c->lease_grant(2);
    REQUIRE(lease);
    CHECK(lease->ttl >= 2);
    REQUIRE(c->put("/lease/held", "x", lease->id));
    // Kept alive past its TTL, the key stays.
    const auto until = Clock::now() + 3s;
    while (Clock::now() < until) {
      auto ttl = c->lease_keepalive(lease->id);
      REQUIRE(ttl);
      CHECK(*ttl >= 1);
      std::this_thread::sleep_for(300ms);
    }
    CHECK(c->get("/lease/held")->kvs.size() == 1);
    // Not kept alive: gone after the TTL (etcd checks expiry every ~500 ms).
    const auto stopped = Clock::now();
    CHECK(eventually([&] { return c->get("/lease/held")->kvs.empty(); }, scaled(10s)));
    CHECK(Clock::now() - stopped >= 1500ms);
    auto expired = c->lease_keepalive(lease->id);
    REQUIRE_FALSE(expired);
    CHECK(expired.error().code() == StatusCode::kNotFound);
    // A put under an expired lease is refused.
    auto put = c->put("/lease/late", "x", lease->id);
    REQUIRE_FALSE(put);
    CHECK(put.error().code() == StatusCode::kNotFound);

    auto other = c->lease_grant(30);
    REQUIRE(other);
    REQUIRE(c->put("/lease/revoked", "x", other->id));
    REQUIRE(c->lease_revoke(other->id).ok());
    CHECK(c->get("/lease/revoked")->kvs.empty());
  }

  SECTION("a watch delivers puts and deletes in order, from a past revision too") {
    auto r0 = c->put("/w/a", "1");
    REQUIRE(r0);
    Events events;
    auto w = Watch::start(etcd->client_options(), "/w/", /*prefix=*/true, *r0,
                          [&](const std::vector<WatchEvent>& evs) { events.add(evs); });
    REQUIRE(w);
    REQUIRE(c->put("/w/b", "2"));
    REQUIRE(c->del("/w/a"));
    REQUIRE(c->put("/x", "not watched"));
    REQUIRE(eventually([&] { return events.size() >= 3; }, scaled(5s)));
    auto all = events.copy();
    REQUIRE(all.size() == 3);
    CHECK(all[0].type == WatchEvent::Type::kPut);
    CHECK(all[0].kv.key == "/w/a");
    CHECK(all[0].kv.value == "1");
    CHECK(all[1].kv.key == "/w/b");
    CHECK(all[2].type == WatchEvent::Type::kDelete);
    CHECK(all[2].kv.key == "/w/a");
    CHECK(all[1].kv.mod_revision < all[2].kv.mod_revision);
    (*w)->stop();  // returns promptly although the stream is idle
  }

  SECTION("a watch sees a leased key deleted when its lease expires") {
    auto lease = c->lease_grant(2);
    REQUIRE(lease);
    REQUIRE(c->put("/w/leased", "x", lease->id));
    Events events;
    auto w = Watch::start(etcd->client_options(), "/w/leased", false, 0,
                          [&](const std::vector<WatchEvent>& evs) { events.add(evs); });
    REQUIRE(w);
    REQUIRE(eventually([&] { return events.size() >= 1; }, scaled(10s)));
    CHECK(events.copy()[0].type == WatchEvent::Type::kDelete);
  }
}

TEST_CASE("three etcd members losing one: calls and watches go on through the others", "[etcd]") {
  if (!etcd_available()) {
    WARN("etcd-server is not installed (apt-get install etcd-server): skipped");
    return;
  }
  auto etcd = EtcdCluster::start(3);
  REQUIRE(etcd);
  // The member killed is raft's leader (the hard case: etcd elects another,
  // a second or two), and it comes first in the client's and the watch's
  // endpoint list.
  int leader = -1;
  REQUIRE(eventually([&] { return (leader = etcd->raft_leader()) >= 0; }, scaled(5s)));
  auto options = etcd->client_options(scaled(8s));
  std::swap(options.endpoints[0], options.endpoints[static_cast<std::size_t>(leader)]);
  auto created = Client::create(options);
  REQUIRE(created);
  auto& c = *created;
  REQUIRE(c->put("/m/before", "1"));
  Events events;
  auto w = Watch::start(options, "/m/", true, 0,
                        [&](const std::vector<WatchEvent>& evs) { events.add(evs); });
  REQUIRE(w);
  REQUIRE(eventually([&] { return (*w)->connects() == 1; }, scaled(5s)));
  REQUIRE(c->put("/m/1", "a"));
  REQUIRE(eventually([&] { return events.size() == 1; }, scaled(5s)));

  etcd->kill_member(static_cast<std::size_t>(leader));
  // Puts go on through the other members (the client moves past the dead
  // one and waits out the election).
  for (int i = 2; i <= 5; ++i) {
    auto put = c->put("/m/" + std::to_string(i), "b");
    REQUIRE(put);
  }
  CHECK(c->get("/m/before")->kvs.size() == 1);
  auto lease = c->lease_grant(5);
  REQUIRE(lease);
  CHECK(c->lease_keepalive(lease->id));
  // The watch reconnected elsewhere and resumed after the last revision it
  // delivered: every event once, in order.
  REQUIRE(eventually([&] { return events.size() >= 5; }, scaled(10s)));
  std::this_thread::sleep_for(200ms);
  auto all = events.copy();
  REQUIRE(all.size() == 5);
  for (int i = 1; i <= 5; ++i) CHECK(all[i - 1].kv.key == "/m/" + std::to_string(i));
  CHECK((*w)->connects() >= 2);
  CHECK_FALSE(etcd->healthy(static_cast<std::size_t>(leader)));
  CHECK(etcd->healthy(leader == 0 ? 1 : 0));
}
