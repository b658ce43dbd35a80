// KvMover: the mapped (same-host) and staged (any agent) paths over Engine.
#include <algorithm>
#include <bit>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "kvpool/gpu.h"
#include "pool/slot_header.h"
#include "runtime/common/logging.h"
#include "runtime/gpu/engine.h"

namespace kvpool::gpu {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("gpu");
  return l;
}

using SteadyClock = std::chrono::steady_clock;
double ms_since(SteadyClock::time_point t0) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - t0).count();
}

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

// The staged path's hold on the caller's stream: a host function queued
// there blocks until the worker opens the gate, so what the caller queues
// after save()/load() (and event(), recorded after the host function) runs
// after the transfer. Shared with the host function, which may run after
// the transfer object is gone.
struct StreamGate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  void release() {
    {
      std::lock_guard lock(mu);
      open = true;
    }
    cv.notify_all();
  }
  static void CUDART_CB hold(void* arg) {
    auto* ref = static_cast<std::shared_ptr<StreamGate>*>(arg);
    {
      std::unique_lock lock((*ref)->mu);
      (*ref)->cv.wait(lock, [&] { return (*ref)->open; });
    }
    delete ref;
  }
};

class TransferImpl : public Transfer {
 public:
  ~TransferImpl() override {
    (void)wait();
    if (gate != nullptr) gate->release();
    for (auto e : events) cudaEventDestroy(e);
    for (auto e : aux_events) cudaEventDestroy(e);
    if (done_event != nullptr) cudaEventDestroy(done_event);
  }
  CUevent_st* event() const override { return done_event; }
  Result<TransferResult> wait() override {
    std::lock_guard lock(mu);
    if (worker.joinable()) worker.join();
    return result;
  }
  std::mutex mu;
  std::thread worker;  // computes `result`
  Result<TransferResult> result = tl::unexpected(Status(StatusCode::kInternal, "transfer not run"));
  std::vector<cudaEvent_t> events;  // per chunk
  std::vector<cudaEvent_t> aux_events;
  cudaEvent_t done_event = nullptr;
  std::shared_ptr<StreamGate> gate;  // staged path
};

// Checksums the GPU writes straight into host memory (mapped pinned).
struct SumBuffer {
  std::uint64_t* p = nullptr;
  std::size_t cap = 0;
};

class KvMoverImpl : public KvMover {
 public:
  KvMoverImpl(Client& client, NamespaceId ns, KvLayout layout, GpuOptions options, std::unique_ptr<Engine> engine)
      : client_(client),
        ns_(ns),
        layout_(std::move(layout)),
        options_(options),
        engine_(std::move(engine)),
        hashers_(options.hash_threads) {}

  ~KvMoverImpl() override {
    cudaSetDevice(engine_->device());
    if (int_stream_ != nullptr) {
      cudaStreamSynchronize(int_stream_);
      cudaStreamDestroy(int_stream_);
    }
    for (auto* h : host_staging_) {
      (void)client_.unregister_buffer(h);
      cudaFreeHost(h);
    }
    for (auto* d : dev_staging_) cudaFree(d);
    for (auto& b : sum_buffers_) cudaFreeHost(b.p);
    if (hash_stream_ != nullptr) cudaStreamDestroy(hash_stream_);
    for (auto& [base, held] : regions_) CudaRegions::instance().release(base, held.incarnation);
  }

  const GpuOptions& options() const override { return options_; }
  void set_options(const GpuOptions& o) override {
    std::lock_guard lock(mu_);
    options_ = o;
  }

