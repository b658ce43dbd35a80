#include "pool/pool_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "runtime/common/logging.h"
#include "runtime/common/units.h"

namespace kvpool::pool {
namespace {

// glibc 2.36 (Debian 12) does not name MADV_COLLAPSE; the value is the
// kernel's ABI (include/uapi/asm-generic/mman-common.h).
#ifdef MADV_COLLAPSE
constexpr int kMadvCollapse = MADV_COLLAPSE;
#else
constexpr int kMadvCollapse = 25;
#endif
#ifdef MADV_POPULATE_WRITE
constexpr int kMadvPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kMadvPopulateWrite = 23;
#endif

constexpr int kCapIpcLock = 14;  // linux/capability.h
constexpr std::uint64_t kDefaultPmdSize = 2u << 20;
constexpr std::string_view kThpDir = "/sys/kernel/mm/transparent_hugepage/";

static_assert(sizeof(std::size_t) >= sizeof(std::uint64_t), "region sizes are 64-bit");

std::string errno_text(int err) {
  const char* name = strerrorname_np(err);
  return std::string(strerrordesc_np(err) ? strerrordesc_np(err) : "unknown error") + " (" +
         (name ? name : std::to_string(err)) + ")";
}

// The one mapping of errno onto our codes for this module, chosen by what
// the caller should do next.
Status errno_status(int err, std::string_view what) {
  StatusCode code = StatusCode::kInternal;
  switch (err) {
    case ENOMEM:
    case ENOSPC:
    case EFAULT:  // MADV_POPULATE_WRITE: a page could not be backed (SIGBUS)
    case EHWPOISON:
      code = StatusCode::kResourceExhausted;
      break;
    case EPERM:
    case EACCES:
    case ENOENT:
      code = StatusCode::kFailedPrecondition;
      break;
    case EINVAL:
      code = StatusCode::kInvalidArgument;
      break;
    case EAGAIN:
    case EINTR:
      code = StatusCode::kUnavailable;
      break;
    default:
      break;
  }
  return Status(code, std::string(what) + ": " + errno_text(err));
}

// Reads a whole file; procfs and sysfs files report no size, so read until EOF.
Result<std::string> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return tl::unexpected(errno_status(errno, "opening " + path));
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      int err = errno;
      ::close(fd);
      return tl::unexpected(errno_status(err, "reading " + path));
    }
  }
  ::close(fd);
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

// A THP sysfs knob's value: the bracketed choice of "always [madvise] never",
// or the whole content for numeric knobs. "" when the file is missing (a
// kernel without THP).
std::string read_sysfs(std::string_view name) {
  auto text = read_file(std::string(kThpDir) + std::string(name));
  if (!text) return "";
  std::string_view v = trim(*text);
  auto open = v.find('[');
  auto close = v.find(']');
  if (open != std::string_view::npos && close != std::string_view::npos && close > open) {
    v = v.substr(open + 1, close - open - 1);
  }
  return std::string(v);
}

template <typename T>
bool parse_number(std::string_view s, T& out, int base = 10) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
  return ec == std::errc() && ptr == s.data() + s.size();
}

// Reads CapEff rather than asking "am I root": containers and systemd units
// run as root without CAP_IPC_LOCK, and non-root services may hold it.
bool has_cap_ipc_lock() {
  auto text = read_file("/proc/self/status");
  if (!text) return false;
  auto at = text->find("\nCapEff:");
  if (at == std::string::npos) return false;
  std::string_view rest = std::string_view(*text).substr(at + 8);
  rest = rest.substr(0, rest.find('\n'));
  std::uint64_t caps = 0;
  if (!parse_number(trim(rest), caps, 16)) return false;
  return (caps >> kCapIpcLock) & 1u;
}

std::string rlimit_text(rlim_t v) { return v == RLIM_INFINITY ? "unlimited" : format_size(v); }

std::string memlock_limit_text() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return "unknown (" + errno_text(errno) + ")";
  if (rl.rlim_cur == rl.rlim_max) return rlimit_text(rl.rlim_cur);
  return rlimit_text(rl.rlim_cur) + " (hard " + rlimit_text(rl.rlim_max) + ")";
}

struct MountInfo {
  std::string mount_point;
  std::string fstype;
  std::string super_options;
};

