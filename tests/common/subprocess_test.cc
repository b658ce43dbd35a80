#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "runtime/common/subprocess.h"

using namespace kvpool;
using namespace std::chrono_literals;

namespace {

// Running, sleeping or stopped; false once the process is gone or a zombie
// (an orphan's zombie lingers until whoever adopted it reaps it).
bool alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

bool gone_within(pid_t pid, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (!alive(pid)) return true;
    std::this_thread::sleep_for(20ms);
  }
  return !alive(pid);
}

}  // namespace

TEST_CASE("a child's stdout is read line by line and its exit status reaped", "[subprocess]") {
  auto p = Subprocess::spawn({"/bin/sh", "-c", "echo ready 42; exit 3"});
  REQUIRE(p);
  auto rest = p->wait_for_line("ready ", Deadline::after(5s));
  REQUIRE(rest);
  CHECK(*rest == "42");
  auto status = p->wait(Deadline::after(5s));
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 3);
}

TEST_CASE("children die with a parent killed by a signal, so nothing outlives a crashed test", "[subprocess]") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t parent = ::fork();
  REQUIRE(parent >= 0);
  if (parent == 0) {
    // The crashing "test": spawns a long-lived child, reports its pid, waits.
    ::close(fds[0]);
    auto child = Subprocess::spawn({"/bin/sleep", "100"});
    pid_t pid = child ? child->pid() : -1;
    if (::write(fds[1], &pid, sizeof pid) != sizeof pid) _exit(1);
    ::pause();
    _exit(0);
  }
  ::close(fds[1]);
  pid_t child = -1;
  REQUIRE(::read(fds[0], &child, sizeof child) == sizeof child);
  ::close(fds[0]);
  REQUIRE(child > 0);
  CHECK(alive(child));
  ::kill(parent, SIGKILL);
  ::waitpid(parent, nullptr, 0);
  CHECK(gone_within(child, 5000ms));
  ::kill(child, SIGKILL);  // in case the check failed: leave nothing behind
}

TEST_CASE("a child spawned from a worker thread outlives that thread", "[subprocess]") {
  // PR_SET_PDEATHSIG follows the forking thread, not the process: asking for
  // it from a thread that ends would kill a child its owner still holds.
  std::optional<Subprocess> child;
  std::thread([&] {
    auto p = Subprocess::spawn({"/bin/sleep", "100"});
    if (p) child.emplace(std::move(*p));
  }).join();
  REQUIRE(child);
  std::this_thread::sleep_for(300ms);
  CHECK(alive(child->pid()));
}
