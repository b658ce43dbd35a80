// Layer-wise loads started off the caller's thread (mover_internal.h,
// LayerStarter).
//
// Why: an engine's forward pass over a short suffix is bound by the host
// launching its kernels (a 16-token prefill at Llama-3-8B shapes: about 45
// ms of launches, a few ms of GPU work), so every millisecond load_layers
// spends on the caller's thread (the lookup, mapping the blocks, enqueueing
// 32 layers of copies: 2.5 ms at 4k tokens, 8.8 at 32k on an H200) came
// straight on top of the time to the first token. Here load_layers only
// records where the caller's stream stands and returns; the lookup and the
// copies run on the mover's starter thread, one load after another in call
// order. The caller's stream cannot wait on an event not yet recorded
// (cudaStreamWaitEvent would not wait at all), so it waits on a counter in
// device memory instead (cuStreamWaitValue32), which the mover's signal
// stream raises once each layer is in (cuStreamWriteValue32).
#include <cuda.h>

#include <cstdlib>
#include <cstring>

#include "runtime/gpu/mover_internal.h"

namespace kvpool::gpu::detail {
namespace {

using WaitValue = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using WriteValue = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

constexpr std::uint32_t kFlags = 256;  // loads in flight at once per mover; more start on the caller's thread
// Where load_layers starts a load when KVPOOL_GPU_LAYER_START does not say
// (`thread` or `caller`).
constexpr bool kStartOnThread = false;

Status driver_status(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return Status();
  return Status(StatusCode::kInternal, std::string(what) + " failed (CUresult " + std::to_string(r) + ")");
}

template <typename Fn>
Fn entry_point(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q{};
  if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess) {
    return nullptr;
  }
  return reinterpret_cast<Fn>(fn);
}

// A layer-wise load whose start runs on the starter's thread. Its flag
// counts the layers in: layer l is in once flag - base >= l + 1 (a wrapping
// comparison, as CU_STREAM_WAIT_VALUE_GEQ makes it).
class AsyncLayerLoad : public LayerTransfer {
 public:
  AsyncLayerLoad(LayerStarter& st, LayerStarter::Flag flag, std::uint32_t layers)
      : st_(st), flag_(flag), layers_(layers) {}

  ~AsyncLayerLoad() override {
    (void)wait();
    inner_.reset();
    // Raised to base + layers by now (wait() synchronised the signal
    // stream): a stream still waiting on an old target passes, a later
    // load's targets lie above it.
    st_.give_flag(flag_, flag_.base + layers_);
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (signaled_ != nullptr) cudaEventDestroy(signaled_);
  }

  // On the caller's thread: where its stream stands (the pages are free
  // from there), then the rest is posted to the starter.
  Status begin(MoverCore& m, std::span<const Key128> keys, std::span<const std::uint64_t> pages,
               cudaStream_t stream, const GpuOptions& o, SteadyClock::time_point t0) {
    Status s = cuda_status(cudaEventCreateWithFlags(&start_, cudaEventDisableTiming), "cudaEventCreate");
    if (s.ok()) s = cuda_status(cudaEventCreateWithFlags(&signaled_, cudaEventDisableTiming), "cudaEventCreate");
    if (s.ok()) s = cuda_status(cudaEventRecord(start_, stream), "cudaEventRecord");
    if (!s.ok()) return s;  // nothing posted: the destructor has nothing to wait for
    posted_ = true;
    st_.post([this, &m, k = std::vector<Key128>(keys.begin(), keys.end()),
              p = std::vector<std::uint64_t>(pages.begin(), pages.end()), o, t0] { run(m, k, p, o, t0); });
    return Status();
  }

