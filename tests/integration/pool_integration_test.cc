// The pool end to end, with real processes: kvpool-agent --standalone (the
// agent with its embedded coordinator), more agents joining it, and this test
// as the worker (kvpool::Client) or as a raw control-protocol peer.

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <atomic>
#include <thread>

#include "runtime/common/pattern.h"
#include "tests/integration/pool_fixture.h"
#include "transport/transport.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 256 << 10;

struct Blocks {
  std::vector<Key128> keys;
  std::vector<std::byte> bytes;
  std::vector<std::span<const std::byte>> spans;
  std::vector<std::span<std::byte>> out_spans;
  std::vector<std::byte> out;

  Blocks(NamespaceId ns, int n, std::uint32_t first_token = 0) {
    std::vector<std::uint32_t> tokens(static_cast<std::size_t>(n) * 16);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = first_token + static_cast<std::uint32_t>(i);
    keys = prefix_keys(ns, tokens, 16);
    bytes.resize(n * kBlock);
    out.resize(n * kBlock);
    for (int i = 0; i < n; ++i) {
      fill_pattern(bytes.data() + i * kBlock, 0, kBlock, keys[i].lo);
      spans.emplace_back(bytes.data() + i * kBlock, kBlock);
      out_spans.emplace_back(out.data() + i * kBlock, kBlock);
    }
  }
  std::size_t wrong(std::size_t n) const {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) bad += pattern_mismatches(out.data() + i * kBlock, 0, kBlock, keys[i].lo);
    return bad;
  }
};

// Sends raw bytes to the coordinator and reports whether it closes the
// connection (as it must for input that breaks the framing).
bool raw_socket_closed_after(std::uint16_t port, const std::string& bytes, std::chrono::milliseconds timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return false;
  }
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  pollfd p{fd, POLLIN, 0};
  bool closed = false;
  auto d = Deadline::after(timeout);
  while (!d.expired() && !closed) {
    if (::poll(&p, 1, 100) > 0) {
      char buf[256];
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      closed = n <= 0;  // a reply (n > 0) is read and ignored; EOF or reset means closed
    }
  }
  ::close(fd);
  return closed;
}

std::unique_ptr<Client> connect(const std::string& coordinator, const std::string& tls = "") {
  ClientOptions options;
  options.coordinator = coordinator;
  options.timeout = scaled(10s);
  options.tls = tls;
  auto c = Client::connect(options);
  REQUIRE(c);
  return std::move(*c);
}

// One-sided writes into the pool's only agent region, behind the pool's
// back, the way a stray writer or a torn late put would change a block.
struct ScribblingPeer {
  std::unique_ptr<transport::Transport> ucx;  // outlives peer and region
  std::unique_ptr<transport::Peer> peer;
  transport::RemoteRegion region;

  explicit ScribblingPeer(rpc::Client& raw) {
    auto list_reply = raw.call(rpc::kListAgents, std::string(), Deadline::after(scaled(5s)));
    REQUIRE(list_reply);
    rpc::ListAgentsReply list;
    REQUIRE(rpc::decode(*list_reply, list).ok());
    REQUIRE(list.agents.size() == 1);
    const rpc::AgentRecord& agent = list.agents.front();
    auto t = transport::Transport::create({.tls = "posix,self"});
    REQUIRE(t);
    ucx = std::move(*t);
    auto p = ucx->connect(agent.worker_address, transport::ErrorMode::kNone);
    REQUIRE(p);
    peer = std::move(*p);
    auto r = peer->import_region(
        {agent.worker_address, agent.packed_rkey, agent.region_base, agent.region_bytes, agent.host_id});
    REQUIRE(r);
    region = std::move(*r);
  }
  void put(const transport::RmaOp& op) {
    REQUIRE(peer->put(region, std::span(&op, 1), Deadline::after(scaled(5s))).ok());
  }
};

}  // namespace

