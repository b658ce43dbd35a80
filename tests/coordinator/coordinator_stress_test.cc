// Randomized mixed operations against CoordinatorCore with an independent
// model of every slot it has handed out: a placement must never overlap a
// slot that is live, leased, quarantined or awaiting its invalidation
// acknowledgement, and the core's own view of each region must equal the
// model at every step.

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "coordinator/coordinator_core.h"
#include "runtime/common/logging.h"
#include "tests/coordinator/core_fixture.h"

using namespace std::chrono_literals;
using kvpool::Clock;
using kvpool::Key128;
using kvpool::NamespaceId;
using kvpool::Status;
using kvpool::StatusCode;
using namespace kvpool::coordinator;
using namespace kvpool::coordinator::testing;

namespace {

struct Occupied {
  std::uint64_t length = 0;  // rounded slot bytes
  Generation generation = 0;
};

struct AgentModel {
  AgentId id{};
  std::string name;
  std::string host;
  std::uint64_t payload_bytes = 0;
  std::uint64_t payload_base = 0;
  std::uint64_t incarnation = 1;
  bool alive = true;
  bool silent = false;                         // stops heartbeating (to be declared dead)
  std::map<std::uint64_t, Occupied> occupied;  // payload-relative offset -> slot
};

struct OpenWrite {
  LeaseId lease{};
  AgentId agent{};
  std::uint64_t incarnation = 0;
};

struct LeasedBlock {
  NamespaceId ns = 0;
  Key128 key;
  AgentId agent{};
  std::uint64_t incarnation = 0;
  bool removed = false;
};

struct HeldRead {
  LeaseId lease{};
  Clock::time_point deadline{};
  std::vector<LeasedBlock> blocks;
};

constexpr std::uint64_t kKeys = 120;

std::uint64_t round_up(std::uint64_t n) {
  return (n + kvpool::pool::kGranule - 1) / kvpool::pool::kGranule * kvpool::pool::kGranule;
}

class Stress {
 public:
  explicit Stress(std::uint64_t seed) : rng_(seed) {
    CoordinatorConfig config;
    config.agent_timeout = 3s;
    config.write_lease_ttl = 10s;
    config.read_lease_ttl = 30s;
    config.write_quarantine = 5s;
    config.invalidation_retry = 2s;
    config.max_evictions_per_call = 64;
    const int policy = static_cast<int>(seed % 3);
    config.placement = policy == 2 ? PlacementPolicy::kSpread : PlacementPolicy::kLocalFirst;
    if (policy == 1) config.high_watermark = config.low_watermark = 1.0;
    auto core = CoordinatorCore::create(config);
    REQUIRE(core);
    kvpool::log::set_log_level("error");  // agents die and restart all the time here
    core_ = std::move(*core);
    namespaces_.push_back(core_->register_namespace(test_namespace(kBlock, "big")).value());
    namespaces_.push_back(core_->register_namespace(test_namespace(3 * 64 * 1024, "small")).value());
    block_bytes_ = {kBlock, 3 * 64 * 1024};
    const std::vector<std::uint64_t> sizes{8, 12, 20};
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      AgentModel m;
      m.name = "agent" + std::to_string(i);
      m.host = "host" + std::to_string(i);
      m.payload_bytes = sizes[i] * kBlock;
      agents_.push_back(m);
      register_agent(agents_.back());
    }
  }

  void run(int steps) {
    for (int step = 0; step < steps; ++step) {
      const int op = static_cast<int>(rng_() % 100);
      if (op < 30) {
        allocate();
      } else if (op < 45) {
        commit();
      } else if (op < 48) {
        abort();
      } else if (op < 58) {
        lookup();
      } else if (op < 63) {
        release();
      } else if (op < 68) {
        remove();
      } else if (op < 85) {
        acknowledge();
      } else if (op < 99) {
        advance();
      } else {
        membership();
      }
      check();
    }
    settle();
  }

 private:
  std::uint64_t pick(std::uint64_t n) { return rng_() % n; }

