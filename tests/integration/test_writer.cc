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
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"

using namespace kvpool;

int main(int argc, char** argv) {
  if (argc != 5) return 2;
  std::string coordinator = argv[1];
  auto colon = coordinator.rfind(':');
  rpc::ClientOptions o;
  o.host = coordinator.substr(0, colon);
  o.port = static_cast<std::uint16_t>(std::stoi(coordinator.substr(colon + 1)));
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