// The mount whose device is major:minor; the last match wins, since a later
// line is mounted over an earlier one at the same place.
std::optional<MountInfo> find_mount(std::uint32_t major, std::uint32_t minor) {
  auto text = read_file("/proc/self/mountinfo");
  if (!text) return std::nullopt;
  const std::string dev = std::to_string(major) + ":" + std::to_string(minor);
  std::optional<MountInfo> found;
  std::string_view all(*text);
  while (!all.empty()) {
    auto nl = all.find('\n');
    std::string_view line = all.substr(0, nl);
    all.remove_prefix(nl == std::string_view::npos ? all.size() : nl + 1);
    // "36 35 0:27 / /dev/shm rw,relatime shared:1 - tmpfs tmpfs rw,size=..."
    std::vector<std::string_view> fields;
    std::size_t pos = 0;
    while (pos < line.size()) {
      auto sp = line.find(' ', pos);
      if (sp == std::string_view::npos) sp = line.size();
      fields.push_back(line.substr(pos, sp - pos));
      pos = sp + 1;
    }
    if (fields.size() < 5 || fields[2] != dev) continue;
    auto dash = std::find(fields.begin() + 5, fields.end(), std::string_view("-"));
    if (dash == fields.end() || fields.end() - dash < 4) continue;
    found = MountInfo{std::string(fields[4]), std::string(dash[1]), std::string(dash[3])};
  }
  return found;
}

// "huge=advise" from "rw,size=1048576k,huge=advise"; "" when absent.
std::string mount_option(std::string_view options, std::string_view key) {
  while (!options.empty()) {
    auto comma = options.find(',');
    std::string_view opt = options.substr(0, comma);
    options.remove_prefix(comma == std::string_view::npos ? options.size() : comma + 1);
    if (opt.size() > key.size() && opt.substr(0, key.size()) == key && opt[key.size()] == '=') {
      return std::string(opt.substr(key.size() + 1));
    }
  }
  return "";
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out += sep;
    out += p;
  }
  return out;
}

// UCX unlinks its segment's file at once; smaps says "(deleted)".
std::string without_deleted(std::string_view path) {
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.size() >= kDeleted.size() && path.substr(path.size() - kDeleted.size()) == kDeleted) {
    path.remove_suffix(kDeleted.size());
  }
  return std::string(path);
}

std::string pointer_text(const void* p) { return fmt::format("{}", p); }

std::uint64_t page_rounded(std::uint64_t bytes) {
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// Why the region is not (wholly) in huge pages: the host settings that decide
// it for this kind of memory, then what stands in the region's own way.
std::vector<std::string> huge_page_obstacles(const SmapsTotals& totals, const std::byte* data, std::uint64_t bytes) {
  std::vector<std::string> why;
  const std::string shmem_enabled = read_sysfs("shmem_enabled");
  const std::string enabled = read_sysfs("enabled");
  if (enabled.empty() && shmem_enabled.empty()) {
    why.push_back("the kernel has no transparent huge pages (no " + std::string(kThpDir) + ")");
    return why;
  }
  if (::prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) > 0) {
    why.push_back("THP is disabled for this process (prctl PR_SET_THP_DISABLE, inherited from its parent)");
  }
  const std::string shmem_knob =
      "shmem THP is '" + shmem_enabled + "' on this host (" + std::string(kThpDir) + "shmem_enabled)";
  if (totals.inode == 0) {
    // Anonymous memory: UCX fell back from shared memory.
    if (enabled != "always" && enabled != "madvise") {
      why.push_back("THP is '" + enabled + "' on this host (" + std::string(kThpDir) + "enabled)");
    }
  } else if (auto mount = find_mount(totals.dev_major, totals.dev_minor); mount && mount->fstype == "tmpfs") {
    // A tmpfs mount (UCX's posix segments live in /dev/shm) follows its own
    // huge= option; shmem_enabled only overrides it with "force" or "deny".
    std::string huge = mount_option(mount->super_options, "huge");
    if (shmem_enabled == "deny") {
      why.push_back(shmem_knob + ", which overrides every mount");
    } else if (shmem_enabled != "force") {
      if (huge.empty() || huge == "never") {
        why.push_back("the region is " + without_deleted(totals.pathname) + " on tmpfs " + mount->mount_point +
                      ", mounted " + (huge.empty() ? "without huge= (so never)" : "with huge=never"));
        why.push_back(shmem_knob + " and only 'force' would override the mount");
      }
    }
  } else if (!mount) {
    // Not in mountinfo: the kernel's internal shmem mount (SysV segments,
    // memfd), which follows shmem_enabled.
    if (shmem_enabled != "always" && shmem_enabled != "force" && shmem_enabled != "within_size") {
      why.push_back("the region is " + without_deleted(totals.pathname) + " on the kernel's internal shmem mount and " +
                    shmem_knob);
    }
  } else {
    why.push_back("the region is a " + mount->fstype + " file (" + totals.pathname + "), not shared memory");
  }

  // A huge page is mapped by one page-table entry only where virtual address
  // and file offset agree modulo its size; the kernel aligns a new mapping
  // only when its memory can be huge at mmap time.
  std::uint64_t pmd = kDefaultPmdSize;
  if (std::uint64_t v = 0; parse_number(read_sysfs("hpage_pmd_size"), v) && v != 0) pmd = v;
  if (bytes < pmd) {
    why.push_back("the region is smaller than one huge page (" + format_size(pmd) + ")");
  } else if (reinterpret_cast<std::uintptr_t>(data) % pmd != 0) {
    why.push_back("the mapping at " + pointer_text(data) + " is not " + format_size(pmd) + "-aligned");
  }
  return why;
}

}  // namespace

