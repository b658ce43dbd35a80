#pragma once
// Helpers for driving CoordinatorCore in tests: a settable clock, agents of
// a chosen payload size (no memory behind them), and a stand-in for the
// agents' side of the invalidation protocol.

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/coordinator_core.h"
#include "pool/slot_header.h"

namespace kvpool::coordinator::testing {

inline constexpr std::uint64_t kMiB = 1024 * 1024;
inline constexpr std::uint64_t kBlock = 1 * kMiB;  // the test namespace's block size

// The smallest region whose payload area is exactly payload_bytes (a
// multiple of the granule).
inline std::uint64_t region_for_payload(std::uint64_t payload_bytes) {
  for (std::uint64_t r = payload_bytes + pool::kGranule;; r += pool::kGranule) {
    auto layout = pool::RegionLayout::create(r);
    if (layout && layout->payload_bytes >= payload_bytes) {
      REQUIRE(layout->payload_bytes == payload_bytes);
      return r;
    }
  }
}

inline Key128 key(std::uint64_t n) { return Key128{n * 0x9e3779b97f4a7c15ull + 1, n}; }

inline NamespaceDescriptor test_namespace(std::uint64_t block_bytes = kBlock, std::string model = "test-model") {
  NamespaceDescriptor d;
  d.model_id = std::move(model);
  d.dtype = "bf16";
  d.num_layers = 1;
  d.num_kv_heads = 1;
  d.head_dim = 128;
  d.tokens_per_block = 16;
  d.layout = "test";
  d.block_bytes = block_bytes;
  return d;
}

inline AgentRegistration agent_reg(const std::string& name, const std::string& host, std::uint64_t payload_bytes,
                                   std::uint64_t incarnation = 1) {
  AgentRegistration r;
  r.worker_address = "ucx-" + name;
  r.packed_rkey = "rkey-" + name;
  r.host_id = host;
  r.control_address = name + ":7000";
  r.region_base = 0x7f0000000000ull;
  r.region_bytes = region_for_payload(payload_bytes);
  r.incarnation = incarnation;
  return r;
}

struct Harness {
  explicit Harness(CoordinatorConfig config = {}) {
    auto c = CoordinatorCore::create(config);
    REQUIRE(c);
    core = std::move(*c);
    auto id = core->register_namespace(test_namespace());
    REQUIRE(id);
    ns = *id;
  }

  AgentId add_agent(const std::string& name, const std::string& host, std::uint64_t blocks,
                    std::uint64_t incarnation = 1) {
    auto id = core->register_agent(agent_reg(name, host, blocks * kBlock, incarnation), now);
    REQUIRE(id);
    return *id;
  }

  // Allocates one key of one block; returns the item.
  AllocateItem alloc(std::uint64_t k, const std::string& host = "", std::uint64_t length = kBlock) {
    BlockRequest req{key(k), length};
    auto r = core->allocate(ns, std::span<const BlockRequest>(&req, 1), WriterInfo{"client", host}, now);
    REQUIRE(r);
    REQUIRE(r->items.size() == 1);
    for (auto& inv : r->invalidations) pending.push_back(std::move(inv));
    return r->items[0];
  }

  // Allocates and commits; REQUIREs success.
  Location put(std::uint64_t k, const std::string& host = "") {
    AllocateItem item = alloc(k, host);
    REQUIRE(item.outcome == AllocateOutcome::kPlaced);
    auto st = core->commit(std::span<const LeaseId>(&item.lease, 1), now);
    REQUIRE(st.size() == 1);
    REQUIRE(st[0].ok());
    return item.location;
  }

  std::vector<Location> lookup(std::vector<std::uint64_t> ks, bool lease = false, LeaseId* out_lease = nullptr) {
    std::vector<Key128> keys;
    for (auto k : ks) keys.push_back(key(k));
    auto r = core->lookup(ns, keys, lease, now);
    REQUIRE(r);
    if (out_lease != nullptr) *out_lease = r->read_lease;
    return r->locations;
  }

  bool present(std::uint64_t k) {
    Key128 kk = key(k);
    auto r = core->contains(ns, std::span<const Key128>(&kk, 1), now);
    REQUIRE(r);
    return (*r)[0];
  }

  // Runs tick and keeps its invalidations (and dead agents) for inspection.
  TickActions tick() {
    TickActions t = core->tick(now);
    for (auto& inv : t.invalidations) pending.push_back(inv);
    return t;
  }

  // The agents' side: acknowledges every invalidation received so far.
  void ack_all() {
    for (const auto& inv : pending) {
      REQUIRE(core->invalidated(inv.agent, inv.incarnation, inv.slots, now).ok());
    }
    pending.clear();
  }

  std::uint64_t pending_slots() const {
    std::uint64_t n = 0;
    for (const auto& inv : pending) n += inv.slots.size();
    return n;
  }

  AgentView view(AgentId id) const {
    for (const auto& v : core->agents()) {
      if (v.id == id) return v;
    }
    FAIL("no such agent");
    return {};
  }

  void advance(std::chrono::nanoseconds d) { now += d; }

  void check() {
    Status st = core->check_consistency();
    INFO(st.to_string());
    REQUIRE(st.ok());
  }

  std::unique_ptr<CoordinatorCore> core;
  NamespaceId ns = 0;
  Clock::time_point now = Clock::time_point{} + std::chrono::hours(1);
  std::vector<InvalidateRequest> pending;
};

inline CoordinatorConfig exact_lru_config(double watermark = 1.0) {
  CoordinatorConfig c;
  c.high_watermark = watermark;
  c.low_watermark = watermark;
  return c;
}

// Committed blocks on an agent (AgentView::blocks also counts blocks whose
// eviction the agent has not acknowledged yet).
inline std::uint64_t blocks_on(Harness& h, AgentId a) {
  auto slots = h.core->slots(a);
  REQUIRE(slots);
  std::uint64_t n = 0;
  for (const SlotView& v : *slots) n += v.state == SlotState::kCommitted ? 1 : 0;
  return n;
}
// Blocks evicted so far, acknowledged or not.
inline std::uint64_t evicted(Harness& h) {
  const Stats st = h.core->stats();
  return st.evictions + st.evicting;
}

}  // namespace kvpool::coordinator::testing
