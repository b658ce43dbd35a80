// Pointer rows layer by layer (include/kvpool/gpu.h, KvMover::load_layer_rows
// and begin_save_layer_rows): what UCM's layer-wise connector does, one dump
// and one load per layer, each with that layer's addresses only
// (ucm/integration/vllm/ucm_connector.py at
// cdd4406794808e1f387e11a5f8893dc738247e61, UCMLayerWiseConnector.save_kv_layer
// and _submit_request_load_tasks_for_layer: extract_block_addrs(...,
// layer_first=True)[layer], K then V). Real GPU tensors in vLLM's K/V-split
// layout, a real pool; skips where no GPU is usable.
#include "tests/gpu/gpu_fixture.h"

using namespace kvpool;
using namespace kvpool::gpu;
using namespace kvpool::testing;

namespace {

// Layer l's row of each page: its K and its V.
std::vector<std::uint64_t> layer_rows(const Tensors& t, const std::vector<std::uint64_t>& pages, std::uint32_t l) {
  auto plan = *make_plan(t.layout);
  std::vector<std::uint64_t> rows;
  for (auto p : pages) {
    rows.push_back(reinterpret_cast<std::uint64_t>(t.ptrs.k[l]) + p * plan.run_bytes);
    rows.push_back(reinterpret_cast<std::uint64_t>(t.ptrs.v[l]) + p * plan.run_bytes);
  }
  return rows;
}

struct LayerRowsFixture {
  KvLayout layout = small_layout(KvLayoutKind::kVllmPagedSplit);
  Tensors t{layout};
  OpenPool p;
  NamespaceId ns = 0;
  std::unique_ptr<KvMover> mover;
  explicit LayerRowsFixture(const GpuOptions& o = {}) : p(open_pool("512MiB")) {
    NamespaceDescriptor d;  // as kvpool's UCM store registers it with kvpool_layers
    d.model_id = "gpu-layer-rows";
    d.dtype = "bytes";
    d.num_layers = layout.num_layers;  // a checksum per layer slice
    d.layout = "ucm-shard-v1";
    d.block_bytes = *block_bytes(layout);
    auto id = (*p.client)->register_namespace(d);
    REQUIRE(id);
    ns = *id;
    auto m = KvMover::create_rows(**p.client, ns, 2 * layout.num_layers, o, layout.num_layers);
    REQUIRE(m);
    mover = std::move(*m);
  }
  std::size_t in_pool(const std::vector<Key128>& keys) { return *(*p.client)->lookup(ns, keys); }
};

std::vector<std::uint64_t> seq(std::uint64_t first, std::size_t n) {
  std::vector<std::uint64_t> v;
  for (std::size_t i = 0; i < n; ++i) v.push_back(first + i);
  return v;
}

}  // namespace

TEST_CASE("pointer rows saved and loaded one layer at a time", "[gpu][device][rows][layers]") {
  if (!have_gpu()) return;
  for (auto save_path : {Path::kMapped, Path::kStaged}) {
    DYNAMIC_SECTION("save path " << static_cast<int>(save_path)) {
      GpuOptions o;
      o.path = save_path;
      LayerRowsFixture f(o);
      const std::size_t n = 10;
      const std::uint32_t layers = f.layout.num_layers;
      auto keys = keys_for(n, 1200 + static_cast<int>(save_path));
      auto from = seq(3, n), to = seq(50, n);
      std::vector<std::vector<std::byte>> expect;
      for (auto p : from) expect.push_back(f.t.page_bytes(p));
      auto save = f.mover->begin_save_layer_rows(keys);
      REQUIRE(save);
      CHECK((*save)->layers() == layers);
      // Layer 0's source is written late on the model's stream, and UCM's
      // event is recorded after it: a save that did not wait would copy
      // the old bytes.
      cudaStream_t model;
      CUDA_OK(cudaStreamCreateWithFlags(&model, cudaStreamNonBlocking));
      cudaEvent_t written;
      CUDA_OK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
      CUDA_OK(cudaLaunchHostFunc(model, &sleep_50ms, nullptr));
      CUDA_OK(cudaMemsetAsync(f.t.ptrs.k[0], 0x5e, f.t.tensor_bytes, model));
      CUDA_OK(cudaEventRecord(written, model));
      for (std::uint32_t l = 0; l < layers; ++l) {
        REQUIRE((*save)->save_layer_rows(l, layer_rows(f.t, from, l), l == 0 ? written : nullptr).ok());
        CHECK(f.in_pool(keys) == 0);  // nothing is committed before every layer is in
      }
      auto saved = (*save)->finish();
      REQUIRE(saved);
      CHECK(saved->done == n);
      CUDA_OK(cudaStreamSynchronize(model));
      expect.clear();
      for (auto p : from) expect.push_back(f.t.page_bytes(p));  // with layer 0's K as the model left it
      // Every reader sees the block in vLLM's order, each slice checked
      // against its entry (a get verifies slices).
      std::vector<std::vector<std::byte>> host(n, std::vector<std::byte>(expect[0].size()));
      std::vector<std::span<std::byte>> spans(host.begin(), host.end());
      auto got = (*f.p.client)->get(f.ns, keys, spans);
      REQUIRE(got);
      CHECK(got->loaded == n);
      CHECK(host == expect);
      // Loads, one layer per call, into other pages (the mapped path).
      f.mover->set_options(GpuOptions{});
      f.t.poison();
      for (std::uint32_t l = 0; l < layers; ++l) {
        auto load = f.mover->load_layer_rows(keys, l, layer_rows(f.t, to, l), nullptr);
        REQUIRE(load);
        auto r = (*load)->wait();
        REQUIRE(r);
        CHECK(r->done == n);
        CHECK(r->stats.path == "mapped");
        if (l == 0) {
          // Only layer 0 arrived: the pages' other layers are still poison.
          auto page = f.t.page_bytes(to[0]);
          const std::size_t slice = page.size() / layers;
          CHECK(std::equal(page.begin(), page.begin() + slice, expect[0].begin()));
          CHECK(std::all_of(page.begin() + slice, page.end(), [](std::byte b) { return b == std::byte{0xA5}; }));
        }
      }
      std::size_t mismatches = 0;
      for (std::size_t i = 0; i < n; ++i) mismatches += f.t.page_bytes(to[i]) != expect[i];
      CHECK(mismatches == 0);
      cudaEventDestroy(written);
      cudaStreamDestroy(model);
    }
  }
}

