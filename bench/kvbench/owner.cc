#include "bench/kvbench/owner.h"

#include <cstdio>
#include <sstream>

#include "runtime/common/pattern.h"
#include "transport/rendezvous.h"
#include "transport/transport.h"

namespace kvpool::bench {

using namespace kvpool::transport;

int run_owner(const OwnerOptions& options) {
  auto t = Transport::create({.tls = "", .serve_owner_reads = true});
  if (!t) {
    std::fprintf(stderr, "kvbench owner: %s\n", t.error().to_string().c_str());
    return 1;
  }
  auto region = (*t)->allocate(options.region_bytes);
  if (!region) {
    std::fprintf(stderr, "kvbench owner: %s\n", region.error().to_string().c_str());
    return 1;
  }
  // Writing the pattern also faults in every page before the clock starts.
  fill_pattern(region->data(), 0, region->size(), options.seed);
  Status s = (*t)->serve(*region);
  if (s.ok()) s = (*t)->start_progress_thread(options.poll_progress ? ProgressMode::kPoll : ProgressMode::kEvent);
  auto info = (*t)->describe(*region);
  auto listener = Listener::listen("127.0.0.1", 0);
  if (!s.ok() || !info || !listener) {
    std::fprintf(stderr, "kvbench owner: cannot serve the region\n");
    return 1;
  }
  std::printf("PORT %u\n", listener->port());
  std::fflush(stdout);
  auto channel = listener->accept(Deadline::after(std::chrono::seconds(60)));
  if (!channel || !channel->send(encode_region_info(*info)).ok()) return 1;
  for (;;) {
    auto msg = channel->receive(Deadline::after(std::chrono::hours(24)));
    if (!msg) break;
    std::istringstream in(*msg);
    std::string cmd;
    in >> cmd;
    if (cmd != "check") {
      (void)channel->send("ERR unknown command");
      continue;
    }
    std::uint64_t seed = 0, off = 0, len = 0;
    in >> seed >> off >> len;
    if (!in || off > region->size() || len > region->size() - off) {
      (void)channel->send("ERR range");
      continue;
    }
    (void)channel->send("OK " + std::to_string(pattern_mismatches(region->data() + off, off, len, seed)));
  }
  (*t)->stop_progress_thread();
  return 0;
}

}  // namespace kvpool::bench
