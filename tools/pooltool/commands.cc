#include "tools/pooltool/commands.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "tools/pooltool/output.h"

namespace kvpool::pooltool {

void print_json(const json& j) { std::cout << j.dump(2) << "\n"; }

int fail(const Globals& g, const Status& s, int code) {
  std::fprintf(stderr, "pooltool: %s\n", s.to_string().c_str());
  if (g.json) print_json({{"error", {{"code", std::string(code_name(s.code()))}, {"message", s.message()}}}});
  return code;
}
int fail(const Globals& g, const Status& s) { return fail(g, s, exit_code_for(s)); }
int fail_connect(const Globals& g, const Status& s) {
  return fail(g, s, s.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitUnreachable);
}

Result<std::unique_ptr<AdminClient>> connect(const Globals& g) {
  AdminOptions o;
  o.coordinator = g.coordinator;
  o.timeout = g.timeout_ms;
  o.secret_file = g.secret_file;
  auto c = AdminClient::connect(o);
  if (!c && c.error().code() != StatusCode::kInvalidArgument) {
    // Whatever the reason (refused, timed out, refused hello), the
    // coordinator is not reachable as asked.
    return make_error(StatusCode::kUnavailable,
                      "cannot reach the coordinator at " + g.coordinator + ": " + c.error().message());
  }
  return c;
}

void progress_bar(std::uint64_t done, std::uint64_t total, const std::string& label) {
  const int width = 40;
  const int filled = total == 0 ? width : static_cast<int>(width * std::min(done, total) / total);
  std::fprintf(stderr, "\r[%s%s] %llu/%llu %s", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), static_cast<unsigned long long>(done),
               static_cast<unsigned long long>(total), label.c_str());
  std::fflush(stderr);
}

}  // namespace kvpool::pooltool
