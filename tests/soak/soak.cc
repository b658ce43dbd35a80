// kvpool-soak: mixed put/get load from several workers while agents and the
// coordinator are killed (SIGKILL), restarted and frozen (SIGSTOP) at random.
// Every byte read back is checked; at the end the pool settles and its used
// bytes must equal the bytes of its live blocks. scripts/soak.sh runs it.
//
// Prints one summary; exits 1 on a wrong byte, a leak or a pool that never
// settles, 2 on bad flags or a setup failure.

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "kvpool/client.h"
#include "runtime/common/logging.h"
#include "runtime/common/pattern.h"
#include "runtime/common/process_util.h"
#include "runtime/common/subprocess.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"

using namespace kvpool;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 128 << 10;
constexpr int kBatch = 4;

struct Cluster {
  std::uint16_t port = 0;
  std::string port_file;
  std::string pool_size;
  std::unique_ptr<Subprocess> coordinator;
  std::vector<std::unique_ptr<Subprocess>> agents;
  std::vector<bool> frozen;
  std::mutex mu;  // guards the processes against the chaos thread and the final checks

  std::string address() const { return "127.0.0.1:" + std::to_string(port); }

  bool start_coordinator() {
    std::remove(port_file.c_str());
    auto p = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--listen", "127.0.0.1:" + std::to_string(port),
                                "--port-file", port_file, "--log-level", "error", "--agent-timeout", "2s",
                                "--heartbeat-interval", "200ms", "--write-lease", "2s", "--write-quarantine", "1s",
                                "--read-lease", "5s"});
    if (!p) return false;
    coordinator = std::make_unique<Subprocess>(std::move(*p));
    const std::uint16_t bound = read_port_file(port_file, Deadline::after(10s));
    if (bound == 0) return false;
    port = bound;
    return true;
  }

  bool start_agent(std::size_t i) {
    auto p = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--coordinator", address(), "--pool-size", pool_size,
                                "--log-level", "error", "--name", "soak-agent-" + std::to_string(i)});
    if (!p) return false;
    agents[i] = std::make_unique<Subprocess>(std::move(*p));
    frozen[i] = false;
    return true;
  }
};

std::unique_ptr<rpc::Client> tool_client(const std::string& address) {
  auto hp = parse_host_port(address);
  if (!hp) return nullptr;
  rpc::ClientOptions o;
  o.host = hp->first;
  o.port = hp->second;
  o.role = rpc::Role::kTool;
  o.client_id = "soak";
  auto c = rpc::Client::connect(o, Deadline::after(5s));
  return c ? std::move(*c) : nullptr;
}

std::optional<rpc::StatsReply> stats(const std::string& address) {
  auto c = tool_client(address);
  if (!c) return std::nullopt;
  auto reply = c->call(rpc::kStats, std::string(), Deadline::after(5s));
  rpc::StatsReply s;
  if (!reply || !rpc::decode(*reply, s).ok()) return std::nullopt;
  return s;
}

NamespaceDescriptor soak_namespace() {
  NamespaceDescriptor d;
  d.model_id = "soak";
  d.dtype = "bf16";
  // Layers, so blocks of two granules or more carry a slice table (slot
  // format version 2) through every fault.
  d.num_layers = 4;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = 16;
  d.layout = "soak";
  d.block_bytes = kBlock;
  return d;
}

struct WorkerTotals {
  std::atomic<std::uint64_t> puts{0}, gets{0}, blocks_written{0}, blocks_read{0}, errors{0}, wrong_bytes{0},
      verify_misses{0};
  std::atomic<std::int64_t> longest_stall_ms{0};
};

