// lookup_bench: prefix lookups per second against a coordinator, from
// several client processes at once.
//
// It starts a standalone agent (agent plus embedded coordinator; a
// coordinator alone has no agents, so nothing could be put and every lookup
// would miss) with a pool just large enough for --keys blocks of --block,
// registers a namespace and puts the blocks through libkvpool. Then, for each
// --modes entry, it starts --clients processes (itself, as `lookup_bench
// client`), each with --connections control connections keeping --window
// kLookup calls in flight, every call a batch of --batch keys that are all
// present (a random run of consecutive keys), for --seconds:
//   lookup        take_lease = false: the prefix-length probe
//                 (Client::lookup, SGLang's batch_exists, vLLM's lookup);
//   lookup+lease  take_lease = true, then kRelease of the lease once the
//                 reply is in (what Client::get does around its data move);
//                 the window slot is held until the release is answered.
// All clients start together (SIGUSR1 once every one is connected and warm)
// and each counts only the replies that arrive within its --seconds. Rows:
// calls/s and keys/s summed over clients, p50 (mean over clients) and p99
// (worst client) of a lookup's time from call to reply (queueing in the
// window included), and the CPU the coordinator's process and the clients
// used, in cores.
//
//   lookup_bench                              # 2 clients, 4096 keys of 64 KiB, 3 s per mode
//   lookup_bench --clients 2 --window 32 --seconds 5 --json
//   lookup_bench --coordinator 127.0.0.1:7400 # an existing pool (its keys are put first)
//   lookup_bench --shards 2                   # 2 coordinator shards behind a real etcd
//
// With --shards N (N >= 1) it starts a single-member etcd (/usr/bin/etcd, on
// free loopback ports), puts the shard map {"version": 1, "shards": N}, and
// starts N kvpool-coordinator processes (--etcd, --shard i) and N agents
// (etcd://E/i); the keys are put through libkvpool's router (etcd://E).
// Each client process then splits every batch by shard, as the router does,
// and keeps its window of lookups in flight on a connection to each shard's
// leader: keys/s is the aggregate over shards, calls/s counts one call per
// shard part; the coordinator cores are summed over the N processes.

#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "bench/common/agent_process.h"
#include "kvpool/client.h"
#include "runtime/common/process_util.h"
#include "runtime/common/subprocess.h"
#include "runtime/common/units.h"
#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/shard_map.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"

using namespace kvpool;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kSeed = 0x10cb3e7c;

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Keys are XXH3 hashes in real use: well-spread 128-bit values here, the
// same in the parent (which puts them) and in every client process.
std::vector<Key128> make_keys(std::uint64_t seed, std::uint64_t n) {
  std::vector<Key128> keys(n);
  for (std::uint64_t i = 0; i < n; ++i) keys[i] = Key128{mix(seed ^ (2 * i)), mix(~seed ^ (2 * i + 1))};
  return keys;
}

