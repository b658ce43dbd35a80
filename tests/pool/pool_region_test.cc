#include "pool/pool_region.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "tests/common/test_util.h"
#include "transport/transport.h"

namespace kvpool::pool {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;
constexpr std::uint64_t kRegionBytes = 64 * kMiB;
constexpr rlim_t kChildMemlock = 8 * kMiB;

static_assert(!std::is_copy_constructible_v<PoolRegion>);
static_assert(!std::is_copy_assignable_v<PoolRegion>);
static_assert(std::is_nothrow_move_constructible_v<PoolRegion>);
static_assert(std::is_nothrow_move_assignable_v<PoolRegion>);

// Two mappings of the region (locking split it: the first part locked) and
// two outside it; fields as a 6.x kernel prints them.
constexpr std::string_view kCannedSmaps =
    "55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]\n"
    "Size:                132 kB\n"
    "KernelPageSize:        4 kB\n"
    "Rss:                  100 kB\n"
    "AnonHugePages:          0 kB\n"
    "Locked:                 0 kB\n"
    "THPeligible:    0\n"
    "VmFlags: rd wr mr mw me ac\n"
    "7f0000000000-7f0000400000 rw-s 00000000 00:1b 6                          /dev/shm/ucx_shm_posix_1a2b (deleted)\n"
    "Size:               4096 kB\n"
    "KernelPageSize:        4 kB\n"
    "MMUPageSize:           4 kB\n"
    "Rss:                4096 kB\n"
    "AnonHugePages:       2048 kB\n"
    "ShmemPmdMapped:         0 kB\n"
    "FilePmdMapped:          0 kB\n"
    "Shared_Hugetlb:         0 kB\n"
    "Private_Hugetlb:        0 kB\n"
    "Locked:             4096 kB\n"
    "THPeligible:    1\n"
    "VmFlags: rd wr sh mr mw me ms lo hg\n"
    "7f0000400000-7f0000800000 rw-s 00400000 00:1b 6                          /dev/shm/ucx_shm_posix_1a2b (deleted)\n"
    "Size:               4096 kB\n"
    "KernelPageSize:        4 kB\n"
    "Rss:                1024 kB\n"
    "AnonHugePages:          0 kB\n"
    "ShmemPmdMapped:      2048 kB\n"
    "Locked:                 0 kB\n"
    "THPeligible:    1\n"
    "VmFlags: rd wr sh mr mw me ms hg\n"
    "7f1000000000-7f1000400000 rw-s 00000000 00:10 9                          /dev/hugepages/x\n"
    "Size:               4096 kB\n"
    "KernelPageSize:     2048 kB\n"
    "Rss:                   0 kB\n"
    "Shared_Hugetlb:     4096 kB\n"
    "Private_Hugetlb:        0 kB\n"
    "Locked:                 0 kB\n"
    "THPeligible:    0\n";

bool has_cap_ipc_lock() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> 14) & 1u;
  }
  return false;
}

// The bracketed choice of a THP sysfs knob ("never" from "always ... [never]").
std::string thp_setting(const std::string& name) {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/" + name);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto open = text.find('[');
  auto close = text.find(']');
  if (open == std::string::npos || close == std::string::npos) return "";
  return text.substr(open + 1, close - open - 1);
}

std::string find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
}

std::unique_ptr<transport::Transport> make_transport() {
  auto t = transport::Transport::create({.tls = "posix,self"});
  if (!t) FAIL("creating the transport: " << t.error().to_string());
  return std::move(*t);
}

// ---- Child processes -------------------------------------------------------
// The fallbacks are only real when the kernel really refuses: the test runs
// itself again, in a child whose privileges or mounts differ, and that child
// prints "CHILD key=value" lines for the parent to check.

enum class ChildSetup {
  kNoIpcLock,  // RLIMIT_MEMLOCK 8 MiB and, through setpriv, no CAP_IPC_LOCK
  kHugeTmpfs,  // a private mount namespace with tmpfs huge=advise on /dev/shm
};

struct ChildRun {
  int status = 0;
  std::string output;
  std::map<std::string, std::string> values;
  bool skipped = false;  // the child could not set itself up (privileges)
};

constexpr int kSetupFailed = 77;

void child_fail(const char* what) {
  (void)!::write(STDOUT_FILENO, what, std::strlen(what));
  _exit(kSetupFailed);
}

