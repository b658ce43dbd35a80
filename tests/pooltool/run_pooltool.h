#pragma once
// Runs pooltool as a process, the way an operator's script does: its stdout
// collected, parsed as JSON when it is JSON, and its exit code.

#include <sys/wait.h>

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/integration/pool_fixture.h"

namespace kvpool::testing {

struct PooltoolRun {
  int rc = -1;                // -1: did not start or did not exit in time
  std::string out;            // stdout
  nlohmann::json doc;         // stdout parsed (discarded when it is not JSON)
};

inline PooltoolRun run_pooltool(const std::vector<std::string>& args,
                                std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  std::vector<std::string> argv = {bin_dir() + "/pooltool"};
  argv.insert(argv.end(), args.begin(), args.end());
  PooltoolRun r;
  auto p = Subprocess::spawn(argv);
  if (!p) return r;
  auto deadline = Deadline::after(scaled(timeout));
  for (;;) {
    auto line = p->read_line(deadline);
    if (!line) break;
    r.out += *line + "\n";
  }
  auto status = p->wait(deadline);
  if (status && WIFEXITED(*status)) r.rc = WEXITSTATUS(*status);
  r.doc = nlohmann::json::parse(r.out, nullptr, false);
  return r;
}

}  // namespace kvpool::testing