NamespaceDescriptor bench_namespace(std::uint64_t block_bytes) {
  NamespaceDescriptor d;
  d.model_id = "lookup-bench";
  d.dtype = "bf16";
  d.num_layers = 1;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = 16;
  d.layout = "lookup-bench";
  d.block_bytes = block_bytes;
  return d;
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto idx = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

double self_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

Result<std::pair<std::string, std::uint16_t>> host_port(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return make_error(StatusCode::kInvalidArgument, "not HOST:PORT: " + s);
  int port = std::atoi(s.c_str() + colon + 1);
  if (port <= 0 || port > 65535) return make_error(StatusCode::kInvalidArgument, "bad port in " + s);
  return std::make_pair(s.substr(0, colon), static_cast<std::uint16_t>(port));
}

// ---------------------------------------------------------------------------
// Client process.

struct ClientArgs {
  std::string coordinator;
  NamespaceId ns = 0;
  std::uint64_t keys = 0;
  std::uint32_t batch = 64;
  int connections = 1;
  int window = 16;
  double seconds = 3;
  bool lease = false;
};

// One control connection keeping `window` lookups in flight. Its counters
// are touched only by callbacks, which all run on the connection's one io
// thread.
class Conn {
 public:
  Conn(std::unique_ptr<rpc::Client> client, const std::vector<std::string>& requests,
       const std::vector<std::uint32_t>& sizes, const ClientArgs& a, const std::atomic<bool>& stop)
      : client_(std::move(client)), requests_(requests), sizes_(sizes), a_(a), stop_(stop) {}

  void start() {
    in_flight_ = a_.window;
    for (int i = 0; i < a_.window; ++i) launch();
  }
  int in_flight() const { return in_flight_.load(); }

  std::uint64_t lookups = 0, keys = 0, misses = 0, errors = 0, release_errors = 0, releases = 0;
  std::vector<double> lat_us;
  std::string first_error;

 private:
  void launch() {
    auto t0 = Clock::now();
    const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed) % requests_.size();
    const std::uint32_t n = sizes_[i];
    client_->call_async(rpc::kLookup, requests_[i], Deadline::after(std::chrono::seconds(10)),
                        [this, t0, n](Result<std::string> r) { on_lookup(t0, n, std::move(r)); });
  }

  void finish_one() {
    if (!stop_.load(std::memory_order_relaxed)) {
      launch();
    } else {
      --in_flight_;
    }
  }

  void on_lookup(Clock::time_point t0, std::uint32_t asked, Result<std::string> r) {
    const bool counting = !stop_.load(std::memory_order_relaxed);
    rpc::LookupReply rep;
    Status s = r ? rpc::decode(*r, rep) : r.error();
    if (!s.ok()) {
      if (counting) ++errors;
      if (first_error.empty()) first_error = s.to_string();
      finish_one();
      return;
    }
    if (counting) {
      ++lookups;
      keys += rep.locations.size();
      misses += asked - std::min<std::uint64_t>(asked, rep.locations.size());
      lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    if (rep.lease == 0) {
      finish_one();
      return;
    }
    client_->call_async(rpc::kRelease, rpc::encode(rpc::ReleaseRequest{rep.lease, rep.epoch}),
                        Deadline::after(std::chrono::seconds(10)), [this](Result<std::string> rr) {
                          if (!rr) {
                            ++release_errors;
                            if (first_error.empty()) first_error = "release: " + rr.error().to_string();
                          } else if (!stop_.load(std::memory_order_relaxed)) {
                            ++releases;
                          }
                          finish_one();
                        });
  }

  std::unique_ptr<rpc::Client> client_;
  const std::vector<std::string>& requests_;
  const std::vector<std::uint32_t>& sizes_;  // keys of each request
  const ClientArgs& a_;
  const std::atomic<bool>& stop_;
  std::atomic<std::size_t> next_{0};  // the next request; launches come from the main and the io thread
  std::atomic<int> in_flight_{0};
};

int run_client(const ClientArgs& a) {
  // Block SIGUSR1 before any thread starts (the rpc io threads inherit the
  // mask), so only sigwait below takes it.
  sigset_t go;
  sigemptyset(&go);
  sigaddset(&go, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &go, nullptr);
  auto fail = [](const std::string& what) {
    std::printf("RESULT %s\n", json{{"ok", false}, {"error", what}}.dump().c_str());
    std::fflush(stdout);
    return 1;
  };

  // One coordinator per shard (comma-separated, shard i at position i; the
  // map is N equal ranges).
  std::vector<std::pair<std::string, std::uint16_t>> shards;
  for (std::size_t at = 0; at <= a.coordinator.size();) {
    std::size_t comma = a.coordinator.find(',', at);
    if (comma == std::string::npos) comma = a.coordinator.size();
    auto hp = host_port(a.coordinator.substr(at, comma - at));
    if (!hp) return fail(hp.error().to_string());
    shards.push_back(*hp);
    at = comma + 1;
  }
  const etcd::ShardMap map = etcd::ShardMap::equal(static_cast<std::uint32_t>(shards.size()));
  const auto keys = make_keys(kSeed, a.keys);
  if (a.keys < a.batch) return fail("fewer keys than a batch");
  // Requests encoded up front (a random run of `batch` consecutive keys
  // each, split by shard), so the clients spend their CPU on the protocol,
  // not on encoding.
  std::vector<std::vector<std::string>> requests(shards.size());
  std::vector<std::vector<std::uint32_t>> sizes(shards.size());
  std::mt19937_64 rng(mix(static_cast<std::uint64_t>(getpid())));
  for (int i = 0; i < 1024; ++i) {
    std::vector<rpc::LookupRequest> reqs(shards.size());
    std::uint64_t first = rng() % (a.keys - a.batch + 1);
    for (std::uint64_t k = first; k < first + a.batch; ++k) reqs[map.shard_of(keys[k])].keys.push_back(keys[k]);
    for (std::size_t sh = 0; sh < shards.size(); ++sh) {
      if (reqs[sh].keys.empty()) continue;
      reqs[sh].ns = a.ns;
      reqs[sh].take_lease = a.lease;
      sizes[sh].push_back(static_cast<std::uint32_t>(reqs[sh].keys.size()));
      requests[sh].push_back(rpc::encode(reqs[sh]));
    }
  }

  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<Conn>> conns;
  for (std::size_t sh = 0; sh < shards.size(); ++sh)
  for (int c = 0; c < a.connections; ++c) {
    const auto* hp = &shards[sh];
    rpc::ClientOptions o;
    o.host = hp->first;
    o.port = hp->second;
    o.role = rpc::Role::kWorker;
    o.client_id = "lookup-bench-" + std::to_string(getpid()) + "-" + std::to_string(sh) + "-" + std::to_string(c);
    auto client = rpc::Client::connect(o, Deadline::after(std::chrono::seconds(10)));
    if (!client) return fail("connect: " + client.error().to_string());
    // Warm up, and check that every key of a batch is present.
    for (std::size_t i = 0; i < std::min<std::size_t>(50, requests[sh].size()); ++i) {
      auto r = (*client)->call(rpc::kLookup, requests[sh][i], Deadline::after(std::chrono::seconds(10)));
      rpc::LookupReply rep;
      Status s = r ? rpc::decode(*r, rep) : r.error();
      if (!s.ok()) return fail("warm-up lookup: " + s.to_string());
      if (rep.locations.size() != sizes[sh][i]) {
        return fail("warm-up lookup found " + std::to_string(rep.locations.size()) + " of " +
                    std::to_string(sizes[sh][i]) + " keys");
      }
      if (rep.lease != 0) {
        auto rr = (*client)->call(rpc::kRelease, rpc::encode(rpc::ReleaseRequest{rep.lease, rep.epoch}),
                                  Deadline::after(std::chrono::seconds(10)));
        if (!rr) return fail("warm-up release: " + rr.error().to_string());
      }
    }
    conns.push_back(std::make_unique<Conn>(std::move(*client), requests[sh], sizes[sh], a, stop));
  }
  std::printf("READY\n");
  std::fflush(stdout);
  int sig = 0;
  sigwait(&go, &sig);

  const double cpu0 = self_cpu_seconds();
  const auto t0 = Clock::now();
  for (auto& c : conns) c->start();
  std::this_thread::sleep_until(t0 +
                                std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.seconds)));
  stop = true;
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = self_cpu_seconds() - cpu0;
  for (auto d = Deadline::after(std::chrono::seconds(15)); !d.expired();) {
    bool idle = true;
    for (auto& c : conns) idle &= c->in_flight() == 0;
    if (idle) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::uint64_t lookups = 0, nkeys = 0, misses = 0, errors = 0, releases = 0, release_errors = 0;
  std::vector<double> lat;
  std::string first_error;
  for (auto& c : conns) {
    if (c->in_flight() != 0) return fail("calls still in flight 15 s after the end");
    lookups += c->lookups;
    nkeys += c->keys;
    misses += c->misses;
    errors += c->errors;
    releases += c->releases;
    release_errors += c->release_errors;
    lat.insert(lat.end(), c->lat_us.begin(), c->lat_us.end());
    if (first_error.empty()) first_error = c->first_error;
  }
  conns.clear();
  json out{{"ok", errors == 0 && release_errors == 0 && misses == 0},
           {"lookups", lookups},
           {"keys", nkeys},
           {"misses", misses},
           {"errors", errors},
           {"releases", releases},
           {"release_errors", release_errors},
           {"seconds", elapsed},
           {"cpu_seconds", cpu},
           {"p50_us", percentile(lat, 0.50)},
           {"p99_us", percentile(lat, 0.99)},
           {"error", first_error}};
  std::printf("RESULT %s\n", out.dump().c_str());
  std::fflush(stdout);
  return 0;
}