ChildRun run_child(const std::string& test_name, ChildSetup setup, const std::string& setpriv) {
  ChildRun run;
  const std::string exe = self_exe();  // read before exec: setpriv's /proc/self/exe is setpriv
  REQUIRE(!exe.empty());
  // argv is built before fork: only async-signal-safe calls between fork and exec.
  std::vector<std::string> args;
  if (!setpriv.empty()) args = {setpriv, "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--"};
  args.push_back(exe);
  args.push_back(test_name);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int pipefd[2];
  REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(pipefd[1], STDOUT_FILENO);
    ::dup2(pipefd[1], STDERR_FILENO);
    if (setup == ChildSetup::kNoIpcLock) {
      rlimit rl{};
      ::getrlimit(RLIMIT_MEMLOCK, &rl);
      rlim_t lim = rl.rlim_max < kChildMemlock ? rl.rlim_max : kChildMemlock;
      rl.rlim_cur = lim;
      rl.rlim_max = lim;
      if (::setrlimit(RLIMIT_MEMLOCK, &rl) != 0) child_fail("CHILD setup_failed=setrlimit\n");
    } else {
      if (::unshare(CLONE_NEWNS) != 0) child_fail("CHILD setup_failed=unshare(CLONE_NEWNS)\n");
      // Private first, so the tmpfs below never shows in the host's namespace.
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) child_fail("CHILD setup_failed=mount\n");
      if (::mount("tmpfs", "/dev/shm", "tmpfs", 0, "huge=advise,size=256m") != 0) {
        child_fail("CHILD setup_failed=mount tmpfs huge=advise\n");
      }
    }
    ::execv(argv[0], argv.data());
    child_fail("CHILD setup_failed=exec\n");
  }
  ::close(pipefd[1]);

  auto deadline = std::chrono::steady_clock::now() + testing::scaled(std::chrono::seconds(60));
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd p{pipefd[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
    if (n <= 0 && !(n < 0 && errno == EINTR)) break;
    if (n > 0) run.output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(pipefd[0]);
  REQUIRE(::waitpid(pid, &run.status, 0) == pid);

  std::stringstream lines(run.output);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("CHILD ", 0) != 0) continue;
    auto eq = line.find('=');
    if (eq != std::string::npos) run.values[line.substr(6, eq - 6)] = line.substr(eq + 1);
  }
  run.skipped = WIFEXITED(run.status) && WEXITSTATUS(run.status) == kSetupFailed;
  // setpriv itself refused (a container without CAP_SETPCAP): our code never ran.
  if (!setpriv.empty() && run.values.empty() && run.output.rfind("setpriv:", 0) == 0) run.skipped = true;
  return run;
}

// What the child does: create a region and print what happened.
void child_body(const PoolRegionOptions& options) {
  auto say = [](const std::string& key, const std::string& value) {
    std::cout << "CHILD " << key << "=" << value << std::endl;
  };
  rlimit rl{};
  ::getrlimit(RLIMIT_MEMLOCK, &rl);
  say("cap_ipc_lock", has_cap_ipc_lock() ? "1" : "0");
  say("memlock", rl.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(rl.rlim_cur));
  auto transport = transport::Transport::create({.tls = "posix,self"});
  if (!transport) {
    say("transport_error", transport.error().to_string());
    return;
  }
  // Declared after the transport, so it is destroyed first.
  auto region = PoolRegion::create(**transport, options);
  if (!region) {
    say("ok", "0");
    say("code", std::string(code_name(region.error().code())));
    say("error", region.error().message());
    return;
  }
  auto report = region->report();
  if (!report) {
    say("report_error", report.error().to_string());
    return;
  }
  say("ok", "1");
  say("size", std::to_string(region->size()));
  say("rss", std::to_string(report->rss_bytes));
  say("locked", std::to_string(report->locked_bytes));
  say("huge", std::to_string(report->huge_page_bytes));
  say("mlock_note", report->mlock_note);
  say("huge_pages_note", report->huge_pages_note);
  say("report", report->to_string());
}

std::uint64_t u64(const std::map<std::string, std::string>& values, const std::string& key) {
  auto it = values.find(key);
  return it == values.end() ? ~0ull : std::stoull(it->second);
}

