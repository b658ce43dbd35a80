// Trace replay: the exact prefix-LRU model on hand-checked traces, trace
// parsing, and a replay of the conversation trace against a real pool whose
// namespace quota evicts exactly, which must reproduce the model's hit rate.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>

#include "tests/integration/pool_fixture.h"
#include "tools/replay/replay.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

replay::TraceRequest req(std::vector<std::uint64_t> ids, std::uint64_t tokens = 0) {
  return replay::TraceRequest{0, tokens == 0 ? ids.size() * 512 : tokens, std::move(ids)};
}

std::string traces_dir() {
  const char* d = std::getenv("KVPOOL_TRACES");
  return d != nullptr ? d : "../shared/traces";
}

}  // namespace

TEST_CASE("the prefix-LRU model counts leading hits and evicts the least recently used", "[replay]") {
  // Capacity 3: [1 2] miss both; [1 2 3] hits 2; [4] evicts 1 (LRU order
  // 1 2 3 -> after the touch of 1,2,3 the oldest is 1); [1 2] misses at 1.
  std::vector<replay::TraceRequest> t{req({1, 2}), req({1, 2, 3}), req({4}), req({1, 2})};
  auto h = replay::simulate_prefix_lru(t, 3);
  CHECK(h.blocks == 8);
  CHECK(h.hit_blocks == 2);
  // A gap stops the prefix: [5 2] after [2] is cached hits nothing.
  std::vector<replay::TraceRequest> g{req({2}), req({5, 2})};
  CHECK(replay::simulate_prefix_lru(g, 0).hit_blocks == 0);
  // Tokens: a 700-token prompt of 2 blocks whose first block hits: 512 hit tokens.
  std::vector<replay::TraceRequest> k{req({7}), req({7, 8}, 700)};
  auto tok = replay::simulate_prefix_lru(k, 0);
  CHECK(tok.hit_tokens == 512);
  CHECK(tok.tokens == 512 + 700);
}

TEST_CASE("the model reproduces the trace README's published hit rates", "[replay]") {
  auto trace = replay::load_trace(traces_dir() + "/conversation_trace.jsonl");
  if (!trace) {  // ../shared beside the clone
    WARN("no traces at " << traces_dir() << ": skipped");
    return;
  }
  CHECK(trace->size() == 12031);
  CHECK(replay::simulate_prefix_lru(*trace, 0).block_hit_rate() == Approx(0.3664).margin(0.00005));
  CHECK(replay::simulate_prefix_lru(*trace, 10000).block_hit_rate() == Approx(0.2112).margin(0.00005));
}

TEST_CASE("a malformed trace is refused with the line that is wrong", "[replay]") {
  const std::string path = temp_path("trace.jsonl");
  {
    std::ofstream f(path);
    f << R"({"timestamp": 0, "input_length": 600, "hash_ids": [1, 2]})" << "\n";
    f << R"({"timestamp": 1, "input_length": 600, "hash_ids": "nope"})" << "\n";
  }
  auto t = replay::load_trace(path);
  REQUIRE_FALSE(t);
  CHECK(t.error().code() == StatusCode::kInvalidArgument);
  CHECK(t.error().message().find(":2:") != std::string::npos);
  auto one = replay::load_trace(path, 1);
  REQUIRE(one);
  CHECK(one->size() == 1);
  CHECK(replay::load_trace(path + ".missing").error().code() == StatusCode::kNotFound);
  std::remove(path.c_str());
}

TEST_CASE("replaying 2,000 conversation requests at a 10,000-block quota matches exact prefix-LRU within 0.01",
          "[replay][integration]") {
  auto trace = replay::load_trace(traces_dir() + "/conversation_trace.jsonl", 2000);
  if (!trace) {
    WARN("no traces at " << traces_dir() << ": skipped");
    return;
  }
  const auto model = replay::simulate_prefix_lru(*trace, 10000);
  // 10,000 blocks of 64 KiB are 625 MiB: a pool with room to spare, and
  // watermarks at 1 so only the quota evicts.
  auto pool = start_standalone("720MiB", {"--high-watermark", "1", "--low-watermark", "1"});
  REQUIRE(pool);
  replay::Options o;
  o.coordinator = pool->coordinator;
  o.workers = 1;
  o.capacity_blocks = 10000;
  o.timeout = scaled(30s);
  auto r = replay::run(o, *trace);
  REQUIRE(r);
  INFO("pool " << r->rates.block_hit_rate() << " model " << model.block_hit_rate() << " in " << r->seconds << " s");
  CHECK(r->requests == 2000);
  CHECK(r->failed_requests == 0);
  CHECK(r->wrong_bytes == 0);
  CHECK(r->rates.blocks == model.blocks);
  CHECK(std::abs(r->rates.block_hit_rate() - model.block_hit_rate()) <= 0.01);
  CHECK(std::abs(r->rates.token_hit_rate() - model.token_hit_rate()) <= 0.01);
  CHECK(model.block_hit_rate() > 0.1);  // the comparison means something
}
