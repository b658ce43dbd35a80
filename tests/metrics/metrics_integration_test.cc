// /metrics of real processes: kvpool-agent --standalone and
// kvpool-coordinator with a kvpool-agent, scraped over HTTP while this test
// works the pool through libkvpool.

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/stat.h>

#include <fstream>

#include "coordinator/server.h"
#include "runtime/common/secret.h"
#include "runtime/common/pattern.h"
#include "tests/integration/pool_fixture.h"
#include "tests/metrics/exposition.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 256 << 10;

Exposition scrape(std::uint16_t port) {
  auto res = http_get(port, "/metrics");
  REQUIRE(res.status == 200);
  auto e = parse_exposition(res.body);
  INFO(res.body);
  REQUIRE(e.error.empty());
  return e;
}

std::uint16_t metrics_port(const std::string& file) {
  std::uint16_t port = read_port_file(file, Deadline::after(scaled(30s)));
  std::remove(file.c_str());
  return port;
}

struct Blocks {
  std::vector<Key128> keys;
  std::vector<std::byte> bytes;
  std::vector<std::span<const std::byte>> in;
  std::vector<std::span<std::byte>> out;
  std::vector<std::byte> back;
  Blocks(NamespaceId ns, int n) {
    std::vector<std::uint32_t> tokens(static_cast<std::size_t>(n) * 16);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint32_t>(i * 7 + 1);
    keys = prefix_keys(ns, tokens, 16);
    bytes.resize(n * kBlock);
    back.resize(n * kBlock);
    for (int i = 0; i < n; ++i) {
      fill_pattern(bytes.data() + i * kBlock, 0, kBlock, keys[i].lo);
      in.emplace_back(bytes.data() + i * kBlock, kBlock);
      out.emplace_back(back.data() + i * kBlock, kBlock);
    }
  }
};

const std::string kAllocate = "kvpool_coordinator_requests_total{op=\"allocate\"}";

}  // namespace

