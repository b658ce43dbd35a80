// Pointer rows (include/kvpool/gpu.h, KvMover::create_rows): blocks given
// per call as rows of device addresses, the way UCM's store interface gives
// them (ucm/integration/vllm/ucm_connector.py, KVCacheLayout.
// extract_block_addrs: per block, layer by layer, K then V, each at
// base + block_id * tensor_size). Real GPU tensors in vLLM's K/V-split
// layout, a real pool; skips where no GPU is usable.
#include "tests/gpu/gpu_fixture.h"

using namespace kvpool;
using namespace kvpool::gpu;
using namespace kvpool::testing;

namespace {

// UCM's rows for `pages`: per page, K0, V0, K1, V1, ... of that page.
std::vector<std::uint64_t> ucm_rows(const Tensors& t, const std::vector<std::uint64_t>& pages) {
  auto plan = *make_plan(t.layout);
  std::vector<std::uint64_t> rows;
  for (auto p : pages) {
    for (std::uint32_t l = 0; l < t.layout.num_layers; ++l) {
      rows.push_back(reinterpret_cast<std::uint64_t>(t.ptrs.k[l]) + p * plan.run_bytes);
      rows.push_back(reinterpret_cast<std::uint64_t>(t.ptrs.v[l]) + p * plan.run_bytes);
    }
  }
  return rows;
}

struct RowsFixture {
  KvLayout layout = small_layout(KvLayoutKind::kVllmPagedSplit);
  Tensors t{layout};
  OpenPool p;
  NamespaceId ns = 0;
  std::unique_ptr<KvMover> mover;
  explicit RowsFixture(const GpuOptions& o = {}) : p(open_pool("512MiB")) {
    NamespaceDescriptor d;  // as kvpool's UCM store registers it: bytes only
    d.model_id = "gpu-rows";
    d.dtype = "bytes";
    d.layout = "ucm-shard-v1";
    d.block_bytes = *block_bytes(layout);
    auto id = (*p.client)->register_namespace(d);
    REQUIRE(id);
    ns = *id;
    auto m = KvMover::create_rows(**p.client, ns, 2 * layout.num_layers, o);
    REQUIRE(m);
    mover = std::move(*m);
  }
};

}  // namespace

TEST_CASE("pointer rows round-trip bit-exact on every path and mover", "[gpu][device][rows]") {
  if (!have_gpu()) return;
  std::uint64_t salt = 900;
  for (auto mover : {Mover::kCopyEngine, Mover::kKernel, Mover::kPerPage}) {
    for (auto path : {Path::kMapped, Path::kStaged}) {
      DYNAMIC_SECTION("mover " << static_cast<int>(mover) << " path " << static_cast<int>(path)) {
        GpuOptions o;
        o.mover = mover;
        o.path = path;
        RowsFixture f(o);
        const std::size_t n = 12;
        auto keys = keys_for(n, ++salt);
        std::vector<std::uint64_t> from, to;
        for (std::size_t i = 0; i < n; ++i) {
          from.push_back(3 * i + 1);
          to.push_back(60 + i);
        }
        // The "model" writes the source pages after a delay and records the
        // event UCM passes as dump_data's prerequisite: a save that did not
        // wait for it would copy the old bytes.
        cudaStream_t model;
        CUDA_OK(cudaStreamCreateWithFlags(&model, cudaStreamNonBlocking));
        cudaEvent_t written;
        CUDA_OK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
        CUDA_OK(cudaLaunchHostFunc(model, &sleep_50ms, nullptr));
        for (void* tensor : f.t.owned) CUDA_OK(cudaMemsetAsync(tensor, 0x3c, f.t.tensor_bytes / 2, model));
        CUDA_OK(cudaEventRecord(written, model));
        auto save = f.mover->save_rows(keys, ucm_rows(f.t, from), nullptr, written);
        REQUIRE(save);
        auto saved = (*save)->wait();
        REQUIRE(saved);
        CHECK(saved->done == n);
        CHECK(saved->stats.path == (path == Path::kStaged ? "staged" : "mapped"));
        CUDA_OK(cudaStreamSynchronize(model));
        std::vector<std::vector<std::byte>> expect;
        for (auto p : from) expect.push_back(f.t.page_bytes(p));
        // The pool block is the page in vLLM's block order (layer, K/V):
        // what a layout's mover and every other reader see.
        std::vector<std::vector<std::byte>> host(n, std::vector<std::byte>(expect[0].size()));
        std::vector<std::span<std::byte>> spans(host.begin(), host.end());
        auto got = (*f.p.client)->get(f.ns, keys, spans);
        REQUIRE(got);
        CHECK(got->loaded == n);
        CHECK(host == expect);
        f.t.poison();
        CUDA_OK(cudaDeviceSynchronize());
        auto load = f.mover->load_rows(keys, ucm_rows(f.t, to), nullptr);
        REQUIRE(load);
        auto loaded = (*load)->wait();
        REQUIRE(loaded);
        CHECK(loaded->done == n);
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < n; ++i) mismatches += f.t.page_bytes(to[i]) != expect[i];
        CHECK(mismatches == 0);
        cudaEventDestroy(written);
        cudaStreamDestroy(model);
      }
    }
  }
}

