#pragma once
// Internal to the GPU path (mover.cc, layers.cc): the transfer object both
// kinds of transfer share, and what a layer-wise transfer needs of its
// mover (MoverCore). Not part of the public API.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <mutex>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "kvpool/gpu.h"
#include "runtime/common/logging.h"
#include "runtime/gpu/engine.h"

namespace kvpool::gpu::detail {

inline std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("gpu");
  return l;
}

using SteadyClock = std::chrono::steady_clock;
inline double ms_since(SteadyClock::time_point t0) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - t0).count();
}

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


// What the layer-wise transfers (layers.cc) use of the mover that starts
// them. Calls are thread-safe; the mover outlives its transfers.
class MoverCore {
 public:
  virtual ~MoverCore() = default;
  virtual Client& client() = 0;
  virtual NamespaceId ns() const = 0;
  virtual Engine& engine() = 0;
  // The slot's payload as the device addresses it, its region registered
  // with CUDA on first use.
  virtual Result<std::byte*> device_view(const MappedSlot& slot) = 0;
  virtual Result<SumBuffer> take_sums(std::size_t n) = 0;
  virtual void give_sums(SumBuffer b) = 0;
  // The mover's layer-wise streams (non-blocking, made on first use), a
  // pair for loads and another for saves, so a step's save never queues
  // behind its loads: the copy engines' and the kernels' (scatter/gather and
  // checksums), so layer l+1's copy runs while layer l is scattered and
  // hashed.
  virtual Status layer_streams(bool save, cudaStream_t& copy, cudaStream_t& work) = 0;
  // The mover's memory pool for staging buffers (cudaMallocFromPoolAsync):
  // it keeps freed memory (release threshold: all), where CUDA's default
  // pool hands it back to the driver at every synchronisation and the next
  // transfer pays for the allocation again. Made with the streams.
  virtual cudaMemPool_t staging_pool() = 0;
  virtual GpuOptions current_options() = 0;
  // Runs fn(i) for i in [0, n) on the mover's hash threads (CPU checksums
  // of many blocks); returns their summed time in ms.
  virtual double hash_each(std::size_t n, const std::function<void(std::size_t)>& fn) = 0;
  // A layer-wise save of pages (begin_save_layers without its argument
  // checks): mapped, or the staged path's whole-block stand-in.
  virtual Result<std::unique_ptr<LayerSave>> layer_save(std::span<const Key128> keys,
                                                        std::span<const std::uint64_t> pages) = 0;
  // A layer-wise load started on the calling thread (load_layers without
  // its argument checks): the lookup, then the mapped path's layer by layer
  // copies or the staged path's whole blocks, ordered after `stream`.
  virtual Result<std::unique_ptr<LayerTransfer>> layer_load_now(std::span<const Key128> keys,
                                                                std::span<const std::uint64_t> pages,
                                                                cudaStream_t stream, const GpuOptions& o,
                                                                SteadyClock::time_point t0) = 0;
};

// A mover's thread that starts its layer-wise loads, so that load_layers
// returns before the lookup (layer_start.cc says why), and the device
// counters the callers' streams wait on per layer (CUDA stream memory
// operations). Jobs run one at a time in the order posted: a step's loads
// fill their first layers in the order the engine asked for them.
class LayerStarter {
 public:
  // Null when the driver or device lacks stream memory operations.
  static std::unique_ptr<LayerStarter> create(int device);
  ~LayerStarter();  // runs what is posted; every transfer it started is gone
  // A counter in device memory; base: its value when taken (it only grows).
  struct Flag {
    std::uint32_t* dev = nullptr;
    std::uint32_t base = 0;
    std::uint32_t index = 0;
  };
  std::optional<Flag> take_flag();  // none while every one is in use
  void give_flag(Flag f, std::uint32_t last);  // last: its value now, written and complete
  void post(std::function<void()> job);
  // `stream` waits until the counter reaches value (a wrapping >=); the
  // counter is set to value after what `stream` queued before.
  Status wait_value(cudaStream_t stream, const Flag& f, std::uint32_t value) const;
  Status write_value(cudaStream_t stream, const Flag& f, std::uint32_t value) const;
  cudaStream_t order_stream() const { return order_; }    // the jobs' loads start after it
  cudaStream_t signal_stream() const { return signal_; }  // writes the counters