// The fixture itself: a port file left behind by an earlier process of the
// same pid once handed a test a dead coordinator's port.
TEST_CASE("temp_path: every process gets fresh paths, removed when it exits", "[integration]") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const std::string p = temp_path("port");
    std::FILE* f = std::fopen(p.c_str(), "w");
    const bool ok = f != nullptr && std::fputs("1\n", f) >= 0 && std::fclose(f) == 0;
    const std::string line = (ok ? p : std::string("write failed")) + "\n";
    (void)!::write(fds[1], line.data(), line.size());
    std::exit(0);  // static destructors run, as at a test's normal end
  }
  ::close(fds[1]);
  std::string line;
  char c;
  while (::read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(fds[0]);
  int wstatus = 0;
  REQUIRE(::waitpid(child, &wstatus, 0) == child);
  REQUIRE(line.rfind("/tmp/kvpool-test-", 0) == 0);
  CHECK_FALSE(std::filesystem::exists(line));
  // Another process with the same pid would get another name: a random part.
  const std::string mine = temp_path("port");
  CHECK(mine != line);
  CHECK_FALSE(std::filesystem::exists(mine));
}

TEST_CASE("blocks put by one process are read back by another over shared memory and over tcp",
          "[integration]") {
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  for (std::string tls : {"posix,cma,self", "tcp"}) {
    INFO("worker UCX_TLS=" << tls);
    auto writer = connect(pool->coordinator, tls);
    auto ns = writer->register_namespace(test_namespace(kBlock, "model-" + tls));
    REQUIRE(ns);
    Blocks b(*ns, 12);
    auto put = writer->put(*ns, b.keys, b.spans);
    REQUIRE(put);
    CHECK(put->written == 12);
    auto reader = connect(pool->coordinator, tls);
    REQUIRE(reader->register_namespace(test_namespace(kBlock, "model-" + tls)));
    auto got = reader->get(*ns, b.keys, b.out_spans);
    REQUIRE(got);
    CHECK(got->loaded == 12);
    CHECK(b.wrong(12) == 0);
    CHECK(reader->stats().transports.find(tls == "tcp" ? "tcp" : "posix") != std::string::npos);
  }
}

TEST_CASE("blocks written over shared memory are read over tcp and the reverse, byte for byte", "[integration]") {
  // A same-host worker over shared memory copies straight into the agent's
  // mapped region and hashes as it copies; over tcp it goes through UCX.
  // Each path must read what the other wrote: same slot headers, same
  // checksums. Many blocks per batch, so both threads of a batch take some.
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  const std::string shm = "posix,cma,self", tcp = "tcp";
  for (auto [wtls, rtls] : {std::pair{shm, tcp}, std::pair{tcp, shm}, std::pair{shm, shm}}) {
    INFO("writer UCX_TLS=" << wtls << ", reader UCX_TLS=" << rtls);
    auto writer = connect(pool->coordinator, wtls);
    auto ns = writer->register_namespace(test_namespace(kBlock, "cross-" + wtls + "-" + rtls));
    REQUIRE(ns);
    Blocks b(*ns, 40, 7000);
    auto put = writer->put(*ns, b.keys, b.spans);
    REQUIRE(put);
    CHECK(put->written == 40);
    auto reader = connect(pool->coordinator, rtls);
    REQUIRE(reader->register_namespace(test_namespace(kBlock, "cross-" + wtls + "-" + rtls)));
    auto got = reader->get(*ns, b.keys, b.out_spans);
    REQUIRE(got);
    CHECK(got->loaded == 40);
    CHECK(b.wrong(40) == 0);
    CHECK(reader->stats().verify_failures == 0);
    REQUIRE(writer->remove(*ns, b.keys));
  }
}

TEST_CASE("a client that prefaults mapped regions in the background moves the same bytes", "[integration]") {
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  ClientOptions options;
  options.coordinator = pool->coordinator;
  options.tls = "posix,cma,self";
  options.prefault_mapped_regions = true;
  auto c = Client::connect(options);
  REQUIRE(c);
  auto ns = (*c)->register_namespace(test_namespace());
  REQUIRE(ns);
  Blocks b(*ns, 8);
  REQUIRE((*c)->put(*ns, b.keys, b.spans)->written == 8);
  auto got = (*c)->get(*ns, b.keys, b.out_spans);
  REQUIRE(got);
  CHECK(got->loaded == 8);
  CHECK(b.wrong(8) == 0);
  c->reset();  // stops the prefault thread while it may still run
}

