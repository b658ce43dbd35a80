// Layer-wise loads and saves (include/kvpool/gpu.h, LayerTransfer and
// LayerSave) on real GPU tensors and a real pool: a "model" stream that
// writes each layer's KV and saves it, another that waits layer by layer and
// reads what landed; a layer slice corrupted in the pool; a save missing a
// layer; slots of the old format. Skips where no GPU is usable.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>

#include "tests/gpu/gpu_fixture.h"

using namespace kvpool;
using namespace kvpool::gpu;
using namespace kvpool::testing;

namespace {

// Bytes of one layer's runs in a block (2 x segs runs: the layer slice).
std::uint64_t layer_bytes(const KvLayout& l) { return *block_bytes(l) / l.num_layers; }

// The tensors of layer l in Tensors::owned (vLLM paged: one, K and V; else K, V).
std::vector<void*> layer_tensors(const Tensors& t, std::uint32_t l) {
  if (t.layout.kind == KvLayoutKind::kVllmPaged) return {t.owned[l]};
  return {t.owned[2 * l], t.owned[2 * l + 1]};
}

struct Fixture {
  KvLayout layout;
  Tensors t;
  OpenPool p;
  NamespaceId ns = 0;
  std::unique_ptr<KvMover> mover;
  Fixture(KvLayoutKind kind, const std::vector<std::string>& extra = {}, const std::string& tls = {})
      : layout(small_layout(kind)), t(layout), p(open_pool("512MiB", extra, tls)) {
    auto id = (*p.client)->register_namespace(namespace_for(layout, "gpu-layers"));
    REQUIRE(id);
    ns = *id;
    auto m = KvMover::create(**p.client, ns, layout, t.ptrs, {});
    REQUIRE(m);
    mover = std::move(*m);
  }
};

// Saves pages `from` layer by layer as a model would: on `model`, each
// layer's tensors are rewritten (after a host function that sleeps, so a
// save that did not wait for the write would copy the old bytes) and then
// save_layer is called. Returns what each page holds afterwards.
std::vector<std::vector<std::byte>> save_as_model(Fixture& f, const std::vector<Key128>& keys,
                                                  const std::vector<std::uint64_t>& from, cudaStream_t model,
                                                  std::uint32_t skip_layer = UINT32_MAX) {
  auto save = f.mover->begin_save_layers(keys, from);
  REQUIRE(save);
  REQUIRE((*save)->layers() == f.layout.num_layers);
  for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) {
    CUDA_OK(cudaLaunchHostFunc(model, &sleep_50ms, nullptr));
    for (void* tensor : layer_tensors(f.t, l)) CUDA_OK(cudaMemsetAsync(tensor, 0x10 + l, f.t.tensor_bytes, model));
    if (l != skip_layer) REQUIRE((*save)->save_layer(l, model).ok());
  }
  // A layer saved twice and one out of range are refused.
  CHECK((*save)->save_layer(0, model).code() == StatusCode::kInvalidArgument);
  CHECK((*save)->save_layer(f.layout.num_layers, model).code() == StatusCode::kInvalidArgument);
  auto r = (*save)->finish();
  CUDA_OK(cudaStreamSynchronize(model));
  std::vector<std::vector<std::byte>> expect;
  for (auto p : from) expect.push_back(f.t.page_bytes(p));
  if (skip_layer == UINT32_MAX) {
    REQUIRE(r);
    CHECK(r->done == keys.size());
    CHECK(r->put.written == keys.size());
    CHECK(r->stats.path == "mapped");
  } else {
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == StatusCode::kFailedPrecondition);
  }
  return expect;
}

}  // namespace

