#pragma once
// PoolRegion: the DRAM an agent lends to the pool.
//
// One region per agent, allocated through the transport (Transport::allocate:
// POSIX shared memory that UCX allocates) so that peers on the same host map
// it and put into it one-sided over UCX's posix transport; over the network
// it is reached through the same transport's registration.
//
// At creation it asks the kernel for what makes a pool fast and predictable,
// each where the host allows it:
//  - transparent huge pages, so that a region of hundreds of GiB does not
//    cost millions of TLB entries and page-table pages;
//  - mlock, so that the pool's pages are never swapped out: a one-sided put
//    over shared memory into a swapped-out page waits for the disk, and a
//    pool whose pages can be swapped lends less RAM than it claims;
//  - prefaulting, so that the agent's own first touch of each page (TCP puts,
//    which the agent's worker carries out, owner reads, header scans) does
//    not pay a page fault.
// The kernel is free to say no to the first two (shmem THP settings, tmpfs
// mount options, RLIMIT_MEMLOCK without CAP_IPC_LOCK), and madvise returns 0
// even when nothing changes, so the region never trusts a call's return for
// what it got: report() reads /proc/self/smaps and explains every shortfall.
//
// Ownership: a PoolRegion owns its transport::MemoryRegion; destroying the
// PoolRegion unmaps the memory (which also drops its mlock). Peers that
// mapped it keep the shared-memory segment allocated until they unmap it.
//
// Teardown order: destroy the PoolRegion before the Transport it came from
// (the unmap needs the Transport's UCX context), and withdraw it first from
// anything that hands it out (Transport::stop_serving, the coordinator).
//
// Thread-safety: create() may run concurrently with other Transport calls.
// After creation, data(), size(), memory() and report() may be called from
// any thread concurrently; moving or destroying a region must not race with
// any other use of it.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kvpool/status.h"
#include "transport/memory.h"
#include "transport/transport.h"

namespace kvpool::pool {

enum class HugePages {
  // madvise(MADV_HUGEPAGE), then MADV_COLLAPSE: UCX allocates the pages
  // before we can advise, so only a collapse makes them huge where the host
  // allows it (a tmpfs mounted huge=advise). The collapse copies every page:
  // about 1.3 s per GiB on the 2-core development VM, once, at creation.
  // Report what the kernel gave.
  kTry,
  kOff,  // leave the page size to the host's defaults
};

enum class Lock {
  kTry,      // mlock; on refusal, warn with the reason and run unlocked
  kRequire,  // mlock or fail create() with kFailedPrecondition
  kOff,      // never lock (e.g. a test agent on a laptop)
};

struct PoolRegionOptions {
  // Bytes to lend; rounded up to whole pages by the kernel. Must be > 0.
  std::uint64_t size = 0;
  HugePages huge_pages = HugePages::kTry;
  Lock lock = Lock::kTry;
  // Map every page into this process at creation (MADV_POPULATE_WRITE).
  // UCX's posix allocation has already written the memory, so this builds the
  // agent's page tables, not memory; a same-host peer maps the segment in
  // its own page tables and takes its own first-touch faults. Locking maps
  // every page too (mlock faults them in).
  bool prefault = true;
};

// What the kernel really gave a region, from /proc/self/smaps at the moment
// report() ran. Byte counts come from the mappings that overlap the region:
// smaps only has per-mapping figures, and UCX maps the region as one mapping
// of its own, so these describe the region (locking may split that mapping
// into several; they are summed).
struct PoolRegionReport {
  std::uint64_t requested_bytes = 0;   // PoolRegionOptions::size
  std::uint64_t mapped_bytes = 0;      // size of the mappings covering the region
  std::uint64_t rss_bytes = 0;         // resident (Rss, plus hugetlbfs pages, which Rss omits)
  std::uint64_t huge_page_bytes = 0;   // mapped by huge pages (PMD-mapped THP or hugetlbfs)
  std::uint64_t locked_bytes = 0;      // smaps "Locked:"
  std::uint64_t kernel_page_size = 0;  // smallest KernelPageSize of those mappings
  // Why not every byte is in huge pages ("" when every byte is): the host
  // settings that decide it (tmpfs huge= mount option, shmem_enabled,
  // alignment), madvise errors, or "off by option".
  std::string huge_pages_note;
  // Why not every byte is locked ("" when every byte is): mlock's error,
  // RLIMIT_MEMLOCK, whether CAP_IPC_LOCK is held, or "off by option".
  std::string mlock_note;