TEST_CASE("a second put of the same blocks writes nothing and a lookup sees the prefix", "[integration]") {
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto c = connect(pool->coordinator);
  auto ns = c->register_namespace(test_namespace());
  REQUIRE(ns);
  Blocks b(*ns, 8);
  REQUIRE(c->put(*ns, std::span(b.keys).first(5), std::span(b.spans).first(5))->written == 5);
  auto again = c->put(*ns, b.keys, b.spans);
  REQUIRE(again);
  CHECK(again->deduplicated == 5);
  CHECK(again->written == 3);
  CHECK(*c->lookup(*ns, b.keys) == 8);
  // A namespace not registered is refused by the coordinator.
  auto other = Blocks(*ns + 1, 1);
  auto bad = raw_client(pool->coordinator);
  rpc::LookupReply rep;
  CHECK(raw_call(*bad, rpc::kLookup, rpc::LookupRequest{*ns + 1, false, other.keys}, rep).code() ==
        StatusCode::kNotFound);
}

TEST_CASE("of two writers of one key one writes and the other is told pending", "[integration]") {
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto c = connect(pool->coordinator);
  auto ns = c->register_namespace(test_namespace());
  REQUIRE(ns);
  Blocks b(*ns, 1);
  // The first writer holds the key's write lease without committing.
  auto raw = raw_client(pool->coordinator);
  REQUIRE(raw);
  rpc::AllocateReply first;
  REQUIRE(raw_call(*raw, rpc::kAllocate, rpc::AllocateRequest{*ns, "elsewhere", {{b.keys[0], kBlock}}}, first).ok());
  REQUIRE(first.results.at(0).outcome == rpc::AllocateOutcome::kPlaced);
  auto second = c->put(*ns, b.keys, b.spans);
  REQUIRE(second);
  CHECK(second->outcomes[0] == PutOutcome::kPending);
  CHECK(*c->lookup(*ns, b.keys) == 0);  // a reader sees a miss until the commit
}

TEST_CASE("wait_for wakes a waiting reader when the writer commits", "[integration]") {
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto writer = connect(pool->coordinator);
  auto reader = connect(pool->coordinator);
  auto ns = writer->register_namespace(test_namespace());
  REQUIRE(ns);
  REQUIRE(reader->register_namespace(test_namespace()));
  Blocks b(*ns, 4);
  std::atomic<std::int64_t> woke_ns{0};
  Result<std::vector<bool>> waited = std::vector<bool>{};
  std::thread waiter([&] {
    waited = reader->wait_for(*ns, b.keys, scaled(20s));
    woke_ns = Clock::now().time_since_epoch().count();
  });
  std::this_thread::sleep_for(300ms);
  CHECK(woke_ns.load() == 0);  // still waiting: nothing committed yet
  REQUIRE(writer->put(*ns, b.keys, b.spans)->written == 4);
  auto committed_at = Clock::now();
  waiter.join();
  REQUIRE(waited);
  CHECK(*waited == std::vector<bool>(4, true));
  CHECK(Clock::time_point(Clock::duration(woke_ns.load())) - committed_at < scaled(1s));
  // And at the deadline it returns what is there.
  Blocks more(*ns, 2, 999);
  auto partial = reader->wait_for(*ns, more.keys, 200ms);
  REQUIRE(partial);
  CHECK(*partial == std::vector<bool>(2, false));
}

TEST_CASE("a reader polling while a writer puts never sees a block before its commit", "[integration]") {
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto c = connect(pool->coordinator);
  auto ns = c->register_namespace(test_namespace());
  REQUIRE(ns);
  Blocks b(*ns, 1);
  auto raw = raw_client(pool->coordinator);
  rpc::AllocateReply alloc;
  REQUIRE(raw_call(*raw, rpc::kAllocate, rpc::AllocateRequest{*ns, "", {{b.keys[0], kBlock}}}, alloc).ok());
  REQUIRE(alloc.results.at(0).outcome == rpc::AllocateOutcome::kPlaced);
  // The writer's bytes land (written through the agent's mapped region by a
  // second client is not needed: the slot is placed, not committed). Poll.
  for (int i = 0; i < 20; ++i) {
    CHECK(*c->lookup(*ns, b.keys) == 0);
    auto got = c->get(*ns, b.keys, b.out_spans);
    REQUIRE(got);
    CHECK(got->loaded == 0);
    std::this_thread::sleep_for(10ms);
  }
  rpc::StatusBatch commit;
  REQUIRE(raw_call(*raw, rpc::kCommit, rpc::LeaseBatch{{alloc.results[0].lease}}, commit).ok());
  CHECK(commit.results.at(0).code == StatusCode::kOk);
  CHECK(*c->lookup(*ns, b.keys) == 1);
  // Committed without a valid header (the raw writer wrote nothing): a get
  // must detect it and return no data.
  auto got = c->get(*ns, b.keys, b.out_spans);
  REQUIRE(got);
  CHECK(got->loaded == 0);
  CHECK(got->stopped.code() == StatusCode::kDataLoss);
}

