// Pointer rows (KvMover::save_rows / load_rows): the row table a call's
// kernels read, and the transfer that owns it.
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

}  // namespace

Result<RowsCall> prepare_rows(MoverCore& m, bool save, std::size_t nkeys, std::span<const std::uint64_t> rows,
                              std::uint32_t units, cudaStream_t stream, cudaEvent_t after) {
  if (rows.size() != nkeys * units) {
    return make_error(StatusCode::kInvalidArgument, "gpu rows: " + std::to_string(rows.size()) + " addresses for " +
                                                        std::to_string(nkeys) + " keys of " + std::to_string(units) +
                                                        " runs each");
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] == 0 || rows[i] % 16 != 0) {
      return make_error(StatusCode::kInvalidArgument, "gpu rows: address " + std::to_string(i % units) + " of key " +
                                                          std::to_string(i / units) +
                                                          " is null or not 16-byte aligned");
    }
  }
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
  auto table = m.take_sums(rows.size());
  if (!table) return tl::unexpected(table.error());
  c.table = *table;
  std::copy(rows.begin(), rows.end(), c.table.p);
  c.pages.reserve(nkeys);
  for (std::size_t i = 0; i < nkeys; ++i) c.pages.push_back(reinterpret_cast<std::uint64_t>(c.table.p + i * units));
  return c;
}

std::unique_ptr<Transfer> with_rows(MoverCore& m, std::unique_ptr<Transfer> t, SumBuffer table) {
  return std::make_unique<RowsTransfer>(m, std::move(t), table);
}

}  // namespace kvpool::gpu::detail
