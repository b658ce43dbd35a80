#include "transport/memory.h"

#include <utility>

#include "runtime/common/logging.h"
#include "transport/ucx_util.h"

namespace kvpool::transport {

MemoryRegion::MemoryRegion(MemoryRegion&& other) noexcept
    : ctx_(std::exchange(other.ctx_, nullptr)),
      memh_(std::exchange(other.memh_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      allocated_(std::exchange(other.allocated_, false)) {}

MemoryRegion& MemoryRegion::operator=(MemoryRegion&& other) noexcept {
  if (this != &other) {
    reset();
    ctx_ = std::exchange(other.ctx_, nullptr);
    memh_ = std::exchange(other.memh_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    allocated_ = std::exchange(other.allocated_, false);
  }
  return *this;
}

MemoryRegion::~MemoryRegion() { reset(); }

void MemoryRegion::reset() {
  if (memh_ == nullptr) return;
  ucs_status_t st = ucp_mem_unmap(ctx_, memh_);
  if (st != UCS_OK) {
    log::get("transport")->warn("unmapping region of {} bytes at {}: {}", size_, static_cast<void*>(data_),
                                ucs_status_string(st));
  }
  memh_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

Result<std::string> MemoryRegion::pack_rkey() const {
  if (memh_ == nullptr) return make_error(StatusCode::kFailedPrecondition, "pack_rkey on an empty region");
  void* buf = nullptr;
  size_t len = 0;
  ucs_status_t st = ucp_rkey_pack(ctx_, memh_, &buf, &len);
  if (st != UCS_OK) return tl::unexpected(to_status(st, "packing the remote key of a region"));
  std::string out(static_cast<const char*>(buf), len);
  ucp_rkey_buffer_release(buf);
  return out;
}

}  // namespace kvpool::transport