TEST_CASE("a writer killed before commit has its space back after the lease", "[integration]") {
  auto pool = start_standalone("64MiB", {"--write-lease", "1s", "--write-quarantine", "500ms"});
  REQUIRE(pool);
  auto c = connect(pool->coordinator);
  auto ns = c->register_namespace(test_namespace());
  REQUIRE(ns);
  Blocks live(*ns, 4);
  REQUIRE(c->put(*ns, live.keys, live.spans)->written == 4);
  auto watcher = raw_client(pool->coordinator, rpc::Role::kTool);
  REQUIRE(watcher);
  const auto live_bytes = stats(*watcher).live_bytes;
  {
    // The dying writer: a real process allocates 10 blocks and is killed
    // before committing them.
    auto writer = Subprocess::spawn({bin_dir() + "/kvpool_test_writer", pool->coordinator, std::to_string(*ns),
                                     "10", std::to_string(kBlock)});
    REQUIRE(writer);
    REQUIRE(writer->wait_for_line("ALLOCATED", Deadline::after(scaled(10s))));
    CHECK(stats(*watcher).live_bytes == live_bytes + 10 * kBlock);
    writer->kill(SIGKILL);
    REQUIRE(writer->wait(Deadline::after(scaled(5s))));
  }
  // Lease (1 s) + quarantine (0.5 s) + the agent's invalidation: then the
  // used bytes are exactly the live blocks' bytes again.
  CHECK(eventually([&] {
    auto s = stats(*watcher);
    return s.used_bytes == live_bytes && s.reclaiming_bytes == 0 && s.write_leases == 0;
  }, scaled(10s)));
  auto s = stats(*watcher);
  CHECK(s.used_bytes == live_bytes);
  CHECK(s.expired_write_leases == 10);
  CHECK(s.blocks == 4);
  // The space is usable: the pool takes new blocks into it.
  Blocks more(*ns, 10, 7000);
  CHECK(c->put(*ns, more.keys, more.spans)->written == 10);
}

TEST_CASE("eviction under pressure keeps the pool writable and skips leased blocks", "[integration]") {
  // 16 MiB: room for about 60 blocks of 256 KiB.
  auto pool = start_standalone("16MiB");
  REQUIRE(pool);
  auto c = connect(pool->coordinator);
  auto ns = c->register_namespace(test_namespace());
  REQUIRE(ns);
  Blocks first(*ns, 4);
  REQUIRE(c->put(*ns, first.keys, first.spans)->written == 4);
  // A reader holds a read lease on the first blocks for the whole test.
  auto raw = raw_client(pool->coordinator);
  rpc::LookupReply leased;
  REQUIRE(raw_call(*raw, rpc::kLookup, rpc::LookupRequest{*ns, true, first.keys}, leased).ok());
  REQUIRE(leased.locations.size() == 4);
  REQUIRE(leased.lease != 0);
  // Write far more than fits, in batches: every put succeeds.
  for (int round = 0; round < 12; ++round) {
    Blocks b(*ns, 16, 100000 + round * 1000);
    auto put = c->put(*ns, b.keys, b.spans);
    REQUIRE(put);
    INFO("round " << round << " failed " << put->failed);
    CHECK(put->written == 16);
  }
  auto s = stats(*raw);
  CHECK(s.evictions > 0);
  // The leased blocks are still there and intact.
  auto got = c->get(*ns, first.keys, first.out_spans);
  REQUIRE(got);
  CHECK(got->loaded == 4);
  CHECK(first.wrong(4) == 0);
}