  std::uint32_t layers() const override { return layers_; }
  Status wait_layer(std::uint32_t layer, CUstream_st* stream) const override {
    if (layer >= layers_) {
      return Status(StatusCode::kInvalidArgument,
                    "layer " + std::to_string(layer) + " out of range (" + std::to_string(layers_) + " layers)");
    }
    return st_.wait_value(stream, flag_, flag_.base + layer + 1);
  }
  CUevent_st* layer_event(std::uint32_t layer) const override {
    if (layer >= layers_) return nullptr;
    started();
    return inner_ != nullptr ? inner_->layer_event(layer) : signaled_;
  }
  CUevent_st* event() const override {
    started();
    return inner_ != nullptr ? inner_->event() : signaled_;
  }
  std::size_t found() const override {
    started();
    return inner_ != nullptr ? inner_->found() : 0;
  }
  Result<TransferResult> wait() override {
    if (!posted_) return tl::unexpected(Status(StatusCode::kInternal, "layer-wise load not started"));
    started();
    (void)cudaEventSynchronize(signaled_);
    if (inner_ == nullptr) return tl::unexpected(error_);
    return inner_->wait();
  }

 private:
  // On the starter's thread: the lookup and the copies (the mover's
  // synchronous start, ordered after start_ through the order stream), then
  // the signal stream raises the flag after each layer; on any failure it
  // raises it past the last layer at once, so no stream waits forever.
  void run(MoverCore& m, const std::vector<Key128>& keys, const std::vector<std::uint64_t>& pages,
           const GpuOptions& o, SteadyClock::time_point t0) {
    Result<std::unique_ptr<LayerTransfer>> t = tl::unexpected(Status());
    Status s = cuda_status(cudaStreamWaitEvent(st_.order_stream(), start_, 0), "cudaStreamWaitEvent");
    if (s.ok()) {
      t = m.layer_load_now(keys, pages, st_.order_stream(), o, t0);
      if (!t) s = t.error();
    }
    cudaStream_t sig = st_.signal_stream();
    for (std::uint32_t l = 0; s.ok() && l < layers_; ++l) {
      s = cuda_status(cudaStreamWaitEvent(sig, (*t)->layer_event(l), 0), "cudaStreamWaitEvent");
      if (s.ok()) s = st_.write_value(sig, flag_, flag_.base + l + 1);
    }
    if (!s.ok()) {
      Status w = st_.write_value(sig, flag_, flag_.base + layers_);
      if (!w.ok()) logger()->error("gpu layer-wise load: a stream waiting on its layers may hang: {}", w.to_string());
    }
    Status r = cuda_status(cudaEventRecord(signaled_, sig), "cudaEventRecord");
    // Notified under the lock: once it is released the transfer may be
    // destroyed. A load started but not signalled ends with `t`, after.
    std::lock_guard lock(mu_);
    if (s.ok() && r.ok()) inner_ = std::move(*t);
    else error_ = s.ok() ? r : s;
    done_ = true;
    cv_.notify_all();
  }

  void started() const {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }

  LayerStarter& st_;
  const LayerStarter::Flag flag_;
  const std::uint32_t layers_;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t signaled_ = nullptr;  // after the signal stream's last write
  bool posted_ = false;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;                     // guarded by mu_; then inner_ / error_ are set
  std::unique_ptr<LayerTransfer> inner_;  // the started load
  Status error_;
};

}  // namespace

struct LayerStarter::Driver {
  WaitValue wait = nullptr;
  WriteValue write = nullptr;
};

std::unique_ptr<LayerStarter> LayerStarter::create(int device) {
  auto st = std::unique_ptr<LayerStarter>(new LayerStarter(device));
  if (Status s = st->init(); !s.ok()) {
    logger()->info("gpu: layer-wise loads start on the caller's thread ({})", s.to_string());
    return nullptr;
  }
  return st;
}

LayerStarter::LayerStarter(int device) : device_(device), driver_(std::make_unique<Driver>()) {}

