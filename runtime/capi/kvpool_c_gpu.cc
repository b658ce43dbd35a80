// The C API's GPU calls (include/kvpool/kvpool.h, "gpu") over kvpool::gpu::KvMover
// (include/kvpool/gpu.h), under the same rules as kvpool_c.cc: every entry
// point records its status for the calling thread and lets no C++ exception out.

#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <utility>

#include "kvpool/gpu.h"
#include "kvpool/kvpool.h"
#include "runtime/capi/capi_internal.h"

using namespace kvpool::capi;

struct kvpool_gpu_mover {
  std::unique_ptr<kvpool::gpu::KvMover> mover;
};
struct kvpool_gpu_transfer {
  std::unique_ptr<kvpool::gpu::Transfer> transfer;
  kvpool::gpu::LayerTransfer* layers = nullptr;  // the same object, when layer-wise
};
struct kvpool_gpu_layer_save {
  std::unique_ptr<kvpool::gpu::LayerSave> save;
};

namespace {

kvpool_status_t to_layout(const kvpool_gpu_layout_t* in, kvpool::gpu::KvLayout& out) {
  if (in == nullptr || in->struct_size < sizeof(kvpool_gpu_layout_t)) return invalid("kvpool_gpu_layout_t: bad struct_size");
  if (in->kind > KVPOOL_GPU_HF_CONTIGUOUS) return invalid("kvpool_gpu_layout_t: unknown kind");
  out.kind = static_cast<kvpool::gpu::KvLayoutKind>(in->kind);
  out.dtype = in->dtype == nullptr ? "bf16" : in->dtype;
  out.num_layers = in->num_layers;
  out.num_kv_heads = in->num_kv_heads;
  out.head_dim = in->head_dim;
  out.tokens_per_block = in->tokens_per_block;
  out.num_pages = in->num_pages;
  out.batch = in->batch;
  out.max_seq = in->max_seq;
  return KVPOOL_OK;
}

kvpool_status_t to_gpu_options(const kvpool_gpu_options_t* in, kvpool::gpu::GpuOptions& out) {
  if (in == nullptr) return KVPOOL_OK;
  if (in->struct_size < sizeof(kvpool_gpu_options_t)) return invalid("kvpool_gpu_options_t: bad struct_size");
  if (in->path > 2 || in->mover > 2) return invalid("kvpool_gpu_options_t: unknown path or mover");
  out.path = static_cast<kvpool::gpu::Path>(in->path);
  out.mover = static_cast<kvpool::gpu::Mover>(in->mover);
  if (in->chunk_bytes != 0) out.chunk_bytes = in->chunk_bytes;
  out.verify_loads = in->verify_loads != 0;
  if (in->hash_threads != 0) out.hash_threads = in->hash_threads;
  out.device = in->device;
  out.gpu_checksums = in->gpu_checksums != 0;
  out.staged_stream_order = in->staged_stream_order != 0;
  return KVPOOL_OK;
}

kvpool_status_t gpu_transfer(bool save, kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* pages,
                             size_t num_keys, void* stream, kvpool_gpu_transfer_t** transfer_out) {
  if (mover == nullptr || transfer_out == nullptr) return invalid("mover or transfer_out is NULL");
  if (num_keys > 0 && (keys == nullptr || pages == nullptr)) return invalid("keys or pages is NULL");
  auto k = to_keys(keys, num_keys);
  std::span<const std::uint64_t> p(pages, num_keys);
  auto s = static_cast<CUstream_st*>(stream);
  auto t = save ? mover->mover->save(k, p, s) : mover->mover->load(k, p, s);
  if (!t) return record(t.error());
  *transfer_out = new kvpool_gpu_transfer{std::move(*t)};
  return ok();
}

}  // namespace

void kvpool_gpu_layout_init(kvpool_gpu_layout_t* layout) {
  if (layout == nullptr) return;
  std::memset(layout, 0, sizeof(*layout));
  layout->struct_size = sizeof(*layout);
  layout->tokens_per_block = 16;
  layout->batch = 1;
}

kvpool_status_t kvpool_gpu_layout_block_bytes(const kvpool_gpu_layout_t* layout, uint64_t* bytes_out) {
  return guarded("kvpool_gpu_layout_block_bytes", [&] {
    if (bytes_out == nullptr) return invalid("bytes_out is NULL");
    kvpool::gpu::KvLayout l;
    if (auto s = to_layout(layout, l); s != KVPOOL_OK) return s;
    auto b = kvpool::gpu::block_bytes(l);
    if (!b) return record(b.error());
    *bytes_out = *b;
    return ok();
  });
}

