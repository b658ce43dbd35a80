// Agent membership in etcd with real processes: two coordinator shards
// behind a shard map, two agents each, every agent a member under its own
// etcd lease (/kvpool/agents/NAME). An agent killed with SIGKILL leaves its
// shard within the lease TTL plus slack, with the heartbeat timeout set far
// longer (60 s), so only the etcd path can explain it; its workers are
// told; a clean stop revokes the lease and leaves at once.

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <set>
#include <thread>

#include "runtime/etcd/membership.h"
#include "tests/integration/shard_fixture.h"
#include "tests/pooltool/run_pooltool.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

constexpr int kMembershipTtl = 2;  // seconds (etcd's minimum with its default election timeout)

struct Leader {
  std::unique_ptr<Subprocess> process;
  std::string address;
};

// A shard's leader whose heartbeat timeout (60 s) is far beyond the test's
// bounds: an agent dropped sooner was dropped through etcd.
Leader start_leader(const std::string& endpoints, std::uint32_t shard) {
  Leader l;
  const std::string port_file = temp_path("member-port");
  auto c = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--etcd", endpoints, "--shard", std::to_string(shard),
                              "--listen", "127.0.0.1:0", "--port-file", port_file, "--log-level", "warn",
                              "--agent-timeout", "60s", "--heartbeat-interval", "200ms"});
  REQUIRE(c);
  l.process = std::make_unique<Subprocess>(std::move(*c));
  const std::uint16_t port = read_port_file(port_file, Deadline::after(scaled(15s)));
  REQUIRE(port != 0);
  l.address = "127.0.0.1:" + std::to_string(port);
  return l;
}

std::unique_ptr<Subprocess> start_member(const std::string& endpoints, std::uint32_t shard, const std::string& name) {
  auto a = Subprocess::spawn({bin_dir() + "/kvpool-agent", "--coordinator",
                              "etcd://" + endpoints + "/" + std::to_string(shard), "--pool-size", "16MiB",
                              "--log-level", "warn", "--name", name, "--membership-ttl",
                              std::to_string(kMembershipTtl)});
  REQUIRE(a);
  return std::make_unique<Subprocess>(std::move(*a));
}

std::uint64_t incarnation_of(rpc::Client& c, const std::string& name) {
  for (const auto& a : list_agents(c)) {
    if (a.control_address == name && a.alive) return a.incarnation;
  }
  return 0;
}

std::set<std::string> member_names(const etcd::Client& client) {
  std::set<std::string> out;
  auto members = etcd::list_members(client);
  if (members) {
    for (const auto& m : *members) out.insert(m.name);
  }
  return out;
}

// A worker connection that records the "agent down" notices it is pushed.
struct DownListener {
  std::unique_ptr<rpc::Client> client;
  std::mutex mu;
  std::set<std::uint64_t> down;  // incarnations; guarded by mu
  explicit DownListener(const std::string& address) {
    client = raw_client(address, rpc::Role::kWorker);
    REQUIRE(client);
    client->set_push_handler([this](std::uint16_t type, std::string payload) {
      if (type != rpc::kPushAgentDown) return;
      rpc::AgentDownMessage m;
      if (!rpc::decode(payload, m).ok()) return;
      std::lock_guard lock(mu);
      down.insert(m.incarnation);
    });
    (void)stats(*client);  // the coordinator knows a worker by its first request
  }
  bool told(std::uint64_t incarnation) {
    std::lock_guard lock(mu);
    return down.count(incarnation) != 0;
  }
};

}  // namespace