// ---------------------------------------------------------------------------
// Driver.

struct Options {
  std::string coordinator;  // empty: start a standalone agent
  std::uint64_t keys = 4096;
  std::string block = "64KiB";
  std::uint32_t batch = 64;
  int clients = 2;
  int connections = 1;
  int window = 16;
  double seconds = 3;
  std::vector<std::string> modes = {"lookup", "lookup+lease"};
  double target = 1e6;
  bool json = false;
  int shards = 0;  // >= 1: coordinator shards behind a real etcd
};

// --shards N: a single-member etcd, the shard map, N coordinators and N
// agents, all on loopback ports the OS picks. The destructor kills them
// (Subprocess) and removes etcd's data.
struct ShardedPool {
  std::string dir;
  std::string endpoints;  // etcd's
  std::vector<Subprocess> procs;
  std::vector<pid_t> coordinator_pids;
  std::vector<std::string> coordinators;  // shard i's leader HOST:PORT
  ~ShardedPool() {
    procs.clear();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
};

std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  std::uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

Result<std::unique_ptr<ShardedPool>> start_sharded(int shards, std::uint64_t pool_bytes_per_shard) {
  auto pool = std::make_unique<ShardedPool>();
  pool->dir = "/tmp/kvpool-lookup-bench-etcd-" + std::to_string(getpid());
  const std::uint16_t client = free_port(), peer = free_port();
  const std::string curl = "http://127.0.0.1:" + std::to_string(client), purl = "http://127.0.0.1:" + std::to_string(peer);
  auto etcd = Subprocess::spawn({"/usr/bin/etcd", "--name", "bench", "--data-dir", pool->dir, "--listen-client-urls",
                                 curl, "--advertise-client-urls", curl, "--listen-peer-urls", purl,
                                 "--initial-advertise-peer-urls", purl, "--initial-cluster", "bench=" + purl,
                                 "--log-level", "error", "--logger", "zap"});
  if (!etcd) return tl::unexpected(etcd.error());
  pool->procs.push_back(std::move(*etcd));
  pool->endpoints = "127.0.0.1:" + std::to_string(client);
  auto eps = etcd::parse_endpoints(pool->endpoints);
  auto ec = etcd::Client::create({*eps, std::chrono::milliseconds(2000)});
  if (!ec) return tl::unexpected(ec.error());
  Status healthy(StatusCode::kUnavailable, "etcd did not start");
  for (auto d = Deadline::after(std::chrono::seconds(20)); !d.expired() && !healthy.ok();) {
    healthy = (*ec)->health((*eps)[0]);
    if (!healthy.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!healthy.ok()) return tl::unexpected(healthy);
  auto put = (*ec)->put(etcd::kShardMapKey, "{\"version\": 1, \"shards\": " + std::to_string(shards) + "}");
  if (!put) return tl::unexpected(put.error());
  for (int i = 0; i < shards; ++i) {
    const std::string port_file = pool->dir + "-port-" + std::to_string(i);
    auto c = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--etcd", pool->endpoints, "--shard",
                                std::to_string(i), "--listen", "127.0.0.1:0", "--port-file", port_file,
                                "--log-level", "warn", "--lease-ttl", "5"});
    if (!c) return tl::unexpected(c.error());
    pool->coordinator_pids.push_back(c->pid());
    pool->procs.push_back(std::move(*c));
    const std::uint16_t port = read_port_file(port_file, Deadline::after(std::chrono::seconds(20)));
    std::remove(port_file.c_str());
    if (port == 0) return make_error(StatusCode::kUnavailable, "coordinator shard " + std::to_string(i) + " did not lead");
    pool->coordinators.push_back("127.0.0.1:" + std::to_string(port));
    auto a = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--coordinator",
                                "etcd://" + pool->endpoints + "/" + std::to_string(i), "--pool-size",
                                std::to_string(pool_bytes_per_shard), "--log-level", "warn", "--name",
                                "bench-shard" + std::to_string(i)});
    if (!a) return tl::unexpected(a.error());
    pool->procs.push_back(std::move(*a));
  }
  return pool;
}