  Result<std::unique_ptr<Transfer>> save(std::span<const Key128> keys, std::span<const std::uint64_t> pages,
                                         CUstream_st* stream) override {
    if (Status s = check_args(keys, pages); !s.ok()) return tl::unexpected(s);
    GpuOptions o = current_options();
    const auto t0 = SteadyClock::now();
    if (o.path != Path::kStaged) {
      auto mp = client_.begin_mapped_put(ns_, keys);
      if (!mp) return tl::unexpected(mp.error());
      bool unmapped = false;
      for (std::size_t i = 0; i < keys.size(); ++i) {
        unmapped |= mp->outcomes[i] == PutOutcome::kFailed && mp->errors[i].code() == StatusCode::kUnimplemented;
      }
      if (!(unmapped && o.path == Path::kAuto)) return save_mapped(std::move(*mp), keys, pages, stream, o, t0);
      client_.abort_mapped_put(*mp);
    }
    return start_staged(true, keys, pages, stream, o, t0);
  }

  Result<std::unique_ptr<Transfer>> load(std::span<const Key128> keys, std::span<const std::uint64_t> pages,
                                         CUstream_st* stream) override {
    if (Status s = check_args(keys, pages); !s.ok()) return tl::unexpected(s);
    GpuOptions o = current_options();
    const auto t0 = SteadyClock::now();
    if (o.path != Path::kStaged) {
      auto mg = client_.begin_mapped_get(ns_, keys);
      if (!mg) return tl::unexpected(mg.error());
      // kAuto with a block on an agent not mapped here (mixed placement):
      // the whole batch goes staged, as a mixed save does, so the load
      // reaches as far as the pool has the prefix and event() means one
      // thing for the whole transfer.
      if (!(mg->stopped.code() == StatusCode::kUnimplemented && o.path == Path::kAuto)) {
        return load_mapped(std::move(*mg), keys, pages, stream, o, t0);
      }
      client_.finish_mapped_get(*mg, 0);
    }
    return start_staged(false, keys, pages, stream, o, t0);
  }

 private:
  GpuOptions current_options() {
    std::lock_guard lock(mu_);
    return options_;
  }

  Status check_args(std::span<const Key128> keys, std::span<const std::uint64_t> pages) const {
    if (keys.size() != pages.size()) return Status(StatusCode::kInvalidArgument, "keys and pages differ in number");
    for (auto p : pages) {
      if (p >= engine_->plan().pages) {
        return Status(StatusCode::kInvalidArgument, "page " + std::to_string(p) + " out of range (" +
                                                        std::to_string(engine_->plan().pages) + " pages)");
      }
    }
    return Status();
  }

