// The agent in-process with an in-process coordinator: its region describes
// itself (scan), and invalidation requests really clear slot headers.

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include "agent/agent.h"
#include "coordinator/server.h"
#include "kvpool/client.h"
#include "pool/slot_header.h"
#include "runtime/common/pattern.h"
#include "runtime/common/secret.h"
#include "runtime/rpc/messages.h"
#include "runtime/rpc/server.h"
#include "tests/common/test_util.h"

using namespace kvpool;
using namespace std::chrono_literals;
using kvpool::testing::scaled;

namespace {
constexpr std::uint64_t kBlock = 128 << 10;

NamespaceDescriptor ns_desc() {
  NamespaceDescriptor d;
  d.model_id = "agent-test";
  d.dtype = "bf16";
  d.num_layers = d.num_kv_heads = d.head_dim = 1;
  d.tokens_per_block = 16;
  d.layout = "test";
  d.block_bytes = kBlock;
  return d;
}

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  auto d = Deadline::after(timeout);
  while (!d.expired() && !pred()) std::this_thread::sleep_for(10ms);
  return pred();
}

// A coordinator that registers one agent (id 1) with leader epoch 10 and
// keeps every other request the agent sends, to push at it and read its
// answers.
struct FakeLeader {
  std::mutex mu;
  std::condition_variable cv;
  std::uint64_t agent_conn = 0;                            // guarded by mu
  std::vector<std::pair<std::uint16_t, std::string>> got;  // guarded by mu
  std::unique_ptr<rpc::Server> server;

  FakeLeader() {
    rpc::ServerOptions so;
    so.port = 0;
    so.role = rpc::Role::kCoordinator;
    so.server_id = "fake-leader";
    so.create_secret = true;
    auto s = rpc::Server::start(so, [this](rpc::Request req, rpc::Responder resp) {
      std::lock_guard lock(mu);
      if (req.type == rpc::kRegisterAgent) {
        rpc::RegisterAgentReply rep;
        rep.agent = 1;
        rep.heartbeat_interval_ms = 200;
        rep.epoch = 10;
        agent_conn = req.connection_id;
        cv.notify_all();
        return resp.reply(rpc::encode(rep));
      }
      got.emplace_back(req.type, std::string(req.payload));
      cv.notify_all();
      resp.reply({});
    });
    REQUIRE(s);
    server = std::move(*s);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(server->port()); }
  // The agent's connection, once it registered.
  std::uint64_t agent() {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, scaled(5s), [&] { return agent_conn != 0; }));
    return agent_conn;
  }
  // Every request of `type` received so far, decoded.
  template <typename M>
  std::vector<M> received(std::uint16_t type) {
    std::lock_guard lock(mu);
    std::vector<M> out;
    for (const auto& [t, payload] : got) {
      if (t != type) continue;
      out.emplace_back();
      REQUIRE(rpc::decode(payload, out.back()).ok());
    }
    return out;
  }
};
}  // namespace