TEST_CASE("a layer load verifies its own slice: a flipped byte fails only that layer",
          "[gpu][device][rows][layers]") {
  if (!have_gpu()) return;
  LayerRowsFixture f;
  const std::size_t n = 8;
  auto keys = keys_for(n, 1300);
  auto from = seq(0, n), to = seq(40, n);
  auto save = f.mover->begin_save_layer_rows(keys);
  REQUIRE(save);
  for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) {
    REQUIRE((*save)->save_layer_rows(l, layer_rows(f.t, from, l), nullptr).ok());
  }
  REQUIRE((*save)->finish());
  auto mg = (*f.p.client)->begin_mapped_get(f.ns, keys);
  REQUIRE(mg);
  REQUIRE(mg->found == n);
  REQUIRE(mg->slices == f.layout.num_layers);
  const std::uint64_t slice = *block_bytes(f.layout) / f.layout.num_layers;
  mg->slots[5].payload[2 * slice + 100] ^= std::byte{1};  // layer 2 of block 5
  (*f.p.client)->finish_mapped_get(*mg, 0);
  for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) {
    auto load = f.mover->load_layer_rows(keys, l, layer_rows(f.t, to, l), nullptr);
    REQUIRE(load);
    auto r = (*load)->wait();
    REQUIRE(r);
    if (l == 2) {
      CHECK(r->done == 5);
      CHECK(r->get.stopped.code() == StatusCode::kDataLoss);
    } else {
      CHECK(r->done == n);
    }
  }
}

TEST_CASE("layer-wise pointer rows refuse misuse and commit nothing", "[gpu][device][rows][layers]") {
  if (!have_gpu()) return;
  LayerRowsFixture f;
  auto keys = keys_for(3, 1400);
  auto pages = seq(0, 3);
  {
    auto save = f.mover->begin_save_layer_rows(keys);
    REQUIRE(save);
    // The stream form, a layer out of range, a short row, a layer twice.
    CHECK((*save)->save_layer(0, nullptr).code() == StatusCode::kInvalidArgument);
    CHECK((*save)->save_layer_rows(4, layer_rows(f.t, pages, 0), nullptr).code() == StatusCode::kInvalidArgument);
    auto rows = layer_rows(f.t, pages, 0);
    CHECK((*save)->save_layer_rows(0, std::span<const std::uint64_t>(rows.data(), rows.size() - 1), nullptr).code() ==
          StatusCode::kInvalidArgument);
    REQUIRE((*save)->save_layer_rows(0, rows, nullptr).ok());
    CHECK((*save)->save_layer_rows(0, rows, nullptr).code() == StatusCode::kInvalidArgument);
    // Layers 1..3 never came: nothing is committed, and the slots go back.
    CHECK(code_of((*save)->finish()) == StatusCode::kFailedPrecondition);
  }
  CHECK(f.in_pool(keys) == 0);
  // Dropped unfinished: nothing committed either.
  {
    auto save = f.mover->begin_save_layer_rows(keys);
    REQUIRE(save);
    REQUIRE((*save)->save_layer_rows(1, layer_rows(f.t, pages, 1), nullptr).ok());
  }
  CHECK(f.in_pool(keys) == 0);
  // A layer out of range; the staged path (whole blocks only).
  CHECK(code_of(f.mover->load_layer_rows(keys, 4, layer_rows(f.t, pages, 0), nullptr)) ==
        StatusCode::kInvalidArgument);
  GpuOptions staged;
  staged.path = Path::kStaged;
  f.mover->set_options(staged);
  CHECK(code_of(f.mover->load_layer_rows(keys, 0, layer_rows(f.t, pages, 0), nullptr)) ==
        StatusCode::kUnimplemented);
  // Layers that do not divide the runs; the row calls on a layout's mover.
  CHECK(code_of(KvMover::create_rows(**f.p.client, f.ns, 8, {}, 3)) == StatusCode::kInvalidArgument);
  auto ns2 = (*f.p.client)->register_namespace(namespace_for(f.layout, "gpu-layer-rows-layout"));
  REQUIRE(ns2);
  auto layout_mover = KvMover::create(**f.p.client, *ns2, f.layout, f.t.ptrs, {});
  REQUIRE(layout_mover);
  CHECK(code_of((*layout_mover)->load_layer_rows(keys, 0, layer_rows(f.t, pages, 0), nullptr)) ==
        StatusCode::kInvalidArgument);
  CHECK(code_of((*layout_mover)->begin_save_layer_rows(keys)) == StatusCode::kInvalidArgument);
}
