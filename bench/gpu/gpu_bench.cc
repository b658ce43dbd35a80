// gpu_bench: the GPU path's figures, each beside the limit measured in the
// same run on the same card (bench/gpu/run_all.sh runs it on the device).
//
//   limit    pinned host<->device cudaMemcpyAsync, GB/s by copy size and direction
//   gather   Llama-3-8B / 70B KV pages <-> pinned host blocks: copy engine,
//            kernel, one cudaMemcpyAsync per page; GB/s and share of the limit
//   pool     GPU pages -> pool -> GPU pages through a standalone agent on this
//            host, over shared memory (mapped path) and TCP (staged path):
//            GB/s and where the time went
// Prints tables; --json FILE writes every figure.
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <tuple>

#include "bench/common/agent_process.h"
#include "kvpool/client.h"
#include "kvpool/gpu.h"
#include "runtime/gpu/engine.h"

using namespace kvpool;
using namespace kvpool::gpu;
using json = nlohmann::json;

namespace {

#define CK(call)                                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// ms of fn's GPU work on `s`, median of `reps` after one warm-up.
template <typename Fn>
double time_gpu(cudaStream_t s, int reps, Fn&& fn) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  fn();
  CK(cudaStreamSynchronize(s));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, s));
    fn();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return median(ms);
}

void fill_random(void* dev, std::uint64_t bytes, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> h(std::min<std::uint64_t>(bytes, 64 << 20) / 8);
  for (auto& x : h) x = rng();
  for (std::uint64_t off = 0; off < bytes; off += h.size() * 8) {
    CK(cudaMemcpy(static_cast<char*>(dev) + off, h.data(), std::min<std::uint64_t>(h.size() * 8, bytes - off),
                  cudaMemcpyHostToDevice));
  }
}

struct Limits {
  double d2h = 0, h2d = 0;  // best large-copy GB/s
};

Limits bench_limit(json& out, std::uint64_t total) {
  std::printf("\n== limit: pinned host <-> device cudaMemcpyAsync, %.1f GiB per figure ==\n", total / double(1 << 30));
  std::printf("%10s %10s %10s\n", "copy", "D2H GB/s", "H2D GB/s");
  void *h = nullptr, *d = nullptr;
  CK(cudaHostAlloc(&h, total, cudaHostAllocDefault));
  CK(cudaMalloc(&d, total));
  std::memset(h, 0x5a, total);
  fill_random(d, total, 1);
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  Limits lim;
  for (std::uint64_t sz : {64ull << 10, 256ull << 10, 1ull << 20, 4ull << 20, 16ull << 20, 64ull << 20, 256ull << 20}) {
    double gbs[2];
    for (int dir = 0; dir < 2; ++dir) {
      double ms = time_gpu(s, 3, [&] {
        for (std::uint64_t off = 0; off + sz <= total; off += sz) {
          if (dir == 0) CK(cudaMemcpyAsync(static_cast<char*>(h) + off, static_cast<char*>(d) + off, sz, cudaMemcpyDeviceToHost, s));
          else CK(cudaMemcpyAsync(static_cast<char*>(d) + off, static_cast<char*>(h) + off, sz, cudaMemcpyHostToDevice, s));
        }
      });
      gbs[dir] = (total / sz * sz) / ms / 1e6;
    }
    std::printf("%9lluK %10.1f %10.1f\n", static_cast<unsigned long long>(sz >> 10), gbs[0], gbs[1]);
    out["limit"].push_back({{"copy_bytes", sz}, {"d2h_gbs", gbs[0]}, {"h2d_gbs", gbs[1]}});
    lim.d2h = std::max(lim.d2h, gbs[0]);
    lim.h2d = std::max(lim.h2d, gbs[1]);
  }
  // Both directions at once, 64 MiB copies, two streams.
  {
    cudaStream_t s2;
    CK(cudaStreamCreate(&s2));
    void* d2 = nullptr;
    CK(cudaMalloc(&d2, total / 2));
    void* h2 = nullptr;
    CK(cudaHostAlloc(&h2, total / 2, cudaHostAllocDefault));
    const std::uint64_t sz = 64ull << 20, half = total / 2;
    double ms = time_gpu(s, 3, [&] {
      cudaEvent_t e;
      CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      CK(cudaEventRecord(e, s));
      CK(cudaStreamWaitEvent(s2, e, 0));
      for (std::uint64_t off = 0; off + sz <= half; off += sz) {
        CK(cudaMemcpyAsync(static_cast<char*>(h) + off, static_cast<char*>(d) + off, sz, cudaMemcpyDeviceToHost, s));
        CK(cudaMemcpyAsync(static_cast<char*>(d2) + off, static_cast<char*>(h2) + off, sz, cudaMemcpyHostToDevice, s2));
      }
      CK(cudaEventRecord(e, s2));
      CK(cudaStreamWaitEvent(s, e, 0));
      cudaEventDestroy(e);
    });
    std::printf("both directions at once (64 MiB copies): %.1f GB/s total\n", 2 * half / ms / 1e6);
    out["limit_bidirectional_gbs"] = 2 * half / ms / 1e6;
    cudaFree(d2);
    cudaFreeHost(h2);
    cudaStreamDestroy(s2);
  }
  cudaStreamDestroy(s);
  cudaFree(d);
  cudaFreeHost(h);
  std::printf("limit used below: D2H %.1f GB/s, H2D %.1f GB/s (best of the sizes above)\n", lim.d2h, lim.h2d);
  out["limit_d2h_gbs"] = lim.d2h;
  out["limit_h2d_gbs"] = lim.h2d;
  return lim;
}

