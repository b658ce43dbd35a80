#pragma once
// MemoryRegion: memory that UCX can move bytes to and from one-sided.
//
// Two kinds, made by Transport: allocate() has UCX allocate the memory as
// POSIX shared memory, so a peer on the same host maps it and reaches it with
// plain loads and stores (UCX's posix transport, DESIGN.md: 12 GB/s against
// 5-6 for sysv and 1.9 for memory the owner mmaps itself); register_memory()
// registers memory the caller owns (a worker's buffer), reachable one-sided
// over the network transports and by cma on the same host.
//
// Move-only; the destructor unmaps (ucp_mem_unmap). Destroy every region
// before its Transport. Thread-safe for concurrent reads of its accessors.

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvpool/status.h"

struct ucp_context;
struct ucp_mem;

namespace kvpool::transport {

// What a region's owner publishes so that a peer can reach it: its worker's
// address, the packed remote key, where the region starts in the owner's
// address space and how long it is, and the host it lives on (peers on the
// same host use shared memory).
struct RegionInfo {
  std::string worker_address;
  std::string packed_rkey;
  std::uint64_t base = 0;
  std::uint64_t length = 0;
  std::string host_id;
};

class MemoryRegion {
 public:
  MemoryRegion() = default;
  MemoryRegion(MemoryRegion&& other) noexcept;
  MemoryRegion& operator=(MemoryRegion&& other) noexcept;
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;
  ~MemoryRegion();

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool valid() const { return memh_ != nullptr; }
  // True when UCX allocated the memory (allocate()), false when registered.
  bool ucx_allocated() const { return allocated_; }

  // The remote key a peer unpacks to reach this region (ucp_rkey_pack).
  Result<std::string> pack_rkey() const;

  ucp_mem* handle() const { return memh_; }

 private:
  friend class Transport;
  MemoryRegion(ucp_context* ctx, ucp_mem* memh, std::byte* data, std::size_t size, bool allocated)
      : ctx_(ctx), memh_(memh), data_(data), size_(size), allocated_(allocated) {}
  void reset();

  ucp_context* ctx_ = nullptr;
  ucp_mem* memh_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool allocated_ = false;
};

}  // namespace kvpool::transport