struct ModeResult {
  std::string mode;
  bool ok = true;
  std::string error;
  std::uint64_t lookups = 0, keys = 0, misses = 0, errors = 0, releases = 0;
  double calls_per_s = 0, keys_per_s = 0, releases_per_s = 0;
  double p50_us = 0, p99_us = 0;
  double seconds = 0;
  double coordinator_cores = -1;  // CPU of the coordinator's process over the run, in cores
  double client_cores = 0;        // summed over client processes
  json clients = json::array();
};

ModeResult run_mode(const std::string& mode, const Options& o, const std::string& coordinator, NamespaceId ns,
                    const std::vector<pid_t>& coordinator_pids) {
  auto coordinator_cpu = [&]() -> double {
    if (coordinator_pids.empty()) return -1;
    double sum = 0;
    for (pid_t p : coordinator_pids) {
      const double c = bench::process_cpu_seconds(p);
      if (c < 0) return -1;
      sum += c;
    }
    return sum;
  };
  ModeResult m;
  m.mode = mode;
  const std::string self = bin_dir() + "/lookup_bench";
  std::vector<Subprocess> procs;
  for (int c = 0; c < o.clients; ++c) {
    std::vector<std::string> argv = {self,
                                     "client",
                                     "--coordinator",
                                     coordinator,
                                     "--ns",
                                     std::to_string(ns),
                                     "--keys",
                                     std::to_string(o.keys),
                                     "--batch",
                                     std::to_string(o.batch),
                                     "--connections",
                                     std::to_string(o.connections),
                                     "--window",
                                     std::to_string(o.window),
                                     "--seconds",
                                     std::to_string(o.seconds)};
    if (mode == "lookup+lease") argv.push_back("--lease");
    auto p = Subprocess::spawn(argv);
    if (!p) {
      m.ok = false;
      m.error = "spawn: " + p.error().to_string();
      return m;
    }
    procs.push_back(std::move(*p));
  }
  for (auto& p : procs) {
    auto line = p.read_line(Deadline::after(std::chrono::seconds(60)));
    if (!line || *line != "READY") {
      m.ok = false;
      m.error = line ? "client: " + *line : "client did not get ready: " + line.error().to_string();
      return m;  // the Subprocess destructors kill the rest
    }
  }
  const double coord_cpu0 = coordinator_cpu();
  const auto t0 = Clock::now();
  for (auto& p : procs) p.kill(SIGUSR1);
  double p50_sum = 0;
  for (auto& p : procs) {
    auto line = p.wait_for_line("RESULT ", Deadline::after(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::duration<double>(o.seconds + 60))));
    if (!line) {
      m.ok = false;
      m.error = "no result from a client: " + line.error().to_string();
      continue;
    }
    auto j = json::parse(*line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      m.ok = false;
      m.error = "bad result line: " + *line;
      continue;
    }
    m.clients.push_back(j);
    if (!j.value("ok", false)) {
      m.ok = false;
      if (m.error.empty()) m.error = j.value("error", std::string("client failed"));
    }
    const double secs = j.value("seconds", 0.0);
    if (secs <= 0) continue;
    m.lookups += j.value("lookups", 0ull);
    m.keys += j.value("keys", 0ull);
    m.misses += j.value("misses", 0ull);
    m.errors += j.value("errors", 0ull) + j.value("release_errors", 0ull);
    m.releases += j.value("releases", 0ull);
    m.calls_per_s += static_cast<double>(j.value("lookups", 0ull)) / secs;
    m.keys_per_s += static_cast<double>(j.value("keys", 0ull)) / secs;
    m.releases_per_s += static_cast<double>(j.value("releases", 0ull)) / secs;
    m.client_cores += j.value("cpu_seconds", 0.0) / secs;
    m.seconds = std::max(m.seconds, secs);
    p50_sum += j.value("p50_us", 0.0);
    m.p99_us = std::max(m.p99_us, j.value("p99_us", 0.0));
  }
  // The clients' measured windows all lie inside [t0, now]: a slight
  // overestimate of the coordinator's share, never an underestimate.
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  if (coord_cpu0 >= 0) {
    double cpu1 = coordinator_cpu();
    if (cpu1 >= 0 && wall > 0) m.coordinator_cores = (cpu1 - coord_cpu0) / wall;
  }
  if (!m.clients.empty()) m.p50_us = p50_sum / static_cast<double>(m.clients.size());
  for (auto& p : procs) (void)p.wait(Deadline::after(std::chrono::seconds(10)));
  if (m.misses != 0 && m.error.empty()) m.error = std::to_string(m.misses) + " keys missed";
  return m;
}