SmapsTotals smaps_totals_for(std::string_view smaps_text, std::uintptr_t begin, std::uintptr_t end) {
  SmapsTotals t;
  if (begin >= end) return t;
  bool in = false;
  std::uint64_t eligible = 0;
  std::string_view rest = smaps_text;
  while (!rest.empty()) {
    auto nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    if (line.empty()) continue;

    // A mapping's header: "7f00-7f40 rw-s 00000000 00:1b 6    /dev/shm/x (deleted)".
    // Field names ("AnonHugePages:") never parse as a hex range.
    auto dash = line.find('-');
    auto space = line.find(' ');
    std::uintptr_t start = 0;
    std::uintptr_t stop = 0;
    if (dash != std::string_view::npos && space != std::string_view::npos && dash < space &&
        parse_number(line.substr(0, dash), start, 16) &&
        parse_number(line.substr(dash + 1, space - dash - 1), stop, 16)) {
      in = start < end && stop > begin;
      if (!in) continue;
      ++t.mappings;
      t.mapped_bytes += stop - start;
      if (t.mappings == 1) {
        // perms offset dev inode [pathname]
        std::string_view fields = line.substr(space + 1);
        std::string_view parts[4];
        for (auto& p : parts) {
          fields = trim(fields);
          auto sp = fields.find(' ');
          p = fields.substr(0, sp);
          fields.remove_prefix(sp == std::string_view::npos ? fields.size() : sp);
        }
        auto colon = parts[2].find(':');
        if (colon != std::string_view::npos) {
          if (!parse_number(parts[2].substr(0, colon), t.dev_major, 16)) t.dev_major = 0;
          if (!parse_number(parts[2].substr(colon + 1), t.dev_minor, 16)) t.dev_minor = 0;
        }
        if (!parse_number(parts[3], t.inode)) t.inode = 0;
        t.pathname = std::string(trim(fields));
      }
      continue;
    }
    if (!in) continue;

    // A field: "Name:   1234 kB" (sizes) or "THPeligible:    1".
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = line.substr(0, colon);
    std::string_view value = trim(line.substr(colon + 1));
    std::uint64_t scale = 1;
    if (value.size() >= 3 && value.substr(value.size() - 3) == " kB") {
      value = trim(value.substr(0, value.size() - 3));
      scale = 1024;
    }
    std::uint64_t v = 0;
    if (!parse_number(value, v)) continue;  // VmFlags and other non-numbers
    v *= scale;
    if (name == "Rss") {
      t.rss_bytes += v;
    } else if (name == "AnonHugePages" || name == "ShmemPmdMapped" || name == "FilePmdMapped") {
      t.huge_bytes += v;
    } else if (name == "Shared_Hugetlb" || name == "Private_Hugetlb") {
      // hugetlbfs pages are huge and resident, but Rss leaves them out.
      t.huge_bytes += v;
      t.rss_bytes += v;
    } else if (name == "Locked") {
      t.locked_bytes += v;
    } else if (name == "KernelPageSize") {
      if (t.kernel_page_size == 0 || v < t.kernel_page_size) t.kernel_page_size = v;
    } else if (name == "THPeligible") {
      if (v == 1) ++eligible;
    }
  }
  t.thp_eligible = t.mappings > 0 && eligible == t.mappings;
  return t;
}

