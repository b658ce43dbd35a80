#pragma once
// What kvpool's programs share in main(): host:port parsing, the port file
// tests and scripts read to use port 0 safely, and waiting for SIGINT/SIGTERM.

#include <cstdint>
#include <string>
#include <utility>

#include "kvpool/status.h"
#include "runtime/common/units.h"

namespace kvpool {

// "127.0.0.1:7400" -> ("127.0.0.1", 7400). Port 0 allowed (the OS picks).
Result<std::pair<std::string, std::uint16_t>> parse_host_port(const std::string& text);

// Writes the port to `path` atomically (a temporary file renamed), so a
// reader never sees a partial number.
Status write_port_file(const std::string& path, std::uint16_t port);
// Waits for a port file to hold a port; 0 when the deadline passes first.
std::uint16_t read_port_file(const std::string& path, Deadline deadline);

// Blocks SIGINT and SIGTERM in this thread (call before starting threads, so
// they inherit the mask) and returns; wait_for_stop_signal() then returns the
// signal that arrived.
void block_stop_signals();
int wait_for_stop_signal();

}  // namespace kvpool
