// coordinator_bench: the coordinator core's own memory and speed, in process.
//
// Synthetic agents of virtual size (nothing behind them: the core only does
// offset arithmetic) take committed blocks until each checkpoint; at each
// one the bench reports the resident-set growth per block (RSS delta from
// /proc/self/statm, so every per-block structure counts: slab entry, both
// hash indices, LRU links, allocator state, malloc overhead) next to the
// core's own accounting, and the single-thread throughput of
// allocate+commit and of prefix lookups (keys/s, batches of --batch keys).
// Further rows: placement with the spread policy, and allocate+commit in
// steady state with eviction (a full agent, invalidations acknowledged
// after every batch).
//
//   coordinator_bench                       # 100 agents x 1 TiB, 1 MiB blocks, 10^6 and 10^7 blocks
//   coordinator_bench --checkpoints 1000000,10000000,100000000

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/coordinator_core.h"
#include "runtime/common/logging.h"
#include "runtime/common/units.h"

using namespace kvpool;
using namespace kvpool::coordinator;

namespace {

struct Options {
  std::uint32_t agents = 100;
  std::string agent_size = "1TiB";
  std::string block_size = "1MiB";
  std::uint32_t batch = 64;
  std::vector<std::uint64_t> checkpoints = {1000000, 10000000};
  std::uint64_t lookup_keys = 1000000;
  std::uint64_t side_blocks = 1000000;  // for the spread and eviction rows
};

std::uint64_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

// Keys are XXH3 hashes in real use: random 128-bit values here.
Key128 key_of(std::uint64_t n) {
  auto mix = [](std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  return Key128{mix(2 * n), mix(2 * n + 1)};
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

NamespaceDescriptor bench_namespace(std::uint64_t block_bytes) {
  NamespaceDescriptor d;
  d.model_id = "bench";
  d.dtype = "bf16";
  d.num_layers = 1;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = 1;
  d.layout = "bench";
  d.block_bytes = block_bytes;
  return d;
}

struct Bench {
  std::unique_ptr<CoordinatorCore> core;
  NamespaceId ns = 0;
  std::vector<std::string> hosts;
  std::uint64_t block_bytes = 0;
  Clock::time_point now = Clock::now();
};

Bench make_bench(const CoordinatorConfig& config, std::uint32_t agents, std::uint64_t agent_bytes,
                 std::uint64_t block_bytes) {
  Bench b;
  b.core = CoordinatorCore::create(config).value();
  b.ns = b.core->register_namespace(bench_namespace(block_bytes)).value();
  b.block_bytes = block_bytes;
  for (std::uint32_t i = 0; i < agents; ++i) {
    AgentRegistration r;
    r.host_id = "host-" + std::to_string(i);
    r.control_address = "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256) + ":7000";
    r.worker_address = "worker-" + std::to_string(i);
    r.packed_rkey = "rkey";
    r.region_bytes = agent_bytes;
    r.incarnation = 1;
    b.core->register_agent(r, b.now).value();
    b.hosts.push_back(r.host_id);
  }
  return b;
}

// Allocates and commits blocks [from, to) in batches; returns keys/s. With
// ack, every invalidation is acknowledged after each batch (the agents'
// side), and a key that must wait for one is retried.
double fill(Bench& b, std::uint64_t from, std::uint64_t to, std::uint32_t batch, bool ack) {
  std::vector<BlockRequest> reqs;
  std::vector<LeaseId> leases;
  std::uint64_t host = 0;
  const Clock::time_point t0 = Clock::now();
  for (std::uint64_t k = from; k < to;) {
    reqs.clear();
    for (std::uint64_t i = 0; i < batch && k + i < to; ++i) reqs.push_back(BlockRequest{key_of(k + i), b.block_bytes});
    WriterInfo writer{"bench", b.hosts[host++ % b.hosts.size()]};
    auto r = b.core->allocate(b.ns, reqs, writer, b.now);
    if (!r) {
      std::fprintf(stderr, "allocate: %s\n", r.error().to_string().c_str());
      std::exit(1);
    }
    leases.clear();
    std::uint64_t placed = 0;
    for (const AllocateItem& item : r->items) {
      if (item.outcome == AllocateOutcome::kPlaced) {
        leases.push_back(item.lease);
        ++placed;
      } else if (item.outcome == AllocateOutcome::kError && item.status.code() == StatusCode::kUnavailable && ack) {
        break;  // retried after the acknowledgements below
      } else {
        std::fprintf(stderr, "block %llu: outcome %d %s\n", static_cast<unsigned long long>(k + placed),
                     static_cast<int>(item.outcome), item.status.to_string().c_str());
        std::exit(1);
      }
    }
    for (const Status& st : b.core->commit(leases, b.now)) {
      if (!st.ok()) {
        std::fprintf(stderr, "commit: %s\n", st.to_string().c_str());
        std::exit(1);
      }
    }
    if (ack) {
      for (const InvalidateRequest& inv : r->invalidations) {
        (void)b.core->invalidated(inv.agent, inv.incarnation, inv.slots, b.now);
      }
    }
    // Placements are contiguous from the batch start until the first retry.
    k += placed;
  }
  return static_cast<double>(to - from) / seconds_since(t0);
}

// Prefix lookups of runs of `batch` consecutive committed keys.
double lookups(Bench& b, std::uint64_t present, std::uint64_t total, std::uint32_t batch, bool lease) {
  std::vector<Key128> keys(batch);
  std::uint64_t x = 12345, hits = 0, asked = 0;
  const Clock::time_point t0 = Clock::now();
  for (; asked < total; asked += batch) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const std::uint64_t start = (x >> 11) % (present - batch);
    for (std::uint32_t i = 0; i < batch; ++i) keys[i] = key_of(start + i);
    // As the server asks (a miss on an evicting block is reported).
    auto r = b.core->lookup(b.ns, keys, lease, b.now, /*report_evicting=*/true);
    hits += r->locations.size();
    if (lease && r->read_lease != LeaseId{}) (void)b.core->release(r->read_lease, b.now);
  }
  const double rate = static_cast<double>(asked) / seconds_since(t0);
  if (hits != asked) {
    // Only when the pool filled past its high watermark and evicted.
    std::fprintf(stderr, "note: lookups hit %llu of %llu keys (evictions)\n", static_cast<unsigned long long>(hits),
                 static_cast<unsigned long long>(asked));
  }
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"coordinator_bench: memory per block and single-thread throughput of the coordinator core"};
  app.add_option("--agents", o.agents, "synthetic agents");
  app.add_option("--agent-size", o.agent_size, "virtual region size of each agent");
  app.add_option("--block-size", o.block_size, "block size");
  app.add_option("--batch", o.batch, "keys per allocate / lookup call");
  app.add_option("--checkpoints", o.checkpoints, "committed-block counts to measure at")->delimiter(',');
  app.add_option("--lookup-keys", o.lookup_keys, "keys looked up per measurement");
  app.add_option("--side-blocks", o.side_blocks, "blocks for the spread and eviction rows (0: skip)");
  CLI11_PARSE(app, argc, argv);
  log::set_log_level("warn");

  auto agent_bytes = parse_size(o.agent_size);
  auto block_bytes = parse_size(o.block_size);
  if (!agent_bytes || !block_bytes) {
    std::fprintf(stderr, "bad size\n");
    return 2;
  }
  std::printf("coordinator_bench: %u agents x %s, %s blocks, batches of %u, single thread\n", o.agents,
              format_size(*agent_bytes).c_str(), format_size(*block_bytes).c_str(), o.batch);

  const std::uint64_t rss0 = rss_bytes();
  Bench b = make_bench(CoordinatorConfig{}, o.agents, *agent_bytes, *block_bytes);
  const std::uint64_t rss_base = rss_bytes();
  std::printf("baseline RSS %.1f MiB (agents and allocators: %.1f MiB)\n\n", rss_base / 1048576.0,
              (rss_base - rss0) / 1048576.0);
  std::printf("%12s %10s %10s %10s %14s %14s %14s %10s\n", "blocks", "RSS MiB", "B/block", "index B/b",
              "alloc+commit/s", "lookup keys/s", "lookup+lease/s", "fill s");

  std::uint64_t have = 0;
  for (std::uint64_t target : o.checkpoints) {
    if (target <= have) continue;
    const Clock::time_point t0 = Clock::now();
    const double put_rate = fill(b, have, target, o.batch, /*ack=*/false);
    const double fill_s = seconds_since(t0);
    have = target;
    const std::uint64_t rss = rss_bytes();
    const MemoryFootprint m = b.core->memory();
    const double per_block = static_cast<double>(rss - rss_base) / static_cast<double>(have);
    const double index_per_block =
        static_cast<double>(m.slab_bytes + m.key_index_bytes + m.slot_index_bytes) / static_cast<double>(have);
    const std::uint64_t n = std::min<std::uint64_t>(o.lookup_keys, have);
    const double look_rate = lookups(b, have, n, o.batch, false);
    const double lease_rate = lookups(b, have, n, o.batch, true);
    std::printf("%12llu %10.1f %10.1f %10.1f %14.0f %14.0f %14.0f %10.1f\n", static_cast<unsigned long long>(have),
                rss / 1048576.0, per_block, index_per_block, put_rate, look_rate, lease_rate, fill_s);
    std::fflush(stdout);
  }
  const Stats st = b.core->stats();
  std::printf("\ncommitted %llu blocks, %.2f%% of %s, %llu evictions\n", static_cast<unsigned long long>(st.blocks),
              100.0 * static_cast<double>(st.used_bytes) / static_cast<double>(st.capacity_bytes),
              format_size(st.capacity_bytes).c_str(), static_cast<unsigned long long>(st.evictions + st.evicting));
  b = Bench{};

  if (o.side_blocks > 0) {
    CoordinatorConfig spread;
    spread.placement = PlacementPolicy::kSpread;
    Bench s = make_bench(spread, o.agents, *agent_bytes, *block_bytes);
    const double spread_rate = fill(s, 0, o.side_blocks, o.batch, false);
    std::printf("spread placement over %u agents: %.0f alloc+commit/s (%llu blocks)\n", o.agents, spread_rate,
                static_cast<unsigned long long>(o.side_blocks));
    s = Bench{};

    // One agent holding side_blocks / 10 blocks, written 10x over: each
    // allocation past the watermark evicts (high 0.95 / low 0.90).
    const std::uint64_t small_agent = (o.side_blocks / 10) * *block_bytes + (o.side_blocks / 10 + 2) * 64 * 1024;
    Bench e = make_bench(CoordinatorConfig{}, 1, small_agent, *block_bytes);
    const double evict_rate = fill(e, 0, o.side_blocks, o.batch, true);
    const Stats es = e.core->stats();
    std::printf("steady state with eviction (1 agent of %.1f GiB): %.0f alloc+commit/s, %llu evictions\n",
                static_cast<double>(es.capacity_bytes) / (1 << 30), evict_rate,
                static_cast<unsigned long long>(es.evictions + es.evicting));
  }
  return 0;
}
