// A worker that dies mid-put, for the integration tests: connects to the
// coordinator, allocates N blocks (write leases), prints "ALLOCATED" and
// waits to be killed without ever committing.
//
// usage: kvpool_test_writer HOST:PORT NAMESPACE_ID COUNT BLOCK_BYTES

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "kvpool/types.h"
#include "runtime/common/process_util.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"

using namespace kvpool;

int main(int argc, char** argv) {
  if (argc != 5) return 2;
  auto hp = parse_host_port(argv[1]);
  if (!hp) return 2;
  rpc::ClientOptions o;
  o.host = hp->first;
  o.port = hp->second;
  o.role = rpc::Role::kWorker;
  o.client_id = "dying-writer";
  auto c = rpc::Client::connect(o, Deadline::after(std::chrono::seconds(10)));
  if (!c) return 1;
  rpc::AllocateRequest req;
  req.ns = std::strtoull(argv[2], nullptr, 10);
  const int count = std::atoi(argv[3]);
  const std::uint64_t bytes = std::strtoull(argv[4], nullptr, 10);
  for (int i = 0; i < count; ++i) req.items.push_back({Key128{0xdead0000u + static_cast<unsigned>(i), 7}, bytes});
  auto reply = (*c)->call(rpc::kAllocate, rpc::encode(req), Deadline::after(std::chrono::seconds(10)));
  if (!reply) return 1;
  rpc::AllocateReply rep;
  if (!rpc::decode(*reply, rep).ok()) return 1;
  for (const auto& r : rep.results) {
    if (r.outcome != rpc::AllocateOutcome::kPlaced) return 1;
  }
  std::printf("ALLOCATED\n");
  std::fflush(stdout);
  for (;;) pause();
}
