// The metrics registry and its text exposition, and the /metrics HTTP
// server, in process.

#include <catch2/catch.hpp>

#include <thread>

#include "coordinator/server.h"
#include "runtime/metrics/http_server.h"
#include "runtime/metrics/registry.h"
#include "tests/metrics/exposition.h"

using namespace kvpool;
using namespace kvpool::metrics;
using kvpool::testing::http_get;
using kvpool::testing::parse_exposition;

TEST_CASE("counters, gauges and histograms render as valid exposition", "[metrics]") {
  Registry r;
  r.counter("kvpool_test_requests_total", "Requests", {{"op", "put"}}).inc(3);
  r.counter("kvpool_test_requests_total", "Requests", {{"op", "get"}}).inc();
  r.gauge("kvpool_test_bytes", "Bytes").set(1024);
  auto& h = r.histogram("kvpool_test_seconds", "Latency", {0.001, 0.01, 0.1});
  h.observe(0.0005);
  h.observe(0.005);
  h.observe(0.005);
  h.observe(5);
  auto e = parse_exposition(r.render());
  INFO(r.render());
  REQUIRE(e.error.empty());
  CHECK(e.types["kvpool_test_requests_total"] == "counter");
  CHECK(e.types["kvpool_test_bytes"] == "gauge");
  CHECK(e.types["kvpool_test_seconds"] == "histogram");
  CHECK(e.value("kvpool_test_requests_total{op=\"put\"}") == 3);
  CHECK(e.value("kvpool_test_requests_total{op=\"get\"}") == 1);
  CHECK(e.value("kvpool_test_bytes") == 1024);
  CHECK(e.value("kvpool_test_seconds_bucket{le=\"0.001\"}") == 1);
  CHECK(e.value("kvpool_test_seconds_bucket{le=\"0.01\"}") == 3);
  CHECK(e.value("kvpool_test_seconds_bucket{le=\"0.1\"}") == 3);
  CHECK(e.value("kvpool_test_seconds_bucket{le=\"+Inf\"}") == 4);
  CHECK(e.value("kvpool_test_seconds_count") == 4);
  CHECK(e.value("kvpool_test_seconds_sum") == Approx(5.0105));
}

TEST_CASE("the same name and labels give the same instrument", "[metrics]") {
  Registry r;
  Counter& a = r.counter("kvpool_x_total", "x", {{"k", "v"}});
  Counter& b = r.counter("kvpool_x_total", "x", {{"k", "v"}});
  CHECK(&a == &b);
  CHECK(&a != &r.counter("kvpool_x_total", "x", {{"k", "w"}}));
}

TEST_CASE("label values are escaped", "[metrics]") {
  CHECK(escape_label_value("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
  Registry r;
  r.gauge("kvpool_g", "g", {{"model", "we\"ird"}}).set(1);
  auto text = r.render();
  CHECK(text.find("kvpool_g{model=\"we\\\"ird\"} 1\n") != std::string::npos);
}

TEST_CASE("collectors run at scrape time and stop after removal", "[metrics]") {
  Registry r;
  int calls = 0;
  auto id = r.add_collector([&](Collector& c) {
    ++calls;
    c.gauge("kvpool_collected", "from state", {{"agent", "1"}}, 42);
    c.counter("kvpool_collected_total", "from state", {}, 7);
  });
  auto e = parse_exposition(r.render());
  REQUIRE(e.error.empty());
  CHECK(e.value("kvpool_collected{agent=\"1\"}") == 42);
  CHECK(e.value("kvpool_collected_total") == 7);
  CHECK(calls == 1);
  r.remove_collector(id);
  CHECK(r.render().find("kvpool_collected") == std::string::npos);
  CHECK(calls == 1);
}

TEST_CASE("counters count every increment from many threads", "[metrics]") {
  Registry r;
  Counter& c = r.counter("kvpool_hot_total", "hot");
  Histogram& h = r.histogram("kvpool_hot_seconds", "hot", latency_buckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100000; ++i) {
        c.inc();
        h.observe(0.001);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(c.value() == 400000);
  CHECK(h.snapshot().count == 400000);
}

TEST_CASE("the HTTP server serves /metrics and 404s elsewhere", "[metrics]") {
  auto r = std::make_shared<Registry>();
  r->counter("kvpool_served_total", "served").inc(5);
  auto server = MetricsServer::start("127.0.0.1", 0, r);
  REQUIRE(server);
  REQUIRE((*server)->port() != 0);
  auto res = http_get((*server)->port(), "/metrics");
  CHECK(res.status == 200);
  CHECK(res.headers.find("content-type: text/plain; version=0.0.4") != std::string::npos);
  auto e = parse_exposition(res.body);
  CHECK(e.error.empty());
  CHECK(e.value("kvpool_served_total") == 5);
  r->counter("kvpool_served_total", "served").inc();
  CHECK(parse_exposition(http_get((*server)->port(), "/metrics").body).value("kvpool_served_total") == 6);
  CHECK(http_get((*server)->port(), "/nothing").status == 404);
  (*server)->stop();
  CHECK(http_get((*server)->port(), "/metrics").status == 0);  // closed
}

TEST_CASE("a metrics address that is not an IP is refused", "[metrics]") {
  auto server = MetricsServer::start("not-an-ip", 0, std::make_shared<Registry>());
  REQUIRE(!server);
  CHECK(server.error().code() == StatusCode::kInvalidArgument);
}

// Asio errors map in one place (runtime/common/asio_status.h): a port in use
// is the operator's to fix, not a retry.
TEST_CASE("a metrics port already in use is refused as a precondition, naming the port", "[metrics]") {
  auto first = MetricsServer::start("127.0.0.1", 0, std::make_shared<Registry>());
  REQUIRE(first);
  const std::uint16_t port = (*first)->port();
  auto second = MetricsServer::start("127.0.0.1", port, std::make_shared<Registry>());
  REQUIRE(!second);
  CHECK(second.error().code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(second.error().message(), Catch::Contains(std::to_string(port)));
  CHECK_THAT(second.error().message(), Catch::Contains("in use"));
}

TEST_CASE("a coordinator server that fails to start leaves nothing in a shared registry", "[metrics]") {
  auto registry = std::make_shared<Registry>();
  coordinator::CoordinatorServerOptions first;
  first.port = 0;
  first.metrics = registry;
  auto running = coordinator::CoordinatorServer::start(first);
  REQUIRE(running);
  CHECK(registry->render().find("kvpool_coordinator_blocks ") != std::string::npos);

  coordinator::CoordinatorServerOptions clash = first;
  clash.port = (*running)->port();  // taken: start fails after the metrics are set up
  auto other_registry = std::make_shared<Registry>();
  clash.metrics = other_registry;
  auto failed = coordinator::CoordinatorServer::start(clash);
  REQUIRE(!failed);
  // Scraping runs no collector of the server that is gone.
  CHECK(other_registry->render().find("kvpool_coordinator_blocks ") == std::string::npos);

  (*running)->stop();
  CHECK(registry->render().find("kvpool_coordinator_blocks ") == std::string::npos);
}