Status LayerStarter::init() {
  driver_->wait = entry_point<WaitValue>("cuStreamWaitValue32");
  driver_->write = entry_point<WriteValue>("cuStreamWriteValue32");
  if (driver_->wait == nullptr || driver_->write == nullptr) {
    return Status(StatusCode::kUnimplemented, "no stream memory operations in this driver");
  }
  Status s = cuda_status(cudaSetDevice(device_), "cudaSetDevice");
  if (s.ok()) s = cuda_status(cudaMalloc(reinterpret_cast<void**>(&flags_), kFlags * sizeof(std::uint32_t)), "cudaMalloc");
  if (s.ok()) s = cuda_status(cudaMemset(flags_, 0, kFlags * sizeof(std::uint32_t)), "cudaMemset");
  if (s.ok()) s = cuda_status(cudaStreamCreateWithFlags(&order_, cudaStreamNonBlocking), "cudaStreamCreate");
  if (s.ok()) s = cuda_status(cudaStreamCreateWithFlags(&signal_, cudaStreamNonBlocking), "cudaStreamCreate");
  // The device may refuse the operations (CUDA_ERROR_NOT_SUPPORTED): try both once.
  const Flag probe{flags_, 0, 0};
  if (s.ok()) s = write_value(signal_, probe, 0);
  if (s.ok()) s = wait_value(signal_, probe, 0);
  if (s.ok()) s = cuda_status(cudaStreamSynchronize(signal_), "stream memory operations");
  for (std::uint32_t i = 0; i < kFlags; ++i) free_.push_back({flags_ + i, 0, i});
  return s;
}

LayerStarter::~LayerStarter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  cudaSetDevice(device_);
  for (cudaStream_t s : {order_, signal_}) {
    if (s != nullptr) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
  if (flags_ != nullptr) cudaFree(flags_);
}

std::optional<LayerStarter::Flag> LayerStarter::take_flag() {
  std::lock_guard lock(mu_);
  if (free_.empty()) return std::nullopt;
  Flag f = free_.front();
  free_.pop_front();
  return f;
}

void LayerStarter::give_flag(Flag f, std::uint32_t last) {
  std::lock_guard lock(mu_);
  f.base = last;
  free_.push_back(f);
}

void LayerStarter::post(std::function<void()> job) {
  std::lock_guard lock(mu_);
  jobs_.push_back(std::move(job));
  if (!thread_.joinable()) {
    thread_ = std::thread([this] {
      cudaSetDevice(device_);
      std::unique_lock lock(mu_);
      for (;;) {
        cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, every job run
        auto next = std::move(jobs_.front());
        jobs_.pop_front();
        lock.unlock();
        next();
        lock.lock();
      }
    });
  }
  cv_.notify_all();
}

Status LayerStarter::wait_value(cudaStream_t stream, const Flag& f, std::uint32_t value) const {
  return driver_status(driver_->wait(reinterpret_cast<CUstream>(stream), reinterpret_cast<CUdeviceptr>(f.dev), value,
                                     CU_STREAM_WAIT_VALUE_GEQ),
                       "cuStreamWaitValue32");
}

Status LayerStarter::write_value(cudaStream_t stream, const Flag& f, std::uint32_t value) const {
  return driver_status(driver_->write(reinterpret_cast<CUstream>(stream), reinterpret_cast<CUdeviceptr>(f.dev), value,
                                      CU_STREAM_WRITE_VALUE_DEFAULT),
                       "cuStreamWriteValue32");
}

bool layer_start_on_caller() {
  const char* v = std::getenv("KVPOOL_GPU_LAYER_START");
  if (v != nullptr && std::strcmp(v, "caller") == 0) return true;
  if (v != nullptr && std::strcmp(v, "thread") == 0) return false;
  return !kStartOnThread;
}

Result<std::unique_ptr<LayerTransfer>> start_layer_load_async(MoverCore& m, LayerStarter& st,
                                                              std::span<const Key128> keys,
                                                              std::span<const std::uint64_t> pages,
                                                              cudaStream_t stream, const GpuOptions& o,
                                                              SteadyClock::time_point t0, std::uint32_t layers) {
  auto flag = st.take_flag();
  if (!flag) return m.layer_load_now(keys, pages, stream, o, t0);  // every flag in use
  auto t = std::make_unique<AsyncLayerLoad>(st, *flag, layers);
  if (Status s = t->begin(m, keys, pages, stream, o, t0); !s.ok()) return tl::unexpected(s);
  return std::unique_ptr<LayerTransfer>(std::move(t));
}

}  // namespace kvpool::gpu::detail