TEST_CASE("an agent killed with SIGKILL leaves every coordinator shard within its etcd lease TTL, and a clean stop "
          "leaves at once",
          "[integration][membership]") {
  auto etcd = start_sharded_etcd(R"({"version": 1, "shards": 2})");
  if (!etcd) return;
  std::vector<Leader> leaders;
  for (std::uint32_t s = 0; s < 2; ++s) leaders.push_back(start_leader(etcd->endpoints, s));
  std::vector<std::unique_ptr<Subprocess>> keep, victim;
  for (std::uint32_t s = 0; s < 2; ++s) {
    keep.push_back(start_member(etcd->endpoints, s, "m" + std::to_string(s) + "-keep"));
    victim.push_back(start_member(etcd->endpoints, s, "m" + std::to_string(s) + "-victim"));
  }
  std::vector<std::unique_ptr<rpc::Client>> tools;
  for (auto& l : leaders) {
    tools.push_back(raw_client(l.address, rpc::Role::kTool));
    REQUIRE(tools.back());
    REQUIRE(eventually([&] { return stats(*tools.back()).agents_alive == 2; }, scaled(15s)));
  }
  // Four members in etcd, each with its shard.
  const std::set<std::string> all = {"m0-keep", "m0-victim", "m1-keep", "m1-victim"};
  REQUIRE(eventually([&] { return member_names(*etcd->client) == all; }, scaled(5s)));
  auto members = etcd::list_members(*etcd->client);
  REQUIRE(members);
  for (const auto& m : *members) {
    CHECK(m.shard == (m.name[1] == '0' ? 0u : 1u));
    CHECK(m.lease != 0);
    CHECK(m.region_bytes == 16u << 20);
    CHECK(m.incarnation == incarnation_of(*tools[m.shard], m.name));
  }
  // A name held by a live agent of another shard is refused at start (the
  // two would replace each other's record), and the record stays.
  {
    auto twin = start_member(etcd->endpoints, 1, "m0-keep");
    auto status = twin->wait(Deadline::after(scaled(20s)));
    REQUIRE(status);
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 1);
    auto held = etcd::list_members(*etcd->client);
    REQUIRE(held);
    for (const auto& m : *held) {
      if (m.name == "m0-keep") CHECK(m.shard == 0u);
    }
    CHECK(stats(*tools[1]).agents_alive == 2);
  }
  // pooltool status shows them.
  auto st = run_pooltool({"--coordinator", "etcd://" + etcd->endpoints, "status", "--json"});
  REQUIRE(st.rc == 0);
  REQUIRE(st.doc.is_object());
  std::set<std::string> shown;
  for (const auto& a : st.doc["etcd"]["agents"]) shown.insert(a["name"].get<std::string>());
  CHECK(shown == all);
  auto text = run_pooltool({"--coordinator", "etcd://" + etcd->endpoints, "status"});
  CHECK(text.rc == 0);
  CHECK(text.out.find("AGENT (ETCD MEMBER)") != std::string::npos);
  CHECK(text.out.find("m1-victim") != std::string::npos);

  std::vector<std::unique_ptr<DownListener>> workers;
  std::vector<std::uint64_t> victims;
  for (std::uint32_t s = 0; s < 2; ++s) {
    workers.push_back(std::make_unique<DownListener>(leaders[s].address));
    victims.push_back(incarnation_of(*tools[s], "m" + std::to_string(s) + "-victim"));
    REQUIRE(victims.back() != 0);
  }

  // kill -9 one agent of each shard: each shard drops its own within the
  // TTL plus slack (etcd checks expiry every 500 ms; the watch and the next
  // tick add milliseconds), 60 s before any heartbeat timeout could.
  const auto killed = Clock::now();
  for (auto& v : victim) v->kill(SIGKILL);
  for (auto& v : victim) REQUIRE(v->wait(Deadline::after(scaled(5s))));
  const auto bound = scaled(std::chrono::milliseconds(kMembershipTtl * 1000 + 2500));
  for (std::uint32_t s = 0; s < 2; ++s) {
    REQUIRE(eventually([&] { return stats(*tools[s]).agents_alive == 1; }, bound + 5s));
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed).count();
    std::printf("membership: shard %u dropped its SIGKILLed agent %lld ms after the kill (etcd lease TTL %d s, "
                "heartbeat timeout 60 s)\n",
                s, static_cast<long long>(ms), kMembershipTtl);
    std::fflush(stdout);
    CHECK(ms < bound.count());
    CHECK(ms >= 1000);  // not before etcd could have expired the lease
    CHECK(incarnation_of(*tools[s], "m" + std::to_string(s) + "-victim") == 0);
    CHECK(incarnation_of(*tools[s], "m" + std::to_string(s) + "-keep") != 0);
    // Its workers are told.
    CHECK(eventually([&] { return workers[s]->told(victims[s]); }, scaled(2s)));
  }
  CHECK(member_names(*etcd->client) == std::set<std::string>{"m0-keep", "m1-keep"});

  // A clean stop revokes the lease: the shard drops the agent at once.
  const auto stopped = Clock::now();
  keep[1]->kill(SIGTERM);
  REQUIRE(eventually([&] { return stats(*tools[1]).agents_alive == 0; }, scaled(5s)));
  const auto stop_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped).count();
  std::printf("membership: a cleanly stopped agent left shard 1 %lld ms after SIGTERM\n",
              static_cast<long long>(stop_ms));
  std::fflush(stdout);
  CHECK(stop_ms < scaled(1500ms).count());
  CHECK(member_names(*etcd->client) == std::set<std::string>{"m0-keep"});
  CHECK(stats(*tools[0]).agents_alive == 1);

  // Frozen past its TTL, an agent leaves too; thawed, it grants a new lease,
  // puts its record again (same incarnation) and rejoins its shard.
  const std::uint64_t inc = incarnation_of(*tools[0], "m0-keep");
  REQUIRE(inc != 0);
  REQUIRE(freeze(keep[0]->pid()));
  REQUIRE(eventually([&] { return stats(*tools[0]).agents_alive == 0; }, bound + 5s));
  CHECK(member_names(*etcd->client).empty());
  keep[0]->kill(SIGCONT);
  REQUIRE(eventually([&] { return member_names(*etcd->client) == std::set<std::string>{"m0-keep"}; }, scaled(10s)));
  REQUIRE(eventually([&] { return stats(*tools[0]).agents_alive == 1; }, scaled(10s)));
  CHECK(incarnation_of(*tools[0], "m0-keep") == inc);
  auto back = etcd::list_members(*etcd->client);
  REQUIRE(back);
  REQUIRE(back->size() == 1);
  CHECK((*back)[0].incarnation == inc);
  // The record it put again names the incarnation in force: nothing drops.
  std::this_thread::sleep_for(scaled(1s));
  CHECK(stats(*tools[0]).agents_alive == 1);
}