TEST_CASE("layer-wise saves and loads round-trip bit-exact for each layout", "[gpu][device][layers]") {
  if (!have_gpu()) return;
  for (auto kind : {KvLayoutKind::kVllmPaged, KvLayoutKind::kVllmPagedSplit, KvLayoutKind::kHfContiguous}) {
    DYNAMIC_SECTION(layout_name(kind)) {
      Fixture f(kind);
      cudaStream_t model, reader;
      CUDA_OK(cudaStreamCreateWithFlags(&model, cudaStreamNonBlocking));
      CUDA_OK(cudaStreamCreateWithFlags(&reader, cudaStreamNonBlocking));
      const std::size_t n = 21;
      std::vector<std::uint64_t> from, to;
      for (std::size_t i = 0; i < n; ++i) {
        from.push_back((i * 7 + 3) % 96);
        to.push_back(95 - i);
      }
      auto keys = keys_for(n, 900 + static_cast<int>(kind));
      auto expect = save_as_model(f, keys, from, model);
      // The blocks carry a slice per layer: a mapped get hands out 4 per block.
      {
        auto mg = (*f.p.client)->begin_mapped_get(f.ns, keys);
        REQUIRE(mg);
        CHECK(mg->slices == f.layout.num_layers);
        (*f.p.client)->finish_mapped_get(*mg, 0);
      }
      f.t.poison();
      CUDA_OK(cudaDeviceSynchronize());
      // Half the keys missing from the pool: found() says where the prefix ends.
      auto more = keys;
      more.push_back({12345, 678});
      std::vector<std::uint64_t> to_more = to;
      to_more.push_back(0);
      auto load = f.mover->load_layers(more, to_more, reader);
      REQUIRE(load);
      CHECK((*load)->found() == n);
      REQUIRE((*load)->layers() == f.layout.num_layers);
      // The reader waits layer by layer (a stream wait) and copies what
      // landed; every layer's bytes are in place when its event fires.
      const std::uint64_t lb = layer_bytes(f.layout);
      std::size_t layer_mismatches = 0;
      for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) {
        REQUIRE((*load)->wait_layer(l, reader).ok());
        const auto got = f.t.page_bytes_on(to[n - 1], reader);  // synchronizes `reader` after the wait
        layer_mismatches += std::memcmp(got.data() + l * lb, expect[n - 1].data() + l * lb, lb) != 0;
      }
      CHECK(layer_mismatches == 0);
      CHECK((*load)->wait_layer(f.layout.num_layers, reader).code() == StatusCode::kInvalidArgument);
      auto r = (*load)->wait();
      REQUIRE(r);
      CHECK(r->done == n);
      CHECK(r->get.stopped.code() == StatusCode::kNotFound);
      CHECK(r->stats.path == "mapped");
      std::size_t mismatches = 0;
      for (std::size_t i = 0; i < n; ++i) mismatches += f.t.page_bytes(to[i]) != expect[i];
      CHECK(mismatches == 0);
      cudaStreamDestroy(model);
      cudaStreamDestroy(reader);
    }
  }
}

TEST_CASE("a block corrupted in one layer's slice is reported failed in the same step", "[gpu][device][layers]") {
  if (!have_gpu()) return;
  Fixture f(KvLayoutKind::kVllmPaged);
  auto keys = keys_for(9, 950);
  std::vector<std::uint64_t> pages = {0, 1, 2, 3, 4, 5, 6, 7, 8}, to = {20, 21, 22, 23, 24, 25, 26, 27, 28};
  auto save = f.mover->save(keys, pages, nullptr);
  REQUIRE(save);
  REQUIRE((*save)->wait());
  // Flip a byte in layer 2's slice of block 5 (a stray write in the pool).
  auto mg = (*f.p.client)->begin_mapped_get(f.ns, keys);
  REQUIRE(mg);
  REQUIRE(mg->found == 9);
  mg->slots[5].payload[2 * layer_bytes(f.layout) + 100] ^= std::byte{1};
  (*f.p.client)->finish_mapped_get(*mg, 0);
  for (bool gpu_checksums : {true, false}) {
    INFO("gpu checksums " << gpu_checksums);
    auto o = f.mover->options();
    o.gpu_checksums = gpu_checksums;
    f.mover->set_options(o);
    auto load = f.mover->load_layers(keys, to, nullptr);
    REQUIRE(load);
    CHECK((*load)->found() == 9);  // the pages are filled, the step runs...
    auto r = (*load)->wait();      // ... and the same step learns block 5 is bad
    REQUIRE(r);
    CHECK(r->done == 5);
    CHECK(r->get.stopped.code() == StatusCode::kDataLoss);
  }
}

// Starts layer-wise loads on the mover's thread while in scope (gpu.h,
// load_layers; whatever the default).
struct StartOnThread {
  StartOnThread() { setenv("KVPOOL_GPU_LAYER_START", "thread", 1); }
  ~StartOnThread() { unsetenv("KVPOOL_GPU_LAYER_START"); }
};

