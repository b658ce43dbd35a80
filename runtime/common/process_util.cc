#include "runtime/common/process_util.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>

namespace kvpool {

Result<std::pair<std::string, std::uint16_t>> parse_host_port(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return make_error(StatusCode::kInvalidArgument, "expected HOST:PORT, got '" + text + "'");
  }
  unsigned port = 0;
  const char* begin = text.data() + colon + 1;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, port);
  if (ec != std::errc() || ptr != end || begin == end || port > 65535) {
    return make_error(StatusCode::kInvalidArgument, "bad port in '" + text + "'");
  }
  return std::make_pair(text.substr(0, colon), static_cast<std::uint16_t>(port));
}

Status write_port_file(const std::string& path, std::uint16_t port) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return Status(StatusCode::kInvalidArgument, "port file " + tmp + ": " + std::strerror(errno));
  std::fprintf(f, "%u\n", port);
  if (std::fclose(f) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    return Status(StatusCode::kInternal, "port file " + path + ": " + std::strerror(errno));
  }
  return Status();
}

std::uint16_t read_port_file(const std::string& path, Deadline deadline) {
  for (;;) {
    if (FILE* f = std::fopen(path.c_str(), "r")) {
      unsigned port = 0;
      int n = std::fscanf(f, "%u", &port);
      std::fclose(f);
      if (n == 1 && port > 0 && port < 65536) return static_cast<std::uint16_t>(port);
    }
    if (deadline.expired()) return 0;
    ::usleep(10 * 1000);
  }
}

void block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int wait_for_stop_signal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

}  // namespace kvpool
