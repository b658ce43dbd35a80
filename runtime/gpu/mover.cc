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
#include <optional>
#include <thread>

#include "kvpool/gpu.h"
#include "pool/slot_header.h"
#include "runtime/common/logging.h"
#include "runtime/gpu/engine.h"
#include "runtime/gpu/mover_internal.h"
#include "runtime/gpu/mover_support.h"

namespace kvpool::gpu {
namespace {

using detail::CudaRegions;
using detail::HashPool;
using detail::logger;
using detail::ms_since;
using detail::SteadyClock;
using detail::StreamGate;
using detail::SumBuffer;
using detail::TransferImpl;

class KvMoverImpl : public KvMover, public detail::MoverCore {
 public:
  // units: 0 for a layout's mover, else the runs per block of a rows mover.
  KvMoverImpl(Client& client, NamespaceId ns, KvLayout layout, GpuOptions options, std::unique_ptr<Engine> engine,
              std::uint32_t units = 0)
      : client_(client),
        ns_(ns),
        layout_(std::move(layout)),
        units_(units),
        options_(options),
        engine_(std::move(engine)),
        hashers_(options.hash_threads) {}

  ~KvMoverImpl() override {
    starter_.reset();  // its thread may still use the streams below
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
    if (hash_stream_ != nullptr) cudaStreamDestroy(hash_stream_);
    for (auto& pair : layer_streams_) {
      for (cudaStream_t ls : pair) {
        if (ls != nullptr) {
          cudaStreamSynchronize(ls);
          cudaStreamDestroy(ls);
        }
      }
    }
    if (staging_pool_ != nullptr) cudaMemPoolDestroy(staging_pool_);  // every staging buffer was freed into it
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
    return do_save(keys, pages, stream);
  }

  Result<std::unique_ptr<Transfer>> load(std::span<const Key128> keys, std::span<const std::uint64_t> pages,
                                         CUstream_st* stream) override {
    if (Status s = check_args(keys, pages); !s.ok()) return tl::unexpected(s);
    return do_load(keys, pages, stream);
  }

  Result<std::unique_ptr<Transfer>> save_rows(std::span<const Key128> keys, std::span<const std::uint64_t> rows,
                                              CUstream_st* stream, CUevent_st* after) override {
    return rows_call(true, keys, rows, stream, after);
  }

  Result<std::unique_ptr<Transfer>> load_rows(std::span<const Key128> keys, std::span<const std::uint64_t> rows,
                                              CUstream_st* stream, CUevent_st* after) override {
    return rows_call(false, keys, rows, stream, after);
  }

  Result<std::unique_ptr<Transfer>> load_layer_rows(std::span<const Key128> keys, std::uint32_t layer,
                                                    std::span<const std::uint64_t> rows, CUstream_st* stream,
                                                    CUevent_st* after) override {
    return detail::load_layer_rows(*this, keys, layer, rows, stream, after);
  }
  Result<std::unique_ptr<LayerSave>> begin_save_layer_rows(std::span<const Key128> keys) override {
    return detail::begin_save_layer_rows(*this, keys);
  }

 private:
  // The rows become the row addresses of a table the kernels read
  // (Engine::create_rows), which goes back to the mover once the transfer
  // ended (rows.cc).
  Result<std::unique_ptr<Transfer>> rows_call(bool save, std::span<const Key128> keys,
                                              std::span<const std::uint64_t> rows, cudaStream_t stream,
                                              cudaEvent_t after) {
    if (units_ == 0) {
      return make_error(StatusCode::kInvalidArgument, "gpu: save_rows and load_rows need a mover from create_rows");
    }
    auto c = detail::prepare_rows(*this, save, keys.size(), rows, units_, stream, after);
    if (!c) return tl::unexpected(c.error());
    auto t = save ? do_save(keys, c->pages, c->stream) : do_load(keys, c->pages, c->stream);
    if (!t) {
      give_sums(c->table);  // a failed start left nothing running that reads it
      return tl::unexpected(t.error());
    }
    return detail::with_rows(*this, std::move(*t), c->table);
  }

  Result<std::unique_ptr<Transfer>> do_save(std::span<const Key128> keys, std::span<const std::uint64_t> pages,
                                            cudaStream_t stream) {
    GpuOptions o = current_options();
    const auto t0 = SteadyClock::now();
    if (o.path != Path::kStaged) {
      auto mp = client_.begin_mapped_put(ns_, keys);
      if (!mp) return tl::unexpected(mp.error());
      const bool unmapped = placed_unmapped(*mp);
      if (!(unmapped && o.path == Path::kAuto)) return save_mapped(std::move(*mp), keys, pages, stream, o, t0);
      client_.abort_mapped_put(*mp);
    }
    return start_staged(true, keys, pages, stream, o, t0);
  }