std::string PoolRegionReport::to_string() const {
  std::string out = format_size(requested_bytes) + " requested, " + format_size(mapped_bytes) + " mapped, rss " +
                    format_size(rss_bytes) + ", huge pages " + format_size(huge_page_bytes);
  if (!huge_pages_note.empty()) out += " (" + huge_pages_note + ")";
  out += ", locked " + format_size(locked_bytes);
  if (!mlock_note.empty()) out += " (" + mlock_note + ")";
  out += ", kernel page " + format_size(kernel_page_size);
  return out;
}

PoolRegion::PoolRegion(transport::MemoryRegion memory, const PoolRegionOptions& options)
    : memory_(std::move(memory)), options_(options) {}

Result<PoolRegion> PoolRegion::create(transport::Transport& transport, const PoolRegionOptions& options) {
  if (options.size == 0) return make_error(StatusCode::kInvalidArgument, "a pool region of 0 bytes");
  auto memory = transport.allocate(options.size);
  if (!memory) return tl::unexpected(memory.error());
  PoolRegion region(std::move(*memory), options);

  // Order matters: huge pages first (a collapse rebuilds pages, which would
  // undo the page-table work of a prefault), then map every page writable,
  // then lock what is already resident.
  if (options.huge_pages == HugePages::kTry) region.advise_huge_pages();
  if (options.prefault) {
    if (Status s = region.prefault(); !s.ok()) return tl::unexpected(s);
  }
  if (options.lock != Lock::kOff) {
    if (Status s = region.lock(); !s.ok()) return tl::unexpected(s);
  }

  auto logger = log::get("pool");
  if (auto report = region.report()) {
    logger->info("pool region at {}: {}", pointer_text(region.data()), report->to_string());
  } else {
    logger->warn("pool region at {} of {}: cannot report what the kernel gave it: {}", pointer_text(region.data()),
                 format_size(options.size), report.error().to_string());
  }
  return region;
}