KvLayout llama(std::uint32_t layers, KvLayoutKind kind, std::uint64_t pages) {
  KvLayout l;
  l.kind = kind;
  l.dtype = "bf16";
  l.num_layers = layers;
  l.num_kv_heads = 8;
  l.head_dim = 128;
  l.tokens_per_block = 16;
  l.num_pages = pages;
  l.batch = 1;
  l.max_seq = pages * 16;
  return l;
}

struct GpuKv {
  KvTensors t;
  std::vector<void*> owned;
  GpuKv(const KvLayout& l) {
    auto plan = *make_plan(l);
    const bool combined = l.kind == KvLayoutKind::kVllmPaged;
    const std::uint64_t bytes = combined ? 2 * plan.tensor_bytes : plan.tensor_bytes;
    for (std::uint32_t i = 0; i < (combined ? 1u : 2u) * l.num_layers; ++i) {
      void* p = nullptr;
      CK(cudaMalloc(&p, bytes));
      fill_random(p, bytes, 100 + i);
      owned.push_back(p);
      if (combined || i % 2 == 0) t.k.push_back(p);
      else t.v.push_back(p);
    }
  }
  ~GpuKv() {
    for (auto p : owned) cudaFree(p);
  }
};

const char* mover_name(Mover m) {
  switch (m) {
    case Mover::kCopyEngine: return "copy-engine";
    case Mover::kKernel: return "kernel";
    case Mover::kPerPage: return "per-page";
  }
  return "?";
}

void bench_gather(json& out, const Limits& lim, std::uint64_t target_bytes) {
  std::printf("\n== gather/scatter: KV pages <-> pinned host blocks (bf16, 8 KV heads, head dim 128, 16-token pages) ==\n");
  std::printf("%-26s %-12s %9s %9s %7s %9s %7s\n", "model / layout", "mover", "MiB/blk", "save GB/s", "/limit",
              "load GB/s", "/limit");
  struct Case {
    const char* name;
    std::uint32_t layers;
    KvLayoutKind kind;
  };
  for (Case c : {Case{"Llama-3-8B vllm-paged", 32, KvLayoutKind::kVllmPaged},
                 Case{"Llama-3-70B vllm-paged", 80, KvLayoutKind::kVllmPaged},
                 Case{"Llama-3-8B hf-contiguous", 32, KvLayoutKind::kHfContiguous}}) {
    KvLayout probe = llama(c.layers, c.kind, 1);
    const std::uint64_t bb = *block_bytes(probe);
    const std::uint64_t n = target_bytes / bb;
    KvLayout l = llama(c.layers, c.kind, n);
    GpuKv kv(l);
    void* host = nullptr;
    CK(cudaHostAlloc(&host, n * bb, cudaHostAllocDefault));
    std::memset(host, 0, n * bb);
    std::vector<std::byte*> blocks;
    std::vector<std::uint64_t> pages;
    for (std::uint64_t i = 0; i < n; ++i) {
      blocks.push_back(static_cast<std::byte*>(host) + i * bb);
      pages.push_back((i * 13) % n);  // a permutation of the pages (13 is coprime with n here or not: ids repeat harmlessly)
    }
    auto engine = Engine::create(l, kv.t, 64ull << 20, -1);
    if (!engine) {
      std::fprintf(stderr, "engine: %s\n", engine.error().to_string().c_str());
      std::exit(2);
    }
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    for (Mover m : {Mover::kCopyEngine, Mover::kKernel, Mover::kPerPage}) {
      if (m == Mover::kPerPage && c.kind == KvLayoutKind::kHfContiguous) continue;  // 4 KiB runs: 512 copies a block
      double gbs[2];
      for (int dir = 0; dir < 2; ++dir) {
        std::vector<cudaEvent_t> evs;
        double ms = time_gpu(s, 3, [&] {
          Status st = (*engine)->enqueue(dir == 0, pages, blocks, m, s, evs);
          if (!st.ok()) {
            std::fprintf(stderr, "enqueue: %s\n", st.to_string().c_str());
            std::exit(2);
          }
        });
        CK(cudaStreamSynchronize(s));
        for (auto e : evs) cudaEventDestroy(e);
        gbs[dir] = n * bb / ms / 1e6;
      }
      std::printf("%-26s %-12s %9.1f %9.1f %7.2f %9.1f %7.2f\n", c.name, mover_name(m), bb / double(1 << 20), gbs[0],
                  gbs[0] / lim.d2h, gbs[1], gbs[1] / lim.h2d);
      out["gather"].push_back({{"case", c.name}, {"mover", mover_name(m)}, {"block_bytes", bb}, {"blocks", n},
                               {"save_gbs", gbs[0]}, {"load_gbs", gbs[1]}, {"save_of_limit", gbs[0] / lim.d2h},
                               {"load_of_limit", gbs[1] / lim.h2d}});
    }
    cudaStreamDestroy(s);
    cudaFreeHost(host);
  }
}