TEST_CASE("standalone /metrics moves with puts, gets, lookups and removes", "[metrics][integration]") {
  std::string mfile = temp_path("metrics-port");
  auto pool = start_standalone("64MiB", {"--metrics", "127.0.0.1:0", "--metrics-port-file", mfile});
  REQUIRE(pool);
  std::uint16_t port = metrics_port(mfile);
  REQUIRE(port != 0);

  auto before = scrape(port);
  CHECK(before.value("kvpool_coordinator_blocks") == 0);
  CHECK(before.value("kvpool_coordinator_agents_alive") == 1);
  CHECK(before.value("kvpool_agent_region_bytes") == 64 << 20);
  CHECK(before.value("kvpool_coordinator_capacity_bytes") > 60 << 20);
  CHECK(before.value("kvpool_build_info{version=\"0.1.0\"}") == 1);
  CHECK(before.types["kvpool_coordinator_request_duration_seconds"] == "histogram");
  const double allocs = before.value(kAllocate);

  ClientOptions co;
  co.coordinator = pool->coordinator;
  auto client = Client::connect(co);
  REQUIRE(client);
  auto ns = (*client)->register_namespace(test_namespace(kBlock));
  REQUIRE(ns);
  Blocks b(*ns, 3);
  auto put = (*client)->put(*ns, b.keys, b.in);
  REQUIRE(put);
  REQUIRE(put->written == 3);

  auto after_put = scrape(port);
  CHECK(after_put.value(kAllocate) == allocs + 1);
  CHECK(after_put.value("kvpool_coordinator_blocks") == 3);
  CHECK(after_put.value("kvpool_coordinator_allocate_blocks_total{outcome=\"placed\"}") == 3);
  CHECK(after_put.value("kvpool_coordinator_commit_leases_total{result=\"ok\"}") == 3);
  CHECK(after_put.value("kvpool_coordinator_live_bytes") == 3 * kBlock);
  CHECK(after_put.value("kvpool_coordinator_request_duration_seconds_count{op=\"allocate\"}") == allocs + 1);
  CHECK(after_put.value("kvpool_coordinator_namespaces") == 1);
  CHECK(after_put.sum("kvpool_coordinator_namespace_blocks") == 3);
  CHECK(after_put.sum("kvpool_coordinator_agent_blocks") == 3);

  // A get of the 3 blocks plus one missing key: 3 hits, 1 miss.
  Blocks more(*ns, 4);
  auto got = (*client)->get(*ns, more.keys, more.out);
  REQUIRE(got);
  CHECK(got->loaded == 3);
  auto after_get = scrape(port);
  CHECK(after_get.value("kvpool_coordinator_lookup_hits_total") -
            after_put.value("kvpool_coordinator_lookup_hits_total") ==
        3);
  CHECK(after_get.value("kvpool_coordinator_lookup_misses_total") -
            after_put.value("kvpool_coordinator_lookup_misses_total") ==
        1);

  // Removing one block: the gauge drops, and the agent invalidates its slot.
  auto removed = (*client)->remove(*ns, std::span<const Key128>(b.keys.data(), 1));
  REQUIRE(removed);
  auto after_remove = scrape(port);
  CHECK(after_remove.value("kvpool_coordinator_blocks") == 2);
  // The remove was answered after the agent's acknowledgement: nothing pending.
  CHECK(after_remove.has("kvpool_coordinator_evicting_blocks"));
  CHECK(after_remove.value("kvpool_coordinator_evicting_blocks") == 0);
  CHECK(after_remove.value("kvpool_coordinator_removals_total") == 1);
  CHECK(after_remove.value("kvpool_coordinator_remove_blocks_total{result=\"ok\"}") == 1);
  CHECK(eventually([&] { return scrape(port).value("kvpool_agent_invalidated_slots_total") >= 1; }, scaled(5s)));

  // An error reply is counted by operation and code.
  auto raw = raw_client(pool->coordinator);
  REQUIRE(raw);
  rpc::LookupRequest bad;
  bad.ns = *ns + 1;
  bad.keys = {b.keys[0]};
  rpc::LookupReply rep;
  CHECK(raw_call(*raw, rpc::kLookup, bad, rep).code() == StatusCode::kNotFound);
  CHECK(scrape(port).value("kvpool_coordinator_request_errors_total{op=\"lookup\",code=\"not_found\"}") == 1);
  CHECK(!raw->call(999, std::string(), Deadline::after(scaled(10s))));
  auto unknown = scrape(port);
  CHECK(unknown.value("kvpool_coordinator_requests_total{op=\"unknown\"}") == 1);
  CHECK(unknown.value("kvpool_coordinator_request_errors_total{op=\"unknown\",code=\"unimplemented\"}") == 1);

  // Heartbeats are timed by the agent and aged by the coordinator.
  CHECK(
      eventually([&] { return scrape(port).value("kvpool_agent_heartbeat_duration_seconds_count") >= 1; }, scaled(5s)));
  auto e = scrape(port);
  bool aged = false;
  for (const auto& [series, v] : e.samples) {
    if (series.rfind("kvpool_coordinator_agent_heartbeat_age_seconds{agent=\"1\"", 0) == 0) aged = v >= 0 && v < 3;
  }
  CHECK(aged);
}

TEST_CASE("puts over tcp reach the agent as streamed puts it places, and read back whole", "[metrics][integration]") {
  // Over tcp UCX emulates RMA: the client sends put payloads as messages the
  // agent copies into its slots (transport::Peer::put_streamed); the agent
  // counts them. Over shared memory puts stay one-sided (none counted).
  std::string mfile = temp_path("metrics-port");
  auto pool = start_standalone("64MiB", {"--tls", "tcp", "--metrics", "127.0.0.1:0", "--metrics-port-file", mfile});
  REQUIRE(pool);
  std::uint16_t port = metrics_port(mfile);
  REQUIRE(port != 0);
  CHECK(scrape(port).value("kvpool_agent_streamed_puts_total") == 0);
  ClientOptions co;
  co.coordinator = pool->coordinator;
  co.tls = "tcp";
  auto client = Client::connect(co);
  REQUIRE(client);
  auto ns = (*client)->register_namespace(test_namespace(kBlock));
  REQUIRE(ns);
  Blocks b(*ns, 6);
  auto put = (*client)->put(*ns, b.keys, b.in);
  REQUIRE(put);
  REQUIRE(put->written == 6);
  auto e = scrape(port);
  CHECK(e.value("kvpool_agent_streamed_puts_total") >= 1);
  CHECK(e.value("kvpool_agent_streamed_put_bytes_total") == 6 * kBlock);  // the payloads; headers go one-sided
  CHECK(e.value("kvpool_agent_streamed_put_errors_total") == 0);
  auto got = (*client)->get(*ns, b.keys, b.out);
  REQUIRE(got);
  CHECK(got->loaded == 6);
  CHECK(b.back == b.bytes);
}

