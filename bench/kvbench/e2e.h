#pragma once
// kvbench --mode e2e: the path a worker really takes. A standalone agent
// (agent plus embedded coordinator) lends --region bytes; a libkvpool Client
// in this process writes and reads blocks through it:
//   e2e-put     Client::put of --batch fresh keys: Allocate round trip,
//               payload checksum, UCX put of the payloads, then of the 64-byte
//               slot headers, Commit round trip.
//   e2e-get     Client::get of the same batches: Lookup round trip (read
//               lease), UCX get (or, over TCP, the agent puts into our
//               registered buffer) of payloads and headers, header and
//               checksum verification, lease release (asynchronous).
//   e2e-lookup  Client::lookup of each batch (no lease, no data): one
//               coordinator round trip. Its GB/s is the bytes those keys
//               cover over the time taken: the ceiling the control plane
//               alone would set. Information only.
//   checksum    XXH3-64 over each batch in this process (what put computes
//               and get verifies), single thread: the ceiling the checksum
//               alone would set. Information only.

#include <cstdint>
#include <string>
#include <vector>

#include "bench/kvbench/row.h"

namespace kvpool::bench {

struct E2eOptions {
  std::uint64_t pool = 0;  // the agent's --pool-size
  std::uint64_t block = 0;
  std::uint64_t batch = 0;
  std::uint64_t total = 0;  // bytes per op, capped at pool_fill of the pool
  double pool_fill = 0.9;   // below the coordinator's eviction watermark (0.95)
  bool verify = false;
  // false: over shared memory, before the measured puts, write and remove
  // as many blocks as will be measured, so that they land on pages this
  // process has mapped already (a long-running worker's steady state, and
  // what raw mode's prefault gives).
  // true: measure the first touch: over shared memory, the first put into
  // each 4 KiB page of the agent's region takes a page fault in this
  // process, since libkvpool does not prefault the mapping.
  bool cold = false;
  std::vector<std::string> ops;  // e2e-put, e2e-get, e2e-lookup, checksum
  std::string agent_tls;         // the agent's --tls (it serves every transport)
};

// UCX_TLS of the worker side for a --transports entry: shm = posix,cma,self;
// tcp = tcp; anything else a raw UCX_TLS value with '+' standing for ','.
std::string e2e_client_tls(const std::string& transport);

// Starts an agent, runs `options.ops` over a Client using `transport`, stops
// the agent. A failure to start comes back as one row with ok = false.
std::vector<Row> run_e2e(const std::string& transport, const E2eOptions& options);

}  // namespace kvpool::bench