const char* kvpool_gpu_layout_name(kvpool_gpu_layout_kind_t kind) {
  switch (kind) {
    case KVPOOL_GPU_VLLM_PAGED: return "vllm-paged";
    case KVPOOL_GPU_VLLM_PAGED_SPLIT: return "vllm-paged-split";
    case KVPOOL_GPU_HF_CONTIGUOUS: return "hf-contiguous";
  }
  return "unknown";
}

void kvpool_gpu_options_init(kvpool_gpu_options_t* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof(*options));
  options->struct_size = sizeof(*options);
  options->verify_loads = 1;
  options->gpu_checksums = 1;
  options->device = -1;
}

kvpool_status_t kvpool_gpu_mover_create(kvpool_client_t* client, uint64_t namespace_id,
                                        const kvpool_gpu_layout_t* layout, void* const* k, void* const* v,
                                        const kvpool_gpu_options_t* options, kvpool_gpu_mover_t** mover_out) {
  return guarded("kvpool_gpu_mover_create", [&] {
    if (client == nullptr || mover_out == nullptr) return invalid("client or mover_out is NULL");
    kvpool::gpu::KvLayout l;
    if (auto s = to_layout(layout, l); s != KVPOOL_OK) return s;
    kvpool::gpu::GpuOptions o;
    if (auto s = to_gpu_options(options, o); s != KVPOOL_OK) return s;
    if (k == nullptr) return invalid("k is NULL");
    kvpool::gpu::KvTensors t;
    t.k.assign(k, k + l.num_layers);
    if (v != nullptr) t.v.assign(v, v + l.num_layers);
    auto m = kvpool::gpu::KvMover::create(*client->client, namespace_id, l, t, o);
    if (!m) return record(m.error());
    *mover_out = new kvpool_gpu_mover{std::move(*m)};
    return ok();
  });
}

void kvpool_gpu_mover_destroy(kvpool_gpu_mover_t* mover) {
  (void)guarded("kvpool_gpu_mover_destroy", [&] {
    delete mover;
    return ok();
  });
}

kvpool_status_t kvpool_gpu_mover_set_options(kvpool_gpu_mover_t* mover, const kvpool_gpu_options_t* options) {
  return guarded("kvpool_gpu_mover_set_options", [&] {
    if (mover == nullptr || options == nullptr) return invalid("mover or options is NULL");
    kvpool::gpu::GpuOptions o;
    if (auto s = to_gpu_options(options, o); s != KVPOOL_OK) return s;
    mover->mover->set_options(o);
    return ok();
  });
}

kvpool_status_t kvpool_gpu_row_mover_create(kvpool_client_t* client, uint64_t namespace_id, uint32_t units,
                                            const kvpool_gpu_options_t* options, kvpool_gpu_mover_t** mover_out) {
  return kvpool_gpu_layer_row_mover_create(client, namespace_id, units, 1, options, mover_out);
}

kvpool_status_t kvpool_gpu_layer_row_mover_create(kvpool_client_t* client, uint64_t namespace_id, uint32_t units,
                                                  uint32_t layers, const kvpool_gpu_options_t* options,
                                                  kvpool_gpu_mover_t** mover_out) {
  return guarded("kvpool_gpu_layer_row_mover_create", [&] {
    if (client == nullptr || mover_out == nullptr) return invalid("client or mover_out is NULL");
    kvpool::gpu::GpuOptions o;
    if (auto s = to_gpu_options(options, o); s != KVPOOL_OK) return s;
    auto m = kvpool::gpu::KvMover::create_rows(*client->client, namespace_id, units, o, layers);
    if (!m) return record(m.error());
    *mover_out = new kvpool_gpu_mover{std::move(*m)};
    return ok();
  });
}

namespace {
kvpool_status_t rows_transfer(bool save, kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* rows,
                              size_t num_rows, size_t num_keys, void* stream, void* after,
                              kvpool_gpu_transfer_t** transfer_out) {
  if (mover == nullptr || transfer_out == nullptr) return invalid("mover or transfer_out is NULL");
  if (num_keys > 0 && (keys == nullptr || rows == nullptr)) return invalid("keys or rows is NULL");
  auto k = to_keys(keys, num_keys);
  std::span<const std::uint64_t> r(rows, num_rows);
  auto s = static_cast<CUstream_st*>(stream);
  auto e = static_cast<CUevent_st*>(after);
  auto t = save ? mover->mover->save_rows(k, r, s, e) : mover->mover->load_rows(k, r, s, e);
  if (!t) return record(t.error());
  *transfer_out = new kvpool_gpu_transfer{std::move(*t)};
  return ok();
}
}  // namespace

kvpool_status_t kvpool_gpu_save_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* rows,
                                     size_t num_rows, size_t num_keys, void* stream, void* after,
                                     kvpool_gpu_transfer_t** transfer_out) {
  return guarded("kvpool_gpu_save_rows",
                 [&] { return rows_transfer(true, mover, keys, rows, num_rows, num_keys, stream, after, transfer_out); });
}

