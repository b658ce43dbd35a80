#pragma once
// How pooltool prints: aligned text tables for people, JSON for scripts, and
// the exit codes both rely on.

#include <cstdint>
#include <string>
#include <vector>

#include "kvpool/status.h"

namespace kvpool::pooltool {

// Exit codes (documented in `pooltool --help`).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;       // the operation ran and failed (or doctor found a failing check)
inline constexpr int kExitUsage = 2;        // bad command line: unknown command, bad key, missing argument
inline constexpr int kExitUnreachable = 3;  // the coordinator could not be reached (or went away mid-call)

// kExitUnreachable for kUnavailable and kDeadlineExceeded, else kExitFailed.
int exit_code_for(const Status& status);

// Columns padded to their widest cell, two spaces apart; a header row first.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// "2.0 GiB"-style sizes for tables (exact bytes go to JSON).
std::string human_bytes(std::uint64_t bytes);
// "3m12s", "1.2s", "250ms".
std::string human_duration_ms(std::uint64_t ms);
std::string percent(double fraction);

}  // namespace kvpool::pooltool