  // One line for logs and pooltool: "64 MiB requested, 64 MiB mapped, rss
  // 64 MiB, huge pages 0 B (...), locked 64 MiB, kernel page 4 KiB".
  std::string to_string() const;
};

class PoolRegion {
 public:
  // Allocates options.size bytes through `transport`, then (per options)
  // advises and collapses huge pages, prefaults and mlocks them. The region
  // keeps no reference to `transport`, but must be destroyed before it.
  // Errors:
  //  - kInvalidArgument: options.size == 0.
  //  - whatever Transport::allocate returns (kResourceExhausted when the host
  //    cannot provide the memory).
  //  - kResourceExhausted: prefaulting found the host cannot back every page.
  //  - kFailedPrecondition: Lock::kRequire and mlock was refused (the message
  //    says why: errno, RLIMIT_MEMLOCK, CAP_IPC_LOCK).
  // A refused Lock::kTry or HugePages::kTry is not an error: it is logged
  // once as a warning (mlock) or info line (huge pages) and shows in report().
  static Result<PoolRegion> create(transport::Transport& transport, const PoolRegionOptions& options);

  PoolRegion(PoolRegion&&) noexcept = default;
  PoolRegion& operator=(PoolRegion&&) noexcept = default;
  PoolRegion(const PoolRegion&) = delete;
  PoolRegion& operator=(const PoolRegion&) = delete;
  ~PoolRegion() = default;  // memory_ unmaps; munmap drops the lock

  // The region's first byte, page-aligned; nullptr after a move.
  std::byte* data() const { return memory_.data(); }
  // options.size; 0 after a move.
  std::uint64_t size() const { return memory_.size(); }
  // The transport's handle, for Transport::describe and serve.
  const transport::MemoryRegion& memory() const { return memory_; }

  // Re-reads /proc/self/smaps and the host's THP settings: the kernel can
  // split, collapse or reclaim pages after create(), so nothing is cached.
  // Its cost grows with the process's mapping count; not for hot paths.
  // kFailedPrecondition on a moved-from region or when smaps does not list
  // the region; a failed read of smaps returns its errno's code.
  Result<PoolRegionReport> report() const;

 private:
  PoolRegion(transport::MemoryRegion memory, const PoolRegionOptions& options);
  void advise_huge_pages();
  Status prefault();
  Status lock();

  transport::MemoryRegion memory_;
  PoolRegionOptions options_;
  // madvise errors met at creation, for the huge-pages note ("" if none).
  std::string madvise_errors_;
  // Why mlock was refused at creation ("" when it succeeded or was off).
  std::string lock_failure_;
};

// Sums of /proc/<pid>/smaps fields over every mapping that overlaps
// [begin, end). Whole mappings are counted: smaps has no finer figures.
struct SmapsTotals {
  std::uint64_t mappings = 0;          // how many mappings overlap the range
  std::uint64_t mapped_bytes = 0;      // their sizes (end - start of each)
  std::uint64_t rss_bytes = 0;         // Rss + Shared_Hugetlb + Private_Hugetlb
  std::uint64_t huge_bytes = 0;        // AnonHugePages + ShmemPmdMapped + FilePmdMapped + *_Hugetlb
  std::uint64_t locked_bytes = 0;      // Locked
  std::uint64_t kernel_page_size = 0;  // smallest KernelPageSize; 0 when no mapping
  bool thp_eligible = false;           // every mapping says THPeligible: 1
  // The first overlapping mapping's backing: device (major:minor, as in
  // /proc/self/mountinfo), inode (0 for anonymous memory) and pathname
  // ("/dev/shm/ucx_shm_posix_1a2b (deleted)", "" for anonymous memory).
  std::uint32_t dev_major = 0;
  std::uint32_t dev_minor = 0;
  std::uint64_t inode = 0;
  std::string pathname;
};

// Parses smaps text (the format of proc(5), fields in kB). Lines it does not
// know are skipped, so newer kernels' extra fields are harmless.
SmapsTotals smaps_totals_for(std::string_view smaps_text, std::uintptr_t begin, std::uintptr_t end);

}  // namespace kvpool::pool