std::string value(const std::map<std::string, std::string>& values, const std::string& key) {
  auto it = values.find(key);
  return it == values.end() ? "<missing>" : it->second;
}

// Without CAP_IPC_LOCK an 8 MiB RLIMIT_MEMLOCK refuses a 64 MiB mlock. When
// this process holds the capability, only setpriv (as root) can shed it.
// Returns false (after a WARN) when the child cannot be set up here.
bool no_ipc_lock_child_possible(std::string& setpriv) {
  if (!has_cap_ipc_lock()) return true;  // already without it: the rlimit suffices
  setpriv = find_in_path("setpriv");
  if (setpriv.empty()) {
    WARN("skipped: CAP_IPC_LOCK is held and setpriv (util-linux) is missing, so it cannot be dropped");
    return false;
  }
  if (::geteuid() != 0) {
    WARN("skipped: CAP_IPC_LOCK is held but not as root, so setpriv cannot drop it from the bounding set");
    return false;
  }
  return true;
}

}  // namespace

// ---- smaps parsing ---------------------------------------------------------

TEST_CASE("smaps totals sum every mapping that overlaps the range and nothing else", "[pool][region]") {
  SECTION("both mappings of a region split by locking") {
    SmapsTotals t = smaps_totals_for(kCannedSmaps, 0x7f0000000000, 0x7f0000800000);
    CHECK(t.mappings == 2);
    CHECK(t.mapped_bytes == 8 * kMiB);
    CHECK(t.rss_bytes == 5 * kMiB);
    CHECK(t.huge_bytes == 4 * kMiB);  // AnonHugePages of one, ShmemPmdMapped of the other
    CHECK(t.locked_bytes == 4 * kMiB);
    CHECK(t.kernel_page_size == 4096);
    CHECK(t.thp_eligible);
    CHECK(t.dev_major == 0);
    CHECK(t.dev_minor == 0x1b);
    CHECK(t.inode == 6);
    CHECK(t.pathname == "/dev/shm/ucx_shm_posix_1a2b (deleted)");
  }
  SECTION("a range inside one mapping counts that whole mapping") {
    SmapsTotals t = smaps_totals_for(kCannedSmaps, 0x7f0000001000, 0x7f0000002000);
    CHECK(t.mappings == 1);
    CHECK(t.mapped_bytes == 4 * kMiB);
    CHECK(t.locked_bytes == 4 * kMiB);
    CHECK(t.huge_bytes == 2 * kMiB);
  }
  SECTION("a range that ends where a mapping starts does not count it") {
    SmapsTotals t = smaps_totals_for(kCannedSmaps, 0x7f0000400000 - 0x1000, 0x7f0000400000);
    CHECK(t.mappings == 1);
    CHECK(t.rss_bytes == 4 * kMiB);
  }
  SECTION("hugetlbfs pages count as huge and resident though Rss omits them") {
    SmapsTotals t = smaps_totals_for(kCannedSmaps, 0x7f1000000000, 0x7f1000400000);
    CHECK(t.mappings == 1);
    CHECK(t.huge_bytes == 4 * kMiB);
    CHECK(t.rss_bytes == 4 * kMiB);
    CHECK(t.kernel_page_size == 2 * kMiB);
    CHECK_FALSE(t.thp_eligible);
  }
  SECTION("a range no mapping covers gives zeros") {
    SmapsTotals t = smaps_totals_for(kCannedSmaps, 0x1000, 0x2000);
    CHECK(t.mappings == 0);
    CHECK(t.mapped_bytes == 0);
    CHECK(t.kernel_page_size == 0);
    CHECK_FALSE(t.thp_eligible);
    CHECK(smaps_totals_for(kCannedSmaps, 0x7f0000000000, 0x7f0000000000).mappings == 0);
  }
  SECTION("the anonymous heap mapping has inode 0 and its name as path") {
    SmapsTotals t = smaps_totals_for(kCannedSmaps, 0x55d0c0000000, 0x55d0c0001000);
    CHECK(t.inode == 0);
    CHECK(t.pathname == "[heap]");
    CHECK(t.rss_bytes == 100 * 1024);
  }
}