TEST_CASE("a killed agent's blocks leave lookups within the heartbeat timeout and its reads fail fast",
          "[integration]") {
  // Spread placement: blocks land on both agents.
  auto pool = start_standalone("32MiB", {"--agent-timeout", "1s", "--heartbeat-interval", "200ms", "--placement",
                                         "spread"});
  REQUIRE(pool);
  auto watcher = raw_client(pool->coordinator, rpc::Role::kTool);
  REQUIRE(watcher);
  for (std::string tls : {"posix,cma,self", "tcp"}) {
    INFO("worker UCX_TLS=" << tls);
    // A second agent for each round: the one this round kills.
    auto second = start_agent(pool->coordinator, "32MiB");
    REQUIRE(second);
    REQUIRE(eventually([&] { return stats(*watcher).agents_alive == 2; }, scaled(10s)));
    auto c = connect(pool->coordinator, tls);
    auto ns = c->register_namespace(test_namespace(kBlock, "agent-death-" + tls));
    REQUIRE(ns);
    Blocks b(*ns, 16);
    REQUIRE(c->put(*ns, b.keys, b.spans)->written == 16);
    auto got = c->get(*ns, b.keys, b.out_spans);
    REQUIRE(got->loaded == 16);
    CHECK(b.wrong(16) == 0);

    second->kill(SIGKILL);
    REQUIRE(second->wait(Deadline::after(scaled(5s))));
    auto killed_at = Clock::now();
    // Reads never return wrong bytes and never hang; once the coordinator
    // notices (timeout 1 s), the dead agent's blocks are gone from lookups.
    CHECK(eventually([&] { return *c->lookup(*ns, b.keys) < 16; }, scaled(5s)));
    CHECK(Clock::now() - killed_at < scaled(3s));
    auto t0 = Clock::now();
    auto after = c->get(*ns, b.keys, b.out_spans);
    REQUIRE(after);
    CHECK(after->loaded < 16);
    CHECK(b.wrong(after->loaded) == 0);
    CHECK(Clock::now() - t0 < scaled(2s));
    CHECK(eventually([&] { return stats(*watcher).agents_alive == 1; }, scaled(5s)));
    // New writes go to the live agent.
    Blocks more(*ns, 8, 50000);
    CHECK(c->put(*ns, more.keys, more.spans)->written == 8);
  }
}

