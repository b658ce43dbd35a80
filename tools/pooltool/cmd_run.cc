// pooltool doctor, bench, replay and demo: what runs through the data path
// (libkvpool) against the live pool.

#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "runtime/common/subprocess.h"
#include "runtime/common/units.h"
#include "tools/pooltool/commands.h"
#include "tools/pooltool/doctor.h"
#include "tools/pooltool/output.h"
#include "tools/replay/replay.h"

namespace kvpool::pooltool {

// ---- replay ----
int cmd_replay(const Globals& g, const std::string& path, std::size_t max_requests, replay::Options o) {
  auto trace = replay::load_trace(path, max_requests);
  if (!trace) return fail(g, trace.error(), kExitUsage);
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.secret_file = g.secret_file;
  const bool bar = !g.json && ::isatty(STDERR_FILENO);
  if (bar) {
    o.progress = [](std::size_t done, std::size_t total) {
      const int width = 40;
      const int filled = total == 0 ? width : static_cast<int>(width * done / total);
      std::fprintf(stderr, "\r[%s%s] %zu/%zu requests", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), done, total);
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  auto r = replay::run(o, *trace);
  if (!r) return fail(g, r.error());
  if (g.json) {
    print_json({{"requests", r->requests},
                {"failed_requests", r->failed_requests},
                {"block_hit_rate", r->rates.block_hit_rate()},
                {"token_hit_rate", r->rates.token_hit_rate()},
                {"blocks", r->rates.blocks},
                {"hit_blocks", r->rates.hit_blocks},
                {"bytes_moved", r->bytes_moved},
                {"wrong_bytes", r->wrong_bytes},
                {"seconds", r->seconds},
                {"requests_per_second", r->seconds > 0 ? r->requests / r->seconds : 0.0},
                {"latency_ms", {{"p50", r->p50_ms}, {"p90", r->p90_ms}, {"p99", r->p99_ms}, {"max", r->max_ms}}}});
  } else {
    std::printf("replayed %zu requests (%zu failed) with %d workers in %.2f s (%.0f requests/s)\n", r->requests,
                r->failed_requests, o.workers, r->seconds, r->seconds > 0 ? r->requests / r->seconds : 0.0);
    std::printf("block hit rate  %.4f (%llu of %llu blocks)\n", r->rates.block_hit_rate(),
                static_cast<unsigned long long>(r->rates.hit_blocks), static_cast<unsigned long long>(r->rates.blocks));
    std::printf("token hit rate  %.4f\n", r->rates.token_hit_rate());
    std::printf("bytes moved     %s (%.2f GB/s)\n", human_bytes(r->bytes_moved).c_str(),
                r->seconds > 0 ? r->bytes_moved / r->seconds / 1e9 : 0.0);
    std::printf("latency         p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms per request\n", r->p50_ms,
                r->p90_ms, r->p99_ms, r->max_ms);
    std::printf("wrong bytes     %llu\n", static_cast<unsigned long long>(r->wrong_bytes));
  }
  return r->wrong_bytes == 0 && r->failed_requests == 0 ? kExitOk : kExitFailed;
}

// ---- doctor ----
int cmd_doctor(const Globals& g, bool no_probe, const std::string& max_skew) {
  auto skew = parse_duration(max_skew);
  if (!skew || skew->count() <= 0) {
    return fail(g, Status(StatusCode::kInvalidArgument, "--max-clock-skew: not a positive duration"), kExitUsage);
  }
  DoctorOptions o;
  o.max_clock_skew_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*skew).count();
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.probe = !no_probe;
  o.secret_file = g.secret_file;
  auto checks = run_doctor(o);
  bool failed = false;
  json arr = json::array();
  for (const auto& c : checks) {
    failed = failed || c.level == CheckLevel::kFail;
    arr.push_back({{"name", c.name}, {"status", level_name(c.level)}, {"detail", c.detail}, {"fix", c.fix}});
  }
  if (g.json) {
    print_json({{"ok", !failed}, {"checks", arr}});
  } else {
    for (const auto& c : checks) {
      std::printf("[%-4s] %s: %s\n", level_name(c.level), c.name.c_str(), c.detail.c_str());
      if (!c.fix.empty() && c.level != CheckLevel::kOk) std::printf("       fix: %s\n", c.fix.c_str());
    }
  }
  return failed ? kExitFailed : kExitOk;
}

// ---- demo ----
int cmd_demo(const std::vector<std::string>& args) {
  std::string demo = bin_dir() + "/kvpool-demo";
  if (access(demo.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "pooltool: %s not found: build it (scripts/demo.sh builds and runs it)\n", demo.c_str());
    return kExitFailed;
  }
  std::vector<char*> argv;
  argv.push_back(demo.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  execv(demo.c_str(), argv.data());
  std::perror("pooltool: exec kvpool-demo");
  return kExitFailed;
}

// ---- bench ----
int cmd_bench(const Globals& g, const std::string& block, std::uint32_t blocks, std::uint32_t rounds) {
  auto size = parse_size(block);
  if (!size) return fail(g, size.error(), kExitUsage);
  {
    auto c = connect(g);
    if (!c) return fail_connect(g, c.error());
  }
  BenchOptions o;
  o.secret_file = g.secret_file;
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.block_bytes = *size;
  o.blocks = blocks;
  o.rounds = rounds;
  const bool bar = !g.json && ::isatty(STDERR_FILENO);
  if (bar) {
    o.progress = [](std::uint32_t done, std::uint32_t total) {
      progress_bar(done, total, "rounds");
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  auto r = run_bench(o);
  if (!r) return fail(g, r.error());
  if (g.json) {
    print_json({{"block_bytes", r->block_bytes},
                {"blocks", r->blocks},
                {"rounds", r->rounds},
                {"put_gbps", r->put_gbps},
                {"get_gbps", r->get_gbps},
                {"lookup_us", r->lookup_us},
                {"transports", r->transports},
                {"verify_failures", r->verify_failures}});
  } else {
    std::printf("%u x %s blocks, best of %u rounds, through the live pool over %s:\n", r->blocks,
                human_bytes(r->block_bytes).c_str(), r->rounds, r->transports.c_str());
    std::printf("  put     %.2f GB/s\n  get     %.2f GB/s (verified)\n  lookup  %.0f us per batch\n", r->put_gbps,
                r->get_gbps, r->lookup_us);
    std::printf("(kvbench --mode e2e measures the same path against an agent it starts itself.)\n");
  }
  return kExitOk;
}

}  // namespace kvpool::pooltool
