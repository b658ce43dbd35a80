// kvpool-demo: the main job. Starts `kvpool-agent --standalone` (the pool
// with its embedded coordinator), then prefill workers that put the KV blocks
// of synthetic prompts sharing prefixes, and decode workers that wait for
// those blocks, get them and check every byte. Blocks have a real model's
// shape: 16 tokens x 32 layers of Llama-3-8B (8 KV heads, head dim 128,
// bf16) = 2 MiB. Prints a summary; exits non-zero on any wrong byte or
// failed operation, and stops everything it started.
//
// Every block's bytes derive from its key, so a decode worker verifies what
// a prefill worker wrote without any other channel between them.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <thread>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kvpool/client.h"
#include "runtime/common/pattern.h"
#include "runtime/common/process_util.h"
#include "runtime/common/subprocess.h"
#include "runtime/common/units.h"

using namespace kvpool;
using json = nlohmann::json;
using Ms = std::chrono::milliseconds;

namespace {

struct Workload {
  int requests = 48;       // prompts prefilled
  int cold_requests = 8;   // prompts nobody prefills: decode workers see misses
  int prefixes = 6;        // shared system prompts / documents
  int prefix_blocks = 6;   // blocks of each shared prefix
  int suffix_blocks = 2;   // blocks unique to each prompt
};

NamespaceDescriptor llama3_8b() {
  return NamespaceDescriptor{"meta-llama/Meta-Llama-3-8B", "bf16", 32, 8, 128, 16, "kvpool-demo", 0, 1, 0};
}

// The tokens of prompt r: its shared prefix's tokens, then its own.
std::vector<std::uint32_t> prompt_tokens(const Workload& w, int r, std::uint32_t tokens_per_block) {
  std::vector<std::uint32_t> t;
  const int p = r % w.prefixes;
  for (int i = 0; i < w.prefix_blocks * static_cast<int>(tokens_per_block); ++i) {
    t.push_back(static_cast<std::uint32_t>(pattern_word(1000 + p, i) % 128000));
  }
  for (int i = 0; i < w.suffix_blocks * static_cast<int>(tokens_per_block); ++i) {
    t.push_back(static_cast<std::uint32_t>(pattern_word(5000 + r, i) % 128000));
  }
  return t;
}

std::uint64_t seed_of(const Key128& k) { return k.lo ^ (k.hi * 31); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

struct WorkerStats {
  std::string role;
  int index = 0;
  std::uint64_t put = 0, deduplicated = 0, pending = 0, hit = 0, missed = 0, failed = 0;
  std::uint64_t bytes = 0, wrong_bytes = 0;
  double busy_s = 0;
  std::vector<double> batch_ms;
  std::string transport;
  std::string error;

  json to_json() const {
    return {{"role", role},         {"index", index},
            {"put", put},           {"deduplicated", deduplicated},
            {"pending", pending},   {"hit", hit},
            {"missed", missed},     {"failed", failed},
            {"bytes", bytes},       {"wrong_bytes", wrong_bytes},
            {"busy_s", busy_s},     {"batch_ms", batch_ms},
            {"transport", transport}, {"error", error}};
  }
};

// What a worker's loops share: its client, namespace and block buffers.
struct WorkerContext {
  Client& client;
  NamespaceId ns;
  std::uint64_t block;
  std::uint32_t tpb;
  std::vector<std::byte>& arena;
  std::span<std::byte> span_of(int i) const { return std::span<std::byte>(arena.data() + i * block, block); }
};

// Runs one put or get batch, its latency counted in `st`; a failure's
// message goes to st.error.
template <class Call>
auto timed_batch(WorkerStats& st, Call call) -> decltype(call()) {
  auto t0 = Clock::now();
  auto res = call();
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (!res) {
    st.error = res.error().to_string();
    return res;
  }
  st.batch_ms.push_back(ms);
  st.busy_s += ms / 1000;
  return res;
}

// The prefill worker's prompts; false (with st.error set) where the worker
// must stop.
bool run_prefill(const WorkerContext& c, int index, int workers, const Workload& w, WorkerStats& st) {
  for (int r = index; r < w.requests; r += workers) {
    auto keys = prefix_keys(c.ns, prompt_tokens(w, r, c.tpb), c.tpb);
    std::vector<std::span<const std::byte>> blocks;
    for (int i = 0; i < static_cast<int>(keys.size()); ++i) {
      fill_pattern(c.arena.data() + i * c.block, 0, c.block, seed_of(keys[i]));
      blocks.push_back(c.span_of(i));
    }
    auto res = timed_batch(st, [&] { return c.client.put(c.ns, keys, blocks); });
    if (!res) return false;
    st.put += res->written;
    st.deduplicated += res->deduplicated;
    st.pending += res->pending;
    st.failed += res->failed;
    st.bytes += res->written * c.block;
    for (std::size_t i = 0; i < res->errors.size(); ++i) {
      if (!res->errors[i].ok() && st.error.empty()) st.error = res->errors[i].to_string();
    }
  }
  return true;
}

bool run_decode(const WorkerContext& c, int index, int workers, const Workload& w, WorkerStats& st) {
  // Decode: wait for each prompt's KV (a prefill worker may still be
  // writing it), then load and check it; cold prompts are misses.
  for (int r = index; r < w.requests + w.cold_requests; r += workers) {
    auto keys = prefix_keys(c.ns, prompt_tokens(w, r, c.tpb), c.tpb);
    if (r < w.requests) {
      auto ready = c.client.wait_for(c.ns, keys, std::chrono::seconds(30));
      if (!ready) {
        st.error = ready.error().to_string();
        return false;
      }
    }
    std::vector<std::span<std::byte>> bufs;
    for (int i = 0; i < static_cast<int>(keys.size()); ++i) {
      std::memset(c.arena.data() + i * c.block, 0, c.block);  // nothing stale can pass
      bufs.push_back(c.span_of(i));
    }
    auto res = timed_batch(st, [&] { return c.client.get(c.ns, keys, bufs); });
    if (!res) return false;
    st.hit += res->loaded;
    st.missed += keys.size() - res->loaded;
    st.bytes += res->loaded * c.block;
    for (std::size_t i = 0; i < res->loaded; ++i) {
      st.wrong_bytes += pattern_mismatches(c.arena.data() + i * c.block, 0, c.block, seed_of(keys[i]));
    }
    if (r < w.requests && res->loaded != keys.size()) {
      ++st.failed;
      if (st.error.empty()) st.error = "prefilled prompt " + std::to_string(r) + ": " + res->stopped.to_string();
    }
  }
  return true;
}

int run_worker(const std::string& role, int index, int workers, const std::string& coordinator, const Workload& w) {
  WorkerStats st;
  st.role = role;
  st.index = index;
  auto finish = [&](int rc) {
    std::cout << "RESULT " << st.to_json().dump() << std::endl;
    return rc;
  };
  ClientOptions options;
  options.coordinator = coordinator;
  options.client_id = role + "-" + std::to_string(index);
  auto client = Client::connect(options);
  if (!client) {
    st.error = client.error().to_string();
    return finish(1);
  }
  auto ns = (*client)->register_namespace(llama3_8b());
  if (!ns) {
    st.error = ns.error().to_string();
    return finish(1);
  }
  const std::uint64_t block = *(*client)->block_bytes(*ns);
  const std::uint32_t tpb = llama3_8b().tokens_per_block;
  const int blocks_per_prompt = w.prefix_blocks + w.suffix_blocks;
  std::vector<std::byte> arena(static_cast<std::size_t>(blocks_per_prompt) * block);
  if (Status s = (*client)->register_buffer(arena.data(), arena.size()); !s.ok()) {
    st.error = s.to_string();
    return finish(1);
  }
  const WorkerContext context{**client, *ns, block, tpb, arena};
  if (role == "prefill") {
    if (!run_prefill(context, index, workers, w, st)) return finish(1);
  } else {
    if (!run_decode(context, index, workers, w, st)) return finish(1);
  }
  st.transport = (*client)->stats().transports;
  return finish(st.failed == 0 && st.wrong_bytes == 0 ? 0 : 1);
}

// Each worker's RESULT line; `ok` turns false for a worker that gave none or
// failed.
std::vector<json> collect_results(std::vector<Subprocess>& workers, bool& ok) {
  std::vector<json> results;
  for (auto& p : workers) {
    auto line = p.wait_for_line("RESULT ", Deadline::after(std::chrono::seconds(120)));
    if (!line) {
      ok = false;
      continue;
    }
    auto j = json::parse(*line, nullptr, false);
    if (j.is_discarded()) {
      ok = false;
      continue;
    }
    results.push_back(j);
    auto rc = p.wait(Deadline::after(std::chrono::seconds(30)));
    ok &= rc && WIFEXITED(*rc) && WEXITSTATUS(*rc) == 0;
  }
  return results;
}

// Prints a row per worker and the summary; returns whether no byte was
// wrong and no block failed.
bool print_report(const std::vector<json>& results, double wall) {
  std::printf("%-8s %-3s %-22s %6s %6s %6s %6s %6s %10s %8s %9s %9s %6s\n", "worker", "#", "transport", "put", "dedup",
              "hit", "miss", "failed", "bytes", "GB/s", "p50 ms", "p99 ms", "wrong");
  std::uint64_t tput = 0, tdedup = 0, thit = 0, tmiss = 0, tfailed = 0, tbytes = 0, twrong = 0;
  std::vector<double> all;
  double busy = 0;
  for (const auto& r : results) {
    std::vector<double> lat = r["batch_ms"].get<std::vector<double>>();
    double b = r["busy_s"].get<double>();
    std::uint64_t bytes = r["bytes"];
    std::printf(
        "%-8s %-3d %-22s %6llu %6llu %6llu %6llu %6llu %10s %8.2f %9.2f %9.2f %6llu\n",
        r["role"].get<std::string>().c_str(), r["index"].get<int>(), r["transport"].get<std::string>().c_str(),
        (unsigned long long)r["put"].get<std::uint64_t>(), (unsigned long long)r["deduplicated"].get<std::uint64_t>(),
        (unsigned long long)r["hit"].get<std::uint64_t>(), (unsigned long long)r["missed"].get<std::uint64_t>(),
        (unsigned long long)r["failed"].get<std::uint64_t>(), format_size(bytes).c_str(), b > 0 ? bytes / b / 1e9 : 0.0,
        percentile(lat, 0.5), percentile(lat, 0.99), (unsigned long long)r["wrong_bytes"].get<std::uint64_t>());
    if (!r["error"].get<std::string>().empty())
      std::printf("         error: %s\n", r["error"].get<std::string>().c_str());
    tput += r["put"].get<std::uint64_t>();
    tdedup += r["deduplicated"].get<std::uint64_t>();
    thit += r["hit"].get<std::uint64_t>();
    tmiss += r["missed"].get<std::uint64_t>();
    tfailed += r["failed"].get<std::uint64_t>();
    tbytes += bytes;
    twrong += r["wrong_bytes"].get<std::uint64_t>();
    all.insert(all.end(), lat.begin(), lat.end());
    busy += b;
  }
  std::printf(
      "\nsummary: %llu blocks put, %llu deduplicated, %llu hit, %llu missed, %llu failed; %s moved "
      "(%.2f GB/s per busy worker); batch latency p50 %.2f ms, p99 %.2f ms; wrong bytes %llu; %.1f s\n",
      (unsigned long long)tput, (unsigned long long)tdedup, (unsigned long long)thit, (unsigned long long)tmiss,
      (unsigned long long)tfailed, format_size(tbytes).c_str(), busy > 0 ? tbytes / busy / 1e9 : 0.0,
      percentile(all, 0.5), percentile(all, 0.99), (unsigned long long)twrong, wall);
  return twrong == 0 && tfailed == 0;
}

int run_driver(const std::string& pool_size, int prefill, int decode, const std::vector<std::string>& worker_tls,
               const Workload& w) {
  const std::string bin = bin_dir();
  char tmpl[] = "/tmp/kvpool-demo-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return 1;
  const std::string port_file = std::string(tmpl) + "/port";
  std::printf("kvpool demo: a standalone agent lends %s; %d prefill and %d decode workers move Llama-3-8B KV "
              "blocks (2 MiB: 16 tokens x 32 layers x 8 heads x 128 x bf16 x K,V)\n\n",
              pool_size.c_str(), prefill, decode);
  auto agent = Subprocess::spawn({bin + "/kvpool-agent", "--standalone", "--listen", "127.0.0.1:0", "--port-file",
                                  port_file, "--pool-size", pool_size, "--log-level", "warn"});
  if (!agent) {
    std::fprintf(stderr, "kvpool-demo: starting the agent: %s\n", agent.error().to_string().c_str());
    return 1;
  }
  const std::uint16_t port = read_port_file(port_file, Deadline::after(std::chrono::seconds(60)));
  if (port == 0) {
    std::fprintf(stderr, "kvpool-demo: the agent did not start listening\n");
    return 1;
  }
  const std::string coordinator = "127.0.0.1:" + std::to_string(port);
  auto common = [&](std::vector<std::string> argv) {
    for (const char* a : {"--requests", "--cold-requests", "--prefixes", "--prefix-blocks", "--suffix-blocks"}) {
      argv.push_back(a);
      int v = std::string(a) == "--requests"        ? w.requests
              : std::string(a) == "--cold-requests" ? w.cold_requests
              : std::string(a) == "--prefixes"      ? w.prefixes
              : std::string(a) == "--prefix-blocks" ? w.prefix_blocks
                                                    : w.suffix_blocks;
      argv.push_back(std::to_string(v));
    }
    return argv;
  };
  std::vector<Subprocess> workers;
  int spawned = 0;
  auto spawn = [&](const std::string& role, int i, int n) {
    std::map<std::string, std::string> env;
    const std::string& tls = worker_tls[spawned++ % worker_tls.size()];
    if (tls != "default") env["UCX_TLS"] = tls;
    auto p = Subprocess::spawn(common({bin + "/kvpool-demo", "worker", "--role", role, "--index", std::to_string(i),
                                       "--workers", std::to_string(n), "--coordinator", coordinator}),
                               env);
    if (p) workers.push_back(std::move(*p));
    return p.has_value();
  };
  auto t0 = Clock::now();
  bool ok = true;
  for (int i = 0; i < decode; ++i) ok &= spawn("decode", i, decode);  // decoders wait first
  for (int i = 0; i < prefill; ++i) ok &= spawn("prefill", i, prefill);
  std::vector<json> results = collect_results(workers, ok);
  double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  agent->kill(SIGTERM);
  (void)agent->wait(Deadline::after(std::chrono::seconds(10)));
  std::remove(port_file.c_str());
  rmdir(tmpl);

  const bool clean = print_report(results, wall);
  ok &= static_cast<int>(results.size()) == prefill + decode && clean;
  std::printf("%s\n", ok ? "demo OK: every byte verified" : "demo FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvpool-demo: a local pool, prefill workers putting KV blocks, decode workers getting them"};
  Workload w;
  std::string pool_size = "1GiB";
  int prefill = 2, decode = 2;
  std::vector<std::string> worker_tls = {"default"};
  app.add_option("--pool-size", pool_size, "DRAM the standalone agent lends")->capture_default_str();
  app.add_option("--prefill", prefill, "Prefill worker processes")->capture_default_str();
  app.add_option("--decode", decode, "Decode worker processes")->capture_default_str();
  app.add_option("--worker-tls", worker_tls,
                 "UCX_TLS per worker, round robin (default = kvpool's choice: shared memory here); e.g. "
                 "default,tcp runs every other worker over TCP")
      ->delimiter(',')
      ->capture_default_str();
  auto add_workload = [&](CLI::App* a) {
    a->add_option("--requests", w.requests, "Prompts prefilled")->capture_default_str();
    a->add_option("--cold-requests", w.cold_requests, "Prompts never prefilled (decode misses)")
        ->capture_default_str();
    a->add_option("--prefixes", w.prefixes, "Shared prefixes")->capture_default_str();
    a->add_option("--prefix-blocks", w.prefix_blocks, "Blocks per shared prefix")->capture_default_str();
    a->add_option("--suffix-blocks", w.suffix_blocks, "Blocks unique to each prompt")->capture_default_str();
  };
  add_workload(&app);
  auto* worker = app.add_subcommand("worker", "Run one worker (the demo starts these itself)");
  std::string role = "prefill", coordinator;
  int index = 0, workers = 1;
  worker->add_option("--role", role)->check(CLI::IsMember({"prefill", "decode"}));
  worker->add_option("--index", index);
  worker->add_option("--workers", workers);
  worker->add_option("--coordinator", coordinator)->required();
  add_workload(worker);
  CLI11_PARSE(app, argc, argv);
  if (w.prefixes <= 0 || w.prefix_blocks < 0 || w.suffix_blocks < 0 || w.prefix_blocks + w.suffix_blocks <= 0 ||
      prefill <= 0 || decode <= 0 || workers <= 0) {
    std::fprintf(stderr, "kvpool-demo: counts must be positive\n");
    return 2;
  }
  if (worker->parsed()) return run_worker(role, index, workers, coordinator, w);
  return run_driver(pool_size, prefill, decode, worker_tls, w);
}
