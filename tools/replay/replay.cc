#include "tools/replay/replay.h"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "kvpool/client.h"
#include "runtime/common/pattern.h"
#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/leader_address.h"
#include "runtime/etcd/shard_map.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"
#include "tools/common/pool_access.h"

namespace kvpool::replay {
namespace {

// The trace's ids are already chained prefix hashes: the key is the id, in a
// space of its own.
Key128 key_of(std::uint64_t hash_id) { return Key128{hash_id, 0x7265706c6179ull}; }

std::uint64_t hit_tokens(const TraceRequest& r, std::uint64_t hit_blocks) {
  return std::min<std::uint64_t>(hit_blocks * kTokensPerHashId, r.input_length);
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

}  // namespace

Result<std::vector<TraceRequest>> load_trace(const std::string& path, std::size_t max_requests) {
  std::ifstream in(path);
  if (!in) return make_error(StatusCode::kNotFound, "cannot open trace " + path);
  std::vector<TraceRequest> out;
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("hash_ids") || !j["hash_ids"].is_array() ||
        !j.contains("input_length") || !j["input_length"].is_number_unsigned()) {
      return make_error(StatusCode::kInvalidArgument,
                        path + ":" + std::to_string(n) + ": not a trace record (needs input_length and hash_ids)");
    }
    TraceRequest r;
    r.timestamp_ms = j.value("timestamp", std::uint64_t{0});
    r.input_length = j["input_length"].get<std::uint64_t>();
    for (const auto& id : j["hash_ids"]) {
      if (!id.is_number_unsigned()) {
        return make_error(StatusCode::kInvalidArgument, path + ":" + std::to_string(n) + ": a hash id is not a "
                                                                                         "non-negative integer");
      }
      r.hash_ids.push_back(id.get<std::uint64_t>());
    }
    out.push_back(std::move(r));
    if (max_requests != 0 && out.size() >= max_requests) break;
  }
  return out;
}

HitRates simulate_prefix_lru(std::span<const TraceRequest> requests, std::uint64_t capacity_blocks) {
  std::list<std::uint64_t> lru;  // front: most recent
  std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> where;
  HitRates h;
  for (const TraceRequest& r : requests) {
    std::uint64_t hit = 0;
    while (hit < r.hash_ids.size() && where.count(r.hash_ids[hit]) != 0) ++hit;
    h.blocks += r.hash_ids.size();
    h.hit_blocks += hit;
    h.tokens += r.input_length;
    h.hit_tokens += hit_tokens(r, hit);
    for (std::uint64_t id : r.hash_ids) {
      if (auto it = where.find(id); it != where.end()) {
        lru.splice(lru.begin(), lru, it->second);
        continue;
      }
      if (capacity_blocks != 0 && where.size() >= capacity_blocks) {
        where.erase(lru.back());
        lru.pop_back();
      }
      lru.push_front(id);
      where[id] = lru.begin();
    }
  }
  return h;
}

// The coordinator that takes the --capacity-blocks quota: the address
// itself, or through etcd the shard's leader. With a shard map of several
// shards each would hold its own quota, which is not one LRU of that
// capacity: refused, naming the fix.
static Result<std::string> quota_coordinator(const std::string& coordinator, std::chrono::milliseconds timeout) {
  if (etcd::is_etcd_address(coordinator)) {
    auto addr = etcd::parse_etcd_address(coordinator);
    if (!addr) return tl::unexpected(addr.error());
    if (!addr->has_shard) {
      auto ec = etcd::Client::create({addr->endpoints, timeout});
      if (!ec) return tl::unexpected(ec.error());
      auto map = etcd::read_shard_map(**ec);
      if (!map) return tl::unexpected(map.error());
      if (const std::size_t n = map->shards().size(); n > 1) {
        return make_error(StatusCode::kInvalidArgument,
                          "--capacity-blocks: the shard map has " + std::to_string(n) +
                              " shards, and a quota on each is not one LRU of that capacity; replay against one "
                              "shard (etcd://HOST:PORT/SHARD) or without --capacity-blocks");
      }
    }
  }
  return etcd::resolve_coordinator(coordinator, timeout);
}

