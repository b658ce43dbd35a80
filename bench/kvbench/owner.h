#pragma once
// The region owner side of kvbench: allocates the region through the
// transport, fills it with a known pattern, serves it (progress thread and
// owner reads) and answers "check SEED OFFSET LENGTH" over the rendezvous
// channel so the client can prove its puts landed, independent of its reads.

#include <cstdint>
#include <string>

namespace kvpool::bench {

struct OwnerOptions {
  std::uint64_t region_bytes = 0;
  std::uint64_t seed = 0;
  bool poll_progress = false;
};

// Runs until the client closes the channel; prints "PORT <n>" on stdout once
// listening. Returns the process exit code.
int run_owner(const OwnerOptions& options);

}  // namespace kvpool::bench