  Result<std::unique_ptr<Transfer>> do_load(std::span<const Key128> keys, std::span<const std::uint64_t> pages,
                                            cudaStream_t stream) {
    GpuOptions o = current_options();
    const auto t0 = SteadyClock::now();
    auto mg = mapped_get(keys, o);
    if (!mg) return tl::unexpected(mg.error());
    if (*mg) return load_mapped(std::move(**mg), keys, pages, stream, o, t0);
    return start_staged(false, keys, pages, stream, o, t0);
  }

  // The mapped get a load starts with, or none when the load goes staged:
  // Path::kStaged, or kAuto with a block on an agent not mapped here (mixed
  // placement: the whole batch goes staged, as a mixed save does, so the
  // load reaches as far as the pool has the prefix and event() means one
  // thing for the whole transfer).
  Result<std::optional<MappedGet>> mapped_get(std::span<const Key128> keys, const GpuOptions& o) {
    if (o.path == Path::kStaged) return std::optional<MappedGet>();
    auto mg = client_.begin_mapped_get(ns_, keys);
    if (!mg) return tl::unexpected(mg.error());
    if (mg->stopped.code() == StatusCode::kUnimplemented && o.path == Path::kAuto) {
      client_.finish_mapped_get(*mg, 0);
      return std::optional<MappedGet>();
    }
    return std::optional<MappedGet>(std::move(*mg));
  }

  // Whether a key of the put was placed on an agent not mapped here (kAuto
  // then takes the staged path for the whole batch).
  static bool placed_unmapped(const MappedPut& mp) {
    for (std::size_t i = 0; i < mp.outcomes.size(); ++i) {
      if (mp.outcomes[i] == PutOutcome::kFailed && mp.errors[i].code() == StatusCode::kUnimplemented) return true;
    }
    return false;
  }

  GpuOptions current_options() override {
    std::lock_guard lock(mu_);
    return options_;
  }

  Status check_args(std::span<const Key128> keys, std::span<const std::uint64_t> pages) const {
    if (units_ != 0) {
      return Status(StatusCode::kInvalidArgument, "gpu: a mover from create_rows moves rows (save_rows, load_rows)");
    }
    if (keys.size() != pages.size()) return Status(StatusCode::kInvalidArgument, "keys and pages differ in number");
    for (auto p : pages) {
      if (p >= engine_->plan().pages) {
        return Status(StatusCode::kInvalidArgument, "page " + std::to_string(p) + " out of range (" +
                                                        std::to_string(engine_->plan().pages) + " pages)");
      }
    }
    return Status();
  }

  Result<std::unique_ptr<LayerTransfer>> load_layers(std::span<const Key128> keys,
                                                     std::span<const std::uint64_t> pages,
                                                     CUstream_st* stream) override {
    if (Status s = check_args(keys, pages); !s.ok()) return tl::unexpected(s);
    GpuOptions o = current_options();
    const auto t0 = SteadyClock::now();
    if (detail::LayerStarter* st = detail::layer_start_on_caller() ? nullptr : starter()) {
      return detail::start_layer_load_async(*this, *st, keys, pages, stream, o, t0, layout_.num_layers);
    }
    return layer_load_now(keys, pages, stream, o, t0);
  }

  Result<std::unique_ptr<LayerTransfer>> layer_load_now(std::span<const Key128> keys,
                                                        std::span<const std::uint64_t> pages, cudaStream_t stream,
                                                        const GpuOptions& given, SteadyClock::time_point t0) override {
    GpuOptions o = given;
    auto mg = mapped_get(keys, o);
    if (!mg) return tl::unexpected(mg.error());
    if (*mg) return detail::start_layer_load(*this, std::move(**mg), keys.size(), pages, stream, o, t0);
    // Staged (gpu.h): whole blocks, every layer's event after all of them.
    auto found = client_.lookup(ns_, keys);
    if (!found) return tl::unexpected(found.error());
    o.staged_stream_order = true;
    auto t = start_staged(false, keys, pages, stream, o, t0);
    if (!t) return tl::unexpected(t.error());
    return detail::whole_as_layers(std::move(*t), layout_.num_layers, *found);
  }

  Result<std::unique_ptr<LayerSave>> begin_save_layers(std::span<const Key128> keys,
                                                       std::span<const std::uint64_t> pages) override {
    if (Status s = check_args(keys, pages); !s.ok()) return tl::unexpected(s);
    return layer_save(keys, pages);
  }