int run_driver(const Options& o) {
  auto block = parse_size(o.block);
  if (!block) {
    std::fprintf(stderr, "lookup_bench: --block: %s\n", block.error().to_string().c_str());
    return 2;
  }
  if (o.keys < o.batch || o.batch == 0 || o.clients < 1 || o.connections < 1 || o.window < 1 || o.seconds <= 0) {
    std::fprintf(stderr, "lookup_bench: need keys >= batch > 0, and positive clients, connections, window, seconds\n");
    return 2;
  }
  std::unique_ptr<bench::AgentProcess> agent;
  std::unique_ptr<ShardedPool> sharded;
  std::string coordinator = o.coordinator;
  std::string writer_coordinator = o.coordinator;  // what the keys are put through
  std::vector<pid_t> coordinator_pids;
  std::uint64_t pool = 0;
  if (o.shards > 0) {
    // Each shard's agent holds its share of the keys; hashing is not exact,
    // so a quarter more, under the eviction watermark as below.
    const std::uint64_t mib = 1 << 20;
    pool = (static_cast<std::uint64_t>(static_cast<double>(o.keys * *block) * 1.25 / o.shards / 0.85) / mib + 2) * mib;
    auto p = start_sharded(o.shards, pool);
    if (!p) {
      std::fprintf(stderr, "lookup_bench: starting %d shards: %s\n", o.shards, p.error().to_string().c_str());
      return 1;
    }
    sharded = std::move(*p);
    coordinator.clear();
    for (const auto& c : sharded->coordinators) coordinator += (coordinator.empty() ? "" : ",") + c;
    writer_coordinator = "etcd://" + sharded->endpoints;
    coordinator_pids = sharded->coordinator_pids;
    // The agents join within a heartbeat or two.
    std::this_thread::sleep_for(std::chrono::seconds(2));
  } else if (coordinator.empty()) {
    // The blocks fill at most 85% of the pool: under the coordinator's
    // eviction watermark (95%), with the header table (1/1024) and slack on
    // top.
    const std::uint64_t mib = 1 << 20;
    pool = (static_cast<std::uint64_t>(static_cast<double>(o.keys * *block) / 0.85) / mib + 2) * mib;
    bench::AgentProcessOptions ao;
    ao.pool_size = std::to_string(pool);
    auto a = bench::AgentProcess::start(ao);
    if (!a) {
      std::fprintf(stderr, "lookup_bench: starting the agent: %s\n", a.error().to_string().c_str());
      return 1;
    }
    agent = std::move(*a);
    coordinator = agent->coordinator();
    writer_coordinator = coordinator;
    coordinator_pids.push_back(agent->pid());
  }

  // Put the keys through libkvpool, as a worker would.
  NamespaceId ns = 0;
  double put_seconds = 0;
  {
    ClientOptions co;
    co.coordinator = writer_coordinator;
    co.client_id = "lookup-bench-writer";
    co.timeout = std::chrono::seconds(60);
    auto client = Client::connect(co);
    if (!client) {
      std::fprintf(stderr, "lookup_bench: connect: %s\n", client.error().to_string().c_str());
      return 1;
    }
    auto id = (*client)->register_namespace(bench_namespace(*block));
    if (!id) {
      std::fprintf(stderr, "lookup_bench: register namespace: %s\n", id.error().to_string().c_str());
      return 1;
    }
    ns = *id;
    std::vector<std::byte> buffer(o.batch * *block, std::byte{0x5a});
    if (Status s = (*client)->register_buffer(buffer.data(), buffer.size()); !s.ok()) {
      std::fprintf(stderr, "lookup_bench: register buffer: %s\n", s.to_string().c_str());
      return 1;
    }
    std::vector<std::span<const std::byte>> blocks;
    for (std::uint32_t j = 0; j < o.batch; ++j) blocks.emplace_back(buffer.data() + j * *block, *block);
    const auto keys = make_keys(kSeed, o.keys);
    auto t0 = Clock::now();
    for (std::uint64_t first = 0; first < o.keys; first += o.batch) {
      std::uint64_t n = std::min<std::uint64_t>(o.batch, o.keys - first);
      auto r = (*client)->put(ns, std::span<const Key128>(keys.data() + first, n),
                              std::span<const std::span<const std::byte>>(blocks.data(), n));
      if (!r || r->written + r->deduplicated != n) {
        std::fprintf(stderr, "lookup_bench: put of keys %llu..: %s\n", static_cast<unsigned long long>(first),
                     r ? ("written " + std::to_string(r->written) + ", failed " + std::to_string(r->failed)).c_str()
                       : r.error().to_string().c_str());
        return 1;
      }
    }
    put_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    auto n = (*client)->lookup(ns, keys);
    if (!n || *n != o.keys) {
      std::fprintf(stderr, "lookup_bench: after the puts, lookup found %s of %llu keys\n",
                   n ? std::to_string(*n).c_str() : n.error().to_string().c_str(),
                   static_cast<unsigned long long>(o.keys));
      return 1;
    }
  }

  std::vector<ModeResult> results;
  for (const auto& mode : o.modes) results.push_back(run_mode(mode, o, coordinator, ns, coordinator_pids));
  if (agent) agent->stop();

  bool failed = false;
  for (const auto& m : results) failed |= !m.ok;
  if (o.json) {
    json out{{"coordinator", o.shards > 0 ? std::to_string(o.shards) + " shards behind etcd"
                             : o.coordinator.empty() ? "standalone agent (embedded)" : o.coordinator},
             {"shards", std::max(o.shards, 1)},
             {"pool_bytes", pool},
             {"keys", o.keys},
             {"block_bytes", *block},
             {"batch", o.batch},
             {"clients", o.clients},
             {"connections_per_client", o.connections},
             {"window", o.window},
             {"seconds", o.seconds},
             {"put_seconds", put_seconds},
             {"target_keys_per_s", o.target},
             {"host_cores", std::thread::hardware_concurrency()},
             {"rows", json::array()},
             {"ok", !failed}};
    for (const auto& m : results) {
      out["rows"].push_back(
          json{{"mode", m.mode},
               {"ok", m.ok},
               {"error", m.error},
               {"lookups", m.lookups},
               {"keys", m.keys},
               {"misses", m.misses},
               {"errors", m.errors},
               {"releases", m.releases},
               {"calls_per_s", m.calls_per_s},
               {"keys_per_s", m.keys_per_s},
               {"releases_per_s", m.releases_per_s},
               {"p50_us", m.p50_us},
               {"p99_us", m.p99_us},
               {"coordinator_cores", m.coordinator_cores},
               {"client_cores", m.client_cores},
               {"verdict", m.mode == "lookup" ? (m.keys_per_s >= o.target ? "PASS" : "below") : "info"},
               {"clients", m.clients}});
    }
    std::cout << out.dump(2) << std::endl;
  } else {
    std::printf(
        "lookup_bench: %s; %llu keys of %s present; %d client process(es) x %d connection(s) x window %d; "
        "batches of %u keys; %.1f s per mode; %u cores on this host\n",
        o.shards > 0 ? (std::to_string(o.shards) + " coordinator shard(s) behind etcd, an agent of " +
                        format_size(pool) + " each")
                           .c_str()
        : o.coordinator.empty() ? ("standalone agent, pool " + format_size(pool)).c_str()
                                : ("coordinator " + o.coordinator).c_str(),
        static_cast<unsigned long long>(o.keys), o.block.c_str(), o.clients, o.connections, o.window, o.batch,
        o.seconds, std::thread::hardware_concurrency());
    std::printf("%-13s %11s %12s %9s %9s %11s %11s %7s  %s\n", "mode", "calls/s", "keys/s", "p50 us", "p99 us",
                "coord cores", "client cores", "errors", "target");
    char target[64];
    std::snprintf(target, sizeof(target), ">= %.3g keys/s", o.target);
    for (const auto& m : results) {
      std::string verdict = m.mode != "lookup" ? std::string("info")
                                               : std::string(target) + (m.keys_per_s >= o.target ? " PASS" : " below");
      std::printf("%-13s %11.0f %12.0f %9.1f %9.1f %11.2f %11.2f %7llu  %s%s\n", m.mode.c_str(), m.calls_per_s,
                  m.keys_per_s, m.p50_us, m.p99_us, m.coordinator_cores, m.client_cores,
                  static_cast<unsigned long long>(m.errors + m.misses), verdict.c_str(),
                  m.ok ? "" : ("  FAILED: " + m.error).c_str());
    }
  }
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lookup_bench: coordinator prefix lookups per second from several client processes"};
  Options o;
  app.add_option("--coordinator", o.coordinator,
                 "HOST:PORT of a running coordinator; default: start a standalone agent");
  app.add_option("--keys", o.keys, "Blocks put before the lookups (all present)")->capture_default_str();
  app.add_option("--block", o.block, "Block size of the namespace")->capture_default_str();
  app.add_option("--batch", o.batch, "Keys per lookup call")->capture_default_str();
  app.add_option("--clients", o.clients, "Client processes")->capture_default_str();
  app.add_option("--connections", o.connections, "Control connections per client process")->capture_default_str();
  app.add_option("--window", o.window, "Lookups in flight per connection")->capture_default_str();
  app.add_option("--seconds", o.seconds, "Measured time per mode")->capture_default_str();
  app.add_option("--modes", o.modes, "lookup (no lease), lookup+lease (read lease, then release)")
      ->delimiter(',')
      ->check(CLI::IsMember({"lookup", "lookup+lease"}))
      ->capture_default_str();
  app.add_option("--target", o.target, "keys/s the lookup row is judged against")->capture_default_str();
  app.add_flag("--json", o.json, "Print the result as JSON");
  app.add_option("--shards", o.shards,
                 "Start N coordinator shards behind a real etcd (/usr/bin/etcd), an agent each, and split every "
                 "batch by shard; 0: one standalone agent (or --coordinator)")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();

  auto* client = app.add_subcommand("client", "Run as one client process (lookup_bench starts these itself)");
  ClientArgs ca;
  client->add_option("--coordinator", ca.coordinator)->required();
  client->add_option("--ns", ca.ns)->required();
  client->add_option("--keys", ca.keys)->required();
  client->add_option("--batch", ca.batch);
  client->add_option("--connections", ca.connections);
  client->add_option("--window", ca.window);
  client->add_option("--seconds", ca.seconds);
  client->add_flag("--lease", ca.lease);
  CLI11_PARSE(app, argc, argv);

  if (client->parsed()) return run_client(ca);
  return run_driver(o);
}
