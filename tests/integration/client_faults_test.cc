// What libkvpool's client does when its coordinator is wrong, slow or gone
// mid-call: a real kvpool-agent --standalone behind a ProxyCoordinator that
// rewrites replies, pushes messages in front of them, or holds requests.
// Each case is a bug found by reading the client (issue 17, stage 1) and
// fails with its fix reverted.

#include <catch2/catch.hpp>
#include <thread>

#include "pool/slot_header.h"
#include "tests/integration/proxy_coordinator.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 256 << 10;

static_assert(!std::is_copy_constructible_v<MappedPut> && !std::is_copy_assignable_v<MappedPut>);
static_assert(!std::is_copy_constructible_v<MappedGet> && !std::is_copy_assignable_v<MappedGet>);
static_assert(std::is_nothrow_move_constructible_v<MappedPut> && std::is_nothrow_move_assignable_v<MappedGet>);

std::vector<Key128> keys_for(std::size_t n, std::uint64_t salt) {
  std::vector<Key128> k;
  for (std::size_t i = 0; i < n; ++i) k.push_back({salt * 104729 + i, salt});
  return k;
}

std::unique_ptr<Client> connect(const std::string& coordinator, std::chrono::milliseconds timeout = 10s) {
  ClientOptions co;
  co.coordinator = coordinator;
  co.timeout = timeout;
  auto c = Client::connect(co);
  REQUIRE(c);
  return std::move(*c);
}

struct Blocks {
  std::vector<std::vector<std::byte>> bytes;
  std::vector<std::span<const std::byte>> in;
  std::vector<std::span<std::byte>> out;
  explicit Blocks(std::size_t n) : bytes(2 * n, std::vector<std::byte>(kBlock)) {
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t b = 0; b < kBlock; b += 4096) bytes[i][b] = static_cast<std::byte>(i + 1);
      in.emplace_back(bytes[i]);
      out.emplace_back(bytes[n + i]);
    }
  }
};

// A standalone pool, a ProxyCoordinator in front of it, and a client of the
// proxy with namespace `model` registered.
struct Proxied {
  std::unique_ptr<PoolProcess> pool;
  std::unique_ptr<ProxyCoordinator> proxy;
  std::unique_ptr<Client> client;
  NamespaceId ns = 0;
  explicit Proxied(const std::string& model, std::chrono::milliseconds timeout = 10s) {
    use_test_secret();
    pool = start_standalone("64MiB");
    REQUIRE(pool);
    proxy = ProxyCoordinator::start(pool->coordinator);
    REQUIRE(proxy);
    client = connect(proxy->address(), timeout);
    auto registered = client->register_namespace(test_namespace(kBlock, model));
    REQUIRE(registered);
    ns = *registered;
  }
};

std::uint64_t region_bytes(const std::string& coordinator) {
  auto raw = raw_client(coordinator);
  REQUIRE(raw);
  auto agents = list_agents(*raw);
  REQUIRE(agents.size() == 1);
  return agents[0].region_bytes;
}

}  // namespace

