#pragma once
// Helpers shared by tests. Tests that bound a time scale the bound with
// KVPOOL_TEST_TIME_SCALE (the sanitizer build sets 4), so a slow machine
// does not turn a bound into a flake.

#include <chrono>
#include <cstdint>

namespace kvpool::testing {

double time_scale();

template <typename Rep, typename Period>
std::chrono::milliseconds scaled(std::chrono::duration<Rep, Period> d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return std::chrono::milliseconds(static_cast<std::int64_t>(ms * time_scale()));
}

}  // namespace kvpool::testing

#include <string>

namespace kvpool::testing {

// A new secret file (mode 0600) in a private temporary directory that is
// removed when the test process exits; returns its path. Tests never read
// or write the machine's default secret path through these.
std::string make_secret_file();

// Points KVPOOL_SECRET_FILE at one make_secret_file() for the whole process
// and every process it starts, so servers and clients that discover their
// secret agree. Idempotent; returns the path.
std::string use_test_secret();

}  // namespace kvpool::testing

#include <sys/types.h>

namespace kvpool::testing {

// Sends SIGSTOP to `pid` and returns once every thread of it is stopped
// (/proc/PID/task/*/stat in state T), or false after `within`. kill()
// returns when the signal is queued, not when the process has stopped: on a
// busy VM a thread running on another CPU can still answer a message in
// between, and a test that counts on the freeze would race it.
bool freeze(pid_t pid, std::chrono::milliseconds within = std::chrono::milliseconds(5000));

}  // namespace kvpool::testing
