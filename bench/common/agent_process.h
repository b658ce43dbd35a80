#pragma once
// AgentProcess: a `kvpool-agent --standalone` (agent plus embedded
// coordinator) started by a benchmark on a loopback port the OS picks, and
// stopped with SIGTERM when the object goes away (SIGKILL if it lingers).

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "runtime/common/subprocess.h"

namespace kvpool::bench {

struct AgentProcessOptions {
  std::string binary;     // default: bin_dir() + "/kvpool-agent"
  std::string pool_size;  // "--pool-size" value, e.g. "2147483648" or "320MiB"
  // "--tls" value. Empty: the agent's own rule (the environment's UCX_TLS,
  // else kvpool's default), so a benchmark that must not pass its UCX_TLS on
  // names the default here explicitly.
  std::string tls;
  std::string log_level = "warn";
  std::vector<std::string> extra_args;
  std::map<std::string, std::string> env;  // environment overrides
};

class AgentProcess {
 public:
  // Starts the agent and waits (up to 120 s: a large pool is faulted in and
  // locked before the port is written) for its port file.
  // kUnavailable when it exits or does not listen in time.
  static Result<std::unique_ptr<AgentProcess>> start(const AgentProcessOptions& options);
  ~AgentProcess();  // stop()
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  // "127.0.0.1:PORT" of the embedded coordinator.
  const std::string& coordinator() const { return coordinator_; }
  std::uint16_t port() const { return port_; }
  pid_t pid() const { return process_.pid(); }
  // SIGTERM, then SIGKILL after 10 s. Idempotent.
  void stop();

 private:
  AgentProcess(Subprocess process, std::string dir) : process_(std::move(process)), dir_(std::move(dir)) {}
  Subprocess process_;
  std::string dir_;  // temporary directory holding the port file
  std::string coordinator_;
  std::uint16_t port_ = 0;
  bool stopped_ = false;
};

// CPU seconds (user + system) a process has used so far, from
// /proc/PID/stat; -1 when it cannot be read.
double process_cpu_seconds(pid_t pid);

}  // namespace kvpool::bench