TEST_CASE("a layer-wise load returns before its lookup and the stream, not the host, waits for it",
          "[gpu][device][layers]") {
  if (!have_gpu()) return;
  StartOnThread on_thread;
  Fixture f(KvLayoutKind::kVllmPaged);
  cudaStream_t model;
  CUDA_OK(cudaStreamCreateWithFlags(&model, cudaStreamNonBlocking));
  auto keys = keys_for(8, 990);
  std::vector<std::uint64_t> from = {0, 1, 2, 3, 4, 5, 6, 7}, to = {30, 31, 32, 33, 34, 35, 36, 37};
  auto save = f.mover->save(keys, from, nullptr);
  REQUIRE(save);
  REQUIRE((*save)->wait());
  std::vector<std::vector<std::byte>> expect;
  for (auto p : from) expect.push_back(f.t.page_bytes(p));
  f.t.poison();
  CUDA_OK(cudaDeviceSynchronize());
  // The pool stops answering: the lookup waits for it, load_layers does not
  // (it used to block here until the client's timeout, then fail).
  f.p.pool->process.kill(SIGSTOP);
  auto load = f.mover->load_layers(keys, to, model);
  REQUIRE(load);
  for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) REQUIRE((*load)->wait_layer(l, model).ok());
  cudaEvent_t after;
  CUDA_OK(cudaEventCreateWithFlags(&after, cudaEventDisableTiming));
  CUDA_OK(cudaEventRecord(after, model));
  usleep(200000);
  CHECK(cudaEventQuery(after) == cudaErrorNotReady);  // held on the device, before any copy was queued
  f.p.pool->process.kill(SIGCONT);
  CHECK((*load)->found() == keys.size());
  CUDA_OK(cudaEventSynchronize(after));
  // Once the model's stream passed its waits every layer is in (read before
  // wait(), which would synchronise the mover's streams).
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < to.size(); ++i) mismatches += f.t.page_bytes(to[i]) != expect[i];
  CHECK(mismatches == 0);
  auto r = (*load)->wait();
  REQUIRE(r);
  CHECK(r->done == keys.size());
  cudaEventDestroy(after);
  cudaStreamDestroy(model);
}

TEST_CASE("a layer-wise load whose lookup fails releases the waiting stream and reports it", "[gpu][device][layers]") {
  if (!have_gpu()) return;
  StartOnThread on_thread;
  Fixture f(KvLayoutKind::kHfContiguous);
  cudaStream_t model;
  CUDA_OK(cudaStreamCreateWithFlags(&model, cudaStreamNonBlocking));
  auto keys = keys_for(4, 995);
  const std::vector<std::uint64_t> pages = {0, 1, 2, 3};
  f.p.pool->process.kill(SIGKILL);
  (void)f.p.pool->process.wait(Deadline::after(std::chrono::seconds(10)));
  auto load = f.mover->load_layers(keys, pages, model);
  REQUIRE(load);  // the lookup runs on the mover's thread
  for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) REQUIRE((*load)->wait_layer(l, model).ok());
  CUDA_OK(cudaStreamSynchronize(model));  // returns: the failed start raised every layer's counter
  auto r = (*load)->wait();
  REQUIRE_FALSE(r);
  CHECK(r.error().code() != StatusCode::kOk);
  CHECK((*load)->found() == 0);
  // Later loads on the same mover still start (and fail the same way).
  auto again = f.mover->load_layers(keys, pages, model);
  REQUIRE(again);
  CHECK_FALSE((*again)->wait());
  cudaStreamDestroy(model);
}

TEST_CASE("a layer-wise save missing a layer commits nothing", "[gpu][device][layers]") {
  if (!have_gpu()) return;
  Fixture f(KvLayoutKind::kHfContiguous);
  cudaStream_t model;
  CUDA_OK(cudaStreamCreateWithFlags(&model, cudaStreamNonBlocking));
  auto keys = keys_for(6, 960);
  std::vector<std::uint64_t> from = {1, 2, 3, 4, 5, 6};
  save_as_model(f, keys, from, model, /*skip_layer=*/2);
  CHECK((*f.p.client)->lookup(f.ns, keys).value() == 0);
  // The slots went back: the keys can be saved whole now.
  auto again = f.mover->save(keys, from, model);
  REQUIRE(again);
  auto r = (*again)->wait();
  REQUIRE(r);
  CHECK(r->put.written == keys.size());
  cudaStreamDestroy(model);
}