TEST_CASE("coordinator and agent each serve their own /metrics, and a dead agent shows there",
          "[metrics][integration]") {
  std::string cport_file = temp_path("coord-port"), cmetrics = temp_path("coord-metrics"),
              ametrics = temp_path("agent-metrics");
  auto coord = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--listen", "127.0.0.1:0", "--port-file",
                                  cport_file, "--metrics", "127.0.0.1:0", "--metrics-port-file", cmetrics,
                                  "--agent-timeout", "1s", "--heartbeat-interval", "200ms", "--log-level", "error"});
  REQUIRE(coord);
  std::uint16_t cport = read_port_file(cport_file, Deadline::after(scaled(30s)));
  std::remove(cport_file.c_str());
  REQUIRE(cport != 0);
  std::uint16_t cm = metrics_port(cmetrics);
  REQUIRE(cm != 0);
  CHECK(scrape(cm).value("kvpool_coordinator_agents_alive") == 0);

  const std::string address = "127.0.0.1:" + std::to_string(cport);
  auto agent = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--coordinator", address, "--pool-size", "32MiB",
                                  "--metrics", "127.0.0.1:0", "--metrics-port-file", ametrics, "--log-level", "error"});
  REQUIRE(agent);
  std::uint16_t am = metrics_port(ametrics);
  REQUIRE(am != 0);
  auto ae = scrape(am);
  CHECK(ae.value("kvpool_agent_region_bytes") == 32 << 20);
  CHECK(ae.value("kvpool_agent_id") == 1);
  CHECK(!ae.has("kvpool_coordinator_blocks"));  // the agent's endpoint has no coordinator metrics
  CHECK(eventually([&] { return scrape(cm).value("kvpool_coordinator_agents_alive") == 1; }, scaled(5s)));
  CHECK(scrape(cm).sum("kvpool_coordinator_agent_up") == 1);

  agent->kill(SIGKILL);
  (void)agent->wait(Deadline::after(scaled(5s)));
  CHECK(eventually(
      [&] {
        auto e = scrape(cm);
        return e.value("kvpool_coordinator_agents_dead") == 1 && e.value("kvpool_coordinator_agents_alive") == 0;
      },
      scaled(5s)));
  auto e = scrape(cm);
  CHECK(e.value("kvpool_coordinator_agent_deaths_total") == 1);
  CHECK(e.sum("kvpool_coordinator_agent_up") == 0);
  coord->kill(SIGTERM);
  CHECK(coord->wait(Deadline::after(scaled(10s))));
}

TEST_CASE("the metrics address can come from the JSON config", "[metrics][integration]") {
  std::string cport_file = temp_path("coord-port"), cmetrics = temp_path("coord-metrics"),
              config = temp_path("config.json");
  {
    std::ofstream out(config);
    out << "{\"listen\": \"127.0.0.1:0\", \"port-file\": \"" << cport_file << "\", \"metrics\": \"127.0.0.1:0\", "
        << "\"metrics-port-file\": \"" << cmetrics << "\", \"log-level\": \"error\"}";
  }
  auto coord = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--config", config});
  REQUIRE(coord);
  std::uint16_t cm = metrics_port(cmetrics);
  std::remove(config.c_str());
  REQUIRE(cm != 0);
  CHECK(scrape(cm).has("kvpool_coordinator_uptime_seconds"));
  std::remove(cport_file.c_str());
}