TEST_CASE("a corrupted pool block is not loaded through pointer rows", "[gpu][device][rows]") {
  if (!have_gpu()) return;
  for (auto path : {Path::kMapped, Path::kStaged}) {
    DYNAMIC_SECTION("path " << static_cast<int>(path)) {
      GpuOptions o;
      o.path = path;
      RowsFixture f(o);
      auto keys = keys_for(9, 950 + static_cast<int>(path));
      std::vector<std::uint64_t> from = {0, 1, 2, 3, 4, 5, 6, 7, 8}, to = {20, 21, 22, 23, 24, 25, 26, 27, 28};
      auto save = f.mover->save_rows(keys, ucm_rows(f.t, from), nullptr);
      REQUIRE(save);
      REQUIRE((*save)->wait());
      auto mg = (*f.p.client)->begin_mapped_get(f.ns, keys);
      REQUIRE(mg);
      REQUIRE(mg->found == 9);
      mg->slots[5].payload[1000] ^= std::byte{1};
      (*f.p.client)->finish_mapped_get(*mg, 0);
      auto load = f.mover->load_rows(keys, ucm_rows(f.t, to), nullptr);
      REQUIRE(load);
      auto r = (*load)->wait();
      REQUIRE(r);
      CHECK(r->done == 5);
      CHECK(r->get.stopped.code() == StatusCode::kDataLoss);
    }
  }
}

TEST_CASE("bad pointer rows get a clear error", "[gpu][device][rows]") {
  if (!have_gpu()) return;
  RowsFixture f;
  auto keys = keys_for(2, 990);
  auto rows = ucm_rows(f.t, {0, 1});
  // One address short, a null one, a misaligned one.
  CHECK(code_of(f.mover->save_rows(keys, std::span<const std::uint64_t>(rows.data(), rows.size() - 1), nullptr)) ==
        StatusCode::kInvalidArgument);
  auto bad = rows;
  bad[3] = 0;
  CHECK(code_of(f.mover->load_rows(keys, bad, nullptr)) == StatusCode::kInvalidArgument);
  bad[3] = rows[3] + 8;
  CHECK(code_of(f.mover->save_rows(keys, bad, nullptr)) == StatusCode::kInvalidArgument);
  // Pages to a rows mover, rows to a layout's mover.
  std::vector<std::uint64_t> pages = {0, 1};
  CHECK(code_of(f.mover->save(keys, pages, nullptr)) == StatusCode::kInvalidArgument);
  auto ns2 = (*f.p.client)->register_namespace(namespace_for(f.layout, "gpu-rows-layout"));
  REQUIRE(ns2);
  auto layout_mover = KvMover::create(**f.p.client, *ns2, f.layout, f.t.ptrs, {});
  REQUIRE(layout_mover);
  CHECK(code_of((*layout_mover)->save_rows(keys, rows, nullptr)) == StatusCode::kInvalidArgument);
  // Runs that do not split the block evenly.
  auto odd = KvMover::create_rows(**f.p.client, f.ns, 3, {});
  CHECK(code_of(odd) == StatusCode::kInvalidArgument);
  // Nothing was left behind by the refused calls: the keys are not in the pool.
  CHECK(*(*f.p.client)->lookup(f.ns, keys) == 0);
}