TEST_CASE("layer-wise transfers to an agent over TCP fall back to whole blocks", "[gpu][device][layers]") {
  if (!have_gpu()) return;
  Fixture f(KvLayoutKind::kVllmPaged, {"--tls", "tcp"}, "tcp");
  cudaStream_t model;
  CUDA_OK(cudaStreamCreateWithFlags(&model, cudaStreamNonBlocking));
  auto keys = keys_for(7, 970);
  std::vector<std::uint64_t> from = {10, 11, 12, 13, 14, 15, 16}, to = {40, 41, 42, 43, 44, 45, 46};
  auto save = f.mover->begin_save_layers(keys, from);
  REQUIRE(save);
  for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) REQUIRE((*save)->save_layer(l, model).ok());
  auto saved = (*save)->finish();
  REQUIRE(saved);
  CHECK(saved->done == keys.size());
  CHECK(saved->stats.path == "staged");
  // Every layer saved but never finished: nothing was put.
  {
    auto other = keys_for(3, 975);
    auto dropped = f.mover->begin_save_layers(other, std::vector<std::uint64_t>{20, 21, 22});
    REQUIRE(dropped);
    for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) REQUIRE((*dropped)->save_layer(l, model).ok());
    dropped->reset();
    CUDA_OK(cudaStreamSynchronize(model));
    CHECK((*f.p.client)->lookup(f.ns, other).value() == 0);
  }
  std::vector<std::vector<std::byte>> expect;
  for (auto p : from) expect.push_back(f.t.page_bytes(p));
  f.t.poison();
  CUDA_OK(cudaDeviceSynchronize());
  auto load = f.mover->load_layers(keys, to, model);
  REQUIRE(load);
  CHECK((*load)->found() == keys.size());
  // Every layer's event is the whole transfer's.
  for (std::uint32_t l = 0; l < f.layout.num_layers; ++l) CHECK((*load)->layer_event(l) == (*load)->event());
  REQUIRE((*load)->wait_layer(f.layout.num_layers - 1, model).ok());
  const auto ordered = f.t.page_bytes_on(to.back(), model);
  CHECK(ordered == expect.back());
  auto r = (*load)->wait();
  REQUIRE(r);
  CHECK(r->done == keys.size());
  cudaStreamDestroy(model);
}

TEST_CASE("a slot of the old format is refused by whole and layer-wise loads", "[gpu][device][layers]") {
  if (!have_gpu()) return;
  Fixture f(KvLayoutKind::kVllmPaged);
  auto keys = keys_for(4, 980);
  std::vector<std::uint64_t> pages = {0, 1, 2, 3}, to = {30, 31, 32, 33};
  auto save = f.mover->save(keys, pages, nullptr);
  REQUIRE(save);
  REQUIRE((*save)->wait());
  // Rewrite block 2's header as format version 1 wrote it (version 1,
  // flags 0), resealed: valid in all but its version.
  auto mg = (*f.p.client)->begin_mapped_get(f.ns, keys);
  REQUIRE(mg);
  REQUIRE(mg->found == 4);
  auto rl = pool::RegionLayout::create(mg->slots[2].region_bytes);
  REQUIRE(rl);
  std::byte* h = mg->slots[2].region + rl->header_offset(mg->slots[2].payload - mg->slots[2].region - rl->payload_base);
  (*f.p.client)->finish_mapped_get(*mg, 0);
  auto decoded = pool::decode(std::span<const std::byte, pool::kSlotHeaderBytes>(h, pool::kSlotHeaderBytes));
  REQUIRE(decoded);
  h[4] = std::byte{1};
  h[5] = h[6] = h[7] = std::byte{0};
  std::array<std::byte, 56> sealed;
  std::memcpy(sealed.data(), h, 56);
  const std::uint64_t sum = pool::payload_checksum(sealed);
  for (int b = 0; b < 8; ++b) h[56 + b] = static_cast<std::byte>(sum >> (8 * b));
  auto whole = f.mover->load(keys, to, nullptr);
  REQUIRE(whole);
  auto rw = (*whole)->wait();
  REQUIRE(rw);
  CHECK(rw->done == 2);
  CHECK(rw->get.stopped.code() == StatusCode::kDataLoss);
  CHECK_THAT(rw->get.stopped.message(), Catch::Contains("version"));
  auto layered = f.mover->load_layers(keys, to, nullptr);
  REQUIRE(layered);
  CHECK((*layered)->found() == 2);
  auto rl2 = (*layered)->wait();
  REQUIRE(rl2);
  CHECK(rl2->done == 2);
  CHECK_THAT(rl2->get.stopped.message(), Catch::Contains("version"));
}