TEST_CASE("a get that runs out on a frozen agent writes nothing into the caller's memory after it returned",
          "[integration][tcp]") {
  // Over TCP after a reconnection (the agent was reported down and came
  // back) the agent streams each read's bytes, and answers a request when
  // its progress thread runs. A get whose deadline passes on a frozen agent
  // must not leave bytes on their way that land in the caller's buffers
  // (or the client's header scratch) once the agent thaws. (Until the
  // stream, such reads went through UCX get, which TCP emulates the same
  // way.)
  const auto agent_timeout = scaled(2000ms);
  auto pool = start_standalone("32MiB", {"--agent-timeout", std::to_string(agent_timeout.count()) + "ms",
                                         "--heartbeat-interval", "200ms", "--placement", "spread"});
  REQUIRE(pool);
  auto second = start_agent(pool->coordinator, "48MiB");  // told apart by its size
  REQUIRE(second);
  auto watcher = raw_client(pool->coordinator, rpc::Role::kTool);
  REQUIRE(watcher);
  REQUIRE(eventually([&] { return stats(*watcher).agents_alive == 2; }, scaled(10s)));
  ClientOptions o;
  o.coordinator = pool->coordinator;
  o.tls = "tcp";
  o.timeout = scaled(700ms);
  auto c = Client::connect(o);
  REQUIRE(c);
  auto ns = (*c)->register_namespace(test_namespace(kBlock, "late-get"));
  REQUIRE(ns);
  Blocks b(*ns, 16);
  REQUIRE((*c)->put(*ns, b.keys, b.spans)->written == 16);

  // The keys on the second agent.
  auto list_reply = watcher->call(rpc::kListAgents, std::string(), Deadline::after(scaled(5s)));
  REQUIRE(list_reply);
  rpc::ListAgentsReply list;
  REQUIRE(rpc::decode(*list_reply, list).ok());
  std::uint32_t second_id = 0;
  for (const auto& a : list.agents) {
    if (a.region_bytes == (48ull << 20)) second_id = a.agent;
  }
  REQUIRE(second_id != 0);
  auto locate = [&] {
    rpc::LookupReply where;
    REQUIRE(raw_call(*watcher, rpc::kLookup, rpc::LookupRequest{*ns, false, b.keys}, where).ok());
    return where;
  };
  std::vector<std::size_t> on_second;
  const auto where = locate();
  REQUIRE(where.locations.size() == 16);
  for (std::size_t i = 0; i < 16; ++i) {
    if (where.locations[i].agent == second_id) on_second.push_back(i);
  }
  REQUIRE(on_second.size() >= 2);

  // Reported down and back: this client reconnects to it.
  REQUIRE(freeze(second->pid()));
  CHECK(eventually([&] { return stats(*watcher).agents_alive == 1; }, agent_timeout * 3));
  second->kill(SIGCONT);
  REQUIRE(eventually([&] { return stats(*watcher).agents_alive == 2 && locate().locations.size() == 16; },
                     scaled(10s)));
  std::vector<Key128> keys;
  std::vector<std::span<std::byte>> outs;
  for (std::size_t i : on_second) {
    keys.push_back(b.keys[i]);
    outs.push_back(b.out_spans[i]);
  }
  auto ok = (*c)->get(*ns, keys, outs);
  REQUIRE(ok);
  REQUIRE(ok->loaded == keys.size());

  // Frozen for less than the agent timeout: the get runs out, the agent
  // stays a member.
  REQUIRE(freeze(second->pid()));
  auto failed = (*c)->get(*ns, keys, outs);
  const bool ran_out = !failed || failed->loaded < keys.size();
  CHECK(ran_out);
  for (auto& o2 : outs) std::memset(o2.data(), 0x5a, o2.size());
  second->kill(SIGCONT);
  // Progress on the client's worker: reads of the other agent's keys.
  const auto settle = Clock::now() + scaled(1000ms);
  while (Clock::now() < settle) {
    std::vector<Key128> others;
    std::vector<std::span<std::byte>> spare;
    std::vector<std::byte> scratch(kBlock);
    for (std::size_t i = 0; i < 16 && others.empty(); ++i) {
      if (where.locations[i].agent != second_id) {
        others.push_back(b.keys[i]);
        spare.emplace_back(scratch.data(), kBlock);
      }
    }
    (void)(*c)->get(*ns, others, spare);
    std::this_thread::sleep_for(20ms);
  }
  std::size_t touched = 0;
  for (auto& o2 : outs) {
    for (std::byte x : o2) touched += x != std::byte{0x5a};
  }
  CHECK(touched == 0);
  // And the agent reads again.
  CHECK(eventually([&] {
    auto again = (*c)->get(*ns, keys, outs);
    return again && again->loaded == keys.size();
  }, scaled(10s)));
}

TEST_CASE("malformed frames get the connection closed while another client keeps working", "[integration]") {
  auto pool = start_standalone("16MiB");
  REQUIRE(pool);
  auto good = connect(pool->coordinator);
  auto ns = good->register_namespace(test_namespace());
  REQUIRE(ns);
  auto colon = pool->coordinator.rfind(':');
  auto port = static_cast<std::uint16_t>(std::stoi(pool->coordinator.substr(colon + 1)));
  // Garbage, a header claiming a 1 GiB payload, and a header with a wrong
  // version, each on its own connection: each is closed by the server.
  std::string huge(24, '\0');
  const std::uint32_t magic = 0x4350564B, giant = 1u << 30;
  std::memcpy(huge.data(), &magic, 4);
  huge[4] = 1;  // version 1
  std::memcpy(huge.data() + 16, &giant, 4);
  std::string wrong_version = huge;
  wrong_version[4] = 9;
  std::memset(wrong_version.data() + 16, 0, 4);
  for (const std::string& bytes : {std::string("GET / HTTP/1.1\r\nHost: kvpool\r\n\r\n"), huge, wrong_version}) {
    CHECK(raw_socket_closed_after(port, bytes, scaled(5s)));
  }
  auto raw = raw_client(pool->coordinator);
  REQUIRE(raw);
  // An allocate whose item count overruns the payload.
  std::string bad = rpc::encode(rpc::AllocateRequest{*ns, "", {}});
  bad[bad.size() - 4] = '\x7f';
  auto reply = raw->call(rpc::kAllocate, bad, Deadline::after(scaled(5s)));
  REQUIRE_FALSE(reply);
  CHECK(reply.error().code() == StatusCode::kInvalidArgument);
  auto unknown = raw->call(999, "", Deadline::after(scaled(5s)));
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().code() == StatusCode::kUnimplemented);
  Blocks b(*ns, 2);
  CHECK(good->put(*ns, b.keys, b.spans)->written == 2);
  CHECK(*good->lookup(*ns, b.keys) == 2);
}