kvpool_status_t kvpool_gpu_load_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* rows,
                                     size_t num_rows, size_t num_keys, void* stream, void* after,
                                     kvpool_gpu_transfer_t** transfer_out) {
  return guarded("kvpool_gpu_load_rows",
                 [&] { return rows_transfer(false, mover, keys, rows, num_rows, num_keys, stream, after, transfer_out); });
}

kvpool_status_t kvpool_gpu_save(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* pages,
                                size_t num_keys, void* stream, kvpool_gpu_transfer_t** transfer_out) {
  return guarded("kvpool_gpu_save", [&] { return gpu_transfer(true, mover, keys, pages, num_keys, stream, transfer_out); });
}

kvpool_status_t kvpool_gpu_load(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* pages,
                                size_t num_keys, void* stream, kvpool_gpu_transfer_t** transfer_out) {
  return guarded("kvpool_gpu_load",
                 [&] { return gpu_transfer(false, mover, keys, pages, num_keys, stream, transfer_out); });
}

void* kvpool_gpu_transfer_event(kvpool_gpu_transfer_t* transfer) {
  return transfer == nullptr ? nullptr : static_cast<void*>(transfer->transfer->event());
}

void kvpool_gpu_transfer_result_init(kvpool_gpu_transfer_result_t* result) {
  if (result == nullptr) return;
  std::memset(result, 0, sizeof(*result));
  result->struct_size = sizeof(*result);
}

namespace {

kvpool_status_t fill_result(const kvpool::Result<kvpool::gpu::TransferResult>& r, kvpool_gpu_transfer_result_t* result) {
    if (!r) return record(r.error());
    if (result != nullptr) {
      result->done = r->done;
      result->failed = r->put.failed;
      result->stopped = to_c(r->get.stopped.code());
      std::snprintf(result->path, sizeof(result->path), "%s", r->stats.path.c_str());
      result->bytes = r->stats.bytes;
      result->control_ms = r->stats.control_ms;
      result->enqueue_ms = r->stats.enqueue_ms;
      result->copy_done_ms = r->stats.copy_done_ms;
      result->hash_ms = r->stats.hash_ms;
      result->hash_done_ms = r->stats.hash_done_ms;
      result->commit_ms = r->stats.commit_ms;
      result->total_ms = r->stats.total_ms;
    }
    return ok();
}

}  // namespace

kvpool_status_t kvpool_gpu_transfer_wait(kvpool_gpu_transfer_t* transfer, kvpool_gpu_transfer_result_t* result) {
  return guarded("kvpool_gpu_transfer_wait", [&] {
    if (transfer == nullptr) return invalid("transfer is NULL");
    if (result != nullptr && result->struct_size < sizeof(kvpool_gpu_transfer_result_t)) {
      return invalid("kvpool_gpu_transfer_result_t: bad struct_size");
    }
    return fill_result(transfer->transfer->wait(), result);
  });
}

kvpool_status_t kvpool_gpu_load_layers(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* pages,
                                       size_t num_keys, void* stream, kvpool_gpu_transfer_t** transfer_out,
                                       size_t* found_out) {
  return guarded("kvpool_gpu_load_layers", [&] {
    if (mover == nullptr || transfer_out == nullptr) return invalid("mover or transfer_out is NULL");
    if (num_keys > 0 && (keys == nullptr || pages == nullptr)) return invalid("keys or pages is NULL");
    auto t = mover->mover->load_layers(to_keys(keys, num_keys), std::span<const std::uint64_t>(pages, num_keys),
                                       static_cast<CUstream_st*>(stream));
    if (!t) return record(t.error());
    if (found_out != nullptr) *found_out = (*t)->found();
    auto* raw = t->get();
    *transfer_out = new kvpool_gpu_transfer{std::move(*t), raw};
    return ok();
  });
}

size_t kvpool_gpu_transfer_found(kvpool_gpu_transfer_t* transfer) {
  return transfer == nullptr || transfer->layers == nullptr ? 0 : transfer->layers->found();
}

uint32_t kvpool_gpu_transfer_layers(kvpool_gpu_transfer_t* transfer) {
  return transfer == nullptr || transfer->layers == nullptr ? 0 : transfer->layers->layers();
}

void* kvpool_gpu_transfer_layer_event(kvpool_gpu_transfer_t* transfer, uint32_t layer) {
  if (transfer == nullptr || transfer->layers == nullptr) return nullptr;
  return static_cast<void*>(transfer->layers->layer_event(layer));
}

