// The GPU path end to end: random KV in real GPU pages, saved into a real
// pool (a standalone agent on this host, over shared memory or TCP), the
// pages poisoned, loaded into other page ids, compared bit for bit. Skips
// (with a warning) where no GPU is usable: CI compiles it, the device runs
// it (bench/gpu/run_all.sh).
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "tests/gpu/gpu_fixture.h"

using namespace kvpool;
using namespace kvpool::gpu;
using namespace kvpool::testing;

namespace {

// Saves `n` pages (an odd count, chunks of 3 blocks: a partial last chunk),
// poisons every page, loads them into other page ids and compares.
void round_trip(Client& client, const KvLayout& layout, GpuOptions opts, std::uint64_t salt,
                const std::string& expect_path) {
  Tensors t(layout);
  auto ns = client.register_namespace(namespace_for(layout, "gpu-test"));
  REQUIRE(ns);
  opts.chunk_bytes = 3 * *block_bytes(layout);
  auto mover = KvMover::create(client, *ns, layout, t.ptrs, opts);
  REQUIRE(mover);
  const std::size_t n = 37;
  std::vector<std::uint64_t> from, to;
  for (std::size_t i = 0; i < n; ++i) {
    from.push_back((i * 7 + 3) % 96);  // scattered page ids
    to.push_back(95 - (i * 5) % 96);
  }
  std::sort(to.begin(), to.end());
  to.erase(std::unique(to.begin(), to.end()), to.end());
  REQUIRE(to.size() >= n);
  std::vector<std::vector<std::byte>> expect;
  for (auto p : from) expect.push_back(t.page_bytes(p));
  auto keys = keys_for(n, salt);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  auto save = (*mover)->save(keys, from, stream);
  REQUIRE(save);
  auto saved = (*save)->wait();
  REQUIRE(saved);
  CHECK(saved->done == n);
  CHECK(saved->put.written == n);
  t.poison();
  CUDA_OK(cudaDeviceSynchronize());
  auto load = (*mover)->load(keys, std::span<const std::uint64_t>(to.data(), n), stream);
  REQUIRE(load);
  // Stream order, before wait(): a copy the caller queues after load() on
  // the same stream sees the loaded bytes (the staged path only when asked).
  const bool ordered_path = expect_path == "mapped" || opts.staged_stream_order;
  CHECK(((*load)->event() != nullptr) == ordered_path);
  if (ordered_path) {
    const std::vector<std::byte> ordered = t.page_bytes_on(to[n - 1], stream);
    CHECK(ordered == expect[n - 1]);
    CHECK(cudaEventQuery((*load)->event()) == cudaSuccess);
  }
  auto loaded = (*load)->wait();
  REQUIRE(loaded);
  CHECK(loaded->done == n);
  CHECK(loaded->get.stopped.ok());
  CUDA_OK(cudaStreamSynchronize(stream));
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) mismatches += t.page_bytes(to[i]) != expect[i];
  CHECK(mismatches == 0);
  // A second save of the same keys writes nothing (dedupe).
  auto again = (*mover)->save(keys, from, stream);
  REQUIRE(again);
  auto r2 = (*again)->wait();
  REQUIRE(r2);
  CHECK(r2->put.deduplicated == n);
  CHECK(saved->stats.path == expect_path);
  // The checksums the save wrote (on the GPU by default) verify on the CPU
  // too: a plain get hashes with libxxhash.
  {
    const auto bb = *block_bytes(layout);
    std::vector<std::vector<std::byte>> host(n, std::vector<std::byte>(bb));
    std::vector<std::span<std::byte>> spans(host.begin(), host.end());
    auto got = client.get(*ns, keys, spans);
    REQUIRE(got);
    CHECK(got->loaded == n);
    if (got->loaded == n) CHECK(host[n - 1] == expect[n - 1]);
  }
  CHECK(loaded->stats.path == expect_path);
  cudaStreamDestroy(stream);
}

}  // namespace