namespace {

// What one worker did, added to the report when it is done.
struct Tally {
  HitRates rates;
  std::size_t failed = 0;
  std::uint64_t moved = 0, wrong = 0;
  std::vector<double> latencies;  // per request, ms
};

// Replays one request: gets its longest cached prefix (bytes verified), then
// puts the rest. in/out: the worker's buffers, reused from one request to
// the next.
void replay_request(Client& client, NamespaceId ns, const TraceRequest& r, std::uint64_t block_bytes,
                    std::vector<std::byte>& in, std::vector<std::byte>& out, Tally& t) {
  const auto t0 = Clock::now();
  const std::size_t n = r.hash_ids.size();
  std::vector<Key128> keys;
  keys.reserve(n);
  for (std::uint64_t id : r.hash_ids) keys.push_back(key_of(id));
  out.resize(n * block_bytes);
  std::vector<std::span<std::byte>> outs;
  for (std::size_t j = 0; j < n; ++j) outs.emplace_back(out.data() + j * block_bytes, block_bytes);
  std::size_t hit = 0;
  bool ok = true;
  if (n > 0) {
    auto got = client.get(ns, keys, outs);
    if (got) {
      hit = got->loaded;
      t.moved += hit * block_bytes;
      for (std::size_t j = 0; j < hit; ++j) t.wrong += pattern_mismatches(outs[j].data(), 0, block_bytes, keys[j].lo);
    } else {
      ok = false;
    }
  }
  if (hit < n) {
    in.resize((n - hit) * block_bytes);
    std::vector<std::span<const std::byte>> ins;
    for (std::size_t j = hit; j < n; ++j) {
      std::byte* p = in.data() + (j - hit) * block_bytes;
      fill_pattern(p, 0, block_bytes, keys[j].lo);
      ins.emplace_back(p, block_bytes);
    }
    auto put = client.put(ns, std::span<const Key128>(keys).subspan(hit), ins);
    if (put) {
      t.moved += put->written * block_bytes;
      ok &= put->failed == 0;
    } else {
      ok = false;
    }
  }
  t.rates.blocks += n;
  t.rates.hit_blocks += hit;
  t.rates.tokens += r.input_length;
  t.rates.hit_tokens += hit_tokens(r, hit);
  if (!ok) ++t.failed;
  t.latencies.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
}

// One client per worker, each with the run's namespace (its id in *ns)
// registered; with options.capacity_blocks, the namespace's quota set.
Result<std::vector<std::unique_ptr<Client>>> connect_workers(const Options& options, const NamespaceDescriptor& desc,
                                                             NamespaceId* ns) {
  Result<std::string> quota_target;
  if (options.capacity_blocks != 0) {
    quota_target = quota_coordinator(options.coordinator, options.timeout);
    if (!quota_target) return tl::unexpected(quota_target.error());
  }
  auto first = tools::connect_client(options.coordinator, options.timeout, options.secret_file, "replay");
  if (!first) return tl::unexpected(first.error());
  auto id = (*first)->register_namespace(desc);
  if (!id) return tl::unexpected(id.error());
  *ns = *id;
  if (options.capacity_blocks != 0) {
    auto admin = tools::connect_tool(*quota_target, options.timeout, options.secret_file, "replay");
    if (!admin) return tl::unexpected(admin.error());
    auto reply = (*admin)->call(rpc::kSetQuota, rpc::encode(rpc::SetQuotaRequest{*id, options.capacity_blocks, 0}),
                                Deadline::after(options.timeout));
    if (!reply) return tl::unexpected(reply.error());
  }
  std::vector<std::unique_ptr<Client>> clients;
  clients.push_back(std::move(*first));
  for (int w = 1; w < std::max(1, options.workers); ++w) {
    auto c =
        tools::connect_client(options.coordinator, options.timeout, options.secret_file, "replay-" + std::to_string(w));
    if (!c) return tl::unexpected(c.error());
    if (auto n = (*c)->register_namespace(desc); !n) return tl::unexpected(n.error());
    clients.push_back(std::move(*c));
  }
  return clients;
}

}  // namespace

Result<Report> run(const Options& options, std::span<const TraceRequest> requests) {
  const std::uint64_t block_bytes = kTokensPerHashId * options.bytes_per_token;
  const NamespaceDescriptor desc = tools::tool_namespace(options.model, "replay", kTokensPerHashId, block_bytes);
  if (auto b = block_bytes_of(desc); !b) {
    return make_error(StatusCode::kInvalidArgument, "--bytes-per-token " + std::to_string(options.bytes_per_token) +
                                                        ": " + b.error().message());
  }
  NamespaceId ns = 0;
  auto clients = connect_workers(options, desc, &ns);
  if (!clients) return tl::unexpected(clients.error());

  std::atomic<std::size_t> next{0}, done{0};
  std::mutex mu;  // guards report and latencies
  Report report;
  std::vector<double> latencies;
  latencies.reserve(requests.size());
  const auto start = Clock::now();
  auto worker = [&](Client& client, bool reports_progress) {
    std::vector<std::byte> in, out;
    Tally t;
    for (std::size_t i = next++; i < requests.size(); i = next++) {
      const TraceRequest& r = requests[i];
      if (options.speed > 0) {
        const auto due = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(
                                     static_cast<double>(r.timestamp_ms) / options.speed));
        std::this_thread::sleep_until(due);
      }
      replay_request(client, ns, r, block_bytes, in, out, t);
      const std::size_t d = ++done;
      if (reports_progress && options.progress && (d % 64 == 0 || d == requests.size())) {
        options.progress(d, requests.size());
      }
    }
    std::lock_guard lock(mu);
    report.rates.blocks += t.rates.blocks;
    report.rates.hit_blocks += t.rates.hit_blocks;
    report.rates.tokens += t.rates.tokens;
    report.rates.hit_tokens += t.rates.hit_tokens;
    report.failed_requests += t.failed;
    report.bytes_moved += t.moved;
    report.wrong_bytes += t.wrong;
    latencies.insert(latencies.end(), t.latencies.begin(), t.latencies.end());
  };
  std::vector<std::thread> threads;
  for (std::size_t w = 1; w < clients->size(); ++w) threads.emplace_back(worker, std::ref(*(*clients)[w]), false);
  worker(*(*clients)[0], true);
  for (auto& t : threads) t.join();
  if (options.progress) options.progress(done.load(), requests.size());
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  report.requests = requests.size();
  report.p50_ms = percentile(latencies, 0.50);
  report.p90_ms = percentile(latencies, 0.90);
  report.p99_ms = percentile(latencies, 0.99);
  report.max_ms = latencies.empty() ? 0 : *std::max_element(latencies.begin(), latencies.end());
  return report;
}

}  // namespace kvpool::replay