TEST_CASE("an agent's scan finds committed blocks and loses removed ones once invalidated", "[agent]") {
  coordinator::CoordinatorServerOptions so;
  so.port = 0;
  so.tick_interval = 20ms;
  auto server = coordinator::CoordinatorServer::start(so);
  REQUIRE(server);
  const std::string addr = "127.0.0.1:" + std::to_string((*server)->port());
  agent::AgentOptions ao;
  ao.coordinator = addr;
  ao.pool_size = 8 << 20;
  ao.tls = "posix,cma,self";
  auto agent = agent::Agent::start(ao);
  REQUIRE(agent);
  CHECK((*agent)->id() != 0);

  ClientOptions co;
  co.coordinator = addr;
  co.tls = "posix,cma,self";
  auto client = Client::connect(co);
  REQUIRE(client);
  auto ns = (*client)->register_namespace(ns_desc());
  REQUIRE(ns);
  std::vector<std::uint32_t> tokens(16 * 5);
  for (std::uint32_t i = 0; i < tokens.size(); ++i) tokens[i] = i;
  auto keys = prefix_keys(*ns, tokens, 16);
  std::vector<std::byte> bytes(keys.size() * kBlock);
  std::vector<std::span<const std::byte>> blocks;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    fill_pattern(bytes.data() + i * kBlock, 0, kBlock, i + 1);
    blocks.emplace_back(bytes.data() + i * kBlock, kBlock);
  }
  REQUIRE((*client)->put(*ns, keys, blocks)->written == 5);

  auto scan = (*agent)->scan();
  REQUIRE(scan);
  REQUIRE(scan->blocks.size() == 5);
  for (const auto& b : scan->blocks) {
    CHECK(b.header.namespace_id == *ns);
    CHECK(b.header.payload_length == kBlock);
    CHECK(std::find(keys.begin(), keys.end(), b.header.key) != keys.end());
  }

  // Remove two: the coordinator asks the agent to invalidate their headers,
  // and only then is their space free again.
  auto removed = (*client)->remove(*ns, std::span(keys).first(2));
  REQUIRE(removed);
  CHECK((*removed)[0].ok());
  CHECK(eventually([&] { return (*agent)->invalidated_slots() >= 2; }, scaled(5s)));
  auto after = (*agent)->scan();
  REQUIRE(after);
  CHECK(after->blocks.size() == 3);
  for (const auto& b : after->blocks) {
    CHECK_FALSE(b.header.key == keys[0]);
    CHECK_FALSE(b.header.key == keys[1]);
  }
  CHECK(eventually([&] { return (*server)->core().stats().reclaiming_bytes == 0; }, scaled(5s)));
  CHECK((*server)->core().stats().blocks == 3);
  client->reset();
  (*agent)->stop();
  (*server)->stop();
}

TEST_CASE("an agent refuses a coordinator whose leader epoch is older than one it has seen", "[agent][ha]") {
  // Three coordinators in turn on one port, as an etcd:// address would
  // resolve to the shard's leaders: epoch 10, then a deposed leader that
  // still answers (epoch 5), then a newer leader (epoch 12).
  auto serve = [](std::uint16_t port, std::uint64_t epoch) {
    coordinator::CoordinatorServerOptions so;
    so.port = port;
    so.tick_interval = 20ms;
    so.heartbeat_interval = 100ms;
    so.epoch = epoch;
    so.shard = 3;
    return coordinator::CoordinatorServer::start(so);
  };
  auto first = serve(0, 10);
  REQUIRE(first);
  const std::uint16_t port = (*first)->port();
  agent::AgentOptions ao;
  ao.coordinator = "127.0.0.1:" + std::to_string(port);
  ao.pool_size = 8 << 20;
  ao.tls = "posix,cma,self";
  auto agent = agent::Agent::start(ao);
  REQUIRE(agent);
  CHECK((*agent)->leader_epoch() == 10);
  CHECK((*agent)->stale_leader_refusals() == 0);
  first->reset();

  auto deposed = serve(port, 5);
  REQUIRE(deposed);
  // The agent dials it again and again (heartbeat backoff), refusing it each time.
  CHECK(eventually([&] { return (*agent)->stale_leader_refusals() >= 2; }, scaled(15s)));
  CHECK((*agent)->rejoins() == 0);
  CHECK((*agent)->leader_epoch() == 10);
  deposed->reset();

  auto newer = serve(port, 12);
  REQUIRE(newer);
  CHECK(eventually([&] { return (*agent)->rejoins() >= 1; }, scaled(15s)));
  CHECK((*agent)->leader_epoch() == 12);
  CHECK(eventually([&] { return (*newer)->core().stats().agents_alive == 1; }, scaled(5s)));
  (*agent)->stop();
}

