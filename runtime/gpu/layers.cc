// Layer-wise transfers on the mapped path (include/kvpool/gpu.h, LayerTransfer
// and LayerSave), and the staged path's whole-block stand-ins for them.
//
// Each layer's share of n blocks moves through the copy engines as one
// strided copy per run of blocks adjacent in the pool (cudaMemcpy2DAsync:
// a layer's slice of block b lies at b * block_bytes + l * layer_bytes), into
// (out of) a device staging buffer; a kernel scatters (gathers) it to (from)
// the engine's pages and another checksums the layer's slices where they
// landed. Copies run on the mover's copy stream and kernels on its work
// stream, with two staging buffers between them, so layer l+1's copy runs
// while layer l is scattered and hashed. The copy engines, not SMs, move the
// bytes over PCIe: the model's kernels keep the SMs while a load overlaps
// its forward pass.
#include <algorithm>

#include "pool/slot_header.h"
#include "runtime/gpu/mover_internal.h"

namespace kvpool::gpu::detail {
namespace {

Status wait_on(CUevent_st* event, std::uint32_t layer, std::uint32_t layers, CUstream_st* stream) {
  if (layer >= layers || event == nullptr) {
    return Status(StatusCode::kInvalidArgument, "layer " + std::to_string(layer) + " out of range (" +
                                                    std::to_string(layers) + " layers)");
  }
  return cuda_status(cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent (layer)");
}

// Events of one transfer, destroyed with it.
struct Events {
  std::vector<cudaEvent_t> all;
  ~Events() {
    for (auto e : all) cudaEventDestroy(e);
  }
  Result<cudaEvent_t> make() {
    cudaEvent_t e = nullptr;
    if (Status s = cuda_status(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
      return tl::unexpected(s);
    }
    all.push_back(e);
    return e;
  }
};

// Runs of blocks adjacent in the pool: [first, end) with host[i + 1] ==
// host[i] + block_bytes, each moved by one strided copy per layer.
std::vector<std::pair<std::size_t, std::size_t>> adjacent_runs(const std::vector<std::byte*>& host,
                                                               std::uint64_t block_bytes) {
  std::vector<std::pair<std::size_t, std::size_t>> runs;
  for (std::size_t j = 0; j < host.size();) {
    std::size_t k = j + 1;
    while (k < host.size() && host[k] == host[k - 1] + block_bytes) ++k;
    runs.emplace_back(j, k);
    j = k;
  }
  return runs;
}

// One layer's slices of every block between the pool and `staging` (block
// j's slice at staging + j * layer_bytes), on `stream`.
Status copy_layer(bool to_pool, const std::vector<std::byte*>& host,
                  const std::vector<std::pair<std::size_t, std::size_t>>& runs, std::byte* staging,
                  std::uint64_t block_bytes, std::uint64_t layer_bytes, std::uint32_t layer, cudaStream_t stream) {
  for (auto [j, k] : runs) {
    std::byte* pool = host[j] + layer * layer_bytes;
    std::byte* dev = staging + j * layer_bytes;
    cudaError_t err = to_pool ? cudaMemcpy2DAsync(pool, block_bytes, dev, layer_bytes, layer_bytes, k - j,
                                                  cudaMemcpyDeviceToHost, stream)
                              : cudaMemcpy2DAsync(dev, layer_bytes, pool, block_bytes, layer_bytes, k - j,
                                                  cudaMemcpyHostToDevice, stream);
    if (Status s = cuda_status(err, "cudaMemcpy2DAsync (one layer)"); !s.ok()) return s;
  }
  return Status();
}

// The addresses enqueue_units wants for a staging buffer holding one layer:
// run u of block j at base + u * run_bytes, where only the layer's runs exist.
std::vector<std::uint64_t> staging_units(std::byte* staging, std::size_t n, std::uint64_t layer_bytes,
                                         std::uint32_t first_unit, std::uint64_t run_bytes) {
  std::vector<std::uint64_t> out(n);
  for (std::size_t j = 0; j < n; ++j) {
    out[j] = reinterpret_cast<std::uint64_t>(staging + j * layer_bytes) - first_unit * run_bytes;
  }
  return out;
}

class LayerLoadImpl : public LayerTransfer {
 public:
  LayerLoadImpl(MoverCore& m, MappedGet mg) : m_(m), mg_(std::move(mg)) {}
  ~LayerLoadImpl() override { (void)wait(); }
  CUevent_st* event() const override { return done_; }
  std::uint32_t layers() const override { return static_cast<std::uint32_t>(layer_events_.size()); }
  CUevent_st* layer_event(std::uint32_t layer) const override {
    return layer < layer_events_.size() ? layer_events_[layer] : nullptr;
  }
  std::size_t found() const override { return found_; }
  Status wait_layer(std::uint32_t layer, CUstream_st* stream) const override {
    return wait_on(layer_event(layer), layer, layers(), stream);
  }
  Result<TransferResult> wait() override {
    std::lock_guard lock(mu_);
    if (worker_.joinable()) worker_.join();
    return result_;
  }

  // Layers [first, end) only (a rows load of one layer); all by default.
  Status start(std::size_t nkeys, std::span<const std::uint64_t> pages, cudaStream_t stream, const GpuOptions& o,
               SteadyClock::time_point t0, std::uint32_t first, std::uint32_t end) {
    t0_ = t0;
    control_ms_ = ms_since(t0);  // the lookup (begin_mapped_get)
    found_ = mg_.found;
    Engine& e = m_.engine();
    const Plan& plan = e.plan();
    const std::uint32_t per_layer = plan.layer_units;  // runs of one layer
    const std::uint64_t layer_bytes = per_layer * plan.run_bytes;
    first_ = first;
    end_ = std::min(end, plan.units / per_layer);
    if (first_ >= end_) return Status(StatusCode::kInvalidArgument, "layer " + std::to_string(first) + " out of range");
    const bool all = first_ == 0 && end_ == plan.units / per_layer;
    const std::size_t n = found_;
    std::vector<std::byte*> host(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (auto dev = m_.device_view(mg_.slots[i]); !dev) return dev.error();  // registers the region
      host[i] = mg_.slots[i].payload;
    }
    pages_.assign(pages.begin(), pages.begin() + n);
    cudaStream_t copy = nullptr, work = nullptr;
    if (Status s = m_.layer_streams(false, copy, work); !s.ok()) return s;
    if (Status s = cuda_status(cudaSetDevice(e.device()), "cudaSetDevice"); !s.ok()) return s;
    // Per layer when the blocks carry a slice per layer; else whole blocks,
    // after the last layer (gpu.h).
    slices_ = mg_.slices;
    per_layer_sums_ = slices_ == plan.units / per_layer;
    gpu_hash_ = all && o.verify_loads && o.gpu_checksums && e.can_hash() && plan.units % slices_ == 0 && n > 0;
    verify_ = o.verify_loads;
    if (gpu_hash_) {
      auto sb = m_.take_sums(n * slices_);
      if (!sb) return sb.error();
      sums_ = *sb;
    }
    auto start = events_.make();
    Status s = start ? cuda_status(cudaEventRecord(*start, stream), "cudaEventRecord") : start.error();
    if (s.ok()) s = cuda_status(cudaStreamWaitEvent(copy, *start, 0), "cudaStreamWaitEvent");
    if (s.ok()) s = cuda_status(cudaStreamWaitEvent(work, *start, 0), "cudaStreamWaitEvent");
    std::byte* staging[2] = {nullptr, nullptr};
    for (std::uint32_t k = 0; k < 2 && k < end_ - first_; ++k) {  // one layer needs one
      if (s.ok() && n > 0) {
        s = cuda_status(
            cudaMallocFromPoolAsync(reinterpret_cast<void**>(&staging[k]), n * layer_bytes, m_.staging_pool(), copy),
            "cudaMallocFromPoolAsync staging");
      }
    }
    const auto runs = adjacent_runs(host, plan.block_bytes);
    std::vector<cudaEvent_t> copied(end_, nullptr), scattered(end_, nullptr);
    for (std::uint32_t l = first_; l < end_ && s.ok(); ++l) {
      auto c = events_.make(), d = events_.make(), ready = events_.make();
      if (!c || !d || !ready) {
        s = !c ? c.error() : !d ? d.error() : ready.error();
        break;
      }
      copied[l] = *c;
      scattered[l] = *d;
      std::byte* buf = staging[(l - first_) % 2];
      // The buffer is free once layer l - 2 has been scattered out of it.
      if (l >= first_ + 2) s = cuda_status(cudaStreamWaitEvent(copy, scattered[l - 2], 0), "cudaStreamWaitEvent");
      if (s.ok() && n > 0) s = copy_layer(false, host, runs, buf, plan.block_bytes, layer_bytes, l, copy);
      if (s.ok()) s = cuda_status(cudaEventRecord(copied[l], copy), "cudaEventRecord");
      if (s.ok()) s = cuda_status(cudaStreamWaitEvent(work, copied[l], 0), "cudaStreamWaitEvent");
      if (s.ok() && n > 0) {
        s = e.enqueue_units(false, pages_, staging_units(buf, n, layer_bytes, l * per_layer, plan.run_bytes),
                            l * per_layer, (l + 1) * per_layer, work);
      }
      if (s.ok()) s = cuda_status(cudaEventRecord(scattered[l], work), "cudaEventRecord");
      if (s.ok() && gpu_hash_ && per_layer_sums_) s = e.enqueue_hash(pages_, slices_, sums_.p, work, l, l + 1);
      if (s.ok()) s = cuda_status(cudaEventRecord(*ready, work), "cudaEventRecord");
      layer_events_.push_back(*ready);
    }
    if (s.ok() && gpu_hash_ && !per_layer_sums_) s = e.enqueue_hash(pages_, slices_, sums_.p, work);
    if (s.ok()) {
      auto done = events_.make();
      if (!done) s = done.error();
      else done_ = *done;
    }
    if (s.ok()) s = cuda_status(cudaEventRecord(done_, work), "cudaEventRecord");
    for (auto* b : staging) {
      if (b != nullptr) (void)cudaFreeAsync(b, work);  // after the last scatter, which waited for every copy
    }
    if (!s.ok()) {
      cudaStreamSynchronize(copy);
      cudaStreamSynchronize(work);
      if (gpu_hash_) m_.give_sums(sums_);
      m_.client().finish_mapped_get(mg_, 0);
      return s;
    }
    enqueue_ms_ = ms_since(t0_);
    worker_ = std::thread([this, nkeys] { result_ = outcome(nkeys); });
    return Status();
  }

 private:
  // Waits for the last layer and compares every slice's checksum with the
  // table the header vouched for (begin_mapped_get checked it).
  Result<TransferResult> outcome(std::size_t nkeys) {
    TransferResult r;
    r.stats.path = "mapped";
    r.stats.control_ms = control_ms_;
    r.stats.enqueue_ms = enqueue_ms_;
    Status s = cuda_status(cudaEventSynchronize(done_), "layer-wise copy from the pool");
    r.stats.copy_done_ms = ms_since(t0_);
    std::size_t good = found_;
    if (s.ok() && gpu_hash_) {
      for (std::size_t i = 0; i < found_ * slices_; ++i) {
        if (sums_.p[i] != mg_.checksums[i]) {
          good = i / slices_;
          break;
        }
      }
    } else if (s.ok() && verify_) {
      // CPU checksums (gpu_checksums off, runs not of 64-byte multiples, or
      // pointer rows): of the pool's bytes, which the read lease keeps
      // stable. Only the slices moved, when the blocks have one per layer.
      const std::uint64_t bb = m_.engine().plan().block_bytes;
      const std::uint64_t sb = bb / slices_;
      const std::uint32_t lo = per_layer_sums_ ? first_ : 0, hi = per_layer_sums_ ? end_ : 0;
      std::vector<char> ok(found_, 0);
      r.stats.hash_ms = m_.hash_each(found_, [&](std::size_t i) {
        const std::byte* p = mg_.slots[i].payload;
        const std::uint64_t* want = mg_.checksums.data() + i * slices_;
        bool same = true;
        if (hi > lo) {
          for (std::uint32_t l = lo; l < hi && same; ++l) {
            same = pool::payload_checksum(std::span<const std::byte>(p + l * sb, sb)) == want[l];
          }
        } else {
          std::vector<std::uint64_t> table(slices_);
          (void)pool::block_checksum(std::span<const std::byte>(p, bb), slices_, table.data());
          same = std::equal(table.begin(), table.end(), want);
        }
        ok[i] = same;
      });
      good = static_cast<std::size_t>(std::find(ok.begin(), ok.end(), 0) - ok.begin());
    }
    if (gpu_hash_) m_.give_sums(sums_);
    r.stats.hash_done_ms = ms_since(t0_);
    m_.client().finish_mapped_get(mg_, s.ok() ? good : 0);
    r.stats.total_ms = ms_since(t0_);
    if (!s.ok()) return tl::unexpected(s);
    r.done = good;
    r.get.loaded = good;
    if (good < found_) {
      logger()->warn("gpu layer-wise load: block {} failed a layer checksum", good);
      r.get.stopped = Status(StatusCode::kDataLoss, "block " + std::to_string(good) + ": layer checksum mismatch");
    } else if (good < nkeys) {
      r.get.stopped = mg_.stopped;
    }
    r.stats.bytes = good * m_.engine().plan().block_bytes / m_.engine().plan().units * m_.engine().plan().layer_units *
                    (end_ - first_);
    return r;
  }

  MoverCore& m_;
  MappedGet mg_;
  std::vector<std::uint64_t> pages_;
  std::size_t found_ = 0;
  std::uint32_t first_ = 0, end_ = 0;  // the layers moved
  std::uint32_t slices_ = 1;
  bool per_layer_sums_ = false;
  bool gpu_hash_ = false;
  bool verify_ = true;
  SumBuffer sums_;
  Events events_;  // destroyed after the worker (declared before it)
  std::vector<cudaEvent_t> layer_events_;
  cudaEvent_t done_ = nullptr;
  SteadyClock::time_point t0_;
  double control_ms_ = 0;
  double enqueue_ms_ = 0;
  std::mutex mu_;
  Result<TransferResult> result_ = tl::unexpected(Status(StatusCode::kInternal, "transfer not run"));
  std::thread worker_;
};

class LayerSaveImpl : public LayerSave {
 public:
  LayerSaveImpl(MoverCore& m, MappedPut mp) : m_(m), mp_(std::move(mp)) {}
  ~LayerSaveImpl() override {
    if (!finished_) {
      // Nothing may still be copying into the slots when their space goes back.
      if (copy_ != nullptr) cudaStreamSynchronize(copy_);
      if (work_ != nullptr) cudaStreamSynchronize(work_);
      free_staging();
      if (gpu_hash_) m_.give_sums(sums_);
      m_.client().abort_mapped_put(mp_);
    }
  }
  std::uint32_t layers() const override { return layers_; }

  Status start(std::span<const std::uint64_t> pages, const GpuOptions& o) {
    t0_ = SteadyClock::now();
    Engine& e = m_.engine();
    const Plan& plan = e.plan();
    layers_ = plan.units / plan.layer_units;
    per_layer_ = plan.layer_units;
    layer_bytes_ = per_layer_ * plan.run_bytes;
    saved_.assign(layers_, false);
    for (std::size_t i = 0; i < mp_.outcomes.size(); ++i) {
      if (mp_.outcomes[i] != PutOutcome::kWritten) continue;
      if (auto dev = m_.device_view(mp_.slots[i]); !dev) return dev.error();
      idx_.push_back(i);
      wpages_.push_back(pages[i]);
      host_.push_back(mp_.slots[i].payload);
    }
    runs_ = adjacent_runs(host_, plan.block_bytes);
    slices_ = mp_.slices;
    gpu_hash_ = o.gpu_checksums && e.can_hash() && plan.units % slices_ == 0 && !idx_.empty();
    if (gpu_hash_) {
      auto sb = m_.take_sums(idx_.size() * slices_);
      if (!sb) return sb.error();
      sums_ = *sb;
    }
    if (Status s = m_.layer_streams(true, copy_, work_); !s.ok()) return s;
    if (Status s = cuda_status(cudaSetDevice(e.device()), "cudaSetDevice"); !s.ok()) return s;
    for (auto*& b : staging_) {
      if (idx_.empty()) break;
      if (Status s = cuda_status(cudaMallocFromPoolAsync(reinterpret_cast<void**>(&b), idx_.size() * layer_bytes_,
                                                         m_.staging_pool(), work_),
                                 "cudaMallocFromPoolAsync staging");
          !s.ok()) {
        return s;
      }
    }
    return Status();
  }

  Status save_layer(std::uint32_t layer, CUstream_st* stream) override {
    std::lock_guard lock(mu_);
    if (finished_) return Status(StatusCode::kFailedPrecondition, "save_layer: the save is finished");
    if (layer >= layers_ || saved_[layer]) {
      return Status(StatusCode::kInvalidArgument, "save_layer: layer " + std::to_string(layer) +
                                                      (layer >= layers_ ? " out of range" : " saved twice"));
    }
    if (!error_.ok()) return error_;
    Engine& e = m_.engine();
    const Plan& plan = e.plan();
    const std::size_t k = order_.size();  // this save's turn: staging buffer k % 2
    auto ready = events_.make(), gathered = events_.make(), copied = events_.make();
    Status s = !ready ? ready.error() : !gathered ? gathered.error() : !copied ? copied.error() : Status();
    if (s.ok()) s = cuda_status(cudaSetDevice(e.device()), "cudaSetDevice");
    if (s.ok()) s = cuda_status(cudaEventRecord(*ready, stream), "cudaEventRecord");
    if (s.ok()) s = cuda_status(cudaStreamWaitEvent(work_, *ready, 0), "cudaStreamWaitEvent");
    // The buffer is free once the save two turns back has been copied out.
    if (s.ok() && k >= 2) s = cuda_status(cudaStreamWaitEvent(work_, copied_[k - 2], 0), "cudaStreamWaitEvent");
    std::byte* buf = staging_[k % 2];
    if (s.ok() && !idx_.empty()) {
      s = e.enqueue_units(true, wpages_, staging_units(buf, idx_.size(), layer_bytes_, layer * per_layer_, plan.run_bytes),
                          layer * per_layer_, (layer + 1) * per_layer_, work_);
    }
    if (s.ok() && gpu_hash_ && slices_ == layers_) s = e.enqueue_hash(wpages_, slices_, sums_.p, work_, layer, layer + 1);
    if (s.ok()) s = cuda_status(cudaEventRecord(*gathered, work_), "cudaEventRecord");
    if (s.ok()) s = cuda_status(cudaStreamWaitEvent(copy_, *gathered, 0), "cudaStreamWaitEvent");
    if (s.ok() && !idx_.empty()) s = copy_layer(true, host_, runs_, buf, plan.block_bytes, layer_bytes_, layer, copy_);
    if (s.ok()) s = cuda_status(cudaEventRecord(*copied, copy_), "cudaEventRecord");
    if (!s.ok()) {
      error_ = s;  // the save cannot complete: finish() aborts it
      return s;
    }
    copied_.push_back(*copied);
    order_.push_back(layer);
    saved_[layer] = true;
    return Status();
  }

  Result<TransferResult> finish() override {
    std::lock_guard lock(mu_);
    if (finished_) return result_;
    finished_ = true;
    result_ = run_finish();
    return result_;
  }

 private:
  Result<TransferResult> run_finish() {
    Engine& e = m_.engine();
    Status s = error_;
    const auto missing = std::find(saved_.begin(), saved_.end(), false);
    if (s.ok() && missing != saved_.end()) {
      s = Status(StatusCode::kFailedPrecondition,
                 "layer-wise save: layer " + std::to_string(missing - saved_.begin()) + " was not saved");
    }
    // One slice per block (the namespace's blocks have no table per
    // layer): the whole pages, hashed once every layer is in.
    if (s.ok() && gpu_hash_ && slices_ != layers_) s = e.enqueue_hash(wpages_, slices_, sums_.p, work_);
    cudaEvent_t work_done = nullptr;
    if (s.ok()) {
      auto ev = events_.make();
      if (!ev) s = ev.error();
      else work_done = *ev;
    }
    if (s.ok()) s = cuda_status(cudaEventRecord(work_done, work_), "cudaEventRecord");
    Status copies = cuda_status(cudaStreamSynchronize(copy_), "layer-wise copy to the pool");
    if (s.ok() && work_done != nullptr) s = cuda_status(cudaEventSynchronize(work_done), "layer checksums");
    if (s.ok()) s = copies;
    free_staging();
    TransferResult r;
    r.stats.path = "mapped";
    r.stats.copy_done_ms = r.stats.hash_done_ms = ms_since(t0_);
    if (!s.ok()) {
      if (gpu_hash_) m_.give_sums(sums_);
      m_.client().abort_mapped_put(mp_);
      return tl::unexpected(s);
    }
    const std::uint64_t bb = e.plan().block_bytes;
    std::vector<std::uint64_t> sums(mp_.outcomes.size() * slices_, 0);
    if (gpu_hash_) {
      for (std::size_t j = 0; j < idx_.size(); ++j) {
        std::copy_n(sums_.p + j * slices_, slices_, sums.begin() + idx_[j] * slices_);
      }
    } else {  // on the mover's hash threads, from the pool's bytes
      r.stats.hash_ms = m_.hash_each(idx_.size(), [&](std::size_t j) {
        (void)pool::block_checksum(std::span<const std::byte>(host_[j], bb), slices_, sums.data() + idx_[j] * slices_);
      });
    }
    r.stats.hash_done_ms = ms_since(t0_);
    if (gpu_hash_) m_.give_sums(sums_);
    auto put = m_.client().finish_mapped_put(mp_, sums);
    r.stats.total_ms = ms_since(t0_);
    r.stats.commit_ms = r.stats.total_ms - r.stats.hash_done_ms;
    if (!put) return tl::unexpected(put.error());
    r.put = std::move(*put);
    r.done = r.put.written + r.put.deduplicated;
    r.stats.bytes = r.put.written * bb;
    return r;
  }

  void free_staging() {
    for (auto*& b : staging_) {
      if (b != nullptr) (void)cudaFreeAsync(b, work_);  // the streams are idle here
      b = nullptr;
    }
  }

  MoverCore& m_;
  MappedPut mp_;
  std::mutex mu_;
  std::uint32_t layers_ = 0, per_layer_ = 0, slices_ = 1;
  std::uint64_t layer_bytes_ = 0;
  std::vector<std::size_t> idx_;  // keys written
  std::vector<std::uint64_t> wpages_;
  std::vector<std::byte*> host_;
  std::vector<std::pair<std::size_t, std::size_t>> runs_;
  std::vector<bool> saved_;          // guarded by mu_
  std::vector<std::uint32_t> order_;  // layers in the order saved; guarded by mu_
  std::vector<cudaEvent_t> copied_;   // per save, in order; guarded by mu_
  Status error_;                     // guarded by mu_
  bool gpu_hash_ = false;
  SumBuffer sums_;
  std::byte* staging_[2] = {nullptr, nullptr};
  cudaStream_t copy_ = nullptr, work_ = nullptr;
  Events events_;
  bool finished_ = false;  // guarded by mu_
  Result<TransferResult> result_ = tl::unexpected(Status(StatusCode::kInternal, "save not finished"));
  SteadyClock::time_point t0_;
};

class WholeAsLayers : public LayerTransfer {
 public:
  WholeAsLayers(std::unique_ptr<Transfer> t, std::uint32_t layers, std::size_t found)
      : t_(std::move(t)), layers_(layers), found_(found) {}
  CUevent_st* event() const override { return t_->event(); }
  Result<TransferResult> wait() override { return t_->wait(); }
  std::uint32_t layers() const override { return layers_; }
  CUevent_st* layer_event(std::uint32_t layer) const override { return layer < layers_ ? t_->event() : nullptr; }
  Status wait_layer(std::uint32_t layer, CUstream_st* stream) const override {
    return wait_on(layer_event(layer), layer, layers_, stream);
  }
  std::size_t found() const override { return found_; }

 private:
  std::unique_ptr<Transfer> t_;
  std::uint32_t layers_;
  std::size_t found_;
};

class WholeSaveAsLayers : public LayerSave {
 public:
  WholeSaveAsLayers(SaveWhole save, std::uint32_t layers) : save_(std::move(save)), saved_(layers, false) {}
  ~WholeSaveAsLayers() override {
    // Unfinished: nothing was put (the puts start in finish()), so nothing
    // is committed and there is nothing to abort.
    if (t_) (void)t_->wait();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (ready_ != nullptr) cudaEventDestroy(ready_);
  }
  std::uint32_t layers() const override { return static_cast<std::uint32_t>(saved_.size()); }
  Status save_layer(std::uint32_t layer, CUstream_st* stream) override {
    std::lock_guard lock(mu_);
    if (finished_) return Status(StatusCode::kFailedPrecondition, "save_layer: the save is finished");
    if (layer >= saved_.size() || saved_[layer]) {
      return Status(StatusCode::kInvalidArgument, "save_layer: layer " + std::to_string(layer) +
                                                      (layer >= saved_.size() ? " out of range" : " saved twice"));
    }
    saved_[layer] = true;
    if (std::find(saved_.begin(), saved_.end(), false) != saved_.end()) return Status();
    // Every layer is written once `stream` reaches this point: the whole
    // blocks go from there, in finish(), so a save closed unfinished
    // commits nothing, as on the mapped path.
    if (Status s = cuda_status(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
      return s;
    }
    return cuda_status(cudaEventRecord(ready_, stream), "cudaEventRecord");
  }
  Result<TransferResult> finish() override {
    std::lock_guard lock(mu_);
    if (finished_) return result_;
    finished_ = true;
    if (ready_ == nullptr) {
      result_ = make_error(StatusCode::kFailedPrecondition, "layer-wise save: not every layer was saved");
      return result_;
    }
    Status s = cuda_status(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    if (s.ok()) s = cuda_status(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
    if (!s.ok()) {
      result_ = tl::unexpected(s);
      return result_;
    }
    auto t = save_(stream_);
    if (!t) {
      result_ = tl::unexpected(t.error());
      return result_;
    }
    t_ = std::move(*t);
    result_ = t_->wait();
    return result_;
  }

 private:
  SaveWhole save_;
  std::mutex mu_;
  std::vector<bool> saved_;        // guarded by mu_
  cudaEvent_t ready_ = nullptr;    // recorded once every layer was saved; guarded by mu_
  cudaStream_t stream_ = nullptr;  // the whole-block save's, waiting for ready_
  std::unique_ptr<Transfer> t_;    // guarded by mu_
  bool finished_ = false;          // guarded by mu_
  Result<TransferResult> result_ = tl::unexpected(Status(StatusCode::kInternal, "save not finished"));
};

}  // namespace

Result<std::unique_ptr<LayerTransfer>> start_layer_load(MoverCore& m, MappedGet mg, std::size_t nkeys,
                                                        std::span<const std::uint64_t> pages, cudaStream_t stream,
                                                        const GpuOptions& o, SteadyClock::time_point t0,
                                                        std::uint32_t first_layer, std::uint32_t end_layer) {
  auto t = std::make_unique<LayerLoadImpl>(m, std::move(mg));
  if (Status s = t->start(nkeys, pages, stream, o, t0, first_layer, end_layer); !s.ok()) return tl::unexpected(s);
  return std::unique_ptr<LayerTransfer>(std::move(t));
}

Result<std::unique_ptr<LayerSave>> start_layer_save(MoverCore& m, MappedPut mp, std::span<const std::uint64_t> pages,
                                                    const GpuOptions& o) {
  auto t = std::make_unique<LayerSaveImpl>(m, std::move(mp));
  if (Status s = t->start(pages, o); !s.ok()) return tl::unexpected(s);  // the destructor aborts the put
  return std::unique_ptr<LayerSave>(std::move(t));
}

std::unique_ptr<LayerTransfer> whole_as_layers(std::unique_ptr<Transfer> t, std::uint32_t layers, std::size_t found) {
  return std::make_unique<WholeAsLayers>(std::move(t), layers, found);
}

std::unique_ptr<LayerSave> whole_save_as_layers(SaveWhole save, std::uint32_t layers) {
  return std::make_unique<WholeSaveAsLayers>(std::move(save), layers);
}

}  // namespace kvpool::gpu::detail