 private:
  struct Driver;
  explicit LayerStarter(int device);
  Status init();
  const int device_;
  std::unique_ptr<Driver> driver_;
  std::uint32_t* flags_ = nullptr;
  cudaStream_t order_ = nullptr, signal_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Flag> free_;                      // guarded by mu_
  std::deque<std::function<void()>> jobs_;     // guarded by mu_
  bool stopping_ = false;                      // guarded by mu_
  std::thread thread_;
};

// Whether load_layers starts on the caller's thread: KVPOOL_GPU_LAYER_START
// =caller or =thread (read at each call; the benchmark compares both), else
// layer_start.cc's default.
bool layer_start_on_caller();
// load_layers through the starter: returns once `stream`'s position is
// recorded; found(), event() and layer_event() block until the load has
// started, wait_layer() never blocks, and a lookup or start that fails
// raises every layer's counter and is wait()'s error.
Result<std::unique_ptr<LayerTransfer>> start_layer_load_async(MoverCore& m, LayerStarter& st,
                                                              std::span<const Key128> keys,
                                                              std::span<const std::uint64_t> pages,
                                                              cudaStream_t stream, const GpuOptions& o,
                                                              SteadyClock::time_point t0, std::uint32_t layers);

// Layer-wise transfers on the mapped path (layers.cc). load: mg from
// begin_mapped_get, pages[i] for its found blocks; the copies start after
// the work queued on `stream`. save: mp from begin_mapped_put, every key
// kWritten or settled (none placed on an agent not mapped here).
// t0: when the caller's call began (the stats count from it).
// Only layers [first_layer, end_layer) when given (a rows load of one layer).
Result<std::unique_ptr<LayerTransfer>> start_layer_load(MoverCore& m, MappedGet mg, std::size_t nkeys,
                                                        std::span<const std::uint64_t> pages, cudaStream_t stream,
                                                        const GpuOptions& o, SteadyClock::time_point t0,
                                                        std::uint32_t first_layer = 0,
                                                        std::uint32_t end_layer = UINT32_MAX);
Result<std::unique_ptr<LayerSave>> start_layer_save(MoverCore& m, MappedPut mp, std::span<const std::uint64_t> pages,
                                                    const GpuOptions& o);

// The staged fallbacks: a whole-block transfer seen as layers (every
// layer_event() is its event(), which must be non-null: start it with
// staged_stream_order), and a save that moves every layer whole in
// finish(), through `save` (the mover's staged save, ordered after the last
// save_layer's point on its stream), so an unfinished one puts nothing.
std::unique_ptr<LayerTransfer> whole_as_layers(std::unique_ptr<Transfer> t, std::uint32_t layers, std::size_t found);
using SaveWhole = std::function<Result<std::unique_ptr<Transfer>>(cudaStream_t)>;
std::unique_ptr<LayerSave> whole_save_as_layers(SaveWhole save, std::uint32_t layers);

// Pointer rows (KvMover::save_rows / load_rows; rows.cc). prepare_rows
// checks the rows (units per key, nonzero, 16-byte aligned), copies them
// into a mapped pinned table the engine's kernels read, and gives the
// "pages" of Engine::create_rows (row addresses), the stream to run on
// (`stream`, or the mover's own when null), made to wait for `after`.
// with_rows wraps the transfer so the table goes back to the mover only
// once the transfer ended.
struct RowsCall {
  std::vector<std::uint64_t> pages;
  cudaStream_t stream = nullptr;
  SumBuffer table;
};
Result<RowsCall> prepare_rows(MoverCore& m, bool save, std::size_t nkeys, std::span<const std::uint64_t> rows,
                              std::uint32_t units, cudaStream_t stream, cudaEvent_t after);
std::unique_ptr<Transfer> with_rows(MoverCore& m, std::unique_ptr<Transfer> t, SumBuffer table);
// KvMover::load_layer_rows and begin_save_layer_rows of a rows mover.
Result<std::unique_ptr<Transfer>> load_layer_rows(MoverCore& m, std::span<const Key128> keys, std::uint32_t layer,
                                                  std::span<const std::uint64_t> rows, cudaStream_t stream,
                                                  cudaEvent_t after);
Result<std::unique_ptr<LayerSave>> begin_save_layer_rows(MoverCore& m, std::span<const Key128> keys);

}  // namespace kvpool::gpu::detail