void worker(int id, const std::string& address, const std::atomic<bool>& stop, WorkerTotals& t, std::uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::unique_ptr<Client> client;
  NamespaceId ns = 0;
  std::vector<std::byte> bytes(kBatch * kBlock), out(kBatch * kBlock);
  std::uint64_t next = 0;  // batches this worker has tried to write
  auto last_ok = Clock::now();
  auto key_of = [id](std::uint64_t i) { return Key128{i * 0x9e3779b97f4a7c15ull + 1, 0x50a4000000ull + id}; };
  while (!stop.load()) {
    const auto now = Clock::now();
    t.longest_stall_ms = std::max<std::int64_t>(
        t.longest_stall_ms.load(), std::chrono::duration_cast<std::chrono::milliseconds>(now - last_ok).count());
    if (client == nullptr) {
      ClientOptions o;
      o.coordinator = address;
      o.timeout = 2s;
      o.client_id = "soak-worker-" + std::to_string(id);
      // Odd workers move bytes over TCP (errors surface on a dead peer),
      // even ones over shared memory (a dead peer's segment stays mapped).
      if (id % 2 == 1) o.tls = "tcp";
      auto c = Client::connect(o);
      if (!c) {
        ++t.errors;
        std::this_thread::sleep_for(100ms);
        continue;
      }
      auto n = (*c)->register_namespace(soak_namespace());
      if (!n) {
        ++t.errors;
        std::this_thread::sleep_for(100ms);
        continue;
      }
      client = std::move(*c);
      ns = *n;
    }
    const bool do_put = next == 0 || rng() % 2 == 0;
    // Reads favour recent batches: older ones are likely evicted.
    const std::uint64_t batch = do_put ? next : next - 1 - rng() % std::min<std::uint64_t>(next, 16);
    std::vector<Key128> keys;
    for (int j = 0; j < kBatch; ++j) keys.push_back(key_of(batch * kBatch + j));
    bool ok = false;
    if (do_put) {
      std::vector<std::span<const std::byte>> spans;
      for (int j = 0; j < kBatch; ++j) {
        fill_pattern(bytes.data() + j * kBlock, 0, kBlock, keys[j].lo);
        spans.emplace_back(bytes.data() + j * kBlock, kBlock);
      }
      ++t.puts;
      auto r = client->put(ns, keys, spans);
      if (r) {
        t.blocks_written += r->written;
        t.errors += r->failed;
        ok = r->failed == 0;
      } else {
        ++t.errors;
      }
      if (ok) ++next;
    } else {
      std::vector<std::span<std::byte>> spans;
      for (int j = 0; j < kBatch; ++j) spans.emplace_back(out.data() + j * kBlock, kBlock);
      ++t.gets;
      auto r = client->get(ns, keys, spans);
      if (r) {
        t.blocks_read += r->loaded;
        for (std::size_t j = 0; j < r->loaded; ++j) {
          t.wrong_bytes += pattern_mismatches(out.data() + j * kBlock, 0, kBlock, keys[j].lo);
        }
        if (r->stopped.code() == StatusCode::kDataLoss) ++t.verify_misses;
        ok = r->stopped.ok() || r->stopped.code() == StatusCode::kNotFound || r->stopped.code() == StatusCode::kDataLoss;
        if (!ok) ++t.errors;
      } else {
        ++t.errors;
      }
    }
    if (ok) {
      last_ok = Clock::now();
    } else {
      std::this_thread::sleep_for(20ms);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvpool-soak: load under random kills and restarts, every byte checked"};
  double seconds = 120;
  int workers = 4;
  std::size_t agents = 3;
  std::string pool_size = "32MiB";
  std::uint32_t seed = 0;
  app.add_option("--seconds", seconds, "How long the load and the chaos run")->capture_default_str();
  app.add_option("--workers", workers, "Worker threads, each with its own client")->capture_default_str();
  app.add_option("--agents", agents, "Agent processes")->capture_default_str();
  app.add_option("--pool-size", pool_size, "Each agent's pool")->capture_default_str();
  app.add_option("--seed", seed, "Random seed of the chaos (0: from the clock)");
  CLI11_PARSE(app, argc, argv);
  log::set_log_level("error");
  if (seed == 0) seed = static_cast<std::uint32_t>(Clock::now().time_since_epoch().count());

  Cluster cl;
  cl.port_file = "/tmp/kvpool-soak-" + std::to_string(getpid()) + ".port";
  cl.pool_size = pool_size;
  cl.agents.resize(agents);
  cl.frozen.resize(agents);
  if (!cl.start_coordinator()) {
    std::fprintf(stderr, "kvpool-soak: the coordinator did not start\n");
    return 2;
  }
  for (std::size_t i = 0; i < agents; ++i) {
    if (!cl.start_agent(i)) {
      std::fprintf(stderr, "kvpool-soak: agent %zu did not start\n", i);
      return 2;
    }
  }
  const std::string address = cl.address();
  auto deadline = Deadline::after(10s);
  while (!deadline.expired()) {
    auto s = stats(address);
    if (s && s->agents_alive == agents) break;
    std::this_thread::sleep_for(50ms);
  }

  std::atomic<bool> stop{false};
  WorkerTotals totals;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] { worker(w, address, stop, totals, seed + 1 + w); });
  }

  // A fault the soak cannot recover from ends the run with a message, the
  // workers stopped first (returning past joinable threads would abort).
  auto give_up = [&](const std::string& why) {
    stop = true;
    for (auto& t : threads) t.join();
    std::fprintf(stderr, "kvpool-soak: %s; giving up\n", why.c_str());
    return 2;
  };

  // Chaos: one fault every 2-5 s.
  std::mt19937 rng(seed);
  std::map<std::string, int> faults;
  std::uint64_t round = 0;
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2000 + rng() % 3000));
    if (Clock::now() >= end) break;
    std::lock_guard lock(cl.mu);
    // The three kinds of fault in turn (so a short run sees each), at
    // random agents and with random delays.
    const unsigned what = static_cast<unsigned>(round++ % 3);
    const std::size_t i = rng() % agents;
    if (what == 0) {  // an agent killed and started again
      cl.agents[i]->kill(SIGKILL);
      (void)cl.agents[i]->wait(Deadline::after(5s));
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 1500));
      if (!cl.start_agent(i)) return give_up("agent " + std::to_string(i) + " did not restart");
      ++faults["agent killed and restarted"];
    } else if (what == 1) {  // the coordinator killed and started again on its port
      cl.coordinator->kill(SIGKILL);
      (void)cl.coordinator->wait(Deadline::after(5s));
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 1000));
      if (!cl.start_coordinator()) {
        return give_up("the coordinator did not restart on port " + std::to_string(cl.port));
      }
      ++faults["coordinator killed and restarted"];
    } else {  // an agent frozen past the heartbeat timeout, or not
      ::kill(cl.agents[i]->pid(), SIGSTOP);
      std::this_thread::sleep_for(std::chrono::milliseconds(500 + rng() % 2500));
      ::kill(cl.agents[i]->pid(), SIGCONT);
      ++faults["agent frozen (SIGSTOP) and thawed"];
    }
  }
  stop = true;
  for (auto& t : threads) t.join();

  // Settle: no leases, nothing being reclaimed, every agent back.
  std::optional<rpc::StatsReply> last;
  bool settled = false;
  const auto settle_start = Clock::now();
  deadline = Deadline::after(60s);
  while (!deadline.expired()) {
    last = stats(address);
    if (last && last->agents_alive == agents && last->write_leases == 0 && last->read_leases == 0 &&
        last->reclaiming_bytes == 0) {
      settled = true;
      break;
    }
    std::this_thread::sleep_for(200ms);
  }
  const double settle_s = std::chrono::duration<double>(Clock::now() - settle_start).count();
  const std::uint64_t leaked = last && last->used_bytes > last->live_bytes ? last->used_bytes - last->live_bytes : 0;

  std::printf("kvpool soak: %.0f s, %d workers, %zu agents of %s, seed %u\n", seconds, workers, agents,
              pool_size.c_str(), seed);
  for (const auto& [what, n] : faults) std::printf("  fault: %-36s %d\n", what.c_str(), n);
  std::printf("  operations        %llu puts, %llu gets (%llu blocks written, %llu read)\n",
              static_cast<unsigned long long>(totals.puts.load()), static_cast<unsigned long long>(totals.gets.load()),
              static_cast<unsigned long long>(totals.blocks_written.load()),
              static_cast<unsigned long long>(totals.blocks_read.load()));
  std::printf("  errors surfaced   %llu (failed calls and failed keys; %llu gets stopped at a block that failed "
              "verification)\n",
              static_cast<unsigned long long>(totals.errors.load()),
              static_cast<unsigned long long>(totals.verify_misses.load()));
  std::printf("  wrong bytes       %llu\n", static_cast<unsigned long long>(totals.wrong_bytes.load()));
  std::printf("  longest stall     %.2f s (longest time a worker went without a successful operation)\n",
              static_cast<double>(totals.longest_stall_ms.load()) / 1000.0);
  if (settled) {
    std::printf("  settled in        %.1f s: used %llu bytes, live %llu bytes, leaked %llu bytes\n", settle_s,
                static_cast<unsigned long long>(last->used_bytes), static_cast<unsigned long long>(last->live_bytes),
                static_cast<unsigned long long>(leaked));
  } else {
    std::printf("  settled           NO (after %.0f s)", settle_s);
    if (last) {
      std::printf(": %llu agents alive, %llu write leases, %llu read leases, %llu bytes reclaiming",
                  static_cast<unsigned long long>(last->agents_alive),
                  static_cast<unsigned long long>(last->write_leases),
                  static_cast<unsigned long long>(last->read_leases),
                  static_cast<unsigned long long>(last->reclaiming_bytes));
    }
    std::printf("\n");
  }
  const bool good = settled && totals.wrong_bytes.load() == 0 && leaked == 0 && totals.blocks_read.load() > 0;
  std::printf("  result            %s\n", good ? "PASS" : "FAIL");
  std::remove(cl.port_file.c_str());
  return good ? 0 : 1;
}