TEST_CASE("a block whose bytes change after its commit is detected by get and never returned as data",
          "[integration]") {
  // Over shared memory the reader copies from the mapped region and checks
  // as it copies; over tcp it reads through the agent. A changed payload and
  // a changed slot header are each caught by both.
  auto pool = start_standalone("32MiB");
  REQUIRE(pool);
  auto raw = raw_client(pool->coordinator);
  ScribblingPeer scribbler(*raw);
  std::uint32_t round = 0;
  for (std::string tls : {"posix,cma,self", "tcp"}) {
    for (bool header : {false, true}) {
      INFO("reader UCX_TLS=" << tls << (header ? ", slot header changed" : ", payload changed"));
      auto c = connect(pool->coordinator, tls);
      auto ns = c->register_namespace(test_namespace());
      REQUIRE(ns);
      Blocks b(*ns, 6, 100000 * ++round);
      REQUIRE(c->put(*ns, b.keys, b.spans)->written == 6);
      // Find block 3 and scribble over 8 bytes of it, one-sided, the way a
      // stray writer (or a torn late put) would: in the payload, or in the
      // header's generation field (bytes 40-47).
      rpc::LookupReply where;
      REQUIRE(raw_call(*raw, rpc::kLookup, rpc::LookupRequest{*ns, false, b.keys}, where).ok());
      REQUIRE(where.locations.size() == 6);
      std::uint64_t garbage = 0x0123456789abcdefull;
      transport::RmaOp scribble{&garbage,
                                header ? where.locations[3].header_offset + 40 : where.locations[3].payload_offset + 1000,
                                sizeof(garbage)};
      scribbler.put(scribble);
      auto got = c->get(*ns, b.keys, b.out_spans);
      REQUIRE(got);
      CHECK(got->loaded == 3);  // blocks 0-2 only: the prefix stops at the bad block
      CHECK(got->stopped.code() == StatusCode::kDataLoss);
      CHECK(b.wrong(3) == 0);
      CHECK(c->stats().verify_failures == 1);
      REQUIRE(c->remove(*ns, b.keys));
    }
  }
}