TEST_CASE("smaps totals tolerate malformed and truncated text", "[pool][region]") {
  std::string_view text =
      "garbage line\n"
      "7f0000000000-7f0000001000 rw-s 00000000 00:1b 6\n"
      "Rss:     4 kB\n"
      "Locked:  not-a-number kB\n"
      "KernelPageSize:";
  SmapsTotals t = smaps_totals_for(text, 0x7f0000000000, 0x7f0000001000);
  CHECK(t.mappings == 1);
  CHECK(t.rss_bytes == 4096);
  CHECK(t.locked_bytes == 0);
  CHECK(t.pathname.empty());
  CHECK(smaps_totals_for("", 0, 1).mappings == 0);
}

// ---- Real regions ----------------------------------------------------------

TEST_CASE("a region of 0 bytes is rejected as an invalid argument", "[pool][region]") {
  auto transport = make_transport();
  auto region = PoolRegion::create(*transport, {.size = 0});
  REQUIRE_FALSE(region);
  CHECK(region.error().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a prefaulted region is resident and its report explains what it lacks", "[pool][region]") {
  auto transport = make_transport();
  auto region = PoolRegion::create(*transport, {.size = kRegionBytes});
  REQUIRE(region);
  REQUIRE(region->size() == kRegionBytes);
  REQUIRE(region->data() != nullptr);
  CHECK(region->memory().ucx_allocated());
  // Every byte is usable.
  region->data()[0] = std::byte{0x5a};
  region->data()[kRegionBytes - 1] = std::byte{0xa5};
  CHECK(region->data()[0] == std::byte{0x5a});
  CHECK(region->data()[kRegionBytes - 1] == std::byte{0xa5});

  auto report = region->report();
  REQUIRE(report);
  INFO(report->to_string());
  CHECK(report->requested_bytes == kRegionBytes);
  CHECK(report->mapped_bytes >= kRegionBytes);
  CHECK(report->rss_bytes >= kRegionBytes);
  CHECK(report->kernel_page_size >= 4096);

  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_MEMLOCK, &rl) == 0);
  if (has_cap_ipc_lock() || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= kRegionBytes) {
    CHECK(report->locked_bytes == kRegionBytes);
    CHECK(report->mlock_note.empty());
  } else {
    CHECK(report->locked_bytes < kRegionBytes);
    CHECK_THAT(report->mlock_note, Catch::Contains("RLIMIT_MEMLOCK"));
  }

  if (report->huge_page_bytes < kRegionBytes) {
    REQUIRE_FALSE(report->huge_pages_note.empty());
    // UCX's segment is shared memory, so the note names the host's shmem setting.
    const std::string shmem = thp_setting("shmem_enabled");
    if (!shmem.empty() && shmem != "force") {
      CHECK_THAT(report->huge_pages_note, Catch::Contains("shmem THP is '" + shmem + "'"));
    }
  } else {
    CHECK(report->huge_pages_note.empty());
  }
  CHECK_THAT(report->to_string(), Catch::Contains("64 MiB requested"));
}

TEST_CASE("a region without prefault, lock or huge pages is not resident and says so", "[pool][region]") {
  auto transport = make_transport();
  auto region = PoolRegion::create(
      *transport, {.size = kRegionBytes, .huge_pages = HugePages::kOff, .lock = Lock::kOff, .prefault = false});
  REQUIRE(region);
  auto report = region->report();
  REQUIRE(report);
  INFO(report->to_string());
  // UCX writes the segment's pages through the file but maps none of them.
  CHECK(report->rss_bytes < kRegionBytes);
  CHECK(report->locked_bytes == 0);
  CHECK_THAT(report->mlock_note, Catch::Contains("lock = off"));
  CHECK_THAT(report->huge_pages_note, Catch::Contains("huge_pages = off"));
}

TEST_CASE("a moved region keeps its memory and the moved-from one reports failed_precondition", "[pool][region]") {
  auto transport = make_transport();
  auto region = PoolRegion::create(*transport, {.size = 4 * kMiB, .lock = Lock::kOff});
  REQUIRE(region);
  std::byte* data = region->data();
  data[123] = std::byte{7};
  PoolRegion moved = std::move(*region);
  CHECK(moved.data() == data);
  CHECK(moved.data()[123] == std::byte{7});
  CHECK(region->data() == nullptr);
  CHECK(region->size() == 0);
  auto gone = region->report();
  REQUIRE_FALSE(gone);
  CHECK(gone.error().code() == StatusCode::kFailedPrecondition);
  auto report = moved.report();
  REQUIRE(report);
  CHECK(report->rss_bytes >= 4 * kMiB);
}