kvpool_status_t kvpool_gpu_transfer_wait_layer(kvpool_gpu_transfer_t* transfer, uint32_t layer, void* stream) {
  return guarded("kvpool_gpu_transfer_wait_layer", [&] {
    if (transfer == nullptr || transfer->layers == nullptr) return invalid("not a layer-wise transfer");
    if (layer >= transfer->layers->layers()) {
      return invalid("layer " + std::to_string(layer) + " out of range (" +
                     std::to_string(transfer->layers->layers()) + " layers)");
    }
    return record(transfer->layers->wait_layer(layer, static_cast<CUstream_st*>(stream)));
  });
}

kvpool_status_t kvpool_gpu_begin_save_layers(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys,
                                             const uint64_t* pages, size_t num_keys,
                                             kvpool_gpu_layer_save_t** save_out) {
  return guarded("kvpool_gpu_begin_save_layers", [&] {
    if (mover == nullptr || save_out == nullptr) return invalid("mover or save_out is NULL");
    if (num_keys > 0 && (keys == nullptr || pages == nullptr)) return invalid("keys or pages is NULL");
    auto s = mover->mover->begin_save_layers(to_keys(keys, num_keys), std::span<const std::uint64_t>(pages, num_keys));
    if (!s) return record(s.error());
    *save_out = new kvpool_gpu_layer_save{std::move(*s)};
    return ok();
  });
}

kvpool_status_t kvpool_gpu_load_layer_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* rows,
                                           size_t num_rows, size_t num_keys, uint32_t layer, void* stream, void* after,
                                           kvpool_gpu_transfer_t** transfer_out) {
  return guarded("kvpool_gpu_load_layer_rows", [&] {
    if (mover == nullptr || transfer_out == nullptr) return invalid("mover or transfer_out is NULL");
    if (num_keys > 0 && (keys == nullptr || rows == nullptr)) return invalid("keys or rows is NULL");
    auto t = mover->mover->load_layer_rows(to_keys(keys, num_keys), layer, std::span<const std::uint64_t>(rows, num_rows),
                                           static_cast<CUstream_st*>(stream), static_cast<CUevent_st*>(after));
    if (!t) return record(t.error());
    *transfer_out = new kvpool_gpu_transfer{std::move(*t)};
    return ok();
  });
}

kvpool_status_t kvpool_gpu_begin_save_layer_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, size_t num_keys,
                                                 kvpool_gpu_layer_save_t** save_out) {
  return guarded("kvpool_gpu_begin_save_layer_rows", [&] {
    if (mover == nullptr || save_out == nullptr) return invalid("mover or save_out is NULL");
    if (num_keys > 0 && keys == nullptr) return invalid("keys is NULL");
    auto s = mover->mover->begin_save_layer_rows(to_keys(keys, num_keys));
    if (!s) return record(s.error());
    *save_out = new kvpool_gpu_layer_save{std::move(*s)};
    return ok();
  });
}

kvpool_status_t kvpool_gpu_save_layer_rows(kvpool_gpu_layer_save_t* save, uint32_t layer, const uint64_t* rows,
                                           size_t num_rows, void* after) {
  return guarded("kvpool_gpu_save_layer_rows", [&] {
    if (save == nullptr) return invalid("save is NULL");
    if (num_rows > 0 && rows == nullptr) return invalid("rows is NULL");
    return record(save->save->save_layer_rows(layer, std::span<const std::uint64_t>(rows, num_rows),
                                              static_cast<CUevent_st*>(after)));
  });
}

kvpool_status_t kvpool_gpu_save_layer(kvpool_gpu_layer_save_t* save, uint32_t layer, void* stream) {
  return guarded("kvpool_gpu_save_layer", [&] {
    if (save == nullptr) return invalid("save is NULL");
    return record(save->save->save_layer(layer, static_cast<CUstream_st*>(stream)));
  });
}

kvpool_status_t kvpool_gpu_save_finish(kvpool_gpu_layer_save_t* save, kvpool_gpu_transfer_result_t* result) {
  return guarded("kvpool_gpu_save_finish", [&] {
    if (save == nullptr) return invalid("save is NULL");
    if (result != nullptr && result->struct_size < sizeof(kvpool_gpu_transfer_result_t)) {
      return invalid("kvpool_gpu_transfer_result_t: bad struct_size");
    }
    return fill_result(save->save->finish(), result);
  });
}

void kvpool_gpu_save_destroy(kvpool_gpu_layer_save_t* save) {
  (void)guarded("kvpool_gpu_save_destroy", [&] {
    delete save;
    return ok();
  });
}

void kvpool_gpu_transfer_destroy(kvpool_gpu_transfer_t* transfer) {
  (void)guarded("kvpool_gpu_transfer_destroy", [&] {
    delete transfer;
    return ok();
  });
}

int kvpool_gpu_available(void) {
  try {
    return kvpool::gpu::gpu_available() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}