  Result<std::unique_ptr<LayerSave>> layer_save(std::span<const Key128> keys,
                                                std::span<const std::uint64_t> pages) override {
    GpuOptions o = current_options();
    if (o.path != Path::kStaged) {
      auto mp = client_.begin_mapped_put(ns_, keys);
      if (!mp) return tl::unexpected(mp.error());
      const bool unmapped = placed_unmapped(*mp);
      if (!(unmapped && o.path == Path::kAuto)) return detail::start_layer_save(*this, std::move(*mp), pages, o);
      client_.abort_mapped_put(*mp);
    }
    // Staged: every layer whole, once the last one is saved.
    return detail::whole_save_as_layers(
        [this, k = std::vector<Key128>(keys.begin(), keys.end()),
         p = std::vector<std::uint64_t>(pages.begin(), pages.end())](cudaStream_t stream) {
          return start_staged(true, k, p, stream, current_options(), SteadyClock::now());
        },
        engine_->plan().units / engine_->plan().layer_units);
  }

  detail::LayerStarter* starter() {
    std::lock_guard lock(mu_);
    if (!std::exchange(starter_tried_, true)) starter_ = detail::LayerStarter::create(engine_->device());
    return starter_.get();
  }

  // MoverCore, for the layer-wise transfers.
  Client& client() override { return client_; }
  double hash_each(std::size_t n, const std::function<void(std::size_t)>& fn) override { return hashers_.run(n, fn); }
  NamespaceId ns() const override { return ns_; }
  Engine& engine() override { return *engine_; }
  cudaMemPool_t staging_pool() override {
    std::lock_guard lock(mu_);
    return staging_pool_;
  }
  Status layer_streams(bool save, cudaStream_t& copy, cudaStream_t& work) override {
    std::lock_guard lock(mu_);
    cudaStream_t* pair = layer_streams_[save ? 1 : 0];
    if (staging_pool_ == nullptr) {
      if (Status s = cuda_status(cudaSetDevice(engine_->device()), "cudaSetDevice"); !s.ok()) return s;
      cudaMemPoolProps props{};
      props.allocType = cudaMemAllocationTypePinned;
      props.location.type = cudaMemLocationTypeDevice;
      props.location.id = engine_->device();
      if (Status s = cuda_status(cudaMemPoolCreate(&staging_pool_, &props), "cudaMemPoolCreate"); !s.ok()) return s;
      std::uint64_t keep_all = UINT64_MAX;
      if (Status s = cuda_status(cudaMemPoolSetAttribute(staging_pool_, cudaMemPoolAttrReleaseThreshold, &keep_all),
                                 "cudaMemPoolSetAttribute");
          !s.ok()) {
        return s;
      }
    }
    if (pair[0] == nullptr) {
      if (Status s = cuda_status(cudaSetDevice(engine_->device()), "cudaSetDevice"); !s.ok()) return s;
      for (int i = 0; i < 2; ++i) {
        if (Status s = cuda_status(cudaStreamCreateWithFlags(&pair[i], cudaStreamNonBlocking), "cudaStreamCreate");
            !s.ok()) {
          return s;
        }
      }
    }
    copy = pair[0];
    work = pair[1];
    return Status();
  }

