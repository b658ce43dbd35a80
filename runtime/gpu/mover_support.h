#pragma once
// Internal to KvMover (mover.cc): the pinned checksum buffers, the CPU hashing
// pool and the process-wide table of pool regions registered with CUDA.

#include <algorithm>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "kvpool/client.h"
#include "runtime/gpu/mover_internal.h"

namespace kvpool::gpu::detail {

// Mapped pinned buffers the GPU writes checksums (or reads row tables)
// into, kept for reuse: cudaHostAlloc costs far more than a transfer's
// bookkeeping. Thread-safe.
class SumBuffers {
 public:
  ~SumBuffers() {
    for (auto& b : free_) cudaFreeHost(b.p);
  }
  // A free buffer of at least n entries, or a new one.
  Result<SumBuffer> take(std::size_t n) {
    {
      std::lock_guard lock(mu_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->cap >= n) {
          SumBuffer b = *it;
          free_.erase(it);
          return b;
        }
      }
    }
    SumBuffer b;
    b.cap = std::max<std::size_t>(1024, std::bit_ceil(n));
    void* p = nullptr;
    if (Status s = cuda_status(cudaHostAlloc(&p, b.cap * 8, cudaHostAllocMapped | cudaHostAllocPortable),
                               "cudaHostAlloc");
        !s.ok()) {
      return tl::unexpected(s);
    }
    b.p = static_cast<std::uint64_t*>(p);
    return b;
  }
  void give(SumBuffer b) {
    if (b.p == nullptr) return;
    std::lock_guard lock(mu_);
    free_.push_back(b);
  }

 private:
  std::mutex mu_;
  std::vector<SumBuffer> free_;  // guarded by mu_
};

// Hashes blocks on a few threads: one thread hashes at about 15 GB/s, a
// third of the link, so checksums of GiBs need several.
class HashPool {
 public:
  explicit HashPool(unsigned threads) {
    for (unsigned i = 0; i < std::max(1u, threads); ++i) threads_.emplace_back([this] { loop(); });
  }
  ~HashPool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs fn(i) for every i in [0, n) and returns when all are done, with the
  // summed thread time in ms.
  double run(std::size_t n, const std::function<void(std::size_t)>& fn) {
    if (n == 0) return 0;
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> left{n};
    std::atomic<std::int64_t> busy_ns{0};
    std::mutex done_mu;
    std::condition_variable done_cv;
    auto worker = [&] {
      auto t0 = SteadyClock::now();
      std::size_t did = 0;
      for (std::size_t i; (i = next.fetch_add(1)) < n;) {
        fn(i);
        ++did;
      }
      busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now() - t0).count();
      if (did > 0 && left.fetch_sub(did) == did) {
        std::lock_guard l(done_mu);
        done_cv.notify_all();
      }
    };
    const std::size_t helpers = std::min(n, threads_.size());
    {
      std::lock_guard lock(mu_);
      for (std::size_t i = 0; i < helpers; ++i) q_.push_back(worker);
    }
    cv_.notify_all();
    std::unique_lock l(done_mu);
    done_cv.wait(l, [&] { return left.load() == 0; });
    l.unlock();
    // Helpers that found nothing left may still be inside worker(): wait
    // until every queued copy has started and returned.
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [&] { return q_.empty() && running_ == 0; });
    return busy_ns.load() / 1e6;
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !q_.empty(); });
        if (q_.empty()) return;
        fn = std::move(q_.front());
        q_.pop_front();
        ++running_;
      }
      fn();
      {
        std::lock_guard lock(mu_);
        --running_;
      }
      idle_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<void()>> q_;  // guarded by mu_
  std::size_t running_ = 0;              // guarded by mu_
  bool stop_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

// Pool regions registered with CUDA, shared by every mover of the process
// and counted: cudaHostRegister is per address range and process, so one
// mover's teardown must not unregister a region another still copies into.
// Keyed by address and the agent's incarnation: a restarted agent's new
// region may be mapped where the old one was.
class CudaRegions {
 public:
  static CudaRegions& instance() {
    static CudaRegions r;
    return r;
  }
  Result<std::byte*> acquire(const MappedSlot& slot) {
    std::lock_guard lock(mu_);
    auto it = regions_.find(slot.region);
    if (it != regions_.end() && it->second.incarnation != slot.incarnation) {
      // The old incarnation's mapping is gone: its registration is stale.
      cudaHostUnregister(slot.region);
      (void)cudaGetLastError();
      regions_.erase(it);
      it = regions_.end();
    }
    if (it == regions_.end()) {
      cudaError_t err = cudaHostRegister(slot.region, slot.region_bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
      if (err != cudaSuccess && err != cudaErrorHostMemoryAlreadyRegistered) {
        return tl::unexpected(cuda_status(err, "cudaHostRegister of the pool region"));
      }
      (void)cudaGetLastError();
      void* dev = nullptr;
      if (Status s = cuda_status(cudaHostGetDevicePointer(&dev, slot.region, 0), "cudaHostGetDevicePointer");
          !s.ok()) {
        return tl::unexpected(s);
      }
      logger()->info("registered pool region {} ({} bytes) with CUDA", static_cast<void*>(slot.region),
                     slot.region_bytes);
      it = regions_.emplace(slot.region, Entry{static_cast<std::byte*>(dev), slot.incarnation, 0}).first;
    }
    ++it->second.users;
    return it->second.dev;
  }
  void release(std::byte* region, std::uint64_t incarnation) {
    std::lock_guard lock(mu_);
    auto it = regions_.find(region);
    if (it == regions_.end() || it->second.incarnation != incarnation) return;
    if (--it->second.users == 0) {
      cudaHostUnregister(region);
      (void)cudaGetLastError();
      regions_.erase(it);
    }
  }

 private:
  struct Entry {
    std::byte* dev = nullptr;
    std::uint64_t incarnation = 0;
    std::size_t users = 0;
  };
  std::mutex mu_;
  std::map<std::byte*, Entry> regions_;  // guarded by mu_
};

}  // namespace kvpool::gpu::detail