  void register_agent(AgentModel& m) {
    auto reg = agent_reg(m.name, m.host, m.payload_bytes, m.incarnation);
    auto id = core_->register_agent(reg, now_);
    REQUIRE(id);
    m.id = *id;
    m.alive = true;
    m.silent = false;
    m.occupied.clear();
    m.payload_base = kvpool::pool::RegionLayout::create(reg.region_bytes)->payload_base;
  }

  AgentModel& model_of(AgentId id) {
    for (auto& m : agents_) {
      if (m.id == id) return m;
    }
    FAIL("unknown agent");
    return agents_[0];
  }

  void take_invalidations(std::vector<InvalidateRequest>& reqs) {
    for (auto& r : reqs) in_flight_.push_back(std::move(r));
  }

  void allocate() {
    const std::size_t n = pick(2);
    const NamespaceId ns = namespaces_[n];
    std::vector<BlockRequest> reqs;
    const std::size_t count = 1 + pick(6);
    for (std::size_t i = 0; i < count; ++i) {
      std::uint64_t length = block_bytes_[n];
      if (pick(4) == 0) length = 1 + pick(block_bytes_[n]);
      reqs.push_back(BlockRequest{key(pick(kKeys)), length});
    }
    const std::string host = pick(4) == 0 ? "" : agents_[pick(agents_.size())].host;
    auto r = core_->allocate(ns, reqs, WriterInfo{"w", host}, now_);
    REQUIRE(r);
    REQUIRE(r->items.size() == reqs.size());
    // Evictions of this call free space before (not after) its placements:
    // apply them to the model first. They only move slots to "awaiting
    // acknowledgement", which the model still counts as occupied.
    take_invalidations(r->invalidations);
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      const AllocateItem& item = r->items[i];
      if (item.outcome == AllocateOutcome::kError) {
        const StatusCode c = item.status.code();
        REQUIRE((c == StatusCode::kUnavailable || c == StatusCode::kResourceExhausted));
        continue;
      }
      if (item.outcome != AllocateOutcome::kPlaced) continue;
      AgentModel& m = model_of(item.location.agent);
      REQUIRE(m.alive);
      REQUIRE(item.location.incarnation == m.incarnation);
      REQUIRE(item.location.length == reqs[i].length);
      REQUIRE(item.location.payload_offset >= m.payload_base);
      const std::uint64_t offset = item.location.payload_offset - m.payload_base;
      const std::uint64_t length = round_up(reqs[i].length);
      REQUIRE(offset + length <= m.payload_bytes);
      // The heart of it: no overlap with anything still occupied.
      auto next = m.occupied.lower_bound(offset);
      if (next != m.occupied.end()) {
        INFO("placement at " << offset << " overlaps the slot at " << next->first);
        REQUIRE(next->first >= offset + length);
      }
      if (next != m.occupied.begin()) {
        auto prev = std::prev(next);
        INFO("placement at " << offset << " overlaps the slot at " << prev->first);
        REQUIRE(prev->first + prev->second.length <= offset);
      }
      m.occupied.emplace(offset, Occupied{length, item.location.generation});
      // One writer in eight dies mid-put: its lease must expire on its own.
      if (pick(8) != 0) open_writes_.push_back(OpenWrite{item.lease, item.location.agent, item.location.incarnation});
    }
  }

  std::vector<LeaseId> take_some_writes() {
    std::vector<LeaseId> out;
    for (std::size_t i = 0; i < open_writes_.size();) {
      if (pick(2) == 0) {
        out.push_back(open_writes_[i].lease);
        open_writes_[i] = open_writes_.back();
        open_writes_.pop_back();
      } else {
        ++i;
      }
    }
    return out;
  }

  void commit() {
    std::vector<LeaseId> leases = take_some_writes();
    auto st = core_->commit(leases, now_);
    REQUIRE(st.size() == leases.size());
    for (const auto& s : st) {
      const StatusCode c = s.code();
      REQUIRE((s.ok() || c == StatusCode::kNotFound || c == StatusCode::kFailedPrecondition ||
               c == StatusCode::kUnavailable));
    }
  }

  void abort() {
    std::vector<LeaseId> leases = take_some_writes();
    BatchResult r = core_->abort(leases, now_);
    take_invalidations(r.invalidations);
  }

  void lookup() {
    const NamespaceId ns = namespaces_[pick(2)];
    std::vector<Key128> keys;
    const std::uint64_t start = pick(kKeys);
    for (std::uint64_t k = start; k < start + 1 + pick(4) && k < kKeys; ++k) keys.push_back(key(k));
    const bool lease = pick(2) == 0;
    auto r = core_->lookup(ns, keys, lease, now_);
    REQUIRE(r);
    REQUIRE(r->locations.size() <= keys.size());
    for (const Location& loc : r->locations) {
      AgentModel& m = model_of(loc.agent);
      REQUIRE(m.alive);
      REQUIRE(loc.incarnation == m.incarnation);
      auto it = m.occupied.find(loc.payload_offset - m.payload_base);
      REQUIRE(it != m.occupied.end());
      REQUIRE(it->second.generation == loc.generation);
    }
    if (lease && !r->locations.empty()) {
      HeldRead held{r->read_lease, r->lease_deadline, {}};
      for (std::size_t i = 0; i < r->locations.size(); ++i) {
        held.blocks.push_back(LeasedBlock{ns, keys[i], r->locations[i].agent, r->locations[i].incarnation, false});
      }
      reads_.push_back(std::move(held));
    }
  }

  void release() {
    if (reads_.empty()) return;
    const std::size_t i = pick(reads_.size());
    const Status st = core_->release(reads_[i].lease, now_);
    REQUIRE((st.ok() || st.code() == StatusCode::kNotFound));  // it may have expired
    reads_[i] = std::move(reads_.back());
    reads_.pop_back();
  }

  void remove() {
    const NamespaceId ns = namespaces_[pick(2)];
    std::vector<Key128> keys;
    for (std::size_t i = 0; i < 1 + pick(3); ++i) keys.push_back(key(pick(kKeys)));
    auto r = core_->remove(ns, keys, now_);
    REQUIRE(r);
    take_invalidations(r->invalidations);
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (!r->statuses[i].ok()) continue;
      for (auto& held : reads_) {
        for (auto& b : held.blocks) {
          if (b.ns == ns && b.key == keys[i]) b.removed = true;
        }
      }
    }
  }

  void acknowledge() {
    // Acknowledge a random part of what was sent, sometimes twice.
    std::vector<InvalidateRequest> keep;
    for (auto& req : in_flight_) {
      if (pick(3) == 0) {
        keep.push_back(std::move(req));
        continue;
      }
      const Status st = core_->invalidated(req.agent, req.incarnation, req.slots, now_);
      AgentModel& m = model_of(req.agent);
      if (!m.alive || m.incarnation != req.incarnation) {
        REQUIRE_FALSE(st.ok());
        continue;
      }
      REQUIRE(st.ok());
      for (const SlotRef& ref : req.slots) {
        auto it = m.occupied.find(ref.payload_offset - m.payload_base);
        if (it != m.occupied.end() && it->second.generation == ref.generation) m.occupied.erase(it);
      }
      if (pick(5) == 0) keep.push_back(std::move(req));  // a duplicate acknowledgement later
    }
    in_flight_ = std::move(keep);
  }

  void advance() {
    now_ += std::chrono::milliseconds(pick(700));
    for (auto& m : agents_) {
      if (m.alive && !m.silent) REQUIRE(core_->heartbeat(m.id, m.incarnation, now_).ok());
    }
    TickActions t = core_->tick(now_);
    take_invalidations(t.invalidations);
    for (const DeadAgent& d : t.dead_agents) {
      AgentModel& m = model_of(d.agent);
      // Either the incarnation the model knows died, or an older one a restart replaced.
      REQUIRE(d.incarnation <= m.incarnation);
    }
  }

  void membership() {
    AgentModel& m = agents_[pick(agents_.size())];
    if (!m.alive) {
      ++m.incarnation;
      register_agent(m);
    } else if (pick(2) == 0) {
      ++m.incarnation;  // restart: the old region is gone at once
      register_agent(m);
    } else {
      m.silent = true;  // dies after the heartbeat timeout
    }
  }

  void check() {
    // Follow the core's membership: an agent it declared dead lost its slots.
    for (const AgentView& v : core_->agents()) {
      AgentModel& m = model_of(v.id);
      if (m.alive && !v.alive) {
        REQUIRE(m.silent);
        m.alive = false;
        m.occupied.clear();
      }
      if (!m.alive) continue;
      REQUIRE(v.incarnation == m.incarnation);
      auto slots = core_->slots(v.id);
      REQUIRE(slots);
      std::map<std::uint64_t, Occupied> seen;
      std::uint64_t total = 0;
      for (const SlotView& s : *slots) {
        seen.emplace(s.payload_offset, Occupied{s.length, s.generation});
        total += s.length;
      }
      REQUIRE(seen.size() == m.occupied.size());
      for (const auto& [offset, occ] : m.occupied) {
        auto it = seen.find(offset);
        REQUIRE(it != seen.end());
        REQUIRE(it->second.length == occ.length);
        REQUIRE(it->second.generation == occ.generation);
      }
      REQUIRE(v.used_bytes == total);
    }
    // A read-leased block stays readable while its lease lasts (or is
    // removed, or its agent goes).
    for (const auto& held : reads_) {
      if (now_ > held.deadline) continue;  // expired: no protection left
      for (const auto& b : held.blocks) {
        const AgentModel& m = model_of(b.agent);
        if (b.removed || !m.alive || m.incarnation != b.incarnation) continue;
        auto present = core_->contains(b.ns, std::span<const Key128>(&b.key, 1), now_);
        REQUIRE(present);
        REQUIRE((*present)[0]);
        ++leased_checks_;
      }
    }
    const Status st = core_->check_consistency();
    INFO(st.to_string());
    REQUIRE(st.ok());
  }

  void settle() {
    for (auto& held : reads_) (void)core_->release(held.lease, now_);
    reads_.clear();
    std::vector<LeaseId> leases;
    for (const auto& w : open_writes_) leases.push_back(w.lease);
    open_writes_.clear();
    BatchResult r = core_->abort(leases, now_);
    take_invalidations(r.invalidations);
    // Long enough for orphaned write leases to expire and leave quarantine.
    for (int round = 0; round < 10; ++round) {
      now_ += 3s;
      for (auto& m : agents_) {
        if (m.alive && !m.silent) REQUIRE(core_->heartbeat(m.id, m.incarnation, now_).ok());
      }
      TickActions t = core_->tick(now_);
      take_invalidations(t.invalidations);
      for (auto& req : in_flight_) {
        const AgentModel& m = model_of(req.agent);
        if (m.alive && !m.silent && m.incarnation == req.incarnation) {
          REQUIRE(core_->invalidated(req.agent, req.incarnation, req.slots, now_).ok());
        }
      }
      in_flight_.clear();
    }
    for (const AgentView& v : core_->agents()) {
      if (!v.alive) continue;
      // Settled: every byte in use is a committed block.
      CHECK(v.used_bytes == v.live_bytes);
      CHECK(v.reclaiming_bytes == 0);
      auto slots = core_->slots(v.id);
      std::uint64_t committed = 0;
      for (const SlotView& s : *slots) {
        CHECK(s.state == SlotState::kCommitted);
        committed += s.length;
      }
      CHECK(committed == v.used_bytes);
    }
    const Stats st = core_->stats();
    CHECK(st.write_leases == 0);
    CHECK(st.read_leases == 0);
    REQUIRE(core_->check_consistency().ok());
  }

  std::mt19937_64 rng_;
  std::unique_ptr<CoordinatorCore> core_;
  Clock::time_point now_ = Clock::time_point{} + 1h;
  std::vector<NamespaceId> namespaces_;
  std::vector<std::uint64_t> block_bytes_;
  std::vector<AgentModel> agents_;
  std::vector<OpenWrite> open_writes_;
  std::vector<HeldRead> reads_;
  std::vector<InvalidateRequest> in_flight_;

 public:
  std::uint64_t leased_checks_ = 0;
};

}  // namespace

TEST_CASE("randomized mixed operations never place two live slots on overlapping space", "[coordinator][stress]") {
  for (std::uint64_t seed : {1, 2, 3, 4, 5, 6}) {
    INFO("seed " << seed);
    Stress stress(seed);
    stress.run(3000);
    CHECK(stress.leased_checks_ > 0);
  }
}
