#include "runtime/common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

namespace kvpool {

Result<Subprocess> Subprocess::spawn(const std::vector<std::string>& argv,
                                     const std::map<std::string, std::string>& env) {
  if (argv.empty()) return make_error(StatusCode::kInvalidArgument, "spawn: empty argv");
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return make_error(StatusCode::kInternal, "pipe: " + std::string(strerror(errno)));
  // Build everything the child needs before fork: only async-signal-safe
  // calls between fork and exec.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::map<std::string, std::string> merged;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos) merged[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : env) merged[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : merged) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  // A parent that dies by a signal runs no destructor: without this its
  // agents, coordinators and etcd live on holding ctest's output pipe, and
  // ctest waits for its per-test timeout. PR_SET_PDEATHSIG fires when the
  // forking *thread* ends, so only a fork from the main thread (which ends
  // with the process) asks for it.
  const pid_t parent = ::getpid();
  const bool tie_to_parent = ::gettid() == parent;
  pid_t pid = ::fork();
  if (pid < 0) return make_error(StatusCode::kInternal, "fork: " + std::string(strerror(errno)));
  if (pid == 0) {
    if (tie_to_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) _exit(127);  // the parent died before prctl
    }
    ::dup2(pipefd[1], STDOUT_FILENO);
    ::execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  ::close(pipefd[1]);
  return Subprocess(pid, pipefd[0]);
}

Subprocess::Subprocess(Subprocess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      out_fd_(std::exchange(other.out_fd_, -1)),
      buffer_(std::move(other.buffer_)),
      reaped_(std::exchange(other.reaped_, true)) {}

Subprocess& Subprocess::operator=(Subprocess&& other) noexcept {
  if (this != &other) {
    this->~Subprocess();
    new (this) Subprocess(std::move(other));
  }
  return *this;
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  if (out_fd_ >= 0) ::close(out_fd_);
}

Result<std::string> Subprocess::read_line(Deadline deadline) {
  for (;;) {
    auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline.remaining()).count();
    if (deadline.expired()) return make_error(StatusCode::kDeadlineExceeded, "no line from the child in time");
    pollfd p{out_fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (rc <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(out_fd_, buf, sizeof(buf));
    if (n == 0) return make_error(StatusCode::kUnavailable, "child closed its stdout");
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(StatusCode::kInternal, "read: " + std::string(strerror(errno)));
    }
    buffer_.append(buf, static_cast<std::size_t>(n));
  }
}

Result<std::string> Subprocess::wait_for_line(const std::string& prefix, Deadline deadline) {
  for (;;) {
    auto line = read_line(deadline);
    if (!line) return line;
    if (line->rfind(prefix, 0) == 0) return line->substr(prefix.size());
  }
}

void Subprocess::kill(int signal) {
  if (pid_ > 0 && !reaped_) ::kill(pid_, signal);
}

Result<int> Subprocess::wait(Deadline deadline) {
  if (reaped_) return make_error(StatusCode::kFailedPrecondition, "already reaped");
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return status;
    }
    if (r < 0 && errno != EINTR) return make_error(StatusCode::kInternal, "waitpid: " + std::string(strerror(errno)));
    if (deadline.expired()) return make_error(StatusCode::kDeadlineExceeded, "child still running");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::string bin_dir() {
  const char* d = std::getenv("KVPOOL_TEST_BIN_DIR");
  if (d != nullptr) return d;
  // Fall back to the directory of the running test binary.
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<std::size_t>(n));
  return path.substr(0, path.rfind('/'));
}

}  // namespace kvpool
