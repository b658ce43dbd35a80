// The operator messages (pooltool): round trips, and refusal of truncated,
// trailing and over-counted payloads like every other decoder.

#include <catch2/catch.hpp>

#include "runtime/rpc/messages.h"

using namespace kvpool;
using namespace kvpool::rpc;

namespace {

template <typename T>
void refuses_damaged(const T& m) {
  const std::string p = encode(m);
  T out;
  REQUIRE(decode(p, out).ok());
  CHECK(encode(out) == p);
  CHECK(decode(p + "x", out).code() == StatusCode::kInvalidArgument);
  if (!p.empty())
    CHECK(decode(std::string_view(p).substr(0, p.size() - 1), out).code() == StatusCode::kInvalidArgument);
}

}  // namespace

TEST_CASE("operator messages round trip and refuse damaged payloads", "[rpc][messages]") {
  NamespaceDescriptor d{"meta-llama/Meta-Llama-3-8B", "bf16", 32, 8, 128, 16, "vllm-paged", 1, 2, 0};
  ListNamespacesReply ns{{NamespaceRecord{0xabc, d, 2 << 20, 7}}};
  refuses_damaged(ns);
  ListNamespacesReply ns_back;
  REQUIRE(decode(encode(ns), ns_back).ok());
  REQUIRE(ns_back.namespaces.size() == 1);
  CHECK(ns_back.namespaces[0].descriptor.model_id == d.model_id);
  CHECK(ns_back.namespaces[0].descriptor.tp_size == 2);
  CHECK(ns_back.namespaces[0].blocks == 7);

  refuses_damaged(UsageRequest{false, 0xabc});
  refuses_damaged(UsageReply{{UsageRow{0xabc, 3, 4, 5}, UsageRow{1, 2, 3, 4}}});
  refuses_damaged(EvictNamespaceRequest{0xabc, true});
  refuses_damaged(EvictNamespaceReply{1, 2, 3, 4});
  AgentStatsRecord a{2, 99, "host", "ctl", true, 250, 1 << 30, 1 << 29, 1 << 20, 1 << 20, 0, 3, 1 << 28};
  refuses_damaged(AgentStatsReply{{a, a}});
  AgentStatsReply a_back;
  REQUIRE(decode(encode(AgentStatsReply{{a}}), a_back).ok());
  CHECK(a_back.agents[0].heartbeat_age_ms == 250);
  CHECK(a_back.agents[0].control_address == "ctl");
  a.tenant = "acme";
  REQUIRE(decode(encode(AgentStatsReply{{a}}), a_back).ok());
  CHECK(a_back.agents[0].tenant == "acme");
}

TEST_CASE("isolated tenant regions survive the agent messages", "[rpc][messages][tenants]") {
  RegisterAgentReply reg{3, 1000, false, 7, {{"acme", 64ull << 20}, {"beta", 1ull << 30}}};
  refuses_damaged(reg);
  RegisterAgentReply reg_back;
  REQUIRE(decode(encode(reg), reg_back).ok());
  CHECK(reg_back.isolated == reg.isolated);
  AgentRecord rec;
  rec.agent = 4;
  rec.control_address = "agent-b/acme";
  rec.packed_rkey = "rkey";
  rec.tenant = "acme";
  RegisterAgentRequest req{rec, true};
  refuses_damaged(req);
  RegisterAgentRequest req_back;
  REQUIRE(decode(encode(req), req_back).ok());
  CHECK(req_back.agent.tenant == "acme");
  ListAgentsReply list{9, {rec, rec}};
  refuses_damaged(list);
  ListAgentsReply list_back;
  REQUIRE(decode(encode(list), list_back).ok());
  REQUIRE(list_back.agents.size() == 2);
  CHECK(list_back.agents[1].tenant == "acme");
}

TEST_CASE("operator replies refuse element counts the payload cannot hold", "[rpc][messages]") {
  for (std::string p : {encode(ListNamespacesReply{}), encode(UsageReply{}), encode(AgentStatsReply{})}) {
    p[0] = p[1] = p[2] = '\xff';
    ListNamespacesReply n;
    UsageReply u;
    AgentStatsReply a;
    CHECK(!decode(p, n).ok());
    CHECK(!decode(p, u).ok());
    CHECK(!decode(p, a).ok());
  }
}

TEST_CASE("a usage request with a bad boolean is refused", "[rpc][messages]") {
  std::string p = encode(UsageRequest{true, 1});
  p[0] = 2;
  UsageRequest m;
  CHECK(decode(p, m).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("the leader epoch and shard survive the register and stats replies", "[rpc][messages][ha]") {
  RegisterAgentReply reg{3, 1000, true, 0x1234567890};
  refuses_damaged(reg);
  RegisterAgentReply reg_back;
  REQUIRE(decode(encode(reg), reg_back).ok());
  CHECK(reg_back.epoch == 0x1234567890);
  CHECK(reg_back.send_blocks);
  StatsReply st;
  st.blocks = 9;
  st.unix_ms = -5;
  st.leader = true;
  st.shard = 7;
  st.epoch = 42;
  refuses_damaged(st);
  StatsReply st_back;
  REQUIRE(decode(encode(st), st_back).ok());
  CHECK(st_back.leader);
  CHECK(st_back.shard == 7);
  CHECK(st_back.epoch == 42);
  CHECK(st_back.unix_ms == -5);
}

TEST_CASE("the leader epoch survives placements, commits, releases and pushes", "[rpc][messages][ha]") {
  AllocateReply alloc;
  alloc.results.resize(1);
  alloc.results[0].outcome = AllocateOutcome::kPlaced;
  alloc.results[0].lease = 77;
  alloc.epoch = 0x1234567890;
  refuses_damaged(alloc);
  AllocateReply alloc_back;
  REQUIRE(decode(encode(alloc), alloc_back).ok());
  CHECK(alloc_back.epoch == 0x1234567890);
  CHECK(alloc_back.results[0].lease == 77);

  LeaseBatch commit{{1, 2, 3}, 42};
  refuses_damaged(commit);
  LeaseBatch commit_back;
  REQUIRE(decode(encode(commit), commit_back).ok());
  CHECK(commit_back.epoch == 42);
  CHECK(commit_back.leases.size() == 3);
  // An old build's commit (no epoch) is refused, not read as epoch 0.
  std::string old = encode(commit);
  old.resize(old.size() - 8);
  CHECK_FALSE(decode(old, commit_back).ok());

  LookupReply lookup{88, {LocationWire{1, 1001, 0, 0, 65536, 1}}, 43};
  refuses_damaged(lookup);
  LookupReply lookup_back;
  REQUIRE(decode(encode(lookup), lookup_back).ok());
  CHECK(lookup_back.epoch == 43);
  ReleaseRequest rel{88, 43};
  refuses_damaged(rel);
  ReleaseRequest rel_back;
  REQUIRE(decode(encode(rel), rel_back).ok());
  CHECK(rel_back.lease == 88);
  CHECK(rel_back.epoch == 43);

  InvalidateMessage inv{1, 1001, {SlotWire{0, 0, 65536, 1}}, 44};
  refuses_damaged(inv);
  InvalidateMessage inv_back;
  REQUIRE(decode(encode(inv), inv_back).ok());
  CHECK(inv_back.epoch == 44);
  DrainCopyMessage copy{2, 1002, {}, {}, 45};
  refuses_damaged(copy);
  DrainCopyMessage copy_back;
  REQUIRE(decode(encode(copy), copy_back).ok());
  CHECK(copy_back.epoch == 45);
}