void PoolRegion::advise_huge_pages() {
  std::vector<std::string> errors;
  if (::madvise(data(), size(), MADV_HUGEPAGE) != 0) {
    errors.push_back("madvise(MADV_HUGEPAGE) failed: " + errno_text(errno));
  }
  // UCX's posix allocation writes zeros through the whole segment file
  // (write(2), 64 KiB at a time) before this madvise can mark the mapping, so
  // even where the mount allows huge pages on advice they already exist as
  // small ones, and MADV_HUGEPAGE only affects pages allocated later. MADV_COLLAPSE (Linux 6.1) rebuilds them as
  // huge pages now, where mapping and host allow; it is synchronous, so a
  // large region's creation takes longer, once.
  const auto started = std::chrono::steady_clock::now();
  const int collapsed = ::madvise(data(), size(), kMadvCollapse);
  const int err = errno;
  const auto took = std::chrono::steady_clock::now() - started;
  if (took >= std::chrono::seconds(1)) {
    log::get("pool")->info("pool region at {}: collapsing {} into huge pages took {} ms", pointer_text(data()),
                           format_size(size()), std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
  }
  if (collapsed != 0) {
    std::string hint;
    if (err == EINVAL) hint = ": the kernel predates 6.1 or the mapping cannot hold huge pages";
    if (err == EAGAIN || err == ENOMEM) hint = ": no free huge pages (memory fragmented)";
    errors.push_back("madvise(MADV_COLLAPSE) failed: " + errno_text(err) + hint);
  }
  madvise_errors_ = join(errors, "; ");
}

Status PoolRegion::prefault() {
  // MADV_POPULATE_WRITE (Linux 5.14) reports a page the host cannot back as
  // an error; touching it would raise SIGBUS instead (a full tmpfs).
  for (;;) {
    if (::madvise(data(), size(), kMadvPopulateWrite) == 0) return Status();
    int err = errno;
    if (err == EINTR) continue;
    if (err == EINVAL) break;  // an older kernel: touch every page instead
    Status s = errno_status(err, "prefaulting the " + format_size(size()) + " pool region at " + pointer_text(data()));
    log::get("pool")->error("{}", s.message());
    return s;
  }
  // Write back the byte already there: contents stay, and a write (unlike a
  // read, which may map the shared zero page) leaves the page mapped writable.
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  auto* bytes = reinterpret_cast<volatile std::byte*>(data());
  for (std::uint64_t off = 0; off < size(); off += page) bytes[off] = bytes[off];
  return Status();
}

Status PoolRegion::lock() {
  // The raw system call: AddressSanitizer's mlock() does nothing and
  // returns 0, which the sanitizer build would otherwise report as locked.
  if (::syscall(SYS_mlock, data(), size()) == 0) return Status();
  int err = errno;
  const bool cap = has_cap_ipc_lock();
  lock_failure_ = "mlock of " + format_size(size()) + " refused: " + errno_text(err) + "; RLIMIT_MEMLOCK is " +
                  memlock_limit_text() + " and CAP_IPC_LOCK is " + (cap ? "held" : "not held");
  if (!cap && (err == ENOMEM || err == EPERM)) {
    lock_failure_ +=
        " (raise the limit: ulimit -l, systemd LimitMEMLOCK=, docker --ulimit memlock=-1; or grant CAP_IPC_LOCK)";
  }
  auto logger = log::get("pool");
  if (options_.lock == Lock::kRequire) {
    logger->error("pool region at {}: {}", pointer_text(data()), lock_failure_);
    return Status(StatusCode::kFailedPrecondition, lock_failure_);
  }
  logger->warn("pool region at {}: {}; running unlocked, so the kernel may swap its pages out", pointer_text(data()),
               lock_failure_);
  return Status();
}

Result<PoolRegionReport> PoolRegion::report() const {
  if (!memory_.valid()) return make_error(StatusCode::kFailedPrecondition, "report of a moved-from pool region");
  auto smaps = read_file("/proc/self/smaps");
  if (!smaps) return tl::unexpected(smaps.error());
  const auto begin = reinterpret_cast<std::uintptr_t>(data());
  SmapsTotals totals = smaps_totals_for(*smaps, begin, begin + size());
  if (totals.mappings == 0) {
    return make_error(StatusCode::kFailedPrecondition,
                      "the pool region at " + pointer_text(data()) + " is not in /proc/self/smaps");
  }

  PoolRegionReport r;
  r.requested_bytes = options_.size;
  r.mapped_bytes = totals.mapped_bytes;
  r.rss_bytes = totals.rss_bytes;
  r.huge_page_bytes = totals.huge_bytes;
  r.locked_bytes = totals.locked_bytes;
  r.kernel_page_size = totals.kernel_page_size;
  const std::uint64_t pages = page_rounded(size());

  if (options_.huge_pages == HugePages::kOff) {
    r.huge_pages_note = "not asked for (huge_pages = off)";
  } else if (totals.huge_bytes < pages) {
    std::vector<std::string> why = huge_page_obstacles(totals, data(), pages);
    if (!madvise_errors_.empty()) why.push_back(madvise_errors_);
    if (why.empty()) why.push_back("the kernel found no free huge pages; khugepaged may still collapse them");
    r.huge_pages_note = (totals.huge_bytes == 0 ? std::string("none: ")
                                                : format_size(totals.huge_bytes) + " of " + format_size(pages) + ": ") +
                        join(why, "; ");
  }

  if (options_.lock == Lock::kOff) {
    r.mlock_note = "not asked for (lock = off)";
  } else if (totals.locked_bytes < pages) {
    r.mlock_note = !lock_failure_.empty() ? lock_failure_
                                          : "mlock succeeded, but only " + format_size(totals.locked_bytes) + " of " +
                                                format_size(pages) + " is locked now";
  }
  return r;
}

}  // namespace kvpool::pool