TEST_CASE("an agent refuses pushes stamped with a leader epoch older than the one it registered with",
          "[agent][ha]") {
  // A coordinator that registers the agent with epoch 10, then pushes as a
  // deposed leader would (epoch 9) and as the leader (epoch 10).
  FakeLeader leader;
  agent::AgentOptions ao;
  ao.coordinator = leader.address();
  ao.pool_size = 8 << 20;
  ao.tls = "posix,cma,self";
  auto agent = agent::Agent::start(ao);
  REQUIRE(agent);
  CHECK((*agent)->leader_epoch() == 10);
  const std::uint64_t conn = leader.agent();
  auto& server = leader.server;
  rpc::InvalidateMessage inv;
  inv.agent = 1;
  inv.incarnation = (*agent)->incarnation();
  inv.slots.push_back({0, (*agent)->layout().payload_base, kBlock, 1});
  inv.epoch = 9;
  REQUIRE(server->push(conn, rpc::kPushInvalidate, rpc::encode(inv)).ok());
  rpc::DrainCopyMessage copy;
  copy.agent = 1;
  copy.incarnation = inv.incarnation;
  copy.epoch = 3;
  REQUIRE(server->push(conn, rpc::kPushDrainCopy, rpc::encode(copy)).ok());
  REQUIRE(server->push(conn, rpc::kPushRemoved, rpc::encode(inv)).ok());
  CHECK(eventually([&] { return (*agent)->stale_push_refusals() == 3; }, scaled(5s)));
  CHECK((*agent)->invalidated_slots() == 0);
  // The leader's own epoch goes through, and the acknowledgement echoes it.
  inv.epoch = 10;
  REQUIRE(server->push(conn, rpc::kPushInvalidate, rpc::encode(inv)).ok());
  CHECK(eventually([&] { return (*agent)->invalidated_slots() == 1; }, scaled(5s)));
  CHECK(eventually([&] { return leader.received<rpc::InvalidateMessage>(rpc::kInvalidateDone).size() == 1; },
                   scaled(5s)));
  {
    auto acks = leader.received<rpc::InvalidateMessage>(rpc::kInvalidateDone);
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].epoch == 10);
    CHECK(acks[0].slots.size() == 1);
  }
  CHECK((*agent)->stale_push_refusals() == 3);
  (*agent)->stop();
  server->stop();
}

TEST_CASE("a drain copy whose source header offset wraps past 2^64 is refused, not read", "[agent][drain]") {
  // offset + 64 wrapped to 0 and passed the bounds check: the agent then
  // read its header 2^64 - 64 bytes past its region.
  FakeLeader leader;
  agent::AgentOptions ao;
  ao.coordinator = leader.address();
  ao.pool_size = 8 << 20;
  ao.tls = "posix,cma,self";
  auto agent = agent::Agent::start(ao);
  REQUIRE(agent);
  const std::uint64_t conn = leader.agent();
  rpc::DrainCopyMessage copy;
  copy.agent = 1;
  copy.incarnation = (*agent)->incarnation();
  copy.epoch = 10;
  rpc::MoveWire m;
  m.id = 7;
  m.from.header_offset = ~std::uint64_t{0} - pool::kSlotHeaderBytes + 1;  // 2^64 - 64
  m.from.payload_offset = (*agent)->layout().payload_base;
  m.from.length = kBlock;
  m.to.agent = 2;
  copy.moves.push_back(m);
  REQUIRE(leader.server->push(conn, rpc::kPushDrainCopy, rpc::encode(copy)).ok());
  REQUIRE(eventually([&] { return !leader.received<rpc::DrainCopiedRequest>(rpc::kDrainCopied).empty(); },
                     scaled(5s)));
  {
    auto reports = leader.received<rpc::DrainCopiedRequest>(rpc::kDrainCopied);
    REQUIRE(reports[0].results.size() == 1);
    CHECK(reports[0].results[0].id == 7);
    CHECK(reports[0].results[0].status.code == StatusCode::kInvalidArgument);
    CHECK_THAT(reports[0].results[0].status.message, Catch::Contains("outside this agent's region"));
  }
  (*agent)->stop();
  leader.server->stop();
}

