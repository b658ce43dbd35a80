#pragma once
// Trace replay: Mooncake-format request traces (../shared/traces/README.md)
// against a live pool, and the exact prefix-LRU model the pool is checked
// against. `pooltool replay` is the command line over it.
//
// A trace request is a prompt of `input_length` tokens whose blocks of 512
// tokens have chained prefix hashes `hash_ids` (equal ids: equal prefixes).
// Each replayed request gets its longest cached run of leading blocks
// (lookup + get, bytes verified), then puts the rest (blocks already present
// after a gap dedupe and are touched), so the pool's LRU sees what the model
// sees. Block bytes are tokens x bytes_per_token: scaled down by default so
// a replay fits a small pool.

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kvpool/status.h"

namespace kvpool::replay {

inline constexpr std::uint32_t kTokensPerHashId = 512;

struct TraceRequest {
  std::uint64_t timestamp_ms = 0;
  std::uint64_t input_length = 0;  // tokens
  std::vector<std::uint64_t> hash_ids;
};

// Reads a JSON-lines trace; at most max_requests (0: all). kInvalidArgument
// names the line of a malformed record; kNotFound when the file is missing.
Result<std::vector<TraceRequest>> load_trace(const std::string& path, std::size_t max_requests = 0);

struct HitRates {
  std::uint64_t blocks = 0, hit_blocks = 0;
  std::uint64_t tokens = 0, hit_tokens = 0;
  double block_hit_rate() const { return blocks == 0 ? 0.0 : static_cast<double>(hit_blocks) / blocks; }
  double token_hit_rate() const { return tokens == 0 ? 0.0 : static_cast<double>(hit_tokens) / tokens; }
};

// Exact prefix-LRU over blocks: a request hits its longest run of leading
// blocks already cached, then all its blocks are touched in order (new ones
// inserted, evicting the least recently used past capacity_blocks; 0 means
// unbounded). Hit tokens: min(hit blocks x 512, input_length).
HitRates simulate_prefix_lru(std::span<const TraceRequest> requests, std::uint64_t capacity_blocks);

struct Options {
  std::string coordinator = "127.0.0.1:7400";
  std::string secret_file;  // empty: discover (see SECURITY.md)
  std::string model = "kvpool-replay";  // namespace model id
  int workers = 4;
  std::uint64_t bytes_per_token = 128;  // a 512-token block of 64 KiB, the smallest
  // Quota of the run's namespace in blocks (exact LRU eviction); 0: none,
  // the pool's watermarks decide.
  std::uint64_t capacity_blocks = 0;
  // X times real time by the trace's timestamps; 0: as fast as possible.
  double speed = 0;
  std::chrono::milliseconds timeout{10000};
  // Called now and then from one worker: requests done so far.
  std::function<void(std::size_t done, std::size_t total)> progress;
};

struct Report {
  HitRates rates;
  std::size_t requests = 0;
  std::size_t failed_requests = 0;  // a call failed (error surfaced; the request's blocks count as misses)
  std::uint64_t bytes_moved = 0;    // put + got
  std::uint64_t wrong_bytes = 0;    // must be 0
  double seconds = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0;  // per request
};

// Replays `requests` against the pool at options.coordinator. Call errors:
// the pool cannot be reached, or the namespace or quota is refused.
Result<Report> run(const Options& options, std::span<const TraceRequest> requests);

}  // namespace kvpool::replay