TEST_CASE("blocks put over tcp piece by piece read back whole, and a change inside a middle piece is caught",
          "[integration]") {
  // Over tcp a put checksums each block in 256 KiB pieces, each just before
  // it is sent. Blocks of 700 KiB: two whole pieces and a short one; 24 of
  // them, more than the put hashes while its allocate is out.
  constexpr std::uint64_t kOdd = 700 << 10;
  constexpr int kN = 24;
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto writer = connect(pool->coordinator, "tcp");
  auto ns = writer->register_namespace(test_namespace(kOdd, "pieces"));
  REQUIRE(ns);
  std::vector<std::uint32_t> tokens(kN * 16);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = 500000 + static_cast<std::uint32_t>(i);
  auto keys = prefix_keys(*ns, tokens, 16);
  std::vector<std::byte> bytes(kN * kOdd), out(kN * kOdd);
  std::vector<std::span<const std::byte>> in;
  std::vector<std::span<std::byte>> outs;
  for (int i = 0; i < kN; ++i) {
    fill_pattern(bytes.data() + i * kOdd, 0, kOdd, keys[i].lo);
    in.emplace_back(bytes.data() + i * kOdd, kOdd);
    outs.emplace_back(out.data() + i * kOdd, kOdd);
  }
  auto wrong = [&](int n) {
    std::size_t bad = 0;
    for (int i = 0; i < n; ++i) bad += pattern_mismatches(out.data() + i * kOdd, 0, kOdd, keys[i].lo);
    return bad;
  };
  auto put = writer->put(*ns, keys, in);
  REQUIRE(put);
  REQUIRE(put->written == kN);
  for (std::string tls : {"tcp", "posix,cma,self"}) {
    INFO("reader UCX_TLS=" << tls);
    std::fill(out.begin(), out.end(), std::byte{0});
    auto reader = connect(pool->coordinator, tls);
    REQUIRE(reader->register_namespace(test_namespace(kOdd, "pieces")));
    auto got = reader->get(*ns, keys, outs);
    if (!got) FAIL(got.error().message());
    CHECK(got->loaded == kN);
    CHECK(wrong(kN) == 0);
    CHECK(reader->stats().verify_failures == 0);
  }
  // 8 bytes changed at 300 KiB into block 20 (its second piece), one-sided
  // into the agent's region: the tcp reader gets blocks 0-19 only.
  auto raw = raw_client(pool->coordinator);
  ScribblingPeer scribbler(*raw);
  rpc::LookupReply where;
  REQUIRE(raw_call(*raw, rpc::kLookup, rpc::LookupRequest{*ns, false, keys}, where).ok());
  REQUIRE(where.locations.size() == kN);
  std::uint64_t garbage = 0x0123456789abcdefull;
  transport::RmaOp scribble{&garbage, where.locations[20].payload_offset + (300 << 10), sizeof(garbage)};
  scribbler.put(scribble);
  auto reader = connect(pool->coordinator, "tcp");
  REQUIRE(reader->register_namespace(test_namespace(kOdd, "pieces")));
  auto got = reader->get(*ns, keys, outs);
  REQUIRE(got);
  CHECK(got->loaded == 20);
  CHECK(got->stopped.code() == StatusCode::kDataLoss);
  CHECK(wrong(20) == 0);
  CHECK(reader->stats().verify_failures == 1);
}

TEST_CASE("kvpool-agent takes every flag from a JSON config file and refuses bad ones", "[integration]") {
  std::string port_file = temp_path("port");
  std::string config = temp_path("agent.json");
  {
    FILE* f = std::fopen(config.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fprintf(f, "{\"standalone\": true, \"listen\": \"127.0.0.1:0\", \"pool-size\": \"16MiB\", "
                    "\"port-file\": \"%s\", \"log-level\": \"warn\", \"placement\": \"spread\"}\n",
                 port_file.c_str());
    std::fclose(f);
  }
  auto agent = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--config", config});
  REQUIRE(agent);
  std::uint16_t port = read_port_file(port_file, Deadline::after(scaled(30s)));
  REQUIRE(port != 0);
  auto watcher = raw_client("127.0.0.1:" + std::to_string(port), rpc::Role::kTool);
  REQUIRE(watcher);
  CHECK(eventually([&] { return stats(*watcher).agents_alive == 1; }, scaled(10s)));
  // 16 MiB pool: capacity is the payload area, a little under 16 MiB.
  auto s = stats(*watcher);
  CHECK(s.capacity_bytes > 15u << 20);
  CHECK(s.capacity_bytes <= 16u << 20);
  agent->kill(SIGTERM);
  auto rc = agent->wait(Deadline::after(scaled(10s)));
  REQUIRE(rc);
  CHECK(WIFEXITED(*rc));
  CHECK(WEXITSTATUS(*rc) == 0);
  std::remove(port_file.c_str());

  for (std::vector<std::string> bad : {std::vector<std::string>{"--pool-size", "lots"},
                                       std::vector<std::string>{"--placement", "random"},
                                       std::vector<std::string>{"--no-such-flag"}}) {
    std::vector<std::string> argv = {bin_dir() + "/kvpool-agent", "--standalone", "--listen", "127.0.0.1:0"};
    argv.insert(argv.end(), bad.begin(), bad.end());
    auto p = Subprocess::spawn(argv);
    REQUIRE(p);
    auto code = p->wait(Deadline::after(scaled(10s)));
    REQUIRE(code);
    INFO(bad[0]);
    CHECK(WIFEXITED(*code));
    CHECK(WEXITSTATUS(*code) != 0);
  }
  std::remove(config.c_str());
}