TEST_CASE("refusals are counted by code, permission_denied too, and a tenant's namespaces are limited",
          "[metrics][integration][tenants]") {
  const std::string cluster = make_secret_file();
  const std::string dir = cluster.substr(0, cluster.rfind('/'));
  const std::string tenants = dir + "/tenants", acme = dir + "/acme";
  REQUIRE(create_tenant_secret_file(acme, "acme").ok());
  {
    std::ofstream f(tenants);
    f << "tenant acme " << load_secret(acme).value().key() << " namespaces=acme/*\n";
  }
  REQUIRE(::chmod(tenants.c_str(), 0600) == 0);
  std::string mfile = temp_path("metrics-port");
  auto pool = start_standalone("64MiB", {"--secret-file", cluster, "--tenants", tenants, "--metrics", "127.0.0.1:0",
                                         "--metrics-port-file", mfile, "--max-namespaces-per-tenant", "2"});
  REQUIRE(pool);
  std::uint16_t port = metrics_port(mfile);
  REQUIRE(port != 0);
  auto raw = raw_with(pool->coordinator, acme);
  REQUIRE(raw);
  auto reg = [&](const std::string& model) {
    rpc::RegisterNamespaceReply rep;
    return raw_call(*raw, rpc::kRegisterNamespace, rpc::RegisterNamespaceRequest{test_namespace(kBlock, model)}, rep);
  };
  CHECK(reg("beta/model").code() == StatusCode::kPermissionDenied);  // not among acme's patterns
  CHECK(reg("acme/one").ok());
  CHECK(reg("acme/two").ok());
  CHECK(reg("acme/one").ok());  // known: costs nothing
  const Status over = reg("acme/three");
  CHECK(over.code() == StatusCode::kResourceExhausted);
  CHECK(over.message().find("--max-namespaces-per-tenant") != std::string::npos);
  // The operator is not locked out by the tenant.
  auto admin = raw_with(pool->coordinator, cluster);
  REQUIRE(admin);
  rpc::RegisterNamespaceReply rep;
  CHECK(raw_call(*admin, rpc::kRegisterNamespace, rpc::RegisterNamespaceRequest{test_namespace(kBlock, "acme/three")},
                 rep)
            .ok());
  auto e = scrape(port);
  const std::string errors = "kvpool_coordinator_request_errors_total{op=\"register_namespace\",code=";
  CHECK(e.value(errors + "\"permission_denied\"}") == 1);
  CHECK(e.value(errors + "\"resource_exhausted\"}") == 1);
}

TEST_CASE("set_quota and recover_blocks are counted under their own operation", "[metrics]") {
  auto registry = std::make_shared<metrics::Registry>();
  coordinator::CoordinatorServerOptions o;
  o.port = 0;
  o.metrics = registry;
  o.secret_file = temp_path("secret");
  auto server = coordinator::CoordinatorServer::start(o);
  REQUIRE(server);
  auto raw = raw_with("127.0.0.1:" + std::to_string((*server)->port()), o.secret_file, rpc::Role::kTool);
  REQUIRE(raw);
  // Neither the namespace nor the agent exists: each is answered with an
  // error, which is counted under the operation too.
  CHECK(!raw->call(rpc::kSetQuota, rpc::encode(rpc::SetQuotaRequest{0x1234, 10, 0}), Deadline::after(scaled(10s))));
  CHECK(!raw->call(rpc::kRecoverBlocks, rpc::encode(rpc::RecoverBlocksRequest{99, 1, true, {}}),
                   Deadline::after(scaled(10s))));
  auto e = parse_exposition(registry->render());
  INFO(registry->render());
  REQUIRE(e.error.empty());
  CHECK(e.value("kvpool_coordinator_requests_total{op=\"set_quota\"}") == 1);
  CHECK(e.value("kvpool_coordinator_requests_total{op=\"recover_blocks\"}") == 1);
  CHECK(e.value("kvpool_coordinator_requests_total{op=\"unknown\"}") == 0);
  double quota_errors = 0;
  for (const auto& [series, v] : e.samples) {
    if (series.rfind("kvpool_coordinator_request_errors_total{op=\"set_quota\",", 0) == 0) quota_errors += v;
  }
  CHECK(quota_errors == 1);
}

TEST_CASE("a request that does not decode is refused and counted under its operation", "[metrics]") {
  auto registry = std::make_shared<metrics::Registry>();
  coordinator::CoordinatorServerOptions o;
  o.port = 0;
  o.metrics = registry;
  o.secret_file = temp_path("secret");
  auto server = coordinator::CoordinatorServer::start(o);
  REQUIRE(server);
  auto raw = raw_with("127.0.0.1:" + std::to_string((*server)->port()), o.secret_file, rpc::Role::kTool);
  REQUIRE(raw);
  auto bad = raw->call(rpc::kAllocate, std::string("\x01", 1), Deadline::after(scaled(10s)));
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == StatusCode::kInvalidArgument);
  // Requests that carry nothing read no payload: stray bytes are ignored.
  CHECK(raw->call(rpc::kStats, "stray", Deadline::after(scaled(10s))));
  auto e = parse_exposition(registry->render());
  INFO(registry->render());
  REQUIRE(e.error.empty());
  CHECK(e.value("kvpool_coordinator_request_errors_total{op=\"allocate\",code=\"invalid_argument\"}") == 1);
  CHECK(e.value("kvpool_coordinator_requests_total{op=\"stats\"}") == 1);
  CHECK(e.value("kvpool_coordinator_request_duration_seconds_count{op=\"stats\"}") == 1);
}
