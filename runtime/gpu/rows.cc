// Pointer rows (KvMover::save_rows / load_rows, and their layer-wise forms):
// the row table a call's kernels read, and the transfers that own it.
#include <algorithm>
#include <string>

#include "runtime/gpu/engine.h"
#include "runtime/gpu/mover_internal.h"

namespace kvpool::gpu::detail {
namespace {

// The inner transfer first (it waits for the copies that read the table),
// then the table back to the mover.
class RowsTransfer : public Transfer {
 public:
  RowsTransfer(MoverCore& m, std::unique_ptr<Transfer> inner, SumBuffer table)
      : m_(m), inner_(std::move(inner)), table_(table) {}
  ~RowsTransfer() override {
    inner_.reset();
    m_.give_sums(table_);
  }
  CUevent_st* event() const override { return inner_->event(); }
  Result<TransferResult> wait() override { return inner_->wait(); }

 private:
  MoverCore& m_;
  std::unique_ptr<Transfer> inner_;
  SumBuffer table_;
};

// kInvalidArgument unless rows holds `per` nonzero 16-byte aligned
// addresses for each of nkeys keys.
Status check_rows(std::size_t nkeys, std::span<const std::uint64_t> rows, std::uint32_t per) {
  if (rows.size() != nkeys * per) {
    return Status(StatusCode::kInvalidArgument, "gpu rows: " + std::to_string(rows.size()) + " addresses for " +
                                                    std::to_string(nkeys) + " keys of " + std::to_string(per) +
                                                    " runs each");
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] == 0 || rows[i] % 16 != 0) {
      return Status(StatusCode::kInvalidArgument, "gpu rows: address " + std::to_string(i % per) + " of key " +
                                                      std::to_string(i / per) + " is null or not 16-byte aligned");
    }
  }
  return Status();
}

// Key i's `per` addresses into its table row of `width`, from entry `at`.
void fill(SumBuffer table, std::size_t nkeys, std::span<const std::uint64_t> rows, std::uint32_t per,
          std::uint32_t width, std::uint32_t at) {
  for (std::size_t i = 0; i < nkeys; ++i) std::copy_n(rows.begin() + i * per, per, table.p + i * width + at);
}

std::vector<std::uint64_t> row_pages(SumBuffer table, std::size_t nkeys, std::uint32_t width) {
  std::vector<std::uint64_t> pages;
  pages.reserve(nkeys);
  for (std::size_t i = 0; i < nkeys; ++i) pages.push_back(reinterpret_cast<std::uint64_t>(table.p + i * width));
  return pages;
}

Status not_rows(const char* call) {
  return Status(StatusCode::kInvalidArgument, std::string("gpu: ") + call + " needs a mover from create_rows");
}

// A layer-wise save whose table fills in one layer per save_layer_rows; the
// inner save (mapped, or the staged stand-in) reads the rows from it, so
// the table outlives it.
class RowsLayerSave : public LayerSave {
 public:
  RowsLayerSave(MoverCore& m, SumBuffer table, std::size_t nkeys, std::unique_ptr<LayerSave> inner)
      : m_(m), table_(table), nkeys_(nkeys), inner_(std::move(inner)), saved_(inner_->layers(), false) {}
  ~RowsLayerSave() override {
    inner_.reset();
    m_.give_sums(table_);
  }
  std::uint32_t layers() const override { return inner_->layers(); }
  Status save_layer(std::uint32_t, CUstream_st*) override {
    return Status(StatusCode::kInvalidArgument, "save_layer: a save of rows takes save_layer_rows");
  }
  Status save_layer_rows(std::uint32_t layer, std::span<const std::uint64_t> rows, CUevent_st* after) override {
    std::lock_guard lock(mu_);
    const Plan& plan = m_.engine().plan();
    // Before the table changes: a layer saved twice may still be copying.
    if (layer >= saved_.size() || saved_[layer]) {
      return Status(StatusCode::kInvalidArgument, "save_layer_rows: layer " + std::to_string(layer) +
                                                      (layer >= saved_.size() ? " out of range" : " saved twice"));
    }
    if (Status s = check_rows(nkeys_, rows, plan.layer_units); !s.ok()) return s;
    cudaStream_t copy = nullptr, work = nullptr;
    if (Status s = m_.layer_streams(true, copy, work); !s.ok()) return s;
    fill(table_, nkeys_, rows, plan.layer_units, plan.units, layer * plan.layer_units);
    if (after != nullptr) {
      if (Status s = cuda_status(cudaSetDevice(m_.engine().device()), "cudaSetDevice"); !s.ok()) return s;
      if (Status s = cuda_status(cudaStreamWaitEvent(work, after, 0), "cudaStreamWaitEvent"); !s.ok()) return s;
    }
    // The layer's copies follow `after` on the save's own stream.
    Status s = inner_->save_layer(layer, work);
    if (s.ok()) saved_[layer] = true;
    return s;
  }
  Result<TransferResult> finish() override { return inner_->finish(); }