TEST_CASE("without CAP_IPC_LOCK and over RLIMIT_MEMLOCK, lock=try runs unlocked and says why", "[pool][region]") {
  std::string setpriv;
  if (!no_ipc_lock_child_possible(setpriv)) return;
  ChildRun run = run_child("pool region child lock try", ChildSetup::kNoIpcLock, setpriv);
  INFO(run.output);
  if (run.skipped) {
    WARN("skipped: the child could not drop CAP_IPC_LOCK or lower RLIMIT_MEMLOCK: " << run.output);
    return;
  }
  REQUIRE(WIFEXITED(run.status));
  CHECK(WEXITSTATUS(run.status) == 0);
  REQUIRE(value(run.values, "cap_ipc_lock") == "0");  // else the test proves nothing
  REQUIRE(u64(run.values, "memlock") <= kChildMemlock);
  REQUIRE(value(run.values, "ok") == "1");
  CHECK(u64(run.values, "size") == kRegionBytes);
  CHECK(u64(run.values, "locked") < kRegionBytes);
  CHECK(u64(run.values, "rss") >= kRegionBytes);  // prefault still maps every page
  const std::string note = value(run.values, "mlock_note");
  CHECK_THAT(note, Catch::Contains("RLIMIT_MEMLOCK is 8 MiB"));
  CHECK_THAT(note, Catch::Contains("CAP_IPC_LOCK is not held"));
}

TEST_CASE("without CAP_IPC_LOCK and over RLIMIT_MEMLOCK, lock=require fails as failed_precondition", "[pool][region]") {
  std::string setpriv;
  if (!no_ipc_lock_child_possible(setpriv)) return;
  ChildRun run = run_child("pool region child lock require", ChildSetup::kNoIpcLock, setpriv);
  INFO(run.output);
  if (run.skipped) {
    WARN("skipped: the child could not drop CAP_IPC_LOCK or lower RLIMIT_MEMLOCK: " << run.output);
    return;
  }
  REQUIRE(WIFEXITED(run.status));
  CHECK(WEXITSTATUS(run.status) == 0);
  REQUIRE(value(run.values, "cap_ipc_lock") == "0");
  REQUIRE(value(run.values, "ok") == "0");
  CHECK(value(run.values, "code") == "failed_precondition");
  CHECK_THAT(value(run.values, "error"), Catch::Contains("RLIMIT_MEMLOCK"));
}

TEST_CASE("a region gets huge pages where its tmpfs mount allows them on advice", "[pool][region]") {
  if (thp_setting("shmem_enabled").empty()) {
    WARN("skipped: this kernel has no transparent huge pages");
    return;
  }
  if (thp_setting("shmem_enabled") == "deny") {
    WARN("skipped: shmem THP is 'deny' on this host, which no mount can override");
    return;
  }
  if (::geteuid() != 0) {
    WARN("skipped: mounting a tmpfs with huge=advise in a private mount namespace needs root");
    return;
  }
  ChildRun run = run_child("pool region child huge", ChildSetup::kHugeTmpfs, "");
  INFO(run.output);
  if (run.skipped) {
    WARN("skipped: the child could not mount a huge=advise tmpfs: " << value(run.values, "setup_failed"));
    return;
  }
  REQUIRE(WIFEXITED(run.status));
  CHECK(WEXITSTATUS(run.status) == 0);
  REQUIRE(value(run.values, "ok") == "1");
  const std::string note = value(run.values, "huge_pages_note");
  if (u64(run.values, "huge") < kRegionBytes && note.find("no free huge pages") != std::string::npos) {
    WARN("the host had no free huge pages (fragmented memory): " << note);
    return;
  }
  CHECK(u64(run.values, "huge") == kRegionBytes);
  CHECK(note.empty());
}

// Run only as children of the tests above (hidden: "[.child]").
TEST_CASE("pool region child lock try", "[.child]") { child_body({.size = kRegionBytes, .lock = Lock::kTry}); }
TEST_CASE("pool region child lock require", "[.child]") { child_body({.size = kRegionBytes, .lock = Lock::kRequire}); }
TEST_CASE("pool region child huge", "[.child]") { child_body({.size = kRegionBytes, .lock = Lock::kOff}); }

}  // namespace kvpool::pool
