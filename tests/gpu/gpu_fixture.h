#pragma once
// Shared by the GPU tests (gpu_test.cc, layers_test.cc): random KV in real
// GPU tensors, a standalone pool on this host, small layouts.
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "kvpool/gpu.h"
#include "runtime/gpu/plan.h"
#include "tests/integration/pool_fixture.h"

namespace kvpool::testing {

using namespace kvpool::gpu;

inline bool have_gpu() {
  std::string why;
  if (gpu_available(&why)) return true;
  WARN("skipped: no usable GPU (" << why << ")");
  return false;
}

#define CUDA_OK(call) REQUIRE((call) == cudaSuccess)

// The engine's tensors, filled with random bytes.
struct Tensors {
  KvLayout layout;
  KvTensors ptrs;
  std::vector<void*> owned;
  std::uint64_t tensor_bytes = 0;
  explicit Tensors(const KvLayout& l) : layout(l) {
    auto plan = make_plan(l);
    REQUIRE(plan);
    const bool combined = l.kind == KvLayoutKind::kVllmPaged;
    tensor_bytes = combined ? 2 * plan->tensor_bytes : plan->tensor_bytes;
    std::mt19937_64 rng(1234 + static_cast<int>(l.kind));
    std::vector<std::uint64_t> host(tensor_bytes / 8);
    for (std::uint32_t i = 0; i < (combined ? 1u : 2u) * l.num_layers; ++i) {
      void* p = nullptr;
      CUDA_OK(cudaMalloc(&p, tensor_bytes));
      for (auto& x : host) x = rng();
      CUDA_OK(cudaMemcpy(p, host.data(), tensor_bytes, cudaMemcpyHostToDevice));
      owned.push_back(p);
      if (combined || i % 2 == 0) ptrs.k.push_back(p);
      else ptrs.v.push_back(p);
    }
  }
  ~Tensors() {
    for (auto p : owned) cudaFree(p);
  }
  // The bytes of page `page` in pool-block order, read back from the GPU.
  std::vector<std::byte> page_bytes(std::uint64_t page) const {
    auto plan = *make_plan(layout);
    auto bases = *tensor_bases(layout, plan, ptrs);
    std::vector<std::byte> out(plan.block_bytes);
    for (std::uint32_t u = 0; u < plan.units; ++u) {
      auto src = reinterpret_cast<const void*>(bases[u / plan.segs] + plan.run_offset(page, u));
      REQUIRE(cudaMemcpy(out.data() + u * plan.run_bytes, src, plan.run_bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    }
    return out;
  }
  // The same, read by copies queued on `stream` (pinned host memory, so the
  // copies are asynchronous and ordered by the stream alone).
  std::vector<std::byte> page_bytes_on(std::uint64_t page, cudaStream_t stream) const {
    auto plan = make_plan(layout);
    REQUIRE(plan);
    auto bases = *tensor_bases(layout, *plan, ptrs);
    void* host = nullptr;
    CUDA_OK(cudaMallocHost(&host, plan->block_bytes));
    for (std::uint32_t u = 0; u < plan->units; ++u) {
      auto src = reinterpret_cast<const void*>(bases[u / plan->segs] + plan->run_offset(page, u));
      CUDA_OK(cudaMemcpyAsync(static_cast<std::byte*>(host) + u * plan->run_bytes, src, plan->run_bytes,
                              cudaMemcpyDeviceToHost, stream));
    }
    CUDA_OK(cudaStreamSynchronize(stream));
    std::vector<std::byte> out(static_cast<std::byte*>(host), static_cast<std::byte*>(host) + plan->block_bytes);
    cudaFreeHost(host);
    return out;
  }
  void poison() {
    for (auto p : owned) REQUIRE(cudaMemset(p, 0xA5, tensor_bytes) == cudaSuccess);
  }
};

// A standalone agent on this host (kvpool-agent --standalone `args`) and a
// client of it (over UCX transports `tls`; empty: the default).
struct OpenPool {
  std::unique_ptr<PoolProcess> pool;
  Result<std::unique_ptr<Client>> client;
};
inline OpenPool open_pool(const std::string& size, const std::vector<std::string>& extra = {}, const std::string& tls = {}) {
  use_test_secret();
  OpenPool p{start_standalone(size, extra), tl::unexpected(Status(StatusCode::kUnavailable, "not connected"))};
  REQUIRE(p.pool);
  ClientOptions co;
  co.coordinator = p.pool->coordinator;
  co.tls = tls;
  p.client = Client::connect(co);
  REQUIRE(p.client);
  return p;
}

inline KvLayout small_layout(KvLayoutKind kind) {
  KvLayout l;
  l.kind = kind;
  l.dtype = "bf16";
  l.num_layers = 4;
  l.num_kv_heads = 8;
  l.head_dim = 128;
  l.tokens_per_block = 16;  // 4 layers: 256 KiB blocks
  l.num_pages = 96;
  l.batch = 2;
  l.max_seq = 48 * 16;  // 96 pages in all
  return l;
}

// A host function for cudaLaunchHostFunc: holds a stream for 50 ms (work
// queued after it runs late, so a copy that did not wait for it shows).
inline void CUDART_CB sleep_50ms(void*) { usleep(50000); }

template <typename T>
StatusCode code_of(const Result<T>& r) {
  return r ? StatusCode::kOk : r.error().code();
}

inline std::vector<Key128> keys_for(std::size_t n, std::uint64_t salt) {
  std::vector<Key128> k;
  for (std::size_t i = 0; i < n; ++i) k.push_back({salt * 1000003 + i, salt});
  return k;
}

}  // namespace kvpool::testing
