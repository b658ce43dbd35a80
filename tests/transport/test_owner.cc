// A region owner for the transport tests: allocates a region through the
// transport, fills it with a pattern, serves it (progress thread, owner
// reads), publishes its RegionInfo over a rendezvous channel and answers
// "check SEED OFFSET LENGTH" (how many bytes differ from the pattern) so a
// client can prove its puts landed, independent of its own reads.
//
// usage: transport_test_owner SIZE_BYTES SEED [poll]
// prints "PORT <n>" once listening; exits when the channel closes.

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "tests/common/pattern.h"
#include "transport/rendezvous.h"
#include "transport/transport.h"

using namespace kvpool;
using namespace kvpool::transport;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SIZE_BYTES SEED [poll]\n", argv[0]);
    return 2;
  }
  std::uint64_t size = std::strtoull(argv[1], nullptr, 10);
  std::uint64_t seed = std::strtoull(argv[2], nullptr, 10);
  bool poll_mode = argc > 3 && std::string(argv[3]) == "poll";

  auto t = Transport::create({.tls = "", .serve_owner_reads = true});
  if (!t) {
    std::fprintf(stderr, "owner: %s\n", t.error().to_string().c_str());
    return 1;
  }
  auto region = (*t)->allocate(size);
  if (!region) {
    std::fprintf(stderr, "owner: %s\n", region.error().to_string().c_str());
    return 1;
  }
  testing::fill_pattern(region->data(), 0, region->size(), seed);
  (*t)->serve(*region);
  if (Status s = (*t)->start_progress_thread(poll_mode ? ProgressMode::kPoll : ProgressMode::kEvent); !s.ok()) {
    std::fprintf(stderr, "owner: %s\n", s.to_string().c_str());
    return 1;
  }
  auto info = (*t)->describe(*region);
  auto listener = Listener::listen("127.0.0.1", 0);
  if (!info || !listener) {
    std::fprintf(stderr, "owner: cannot publish the region\n");
    return 1;
  }
  std::printf("PORT %u\n", listener->port());
  std::fflush(stdout);
  auto channel = listener->accept(Deadline::after(std::chrono::seconds(60)));
  if (!channel || !channel->send(encode_region_info(*info)).ok()) return 1;
  for (;;) {
    auto msg = channel->receive(Deadline::after(std::chrono::hours(1)));
    if (!msg) break;  // the client closed the channel: done
    std::istringstream in(*msg);
    std::string cmd;
    in >> cmd;
    if (cmd == "check") {
      std::uint64_t s = 0, off = 0, len = 0;
      in >> s >> off >> len;
      std::string reply = "ERR range";
      if (off <= region->size() && len <= region->size() - off) {
        reply = "OK " + std::to_string(testing::pattern_mismatches(region->data() + off, off, len, s));
      }
      (void)channel->send(reply);
    } else if (cmd == "quit") {
      break;
    } else {
      (void)channel->send("ERR unknown command");
    }
  }
  (*t)->stop_progress_thread();
  return 0;
}