TEST_CASE("a placement outside the agent's region is refused, never handed out as a mapped slot",
          "[integration][client]") {
  Proxied p("faults-put");
  auto& [pool, proxy, client, ns] = p;
  const std::uint64_t region = region_bytes(pool->coordinator);
  auto keys = keys_for(4, 1);
  proxy->set_rewrite([region](std::uint16_t type, std::string& reply) {
    if (type != rpc::kAllocate) return;
    rpc::AllocateReply rep;
    REQUIRE(rpc::decode(reply, rep).ok());
    REQUIRE(rep.results.size() == 4);
    rep.results[0].location.payload_offset = region;                // past the end
    rep.results[1].location.header_offset = ~std::uint64_t{0} - 8;  // header + 64 bytes wraps
    rep.results[2].location.length = kBlock / 2;                    // not the namespace's block
    rep.results[2].location.payload_offset = region - kBlock / 2;   // (so only the length is wrong)
    reply = rpc::encode(rep);
  });
  auto mp = client->begin_mapped_put(ns, keys);
  proxy->set_rewrite(nullptr);
  REQUIRE(mp);
  for (std::size_t i = 0; i < 3; ++i) {
    INFO("key " << i);
    // REQUIRE: finishing a slot handed out here would write its header out of bounds.
    REQUIRE(mp->outcomes[i] == PutOutcome::kFailed);
    CHECK(mp->errors[i].code() == StatusCode::kDataLoss);
    CHECK(mp->slots[i].payload == nullptr);
  }
  REQUIRE(mp->outcomes[3] == PutOutcome::kWritten);
  std::memset(mp->slots[3].payload, 0x5a, kBlock);
  REQUIRE(mp->slices == 4);  // test_namespace's four layers
  std::vector<std::uint64_t> sums(4 * mp->slices, 0);
  const auto table = slice_sums(mp->slots[3].payload, kBlock, mp->slices);
  std::copy(table.begin(), table.end(), sums.begin() + 3 * mp->slices);
  auto put = client->finish_mapped_put(*mp, sums);
  REQUIRE(put);
  CHECK(put->written == 1);
  // The refused keys' leases were given back: they are free to be written.
  Blocks b(3);
  auto again = client->put(ns, std::span<const Key128>(keys).subspan(0, 3), b.in);
  REQUIRE(again);
  CHECK(again->written == 3);
}

TEST_CASE("a location whose end wraps past 2^64 is refused by both mapped read paths", "[integration][client]") {
  Proxied p("faults-get");
  auto& [pool, proxy, client, ns] = p;
  auto keys = keys_for(2, 2);
  Blocks b(2);
  auto put = client->put(ns, keys, b.in);
  REQUIRE(put);
  REQUIRE(put->written == 2);
  // payload_offset + length wraps to kBlock / 2: inside the region by the
  // old sum, 2^64 - 128 KiB past the mapping in fact.
  proxy->set_rewrite([](std::uint16_t type, std::string& reply) {
    if (type != rpc::kLookup) return;
    rpc::LookupReply rep;
    REQUIRE(rpc::decode(reply, rep).ok());
    if (rep.locations.empty()) return;
    rep.locations[0].payload_offset = ~std::uint64_t{0} - kBlock / 2 + 1;
    reply = rpc::encode(rep);
  });
  const auto failures = client->stats().verify_failures;
  auto mg = client->begin_mapped_get(ns, keys);
  REQUIRE(mg);
  CHECK(mg->found == 0);
  CHECK(mg->slots.empty());
  CHECK(mg->stopped.code() == StatusCode::kDataLoss);
  client->finish_mapped_get(*mg, 0);
  CHECK(client->stats().verify_failures == failures + 1);
  auto got = client->get(ns, keys, b.out);
  REQUIRE(got);
  CHECK(got->loaded == 0);
  CHECK(got->stopped.code() == StatusCode::kDataLoss);
  // Told the truth again, both read it.
  proxy->set_rewrite(nullptr);
  got = client->get(ns, keys, b.out);
  REQUIRE(got);
  CHECK(got->loaded == 2);
  CHECK(std::equal(b.in[1].begin(), b.in[1].end(), b.out[1].begin()));
}