  Result<SumBuffer> take_sums(std::size_t n) override { return sum_buffers_.take(n); }
  void give_sums(SumBuffer b) override { sum_buffers_.give(b); }
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
  Result<std::byte*> device_view(const MappedSlot& slot) override {
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
    // One checksum per layer slice (the slot header's table, mp.slices).
    const std::uint32_t slices = mp.slices;
    const bool gpu_hash = o.gpu_checksums && engine_->can_hash() && engine_->plan().units % slices == 0 && !idx.empty();
    SumBuffer sums;
    cudaEvent_t hashed = nullptr;
    if (s.ok() && gpu_hash) {
      auto sb = take_sums(idx.size() * slices);
      auto hs = hash_stream();
      cudaEvent_t start = nullptr;
      if (!sb) s = sb.error();
      else if (!hs) s = hs.error();
      else sums = *sb;
      if (s.ok()) s = new_event(t->aux_events, start);
      if (s.ok()) s = new_event(t->aux_events, hashed);
      if (s.ok()) s = cuda_status(cudaEventRecord(start, stream), "cudaEventRecord");
      if (s.ok()) s = cuda_status(cudaStreamWaitEvent(*hs, start, 0), "cudaStreamWaitEvent");
      if (s.ok()) s = engine_->enqueue_hash(wpages, slices, sums.p, *hs);
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
                             control_ms, enqueue_ms, gpu_hash, slices, gpu_sums = sums]() mutable {
      TransferResult r;
      r.stats.path = "mapped";
      r.stats.control_ms = control_ms;
      r.stats.enqueue_ms = enqueue_ms;
      std::vector<std::uint64_t> sums(mp.outcomes.size() * slices, 0);
      Status s;
      if (gpu_hash) {
        s = cuda_status(cudaEventSynchronize(tp->done_event), "copy to the pool");
        r.stats.copy_done_ms = ms_since(t0);
        for (std::size_t j = 0; j < idx.size(); ++j) {
          std::copy_n(gpu_sums.p + j * slices, slices, sums.begin() + idx[j] * slices);
        }
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
          (void)pool::block_checksum(std::span<const std::byte>(mp.slots[i].payload, bb), slices,
                                     sums.data() + i * slices);
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
    const std::uint32_t slices = mg.slices;
    const bool gpu_hash = o.verify_loads && o.gpu_checksums && engine_->can_hash() &&
                          engine_->plan().units % slices == 0 && mg.found > 0;
    SumBuffer sums;
    if (s.ok() && gpu_hash) {
      auto sb = take_sums(mg.found * slices);
      if (!sb) s = sb.error();
      else sums = *sb;
      if (s.ok()) s = engine_->enqueue_hash(pages.subspan(0, mg.found), slices, sums.p, stream);
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
                             nkeys = keys.size(), gpu_hash, slices, gpu_sums = sums]() mutable {
      TransferResult r;
      r.stats.path = "mapped";
      r.stats.control_ms = control_ms;
      r.stats.enqueue_ms = enqueue_ms;
      // The read lease keeps the slots stable, so their checksums are
      // checked on the pool's bytes while the GPU copies the same bytes.
      std::size_t good = mg.found;
      if (gpu_hash) {
        if (cudaEventSynchronize(tp->done_event) == cudaSuccess) {
          for (std::size_t i = 0; i < mg.found * slices; ++i) {
            if (gpu_sums.p[i] != mg.checksums[i]) {
              good = i / slices;
              break;
            }
          }
        }
        give_sums(gpu_sums);
      } else if (verify) {
        std::vector<char> bad(mg.found, 0);
        r.stats.hash_ms = hashers_.run(mg.found, [&](std::size_t i) {
          std::vector<std::uint64_t> table(slices);
          (void)pool::block_checksum(std::span<const std::byte>(mg.slots[i].payload, bb), slices, table.data());
          bad[i] = !std::equal(table.begin(), table.end(), mg.checksums.begin() + i * slices);
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
  const std::uint32_t units_;  // rows mover: runs per block; 0: a layout's mover
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
  detail::SumBuffers sum_buffers_;
  cudaStream_t hash_stream_ = nullptr;  // save checksums beside the copies; guarded by mu_ (creation)
  // Layer-wise loads' and saves' (copy, work) stream pairs; guarded by mu_ (creation).
  cudaStream_t layer_streams_[2][2] = {{nullptr, nullptr}, {nullptr, nullptr}};
  cudaMemPool_t staging_pool_ = nullptr;  // guarded by mu_ (creation)
  std::unique_ptr<detail::LayerStarter> starter_;  // guarded by mu_ (creation)
  bool starter_tried_ = false;                     // guarded by mu_
};

}  // namespace

Result<std::unique_ptr<KvMover>> KvMover::create(Client& client, NamespaceId ns, const KvLayout& layout,
                                                 const KvTensors& tensors, const GpuOptions& options) {
  auto nsb = client.block_bytes(ns);
  if (!nsb) return tl::unexpected(nsb.error());
  if (Status s = check_block_bytes(*nsb, layout); !s.ok()) return tl::unexpected(s);
  std::string why;
  if (!gpu_available(&why)) return make_error(StatusCode::kFailedPrecondition, "gpu: " + why);
  auto engine = Engine::create(layout, tensors, options.chunk_bytes, options.device);
  if (!engine) return tl::unexpected(engine.error());
  return std::unique_ptr<KvMover>(
      new KvMoverImpl(client, ns, layout, options, std::move(*engine)));
}

Result<std::unique_ptr<KvMover>> KvMover::create_rows(Client& client, NamespaceId ns, std::uint32_t units,
                                                      const GpuOptions& options, std::uint32_t layers) {
  auto nsb = client.block_bytes(ns);
  if (!nsb) return tl::unexpected(nsb.error());
  std::string why;
  if (!gpu_available(&why)) return make_error(StatusCode::kFailedPrecondition, "gpu: " + why);
  auto engine = Engine::create_rows(*nsb, units, layers, options.chunk_bytes, options.device);
  if (!engine) return tl::unexpected(engine.error());
  return std::unique_ptr<KvMover>(new KvMoverImpl(client, ns, KvLayout{}, options, std::move(*engine), units));
}

}  // namespace kvpool::gpu