TEST_CASE("a coordinator without etcd registers agents with epoch 0 and they take it", "[agent][ha]") {
  coordinator::CoordinatorServerOptions so;
  so.port = 0;
  auto server = coordinator::CoordinatorServer::start(so);
  REQUIRE(server);
  agent::AgentOptions ao;
  ao.coordinator = "127.0.0.1:" + std::to_string((*server)->port());
  ao.pool_size = 8 << 20;
  ao.tls = "posix,cma,self";
  auto agent = agent::Agent::start(ao);
  REQUIRE(agent);
  CHECK((*agent)->id() != 0);
  CHECK((*agent)->leader_epoch() == 0);
  CHECK((*agent)->stale_leader_refusals() == 0);
  (*agent)->stop();
}

TEST_CASE("an agent lends each isolated tenant a region of its own, and the tenant's blocks land there",
          "[agent][tenants][isolated]") {
  const std::string cluster = kvpool::testing::make_secret_file();
  const std::string dir = cluster.substr(0, cluster.rfind('/'));
  const std::string cred = dir + "/acme";
  REQUIRE(create_tenant_secret_file(cred, "acme").ok());
  const std::string tenants = dir + "/tenants";
  {
    std::ofstream f(tenants);
    f << "tenant acme " << load_secret(cred).value().key() << " namespaces=agent-test isolated=4MiB\n";
  }
  REQUIRE(::chmod(tenants.c_str(), 0600) == 0);
  coordinator::CoordinatorServerOptions so;
  so.port = 0;
  so.tick_interval = 20ms;
  so.secret_file = cluster;
  so.tenants_file = tenants;
  auto server = coordinator::CoordinatorServer::start(so);
  REQUIRE(server);
  const std::string addr = "127.0.0.1:" + std::to_string((*server)->port());
  agent::AgentOptions ao;
  ao.coordinator = addr;
  ao.pool_size = 8 << 20;
  ao.tls = "posix,cma,self";
  ao.secret_file = cluster;
  ao.name = "agent-t";
  ao.metrics = std::make_shared<metrics::Registry>();
  auto agent = agent::Agent::start(ao);
  REQUIRE(agent);
  // Registered before start() returns: the coordinator's reply named acme.
  const agent::Agent* acme = (*agent)->tenant_region("acme");
  REQUIRE(acme != nullptr);
  CHECK((*agent)->tenant_names() == std::vector<std::string>{"acme"});
  CHECK(acme->tenant() == "acme");
  CHECK((*agent)->tenant().empty());
  CHECK(acme->region().size() == (4u << 20));
  CHECK(acme->id() != (*agent)->id());
  CHECK(acme->incarnation() != (*agent)->incarnation());
  CHECK(acme->region().data() != (*agent)->region().data());
  CHECK((*agent)->tenant_region("beta") == nullptr);

  ClientOptions co;
  co.coordinator = addr;
  co.tls = "posix,cma,self";
  co.secret_file = cred;
  auto client = Client::connect(co);
  REQUIRE(client);
  auto ns = (*client)->register_namespace(ns_desc());
  REQUIRE(ns);
  std::vector<std::uint32_t> tokens(16 * 3, 7);
  auto keys = prefix_keys(*ns, tokens, 16);
  std::vector<std::byte> bytes(keys.size() * kBlock);
  std::vector<std::span<const std::byte>> blocks;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    fill_pattern(bytes.data() + i * kBlock, 0, kBlock, i + 11);
    blocks.emplace_back(bytes.data() + i * kBlock, kBlock);
  }
  REQUIRE((*client)->put(*ns, keys, blocks)->written == 3);
  // The headers are in the tenant's region, none in the shared one.
  auto scan = acme->scan();
  REQUIRE(scan);
  CHECK(scan->blocks.size() == 3);
  for (const auto& b : scan->blocks) CHECK(b.header.namespace_id == *ns);
  auto shared = (*agent)->scan();
  REQUIRE(shared);
  CHECK(shared->blocks.empty());
  const std::string scrape = ao.metrics->render();
  CHECK(scrape.find("kvpool_agent_tenant_region_bytes{tenant=\"acme\"} 4194304") != std::string::npos);
  client->reset();
  (*agent)->stop();
  CHECK((*agent)->tenant_region("acme") == nullptr);
}
