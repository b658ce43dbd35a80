#include "bench/common/agent_process.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "runtime/common/process_util.h"

namespace kvpool::bench {
namespace {

// Agents alive in this process, for the signal handler: a benchmark stopped
// with Ctrl-C or by a script's kill must not leave its agent running (the
// destructors do not run then).
std::atomic<pid_t> g_agents[16];

void on_stop_signal(int sig) {
  for (auto& a : g_agents) {
    pid_t p = a.load();
    if (p > 0) ::kill(p, SIGTERM);
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void track(pid_t pid) {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
        struct sigaction sa {};
        sa.sa_handler = on_stop_signal;
        sigemptyset(&sa.sa_mask);
        ::sigaction(sig, &sa, nullptr);
      }
    }
  });
  for (auto& a : g_agents) {
    pid_t empty = 0;
    if (a.compare_exchange_strong(empty, pid)) return;
  }
}

void untrack(pid_t pid) {
  for (auto& a : g_agents) {
    pid_t p = pid;
    if (a.compare_exchange_strong(p, 0)) return;
  }
}

}  // namespace

Result<std::unique_ptr<AgentProcess>> AgentProcess::start(const AgentProcessOptions& options) {
  char tmpl[] = "/tmp/kvpool-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return make_error(StatusCode::kInternal, "mkdtemp failed");
  const std::string dir = tmpl;
  const std::string port_file = dir + "/port";
  std::vector<std::string> argv = {options.binary.empty() ? bin_dir() + "/kvpool-agent" : options.binary,
                                   "--standalone",
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--port-file",
                                   port_file,
                                   "--pool-size",
                                   options.pool_size,
                                   "--log-level",
                                   options.log_level};
  if (!options.tls.empty()) {
    argv.push_back("--tls");
    argv.push_back(options.tls);
  }
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  auto p = Subprocess::spawn(argv, options.env);
  if (!p) {
    ::rmdir(dir.c_str());
    return tl::unexpected(p.error());
  }
  std::unique_ptr<AgentProcess> a(new AgentProcess(std::move(*p), dir));
  track(a->pid());
  for (auto deadline = Deadline::after(std::chrono::seconds(120)); a->port_ == 0;) {
    a->port_ = read_port_file(port_file, Deadline::after(std::chrono::milliseconds(0)));
    if (a->port_ != 0) break;
    auto exited = a->process_.wait(Deadline::after(std::chrono::milliseconds(20)));
    if (exited) {
      a->stopped_ = true;
      return make_error(StatusCode::kUnavailable,
                        "kvpool-agent exited (status " + std::to_string(*exited) + ") before listening");
    }
    if (deadline.expired()) return make_error(StatusCode::kUnavailable, "kvpool-agent did not listen within 120 s");
  }
  a->coordinator_ = "127.0.0.1:" + std::to_string(a->port_);
  return a;
}

void AgentProcess::stop() {
  untrack(process_.pid());
  if (!stopped_) {
    stopped_ = true;
    process_.kill(SIGTERM);
    if (!process_.wait(Deadline::after(std::chrono::seconds(10)))) {
      process_.kill(SIGKILL);
      (void)process_.wait(Deadline::after(std::chrono::seconds(5)));
    }
  }
  if (!dir_.empty()) {
    std::remove((dir_ + "/port").c_str());
    ::rmdir(dir_.c_str());
    dir_.clear();
  }
}

AgentProcess::~AgentProcess() { stop(); }

double process_cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces: fields count from its ')'.
  auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(text.substr(close + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

}  // namespace kvpool::bench