TEST_CASE("gpu pages round-trip bit-exact through a same-host pool", "[gpu][device]") {
  if (!have_gpu()) return;
  auto [pool, client] = open_pool("1GiB");
  std::uint64_t salt = 1;
  for (auto kind : {KvLayoutKind::kVllmPaged, KvLayoutKind::kVllmPagedSplit, KvLayoutKind::kHfContiguous}) {
    for (auto mover : {Mover::kCopyEngine, Mover::kKernel, Mover::kPerPage}) {
      for (auto path : {Path::kMapped, Path::kStaged}) {
        DYNAMIC_SECTION(layout_name(kind) << " mover " << static_cast<int>(mover) << " path "
                                          << static_cast<int>(path)) {
          GpuOptions o;
          o.mover = mover;
          o.path = path;
          o.gpu_checksums = mover != Mover::kPerPage;  // the per-page runs hash on the CPU
          round_trip(**client, small_layout(kind), o, salt, path == Path::kStaged ? "staged" : "mapped");
        }
        ++salt;
      }
    }
  }
}

TEST_CASE("gpu pages round-trip through an agent reached over TCP", "[gpu][device]") {
  if (!have_gpu()) return;
  auto [pool, client] = open_pool("512MiB", {"--tls", "tcp"}, "tcp");
  GpuOptions o;  // auto: the region is not mapped, so staged
  round_trip(**client, small_layout(KvLayoutKind::kVllmPaged), o, 100, "staged");
  // The same, with the caller's stream held for the transfer: a copy queued
  // after load() (before wait()) sees the loaded bytes.
  o.staged_stream_order = true;
  round_trip(**client, small_layout(KvLayoutKind::kVllmPaged), o, 101, "staged");
  CHECK((*client)->stats().transports.find("tcp") != std::string::npos);
}

TEST_CASE("a load over blocks on a mapped and an unmapped agent loads them all", "[gpu][device]") {
  if (!have_gpu()) return;
  auto [pool, client] = open_pool("256MiB");
  auto layout = small_layout(KvLayoutKind::kVllmPaged);
  Tensors t(layout);
  auto ns = (*client)->register_namespace(namespace_for(layout, "gpu-mixed"));
  REQUIRE(ns);
  auto mover = KvMover::create(**client, *ns, layout, t.ptrs, {});
  REQUIRE(mover);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  const std::size_t n = 20, half = n / 2;
  auto keys = keys_for(n, 700);
  std::vector<std::uint64_t> from, to;
  for (std::size_t i = 0; i < n; ++i) {
    from.push_back(i);
    to.push_back(50 + i);
  }
  std::vector<std::vector<std::byte>> expect;
  for (auto p : from) expect.push_back(t.page_bytes(p));
  // The first half on the standalone agent (mapped here), then an agent
  // reached over TCP only (not mapped) joins, emptier: the second half goes
  // there, so the batch's prefix is mapped and its tail is not.
  auto first = (*mover)->save(std::span<const Key128>(keys.data(), half), std::span<const std::uint64_t>(from.data(), half), stream);
  REQUIRE(first);
  auto r1 = (*first)->wait();
  REQUIRE(r1);
  CHECK(r1->stats.path == "mapped");
  auto tcp_agent = start_agent(pool->coordinator, "256MiB", {{"UCX_TLS", "tcp"}});
  REQUIRE(tcp_agent);
  auto admin = raw_client(pool->coordinator);
  REQUIRE(admin);
  REQUIRE(eventually([&] { return stats(*admin).agents_alive == 2; }, scaled(std::chrono::seconds(20))));
  auto second = (*mover)->save(std::span<const Key128>(keys.data() + half, n - half),
                               std::span<const std::uint64_t>(from.data() + half, n - half), stream);
  REQUIRE(second);
  auto r2 = (*second)->wait();
  REQUIRE(r2);
  CHECK(r2->done == n - half);
  CHECK(r2->stats.path == "staged");  // some of it went to the TCP agent
  t.poison();
  CUDA_OK(cudaDeviceSynchronize());
  auto load = (*mover)->load(keys, to, stream);
  REQUIRE(load);
  auto loaded = (*load)->wait();
  REQUIRE(loaded);
  CHECK(loaded->done == n);
  CHECK(loaded->stats.path == "staged");
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) mismatches += t.page_bytes(to[i]) != expect[i];
  CHECK(mismatches == 0);
  cudaStreamDestroy(stream);
}