void bench_pool(json& out, const Limits& lim, const std::string& label, const std::string& tls, std::uint64_t bytes,
                const std::string& pool_size, std::vector<std::tuple<Mover, bool, bool>> variants, Path path) {
  bench::AgentProcessOptions ao;
  ao.pool_size = pool_size;
  ao.tls = tls;
  auto agent = bench::AgentProcess::start(ao);
  if (!agent) {
    std::fprintf(stderr, "agent: %s\n", agent.error().to_string().c_str());
    std::exit(2);
  }
  ClientOptions co;
  co.coordinator = (*agent)->coordinator();
  co.tls = tls;
  co.timeout = std::chrono::milliseconds(60000);
  auto client = Client::connect(co);
  if (!client) {
    std::fprintf(stderr, "client: %s\n", client.error().to_string().c_str());
    std::exit(2);
  }
  KvLayout l = llama(32, KvLayoutKind::kVllmPaged, 0);
  const std::uint64_t bb = *block_bytes(llama(32, KvLayoutKind::kVllmPaged, 1));
  const std::uint64_t n = bytes / bb;
  l.num_pages = 2 * n;
  GpuKv kv(l);
  auto ns = (*client)->register_namespace(namespace_for(l, "bench-llama-3-8b"));
  if (!ns) std::exit(2);
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  std::uint64_t salt = 1;
  for (auto [mover, verify, gpu_sums] : variants) {
    GpuOptions o;
    o.mover = mover;
    o.path = path;
    o.verify_loads = verify;
    o.gpu_checksums = gpu_sums;
    auto m = KvMover::create(**client, *ns, l, kv.t, o);
    if (!m) {
      std::fprintf(stderr, "mover: %s\n", m.error().to_string().c_str());
      std::exit(2);
    }
    std::vector<double> save_ms, load_ms;
    TransferStats last_save, last_load;
    for (int rep = 0; rep < 6; ++rep) {  // the first is a warm-up (CUDA registration of the region)
      std::vector<Key128> keys;
      std::vector<std::uint64_t> from, to;
      for (std::uint64_t i = 0; i < n; ++i) {
        keys.push_back({salt * 1000003 + i, 0xb0b});
        from.push_back(i);
        to.push_back(n + i);
      }
      ++salt;
      CK(cudaStreamSynchronize(s));
      auto t = (*m)->save(keys, from, s);
      if (!t) std::exit(3);
      auto r = (*t)->wait();
      if (!r || r->done != n) {
        std::fprintf(stderr, "save: %s done %zu\n", r ? "ok" : r.error().to_string().c_str(), r ? r->done : 0);
        std::exit(3);
      }
      auto tl = (*m)->load(keys, to, s);
      if (!tl) std::exit(3);
      auto rl = (*tl)->wait();
      CK(cudaStreamSynchronize(s));
      if (!rl || rl->done != n) {
        std::fprintf(stderr, "load: %s done %zu\n", rl ? rl->get.stopped.to_string().c_str() : rl.error().to_string().c_str(),
                     rl ? rl->done : 0);
        std::exit(3);
      }
      if (rep > 0) {
        save_ms.push_back(r->stats.total_ms);
        load_ms.push_back(rl->stats.total_ms);
        last_save = r->stats;
        last_load = rl->stats;
      }
      (void)(*client)->remove(*ns, keys);
    }
    const double sm = median(save_ms), lm = median(load_ms);
    char name[64];
    std::snprintf(name, sizeof(name), "%s %s %s", label.c_str(), mover_name(mover),
                  !verify ? "noverify" : gpu_sums ? "gpu-sums" : "cpu-sums");
    std::printf("%-38s %7.1f %6.2f %7.1f %6.2f | save: ctl %.1f copy %.1f hash %.1f(cpu %.0f) commit %.1f | load: ctl %.1f copy %.1f verify %.1f(cpu %.0f) release %.1f ms\n",
                name, n * bb / sm / 1e6, n * bb / sm / 1e6 / lim.d2h, n * bb / lm / 1e6, n * bb / lm / 1e6 / lim.h2d,
                last_save.control_ms, last_save.copy_done_ms, last_save.hash_done_ms, last_save.hash_ms,
                last_save.commit_ms, last_load.control_ms, last_load.copy_done_ms, last_load.hash_done_ms,
                last_load.hash_ms, last_load.commit_ms);
    auto js = [](const TransferStats& st) {
      return json{{"path", st.path},         {"control_ms", st.control_ms},     {"enqueue_ms", st.enqueue_ms},
                  {"copy_done_ms", st.copy_done_ms}, {"hash_ms", st.hash_ms}, {"hash_done_ms", st.hash_done_ms},
                  {"commit_ms", st.commit_ms}, {"total_ms", st.total_ms}};
    };
    out["pool"].push_back({{"case", name}, {"bytes", n * bb}, {"save_ms", sm}, {"load_ms", lm},
                           {"save_gbs", n * bb / sm / 1e6}, {"load_gbs", n * bb / lm / 1e6},
                           {"save_stages", js(last_save)}, {"load_stages", js(last_load)},
                           {"transports", (*client)->stats().transports}});
  }
  cudaStreamDestroy(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gpu_bench: the GPU path against the PCIe limit (bench/gpu/README.md)"};
  std::string json_path;
  std::uint64_t limit_bytes = 1ull << 30, gather_bytes = 2ull << 30, pool_bytes = 2ull << 30, tcp_bytes = 512ull << 20;
  std::string only;
  app.add_option("--json", json_path, "write every figure here");
  app.add_option("--gather-bytes", gather_bytes, "KV moved per gather figure");
  app.add_option("--pool-bytes", pool_bytes, "KV moved per pool round trip over shared memory");
  app.add_option("--tcp-bytes", tcp_bytes, "KV moved per pool round trip over TCP");
  app.add_option("--only", only, "limit,gather,pool,tcp (comma-separated; default all)");
  CLI11_PARSE(app, argc, argv);
  auto want = [&](const char* what) { return only.empty() || only.find(what) != std::string::npos; };
  std::string why;
  if (!gpu_available(&why)) {
    std::fprintf(stderr, "gpu_bench: %s\n", why.c_str());
    return 1;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  json out;
  out["device"] = prop.name;
  Limits lim = bench_limit(out, limit_bytes);
  if (want("gather")) bench_gather(out, lim, gather_bytes);
  if (want("pool") || want("tcp")) {
    std::printf("\n== pool round trip: GPU pages -> standalone agent on this host -> other GPU pages (Llama-3-8B vllm-paged, 2 MiB blocks) ==\n");
    std::printf("%-38s %7s %6s %7s %6s | stages (ms from the call; the last run)\n", "path", "save", "/lim", "load", "/lim");
  }
  if (want("pool")) {
    bench_pool(out, lim, "shm mapped", "", pool_bytes, "10GiB",
               {{Mover::kCopyEngine, true, true},
                {Mover::kKernel, true, true},
                {Mover::kCopyEngine, true, false},
                {Mover::kCopyEngine, false, true}},
               Path::kMapped);
  }
  if (want("tcp")) {
    bench_pool(out, lim, "tcp staged", "tcp", tcp_bytes, "4GiB", {{Mover::kCopyEngine, true, true}}, Path::kStaged);
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