  Result<SumBuffer> take_sums(std::size_t n) {
    std::lock_guard lock(mu_);
    for (auto it = sum_buffers_.begin(); it != sum_buffers_.end(); ++it) {
      if (it->cap >= n) {
        SumBuffer b = *it;
        sum_buffers_.erase(it);
        return b;
      }
    }
    SumBuffer b;
    b.cap = std::max<std::size_t>(1024, std::bit_ceil(n));
    void* p = nullptr;
    if (Status s = cuda_status(cudaHostAlloc(&p, b.cap * 8, cudaHostAllocMapped | cudaHostAllocPortable), "cudaHostAlloc");
        !s.ok()) {
      return tl::unexpected(s);
    }
    b.p = static_cast<std::uint64_t*>(p);
    return b;
  }
  void give_sums(SumBuffer b) {
    if (b.p == nullptr) return;
    std::lock_guard lock(mu_);
    sum_buffers_.push_back(b);
  }
  Result<cudaStream_t> hash_stream() {
    std::lock_guard lock(mu_);
    if (hash_stream_ == nullptr) {
      if (Status s = cuda_status(cudaStreamCreateWithFlags(&hash_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
          !s.ok()) {
        return tl::unexpected(s);
      }
    }
    return hash_stream_;
  }
  static Status new_event(std::vector<cudaEvent_t>& into, cudaEvent_t& ev) {
    if (Status s = cuda_status(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
      return s;
    }
    into.push_back(ev);
    return Status();
  }

  // The device address of a slot, its region registered with CUDA on first
  // use (process-wide, shared by movers: pinning GiBs takes a while).
  Result<std::byte*> device_view(const MappedSlot& slot) {
    std::lock_guard lock(mu_);
    auto it = regions_.find(slot.region);
    if (it == regions_.end() || it->second.incarnation != slot.incarnation) {
      if (it != regions_.end()) {
        CudaRegions::instance().release(slot.region, it->second.incarnation);
        regions_.erase(it);
      }
      if (Status s = cuda_status(cudaSetDevice(engine_->device()), "cudaSetDevice"); !s.ok()) return tl::unexpected(s);
      auto dev = CudaRegions::instance().acquire(slot);
      if (!dev) return tl::unexpected(dev.error());
      it = regions_.emplace(slot.region, HeldRegion{*dev, slot.incarnation}).first;
    }
    return it->second.dev + (slot.payload - slot.region);
  }

  Result<std::unique_ptr<Transfer>> save_mapped(MappedPut mp, std::span<const Key128> keys,
                                                std::span<const std::uint64_t> pages, cudaStream_t stream,
                                                const GpuOptions& o, SteadyClock::time_point t0) {
    auto t = std::make_unique<TransferImpl>();
    const double control_ms = ms_since(t0);
    std::vector<std::size_t> idx;  // keys to write
    std::vector<std::uint64_t> wpages;
    std::vector<std::byte*> blocks;
    Status s;
    for (std::size_t i = 0; i < keys.size() && s.ok(); ++i) {
      if (mp.outcomes[i] != PutOutcome::kWritten) continue;
      auto dev = device_view(mp.slots[i]);
      if (!dev) {
        s = dev.error();
        break;
      }
      idx.push_back(i);
      wpages.push_back(pages[i]);
      blocks.push_back(*dev);
    }
    // Checksums on the GPU, from the pages themselves, on the mover's hash
    // stream while the copies run; the caller's stream waits for both.
    const bool gpu_hash = o.gpu_checksums && engine_->can_hash() && !idx.empty();
    SumBuffer sums;
    cudaEvent_t hashed = nullptr;
    if (s.ok() && gpu_hash) {
      auto sb = take_sums(idx.size());
      auto hs = hash_stream();
      cudaEvent_t start = nullptr;
      if (!sb) s = sb.error();
      else if (!hs) s = hs.error();
      else sums = *sb;
      if (s.ok()) s = new_event(t->aux_events, start);
      if (s.ok()) s = new_event(t->aux_events, hashed);
      if (s.ok()) s = cuda_status(cudaEventRecord(start, stream), "cudaEventRecord");
      if (s.ok()) s = cuda_status(cudaStreamWaitEvent(*hs, start, 0), "cudaStreamWaitEvent");
      if (s.ok()) s = engine_->enqueue_hash(wpages, sums.p, *hs);
      if (s.ok()) s = cuda_status(cudaEventRecord(hashed, *hs), "cudaEventRecord");
    }
    if (s.ok()) s = engine_->enqueue(true, wpages, blocks, o.mover, stream, t->events);
    if (s.ok() && gpu_hash) s = cuda_status(cudaStreamWaitEvent(stream, hashed, 0), "cudaStreamWaitEvent");
    if (s.ok()) s = cuda_status(cudaEventCreateWithFlags(&t->done_event, cudaEventDisableTiming), "cudaEventCreate");
    if (s.ok()) s = cuda_status(cudaEventRecord(t->done_event, stream), "cudaEventRecord");
    if (!s.ok()) {
      // Nothing may still be writing into the slots when their space goes back.
      cudaStreamSynchronize(stream);
      if (hashed != nullptr) cudaEventSynchronize(hashed);
      give_sums(sums);
      client_.abort_mapped_put(mp);
      return tl::unexpected(s);
    }
    const double enqueue_ms = ms_since(t0);
    const std::uint32_t per_chunk = engine_->chunk_blocks(o.mover);
    const std::uint64_t bb = engine_->plan().block_bytes;
    t->worker = std::thread([this, tp = t.get(), mp = std::move(mp), idx = std::move(idx), per_chunk, bb, t0,
                             control_ms, enqueue_ms, gpu_hash, gpu_sums = sums]() mutable {
      TransferResult r;
      r.stats.path = "mapped";
      r.stats.control_ms = control_ms;
      r.stats.enqueue_ms = enqueue_ms;
      std::vector<std::uint64_t> sums(mp.outcomes.size(), 0);
      Status s;
      if (gpu_hash) {
        s = cuda_status(cudaEventSynchronize(tp->done_event), "copy to the pool");
        r.stats.copy_done_ms = ms_since(t0);
        for (std::size_t j = 0; j < idx.size(); ++j) sums[idx[j]] = gpu_sums.p[j];
        give_sums(gpu_sums);
      }
      const std::size_t cpu_chunks = gpu_hash ? 0 : tp->events.size();
      for (std::size_t c = 0; c < cpu_chunks; ++c) {
        s = cuda_status(cudaEventSynchronize(tp->events[c]), "copy to the pool");
        if (!s.ok()) break;
        if (c + 1 == cpu_chunks) r.stats.copy_done_ms = ms_since(t0);
        const std::size_t first = c * per_chunk;
        const std::size_t n = std::min<std::size_t>(per_chunk, idx.size() - first);
        r.stats.hash_ms += hashers_.run(n, [&](std::size_t j) {
          const std::size_t i = idx[first + j];
          sums[i] = pool::payload_checksum(std::span<const std::byte>(mp.slots[i].payload, bb));
        });
      }
      if (tp->events.empty() && !gpu_hash) r.stats.copy_done_ms = ms_since(t0);
      r.stats.hash_done_ms = ms_since(t0);
      if (!s.ok()) {
        // A failed copy leaves the stream broken: nothing more will land.
        client_.abort_mapped_put(mp);
        tp->result = tl::unexpected(s);
        return;
      }
      auto put = client_.finish_mapped_put(mp, sums);
      r.stats.total_ms = ms_since(t0);
      r.stats.commit_ms = r.stats.total_ms - r.stats.hash_done_ms;
      if (!put) {
        tp->result = tl::unexpected(put.error());
        return;
      }
      r.put = std::move(*put);
      r.done = r.put.written + r.put.deduplicated;
      r.stats.bytes = r.put.written * bb;
      tp->result = std::move(r);
    });
    return std::unique_ptr<Transfer>(std::move(t));
  }

  Result<std::unique_ptr<Transfer>> load_mapped(MappedGet mg, std::span<const Key128> keys,
                                                std::span<const std::uint64_t> pages, cudaStream_t stream,
                                                const GpuOptions& o, SteadyClock::time_point t0) {
    (void)keys;
    auto t = std::make_unique<TransferImpl>();
    const double control_ms = ms_since(t0);
    std::vector<std::byte*> blocks;
    Status s;
    for (std::size_t i = 0; i < mg.found && s.ok(); ++i) {
      auto dev = device_view(mg.slots[i]);
      if (!dev) s = dev.error();
      else blocks.push_back(*dev);
    }
    if (s.ok()) s = engine_->enqueue(false, pages.subspan(0, mg.found), blocks, o.mover, stream, t->events);
    // Verified on the GPU: the checksum of each block as it landed in the
    // pages, after the last copy (on the caller's stream).
    const bool gpu_hash = o.verify_loads && o.gpu_checksums && engine_->can_hash() && mg.found > 0;
    SumBuffer sums;
    if (s.ok() && gpu_hash) {
      auto sb = take_sums(mg.found);
      if (!sb) s = sb.error();
      else sums = *sb;
      if (s.ok()) s = engine_->enqueue_hash(pages.subspan(0, mg.found), sums.p, stream);
    }
    if (s.ok()) s = cuda_status(cudaEventCreateWithFlags(&t->done_event, cudaEventDisableTiming), "cudaEventCreate");
    if (s.ok()) s = cuda_status(cudaEventRecord(t->done_event, stream), "cudaEventRecord");
    if (!s.ok()) {
      cudaStreamSynchronize(stream);
      give_sums(sums);
      client_.finish_mapped_get(mg, 0);
      return tl::unexpected(s);
    }
    const double enqueue_ms = ms_since(t0);
    const std::uint64_t bb = engine_->plan().block_bytes;
    const bool verify = o.verify_loads;
    t->worker = std::thread([this, tp = t.get(), mg = std::move(mg), bb, t0, control_ms, enqueue_ms, verify,
                             nkeys = keys.size(), gpu_hash, gpu_sums = sums]() mutable {
      TransferResult r;
      r.stats.path = "mapped";
      r.stats.control_ms = control_ms;
      r.stats.enqueue_ms = enqueue_ms;
      // The read lease keeps the slots stable, so their checksums are
      // checked on the pool's bytes while the GPU copies the same bytes.
      std::size_t good = mg.found;
      if (gpu_hash) {
        if (cudaEventSynchronize(tp->done_event) == cudaSuccess) {
          for (std::size_t i = 0; i < mg.found; ++i) {
            if (gpu_sums.p[i] != mg.checksums[i]) {
              good = i;
              break;
            }
          }
        }
        give_sums(gpu_sums);
      } else if (verify) {
        std::vector<char> bad(mg.found, 0);
        r.stats.hash_ms = hashers_.run(mg.found, [&](std::size_t i) {
          bad[i] = pool::payload_checksum(std::span<const std::byte>(mg.slots[i].payload, bb)) != mg.checksums[i];
        });
        for (std::size_t i = 0; i < mg.found; ++i) {
          if (bad[i]) {
            good = i;
            break;
          }
        }
      }
      r.stats.hash_done_ms = ms_since(t0);
      Status s = cuda_status(cudaEventSynchronize(tp->done_event), "copy from the pool");
      r.stats.copy_done_ms = ms_since(t0);
      client_.finish_mapped_get(mg, s.ok() ? good : 0);
      r.stats.total_ms = ms_since(t0);
      r.stats.commit_ms = r.stats.total_ms - std::max(r.stats.copy_done_ms, r.stats.hash_done_ms);
      if (!s.ok()) {
        tp->result = tl::unexpected(s);
        return;
      }
      r.done = good;
      r.get.loaded = good;
      if (good < mg.found) {
        logger()->warn("gpu load: block {} failed its payload checksum", good);
        r.get.stopped = Status(StatusCode::kDataLoss, "block " + std::to_string(good) + ": payload checksum mismatch");
      } else if (good < nkeys) {
        r.get.stopped = mg.stopped;
      }
      r.stats.bytes = good * bb;
      tp->result = std::move(r);
    });
    return std::unique_ptr<Transfer>(std::move(t));
  }

  // Lazily: the staged path's stream and its two pinned host and device
  // staging chunks (host ones registered with UCX for zero-copy puts/gets).
  Status prepare_staged() {
    if (int_stream_ != nullptr) return Status();
    if (Status s = cuda_status(cudaSetDevice(engine_->device()), "cudaSetDevice"); !s.ok()) return s;
    {
      std::lock_guard lock(mu_);
      staged_per_ = std::max<std::uint64_t>(
          1, std::min<std::uint64_t>(options_.chunk_bytes / engine_->plan().block_bytes, kMaxStagedBlocks));
    }
    const std::uint64_t bytes = staged_per_ * engine_->plan().block_bytes;
    for (int i = 0; i < 2; ++i) {
      void* h = nullptr;
      if (Status s = cuda_status(cudaHostAlloc(&h, bytes, cudaHostAllocPortable), "cudaHostAlloc"); !s.ok()) return s;
      host_staging_.push_back(static_cast<std::byte*>(h));
      if (Status s = client_.register_buffer(h, bytes); !s.ok()) return s;
      void* d = nullptr;
      if (Status s = cuda_status(cudaMalloc(&d, bytes), "cudaMalloc"); !s.ok()) return s;
      dev_staging_.push_back(static_cast<std::byte*>(d));
    }
    return cuda_status(cudaStreamCreateWithFlags(&int_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  static constexpr std::uint64_t kMaxStagedBlocks = 512;

  Result<std::unique_ptr<Transfer>> start_staged(bool save, std::span<const Key128> keys,
                                                 std::span<const std::uint64_t> pages, cudaStream_t stream,
                                                 const GpuOptions& o, SteadyClock::time_point t0) {
    auto t = std::make_unique<TransferImpl>();
    cudaEvent_t start = nullptr;
    {
      std::lock_guard lock(staged_mu_);
      if (Status s = prepare_staged(); !s.ok()) return tl::unexpected(s);
    }
    // The staged copies run on the mover's stream, after what the caller
    // already queued on theirs.
    if (Status s = cuda_status(cudaEventCreateWithFlags(&start, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
      return tl::unexpected(s);
    }
    t->events.push_back(start);
    if (Status s = cuda_status(cudaEventRecord(start, stream), "cudaEventRecord"); !s.ok()) return tl::unexpected(s);
    // With staged_stream_order the caller's stream then waits for the
    // worker (StreamGate), and event() is recorded after that wait. The
    // worker never touches the caller's stream or the legacy default stream
    // (its copies run on int_stream_, non-blocking), so the held stream
    // cannot hold the worker up.
    if (o.staged_stream_order) {
      t->gate = std::make_shared<StreamGate>();
      auto* ref = new std::shared_ptr<StreamGate>(t->gate);
      if (Status s = cuda_status(cudaLaunchHostFunc(stream, &StreamGate::hold, ref), "cudaLaunchHostFunc"); !s.ok()) {
        delete ref;
        return tl::unexpected(s);
      }
      // On failure below, ~TransferImpl releases the gate.
      if (Status s = cuda_status(cudaEventCreateWithFlags(&t->done_event, cudaEventDisableTiming), "cudaEventCreate");
          !s.ok()) {
        return tl::unexpected(s);
      }
      if (Status s = cuda_status(cudaEventRecord(t->done_event, stream), "cudaEventRecord"); !s.ok()) {
        return tl::unexpected(s);
      }
    }
    t->worker = std::thread([this, tp = t.get(), save, keys = std::vector<Key128>(keys.begin(), keys.end()),
                             pages = std::vector<std::uint64_t>(pages.begin(), pages.end()), start, t0] {
      {
        std::lock_guard lock(staged_mu_);
        tp->result = save ? run_staged_save(keys, pages, start, t0) : run_staged_load(keys, pages, start, t0);
      }
      if (tp->gate != nullptr) tp->gate->release();
    });
    return std::unique_ptr<Transfer>(std::move(t));
  }

  // Gather of chunk c+1 (GPU -> pinned host buffer) overlaps the put of
  // chunk c (host buffer -> agent).
  Result<TransferResult> run_staged_save(const std::vector<Key128>& keys, const std::vector<std::uint64_t>& pages,
                                         cudaEvent_t start, SteadyClock::time_point t0) {
    TransferResult r;
    r.stats.path = "staged";
    r.put.outcomes.assign(keys.size(), PutOutcome::kFailed);
    r.put.errors.assign(keys.size(), Status());
    const std::uint64_t bb = engine_->plan().block_bytes;
    const std::size_t per = staged_per_;
    const std::size_t chunks = (keys.size() + per - 1) / per;
    cudaEvent_t ev[2] = {nullptr, nullptr};
    for (auto& e : ev) {
      if (Status s = cuda_status(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
        return tl::unexpected(s);
      }
    }
    auto destroy = [&] {
      for (auto e : ev) cudaEventDestroy(e);
    };
    cudaSetDevice(engine_->device());
    if (Status s = cuda_status(cudaStreamWaitEvent(int_stream_, start, 0), "cudaStreamWaitEvent"); !s.ok()) {
      destroy();
      return tl::unexpected(s);
    }
    auto enqueue = [&](std::size_t c) -> Status {
      const std::size_t first = c * per, n = std::min(per, keys.size() - first);
      std::span<const std::uint64_t> pg(pages.data() + first, n);
      if (Status s = engine_->enqueue_device(true, pg, dev_staging_[c % 2], int_stream_); !s.ok()) return s;
      if (Status s = cuda_status(cudaMemcpyAsync(host_staging_[c % 2], dev_staging_[c % 2], n * bb,
                                                 cudaMemcpyDeviceToHost, int_stream_),
                                 "cudaMemcpyAsync");
          !s.ok()) {
        return s;
      }
      return cuda_status(cudaEventRecord(ev[c % 2], int_stream_), "cudaEventRecord");
    };
    Status s = chunks > 0 ? enqueue(0) : Status();
    double put_ms = 0;
    for (std::size_t c = 0; c < chunks && s.ok(); ++c) {
      if (c + 1 < chunks) s = enqueue(c + 1);  // the buffer it fills was put in round c - 1
      if (s.ok()) s = cuda_status(cudaEventSynchronize(ev[c % 2]), "copy to the staging buffer");
      if (!s.ok()) break;
      const std::size_t first = c * per, n = std::min(per, keys.size() - first);
      std::vector<std::span<const std::byte>> blocks;
      for (std::size_t j = 0; j < n; ++j) blocks.emplace_back(host_staging_[c % 2] + j * bb, bb);
      auto tp = SteadyClock::now();
      auto pr = client_.put(ns_, std::span<const Key128>(keys.data() + first, n), blocks);
      put_ms += ms_since(tp);
      if (!pr) {
        s = pr.error();
        break;
      }
      for (std::size_t j = 0; j < n; ++j) {
        r.put.outcomes[first + j] = pr->outcomes[j];
        r.put.errors[first + j] = pr->errors[j];
      }
      r.put.written += pr->written;
      r.put.deduplicated += pr->deduplicated;
      r.put.pending += pr->pending;
      r.put.failed += pr->failed;
    }
    // The next transfer reuses the buffers: nothing of this one may still run.
    cudaStreamSynchronize(int_stream_);
    destroy();
    if (!s.ok()) return tl::unexpected(s);
    r.put.failed = keys.size() - r.put.written - r.put.deduplicated - r.put.pending;
    r.done = r.put.written + r.put.deduplicated;
    r.stats.bytes = r.put.written * bb;
    r.stats.commit_ms = put_ms;  // the puts (data + headers + commit)
    r.stats.total_ms = r.stats.copy_done_ms = r.stats.hash_done_ms = ms_since(t0);
    return r;
  }

  // The get of chunk c+1 (agent -> pinned host buffer) overlaps the copy of
  // chunk c to the GPU.
  Result<TransferResult> run_staged_load(const std::vector<Key128>& keys, const std::vector<std::uint64_t>& pages,
                                         cudaEvent_t start, SteadyClock::time_point t0) {
    TransferResult r;
    r.stats.path = "staged";
    const std::uint64_t bb = engine_->plan().block_bytes;
    const std::size_t per = staged_per_;
    const std::size_t chunks = (keys.size() + per - 1) / per;
    cudaEvent_t ev[2] = {nullptr, nullptr};
    bool recorded[2] = {false, false};
    for (auto& e : ev) {
      if (Status s = cuda_status(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
        return tl::unexpected(s);
      }
    }
    cudaSetDevice(engine_->device());
    Status s = cuda_status(cudaStreamWaitEvent(int_stream_, start, 0), "cudaStreamWaitEvent");
    double get_ms = 0;
    r.get.stopped = Status();
    for (std::size_t c = 0; c < chunks && s.ok(); ++c) {
      const std::size_t first = c * per, n = std::min(per, keys.size() - first);
      if (recorded[c % 2]) s = cuda_status(cudaEventSynchronize(ev[c % 2]), "copy from the staging buffer");
      if (!s.ok()) break;
      std::vector<std::span<std::byte>> bufs;
      for (std::size_t j = 0; j < n; ++j) bufs.emplace_back(host_staging_[c % 2] + j * bb, bb);
      auto tg = SteadyClock::now();
      auto gr = client_.get(ns_, std::span<const Key128>(keys.data() + first, n), bufs);
      get_ms += ms_since(tg);
      if (!gr) {
        s = gr.error();
        break;
      }
      if (gr->loaded > 0) {
        s = cuda_status(cudaMemcpyAsync(dev_staging_[c % 2], host_staging_[c % 2], gr->loaded * bb,
                                        cudaMemcpyHostToDevice, int_stream_),
                        "cudaMemcpyAsync");
        if (s.ok()) {
          s = engine_->enqueue_device(false, std::span<const std::uint64_t>(pages.data() + first, gr->loaded),
                                      dev_staging_[c % 2], int_stream_);
        }
        if (s.ok()) s = cuda_status(cudaEventRecord(ev[c % 2], int_stream_), "cudaEventRecord");
        recorded[c % 2] = true;
      }
      r.get.loaded += gr->loaded;
      if (gr->loaded < n) {
        r.get.stopped = gr->stopped;
        break;
      }
    }
    Status done = cuda_status(cudaStreamSynchronize(int_stream_), "copy from the staging buffer");
    for (auto e : ev) cudaEventDestroy(e);
    if (s.ok()) s = done;
    if (!s.ok()) return tl::unexpected(s);
    r.done = r.get.loaded;
    r.stats.bytes = r.done * bb;
    r.stats.commit_ms = get_ms;  // the gets (data + verification)
    r.stats.total_ms = r.stats.copy_done_ms = r.stats.hash_done_ms = ms_since(t0);
    return r;
  }

  Client& client_;
  NamespaceId ns_;
  KvLayout layout_;
  std::mutex mu_;
  GpuOptions options_;                              // guarded by mu_
  struct HeldRegion {
    std::byte* dev = nullptr;
    std::uint64_t incarnation = 0;
  };
  std::map<std::byte*, HeldRegion> regions_;  // mapped regions this mover uses; guarded by mu_
  std::unique_ptr<Engine> engine_;
  HashPool hashers_;
  // The staged path: one transfer at a time (staged_mu_ held by its worker).
  std::mutex staged_mu_;
  cudaStream_t int_stream_ = nullptr;
  std::vector<std::byte*> host_staging_;
  std::vector<std::byte*> dev_staging_;
  std::uint64_t staged_per_ = 1;  // blocks per staging chunk, fixed when the buffers are made
  std::vector<SumBuffer> sum_buffers_;  // free ones; guarded by mu_
  cudaStream_t hash_stream_ = nullptr;  // save checksums beside the copies; guarded by mu_ (creation)
};

}  // namespace

bool gpu_available(std::string* why) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    if (why != nullptr) {
      *why = err != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err) : "no CUDA device";
    }
    return false;
  }
  return true;
}

Result<std::unique_ptr<KvMover>> KvMover::create(Client& client, NamespaceId ns, const KvLayout& layout,
                                                 const KvTensors& tensors, const GpuOptions& options) {
  auto bb = block_bytes(layout);
  if (!bb) return tl::unexpected(bb.error());
  auto nsb = client.block_bytes(ns);
  if (!nsb) return tl::unexpected(nsb.error());
  if (*nsb != *bb) {
    return make_error(StatusCode::kInvalidArgument, "gpu: the namespace's blocks are " + std::to_string(*nsb) +
                                                        " bytes, the layout's " + std::to_string(*bb));
  }
  std::string why;
  if (!gpu_available(&why)) return make_error(StatusCode::kFailedPrecondition, "gpu: " + why);
  auto engine = Engine::create(layout, tensors, options.chunk_bytes, options.device);
  if (!engine) return tl::unexpected(engine.error());
  return std::unique_ptr<KvMover>(
      new KvMoverImpl(client, ns, layout, options, std::move(*engine)));
}

}  // namespace kvpool::gpu