TEST_CASE("a MappedPut or MappedGet dropped unfinished gives its leases back at once", "[integration][client]") {
  use_test_secret();
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto client = connect(pool->coordinator);
  auto raw = raw_client(pool->coordinator);
  REQUIRE(raw);
  auto registered = client->register_namespace(test_namespace(kBlock, "faults-drop"));
  REQUIRE(registered);
  const NamespaceId ns = *registered;
  auto keys = keys_for(3, 3);

  SECTION("a dropped put is aborted") {
    {
      auto mp = client->begin_mapped_put(ns, keys);
      REQUIRE(mp);
      REQUIRE(mp->outcomes[0] == PutOutcome::kWritten);
      CHECK(stats(*raw).write_leases == keys.size());
    }
    CHECK(stats(*raw).write_leases == 0);
    // Not "pending" behind a leaked lease: the keys are placed again.
    auto again = client->begin_mapped_put(ns, keys);
    REQUIRE(again);
    for (auto o : again->outcomes) CHECK(o == PutOutcome::kWritten);
    // Assigning over an unfinished put aborts it too.
    *again = MappedPut();
    CHECK(stats(*raw).write_leases == 0);
  }
  SECTION("a dropped get releases its read lease") {
    Blocks b(keys.size());
    auto put = client->put(ns, keys, b.in);
    REQUIRE(put);
    REQUIRE(put->written == keys.size());
    {
      auto mg = client->begin_mapped_get(ns, keys);
      REQUIRE(mg);
      REQUIRE(mg->found == keys.size());
      CHECK(stats(*raw).read_leases == 1);
    }
    // The release goes out asynchronously; the lease itself would last
    // the client's whole timeout.
    CHECK(eventually([&] { return stats(*raw).read_leases == 0; }, scaled(2s)));
  }
}

TEST_CASE("an agent reported down while the client connects to it is not kept", "[integration][client]") {
  Proxied p("faults-down");
  auto& [pool, proxy, client, ns] = p;
  auto raw = raw_client(pool->coordinator);
  REQUIRE(raw);
  auto agents = list_agents(*raw);
  REQUIRE(agents.size() == 1);
  const rpc::AgentRecord agent = agents[0];
  // The coordinator's AgentDown lands after the client looked the agent up
  // (alive) and before it has its connection in the table: the race of
  // agent()'s check-then-act, made certain by pushing it in front of the
  // agent list's reply.
  rpc::Server* server = &proxy->server();
  proxy->set_before_reply([server, agent](std::uint16_t type, std::uint64_t connection) {
    if (type != rpc::kListAgents) return;
    rpc::AgentDownMessage down{agent.agent, agent.incarnation, 0};
    CHECK(server->push(connection, rpc::kPushAgentDown, rpc::encode(down)).ok());
  });
  auto keys = keys_for(2, 4);
  Blocks b(keys.size());
  auto put = client->put(ns, keys, b.in);
  REQUIRE(put);
  CHECK(put->written == 0);
  for (const auto& e : put->errors) CHECK(e.code() == StatusCode::kUnavailable);
  auto mp = client->begin_mapped_put(ns, keys);
  REQUIRE(mp);
  for (auto o : mp->outcomes) CHECK(o == PutOutcome::kFailed);
  mp = MappedPut();
  // Back (an agent cut off and healed keeps its incarnation): only reports
  // made while a connect ran count, so the agent is reached again.
  proxy->set_before_reply(nullptr);
  put = client->put(ns, keys, b.in);
  REQUIRE(put);
  CHECK(put->written == keys.size());
}

TEST_CASE("a call made while another call redials the coordinator fails at once instead of waiting for the dial",
          "[integration][client]") {
  const auto timeout = scaled(4s);
  Proxied p("faults-dial", timeout);
  auto& [pool, proxy, client, ns] = p;
  const std::uint16_t port = proxy->port();
  auto keys = keys_for(1, 5);
  REQUIRE(client->lookup(ns, keys));
  // The connection breaks; the coordinator that answers the redial takes
  // the hello but holds the namespace re-registration: a dial that lasts
  // the client's whole timeout.
  proxy.reset();
  auto slow = ProxyCoordinator::start(pool->coordinator, port);
  REQUIRE(slow);
  slow->set_hold(true);
  std::thread dialler([&] {
    for (auto d = Deadline::after(scaled(10s)); slow->held() == 0 && !d.expired();) {
      (void)client->lookup(ns, keys);
      std::this_thread::sleep_for(10ms);
    }
  });
  const bool dialling = eventually([&] { return slow->held() > 0; }, scaled(10s));
  CHECK(dialling);
  const auto t0 = Clock::now();
  auto looked = client->lookup(ns, keys);
  const auto took = Clock::now() - t0;
  dialler.join();
  REQUIRE(!looked);
  CHECK(looked.error().code() == StatusCode::kUnavailable);
  CHECK(took < timeout / 4);
}
