#pragma once
// Subprocess: a real process started by a test, a benchmark or the demo (an
// agent, a region owner, a worker), with its stdout readable line by line,
// killed and reaped on destruction so a failure leaves nothing running, and
// killed by the kernel when a parent spawning from its main thread dies by a
// signal (no destructor runs then).

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "runtime/common/units.h"

namespace kvpool {

class Subprocess {
 public:
  // Starts argv[0] (a path) with the environment plus `env` (overrides).
  static Result<Subprocess> spawn(const std::vector<std::string>& argv,
                                  const std::map<std::string, std::string>& env = {});
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&& other) noexcept;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  ~Subprocess();  // SIGKILL and reap if still running

  pid_t pid() const { return pid_; }
  // The next line of the child's stdout, without the newline.
  Result<std::string> read_line(Deadline deadline);
  // Reads lines until one starts with `prefix`; returns the rest of it.
  Result<std::string> wait_for_line(const std::string& prefix, Deadline deadline);
  void kill(int signal);
  // Exit status as from waitpid (use WIFEXITED etc.); kDeadlineExceeded if
  // the child is still running at the deadline.
  Result<int> wait(Deadline deadline);

 private:
  Subprocess(pid_t pid, int out_fd) : pid_(pid), out_fd_(out_fd) {}
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string buffer_;
  bool reaped_ = false;
};

// Directory of kvpool's built programs: KVPOOL_TEST_BIN_DIR when set (CTest
// sets it), else the directory of the running binary.
std::string bin_dir();

}  // namespace kvpool