 private:
  MoverCore& m_;
  SumBuffer table_;
  std::size_t nkeys_;
  std::unique_ptr<LayerSave> inner_;
  std::mutex mu_;
  std::vector<bool> saved_;  // guarded by mu_
};

}  // namespace

Result<RowsCall> prepare_rows(MoverCore& m, bool save, std::size_t nkeys, std::span<const std::uint64_t> rows,
                              std::uint32_t units, cudaStream_t stream, cudaEvent_t after) {
  if (Status s = check_rows(nkeys, rows, units); !s.ok()) return tl::unexpected(s);
  RowsCall c;
  if (stream == nullptr) {
    cudaStream_t work = nullptr;
    if (Status s = m.layer_streams(save, c.stream, work); !s.ok()) return tl::unexpected(s);
  } else {
    c.stream = stream;
  }
  if (after != nullptr) {
    if (Status s = cuda_status(cudaSetDevice(m.engine().device()), "cudaSetDevice"); !s.ok()) return tl::unexpected(s);
    if (Status s = cuda_status(cudaStreamWaitEvent(c.stream, after, 0), "cudaStreamWaitEvent"); !s.ok()) {
      return tl::unexpected(s);
    }
  }
  const std::uint32_t width = m.engine().plan().units;
  auto table = m.take_sums(nkeys * width);
  if (!table) return tl::unexpected(table.error());
  c.table = *table;
  // A row narrower than the plan's is one layer's (load_layer_rows): its
  // addresses sit where that layer's runs are; the kernels read only those.
  fill(c.table, nkeys, rows, units, width, 0);
  c.pages = row_pages(c.table, nkeys, width);
  return c;
}

std::unique_ptr<Transfer> with_rows(MoverCore& m, std::unique_ptr<Transfer> t, SumBuffer table) {
  return std::make_unique<RowsTransfer>(m, std::move(t), table);
}

Result<std::unique_ptr<Transfer>> load_layer_rows(MoverCore& m, std::span<const Key128> keys, std::uint32_t layer,
                                                  std::span<const std::uint64_t> rows, cudaStream_t stream,
                                                  cudaEvent_t after) {
  const Plan& plan = m.engine().plan();
  if (!plan.table) return tl::unexpected(not_rows("load_layer_rows"));
  const std::uint32_t layers = plan.units / plan.layer_units;
  if (layer >= layers) {
    return make_error(StatusCode::kInvalidArgument, "load_layer_rows: layer " + std::to_string(layer) +
                                                        " out of range (" + std::to_string(layers) + " layers)");
  }
  const auto t0 = SteadyClock::now();
  const GpuOptions o = m.current_options();
  if (o.path == Path::kStaged) {
    return make_error(StatusCode::kUnimplemented,
                      "load_layer_rows: the staged path moves whole blocks (load_rows); a layer loads only from an "
                      "agent mapped here");
  }
  auto c = prepare_rows(m, false, keys.size(), rows, plan.layer_units, stream, after);
  if (!c) return tl::unexpected(c.error());
  // prepare_rows put the layer's addresses at the row's start: move them to
  // the layer's runs.
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::uint64_t* row = c->table.p + i * plan.units;
    std::copy_backward(row, row + plan.layer_units, row + (layer + 1) * plan.layer_units);
  }
  // Straight from the mapped get: a block on an agent not mapped here ends
  // the prefix (stopped = kUnimplemented), as gpu.h says.
  auto mg = m.client().begin_mapped_get(m.ns(), keys);
  if (!mg) {
    m.give_sums(c->table);
    return tl::unexpected(mg.error());
  }
  auto t = start_layer_load(m, std::move(*mg), keys.size(), c->pages, c->stream, o, t0, layer, layer + 1);
  if (!t) {
    m.give_sums(c->table);  // a failed start waited for what it had queued
    return tl::unexpected(t.error());
  }
  return with_rows(m, std::move(*t), c->table);
}

Result<std::unique_ptr<LayerSave>> begin_save_layer_rows(MoverCore& m, std::span<const Key128> keys) {
  const Plan& plan = m.engine().plan();
  if (!plan.table) return tl::unexpected(not_rows("begin_save_layer_rows"));
  auto table = m.take_sums(keys.size() * plan.units);
  if (!table) return tl::unexpected(table.error());
  std::fill_n(table->p, keys.size() * plan.units, 0);  // no row is read before its layer is saved
  auto inner = m.layer_save(keys, row_pages(*table, keys.size(), plan.units));
  if (!inner) {
    m.give_sums(*table);
    return tl::unexpected(inner.error());
  }
  return std::unique_ptr<LayerSave>(std::make_unique<RowsLayerSave>(m, *table, keys.size(), std::move(*inner)));
}

}  // namespace kvpool::gpu::detail