TEST_CASE("a corrupted pool block is never loaded as data", "[gpu][device]") {
  if (!have_gpu()) return;
  auto [pool, client] = open_pool("512MiB");
  auto layout = small_layout(KvLayoutKind::kVllmPaged);
  Tensors t(layout);
  auto ns = (*client)->register_namespace(namespace_for(layout, "gpu-corrupt"));
  REQUIRE(ns);
  auto mover = KvMover::create(**client, *ns, layout, t.ptrs, {});
  REQUIRE(mover);
  auto keys = keys_for(9, 77);
  std::vector<std::uint64_t> pages = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  auto save = (*mover)->save(keys, pages, nullptr);
  REQUIRE(save);
  REQUIRE((*save)->wait());
  // Flip a byte of block 5's payload in the pool (as a stray write would).
  auto mg = (*client)->begin_mapped_get(*ns, keys);
  REQUIRE(mg);
  REQUIRE(mg->found == 9);
  mg->slots[5].payload[1000] ^= std::byte{1};
  (*client)->finish_mapped_get(*mg, 0);
  std::vector<std::uint64_t> to = {20, 21, 22, 23, 24, 25, 26, 27, 28};
  auto load = (*mover)->load(keys, to, nullptr);
  REQUIRE(load);
  auto r = (*load)->wait();
  REQUIRE(r);
  CHECK(r->done == 5);
  CHECK(r->get.stopped.code() == StatusCode::kDataLoss);
  // With the checksums on the CPU too.
  auto o = (*mover)->options();
  o.gpu_checksums = false;
  (*mover)->set_options(o);
  auto load1 = (*mover)->load(keys, to, nullptr);
  REQUIRE(load1);
  auto r1 = (*load1)->wait();
  REQUIRE(r1);
  CHECK(r1->done == 5);
  // The staged path verifies too.
  o.path = Path::kStaged;
  (*mover)->set_options(o);
  auto load2 = (*mover)->load(keys, to, nullptr);
  REQUIRE(load2);
  auto r2 = (*load2)->wait();
  REQUIRE(r2);
  CHECK(r2->done == 5);
}

TEST_CASE("bad gpu arguments get a clear error", "[gpu][device]") {
  if (!have_gpu()) return;
  auto [pool, client] = open_pool("256MiB");
  auto layout = small_layout(KvLayoutKind::kVllmPagedSplit);
  Tensors t(layout);
  auto ns = (*client)->register_namespace(namespace_for(layout, "gpu-args"));
  REQUIRE(ns);
  auto mover = KvMover::create(**client, *ns, layout, t.ptrs, {});
  REQUIRE(mover);
  auto keys = keys_for(2, 5);
  std::vector<std::uint64_t> bad = {1, 96};
  auto s = (*mover)->save(keys, bad, nullptr);
  REQUIRE(!s);
  CHECK(s.error().code() == StatusCode::kInvalidArgument);
  // A layout whose block size differs from the namespace's.
  auto other = layout;
  other.num_layers = 2;
  KvTensors two{{t.ptrs.k[0], t.ptrs.k[1]}, {t.ptrs.v[0], t.ptrs.v[1]}};
  auto m2 = KvMover::create(**client, *ns, other, two, {});
  REQUIRE(!m2);
  CHECK(m2.error().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a mover going away leaves the region registered for the others", "[gpu][device]") {
  if (!have_gpu()) return;
  auto [pool, client] = open_pool("256MiB");
  auto layout = small_layout(KvLayoutKind::kVllmPagedSplit);
  Tensors t(layout);
  auto ns = (*client)->register_namespace(namespace_for(layout, "gpu-share"));
  REQUIRE(ns);
  auto a = KvMover::create(**client, *ns, layout, t.ptrs, {});
  auto b = KvMover::create(**client, *ns, layout, t.ptrs, {});
  REQUIRE(a);
  REQUIRE(b);
  auto keys = keys_for(4, 501);
  std::vector<std::uint64_t> from = {10, 11, 12, 13}, to = {50, 51, 52, 53};
  std::vector<std::vector<std::byte>> expect;
  for (auto p : from) expect.push_back(t.page_bytes(p));
  auto sb = (*b)->save(keys_for(1, 502), std::vector<std::uint64_t>{0}, nullptr);  // b registers the region too
  REQUIRE(sb);
  REQUIRE((*sb)->wait());
  sb->reset();
  auto sa = (*a)->save(keys, from, nullptr);
  REQUIRE(sa);
  REQUIRE((*sa)->wait());
  sa->reset();
  a->reset();  // releases its hold on the region
  auto l = (*b)->load(keys, to, nullptr);
  REQUIRE(l);
  auto r = (*l)->wait();
  REQUIRE(r);
  CHECK(r->done == keys.size());
  for (std::size_t i = 0; i < to.size(); ++i) CHECK(t.page_bytes(to[i]) == expect[i]);
}
