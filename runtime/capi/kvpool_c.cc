// The C API (include/kvpool/kvpool.h) over kvpool::Client. Every entry point
// records its status in the calling thread's last error and catches every
// C++ exception: nothing C++ crosses the boundary. The GPU calls are in
// kvpool_c_gpu.cc, what both share in capi_internal.h.

#include "kvpool/kvpool.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvpool/client.h"
#include "kvpool/status.h"
#include "kvpool/types.h"
#include "runtime/capi/capi_internal.h"
#include "runtime/common/logging.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvpool::capi {
thread_local kvpool_status_t t_last_code = KVPOOL_OK;
thread_local std::string t_last_message;
}  // namespace kvpool::capi

using namespace kvpool::capi;

// Owns what the C++ async calls only borrow (keys and the span arrays), so the
// caller's arrays may go away once *_async returns.
struct kvpool_future {
  enum class Kind { kPut, kGet };
  Kind kind = Kind::kPut;
  std::vector<kvpool::Key128> keys;
  std::vector<std::span<const std::byte>> blocks;
  std::vector<std::span<std::byte>> buffers;
  std::future<kvpool::Result<kvpool::PutResult>> put;
  std::future<kvpool::Result<kvpool::GetResult>> get;
  // Set once the operation has completed and its result has been taken.
  std::optional<kvpool::Result<kvpool::PutResult>> put_result;
  std::optional<kvpool::Result<kvpool::GetResult>> get_result;
};

namespace {

using kvpool::StatusCode;

static_assert(sizeof(kvpool_status_t) == 4 && sizeof(kvpool_put_outcome_t) == 4,
              "C enums are int-sized on every ABI kvpool supports");
static_assert(static_cast<int>(StatusCode::kOk) == KVPOOL_OK &&
              static_cast<int>(StatusCode::kInvalidArgument) == KVPOOL_INVALID_ARGUMENT &&
              static_cast<int>(StatusCode::kNotFound) == KVPOOL_NOT_FOUND &&
              static_cast<int>(StatusCode::kAlreadyExists) == KVPOOL_ALREADY_EXISTS &&
              static_cast<int>(StatusCode::kFailedPrecondition) == KVPOOL_FAILED_PRECONDITION &&
              static_cast<int>(StatusCode::kResourceExhausted) == KVPOOL_RESOURCE_EXHAUSTED &&
              static_cast<int>(StatusCode::kUnavailable) == KVPOOL_UNAVAILABLE &&
              static_cast<int>(StatusCode::kDeadlineExceeded) == KVPOOL_DEADLINE_EXCEEDED &&
              static_cast<int>(StatusCode::kCancelled) == KVPOOL_CANCELLED &&
              static_cast<int>(StatusCode::kDataLoss) == KVPOOL_DATA_LOSS &&
              static_cast<int>(StatusCode::kUnimplemented) == KVPOOL_UNIMPLEMENTED &&
              static_cast<int>(StatusCode::kInternal) == KVPOOL_INTERNAL &&
              static_cast<int>(StatusCode::kPermissionDenied) == KVPOOL_PERMISSION_DENIED &&
              kvpool::kLastStatusCode == StatusCode::kPermissionDenied,
              "kvpool_status_t mirrors kvpool::StatusCode value for value");
static_assert(sizeof(kvpool_key_t) == sizeof(kvpool::Key128));
static_assert(static_cast<int>(kvpool::PutOutcome::kWritten) == KVPOOL_PUT_WRITTEN &&
              static_cast<int>(kvpool::PutOutcome::kExists) == KVPOOL_PUT_EXISTS &&
              static_cast<int>(kvpool::PutOutcome::kPending) == KVPOOL_PUT_PENDING &&
              static_cast<int>(kvpool::PutOutcome::kFailed) == KVPOOL_PUT_FAILED);

// Sizes of the structs in the first release (ABI version 1). Frozen: when a
// field is appended to a struct, its constant becomes the offsetof of that
// field, so callers built against the older header keep working.
constexpr std::size_t kV1ClientOptionsSize = offsetof(kvpool_client_options_t, secret_file);
constexpr std::size_t kV1NamespaceDescSize = sizeof(kvpool_namespace_desc_t);
constexpr std::size_t kV1PutResultSize = sizeof(kvpool_put_result_t);
constexpr std::size_t kV1GetResultSize = sizeof(kvpool_get_result_t);
constexpr std::size_t kV1ClientStatsSize = sizeof(kvpool_client_stats_t);


bool to_descriptor(const kvpool_namespace_desc_t* in, kvpool::NamespaceDescriptor& d) {
  kvpool_namespace_desc_t c;
  kvpool_namespace_desc_init(&c);
  if (!load_struct(in, kV1NamespaceDescSize, c)) return false;
  d.model_id = str_or_empty(c.model_id);
  d.dtype = str_or_empty(c.dtype);
  d.num_layers = c.num_layers;
  d.num_kv_heads = c.num_kv_heads;
  d.head_dim = c.head_dim;
  d.tokens_per_block = c.tokens_per_block;
  d.layout = str_or_empty(c.layout);
  d.tp_rank = c.tp_rank;
  d.tp_size = c.tp_size;
  d.block_bytes = c.block_bytes;
  return true;
}


// Why data[begin, end) is not an engine key's byte string (kvpool_engine_keys),
// or "" when it is one.
std::string engine_key_error(const unsigned char* data, std::size_t begin, std::size_t end) {
  if (end < begin) return "offsets decrease";
  if (end == begin) return "empty (no type byte)";
  const unsigned char type = data[begin];
  if (type == 'b' || type == 's') return {};
  if (type != 'i') return "unknown type byte " + std::to_string(type) + " (not 'b', 's' or 'i')";
  std::size_t p = begin + 1;
  if (p < end && data[p] == '-') ++p;
  if (p == end) return "an integer without digits";
  if (data[p] == '0' && (end - p > 1 || data[p - 1] == '-')) return "an integer with a leading zero or -0";
  for (; p < end; ++p) {
    if (data[p] < '0' || data[p] > '9') return "an integer with a non-digit";
  }
  return {};
}

// Checks a batch's arguments against the namespace's block size: `exact` for
// put (each block is one block), at least the block size for get.
kvpool_status_t check_batch(kvpool_client_t* client, std::uint64_t ns, const kvpool_key_t* keys,
                            const void* const* bufs, std::size_t n, std::size_t size, bool exact) {
  if (client == nullptr) return invalid("client is NULL");
  if (n > 0 && (keys == nullptr || bufs == nullptr)) return invalid("keys or buffers is NULL");
  auto bb = client->client->block_bytes(ns);
  if (!bb) return record(bb.error());
  if (exact ? size != *bb : size < *bb) {
    return invalid(std::string(exact ? "block_size " : "buffer_size ") + std::to_string(size) + " in namespace " +
                   std::to_string(ns) + " of " + std::to_string(*bb) + "-byte blocks");
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (bufs[i] == nullptr) return invalid("buffer " + std::to_string(i) + " is NULL");
  }
  return ok();
}

std::vector<std::span<const std::byte>> const_spans(const void* const* blocks, std::size_t n, std::size_t size) {
  std::vector<std::span<const std::byte>> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.emplace_back(static_cast<const std::byte*>(blocks[i]), size);
  return out;
}

std::vector<std::span<std::byte>> mutable_spans(void* const* buffers, std::size_t n, std::size_t size) {
  std::vector<std::span<std::byte>> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.emplace_back(static_cast<std::byte*>(buffers[i]), size);
  return out;
}

kvpool_status_t fill_put_result(const kvpool::PutResult& r, kvpool_put_result_t* result) {
  if (result == nullptr) return ok();
  kvpool_put_result_t c;
  kvpool_put_result_init(&c);
  if (!load_struct(result, kV1PutResultSize, c)) return invalid("kvpool_put_result_t: bad struct_size");
  for (std::size_t i = 0; i < r.outcomes.size(); ++i) {
    if (c.outcomes != nullptr) c.outcomes[i] = static_cast<kvpool_put_outcome_t>(static_cast<int>(r.outcomes[i]));
    if (c.key_status != nullptr) c.key_status[i] = to_c(r.errors[i].code());
  }
  c.written = r.written;
  c.deduplicated = r.deduplicated;
  c.pending = r.pending;
  c.failed = r.failed;
  store_struct(result, c);
  return ok();
}

kvpool_status_t fill_get_result(const kvpool::GetResult& r, std::size_t num_keys, kvpool_get_result_t* result) {
  if (result == nullptr) return ok();
  kvpool_get_result_t c;
  kvpool_get_result_init(&c);
  if (!load_struct(result, kV1GetResultSize, c)) return invalid("kvpool_get_result_t: bad struct_size");
  c.loaded = r.loaded;
  c.stopped = r.loaded < num_keys ? to_c(r.stopped.ok() ? StatusCode::kNotFound : r.stopped.code()) : KVPOOL_OK;
  store_struct(result, c);
  return ok();
}

// Checked before an operation starts, so a bad result struct never leaves an
// operation half reported.
template <typename T>
bool result_struct_ok(const T* result, std::size_t min_size) {
  return result == nullptr || result->struct_size >= min_size;
}

// Takes the operation's result out of its std::future once it is ready,
// waiting at most `timeout` (none: no limit). Returns whether it completed.
bool settle(kvpool_future_t* f, std::optional<std::chrono::milliseconds> timeout) {
  if (f->put_result || f->get_result) return true;
  auto ready = [&](auto& fut) {
    if (!timeout) {
      fut.wait();
      return true;
    }
    return fut.wait_for(*timeout) == std::future_status::ready;
  };
  if (f->kind == kvpool_future::Kind::kPut) {
    if (!ready(f->put)) return false;
    f->put_result = f->put.get();
  } else {
    if (!ready(f->get)) return false;
    f->get_result = f->get.get();
  }
  return true;
}

// The completed operation's status as a whole.
kvpool_status_t record_outcome(const kvpool_future_t* f) {
  if (f->put_result && !*f->put_result) return record(f->put_result->error());
  if (f->get_result && !*f->get_result) return record(f->get_result->error());
  return ok();
}

}  // namespace

extern "C" {

const char* kvpool_status_name(kvpool_status_t code) {
  if (code < KVPOOL_OK || code > KVPOOL_PERMISSION_DENIED) return "unknown";
  // code_name returns views of string literals: NUL-terminated, static.
  return kvpool::code_name(static_cast<StatusCode>(static_cast<int>(code))).data();
}

kvpool_status_t kvpool_last_error_code(void) { return t_last_code; }
const char* kvpool_last_error_message(void) { return t_last_message.c_str(); }

uint32_t kvpool_abi_version(void) { return KVPOOL_C_ABI_VERSION; }
const char* kvpool_version_string(void) { return KVPOOL_VERSION; }

kvpool_status_t kvpool_set_log_level(const char* level) {
  return guarded("kvpool_set_log_level", [&] {
    if (level == nullptr || !kvpool::log::set_log_level(level)) {
      return invalid(std::string("not a log level: '") + (level == nullptr ? "(null)" : level) + "'");
    }
    return ok();
  });
}

void kvpool_namespace_desc_init(kvpool_namespace_desc_t* desc) {
  if (desc == nullptr) return;
  std::memset(static_cast<void*>(desc), 0, sizeof(*desc));
  desc->struct_size = sizeof(*desc);
  desc->tp_size = 1;
}

kvpool_status_t kvpool_namespace_id(const kvpool_namespace_desc_t* desc, uint64_t* id_out) {
  return guarded("kvpool_namespace_id", [&] {
    kvpool::NamespaceDescriptor d;
    if (!to_descriptor(desc, d)) return invalid("kvpool_namespace_desc_t is NULL or its struct_size is too small");
    if (id_out == nullptr) return invalid("id_out is NULL");
    *id_out = kvpool::namespace_id(d);
    return ok();
  });
}

kvpool_status_t kvpool_prefix_keys(uint64_t namespace_id, const uint32_t* tokens, size_t num_tokens,
                                   uint32_t tokens_per_block, kvpool_key_t* keys_out, size_t capacity,
                                   size_t* num_keys_out) {
  return guarded("kvpool_prefix_keys", [&] {
    if (tokens_per_block == 0) return invalid("tokens_per_block is 0");
    if (num_tokens > 0 && tokens == nullptr) return invalid("tokens is NULL");
    const std::size_t n = num_tokens / tokens_per_block;
    if (num_keys_out != nullptr) *num_keys_out = n;
    if (n == 0) return ok();
    if (keys_out == nullptr || capacity < n) {
      return invalid("room for " + std::to_string(capacity) + " keys, " + std::to_string(n) + " needed");
    }
    auto keys = kvpool::prefix_keys(namespace_id, std::span<const std::uint32_t>(tokens, num_tokens),
                                    tokens_per_block);
    for (std::size_t i = 0; i < keys.size(); ++i) keys_out[i] = kvpool_key_t{keys[i].lo, keys[i].hi};
    return ok();
  });
}

kvpool_status_t kvpool_engine_keys(uint64_t namespace_id, const void* data, const size_t* offsets, size_t num_keys,
                                   kvpool_key_t* keys_out) {
  return guarded("kvpool_engine_keys", [&] {
    if (num_keys == 0) return ok();
    if (data == nullptr || offsets == nullptr || keys_out == nullptr) return invalid("data, offsets or keys_out is NULL");
    const auto* bytes = static_cast<const unsigned char*>(data);
    // Every key is checked before any is written: a refused batch leaves keys_out as it was.
    for (std::size_t i = 0; i < num_keys; ++i) {
      if (auto why = engine_key_error(bytes, offsets[i], offsets[i + 1]); !why.empty()) {
        return invalid("engine key " + std::to_string(i) + ": " + why);
      }
    }
    for (std::size_t i = 0; i < num_keys; ++i) {
      XXH128_hash_t h = XXH3_128bits_withSeed(bytes + offsets[i], offsets[i + 1] - offsets[i], namespace_id);
      keys_out[i] = kvpool_key_t{h.low64, h.high64};
    }
    return ok();
  });
}

void kvpool_client_options_init(kvpool_client_options_t* options) {
  if (options == nullptr) return;
  std::memset(static_cast<void*>(options), 0, sizeof(*options));
  options->struct_size = sizeof(*options);
}

kvpool_status_t kvpool_client_create(const kvpool_client_options_t* options, kvpool_client_t** client_out) {
  return guarded("kvpool_client_create", [&] {
    if (client_out == nullptr) return invalid("client_out is NULL");
    *client_out = nullptr;
    kvpool_client_options_t c;
    kvpool_client_options_init(&c);
    if (!load_struct(options, kV1ClientOptionsSize, c)) {
      return invalid("kvpool_client_options_t is NULL or its struct_size is too small");
    }
    if (c.coordinator == nullptr || c.coordinator[0] == '\0') return invalid("no coordinator address");
    kvpool::ClientOptions o;
    o.coordinator = c.coordinator;
    if (c.client_id != nullptr && c.client_id[0] != '\0') o.client_id = c.client_id;
    if (c.timeout_ms != 0) o.timeout = std::chrono::milliseconds(c.timeout_ms);
    o.tls = str_or_empty(c.tls);
    o.secret_file = str_or_empty(c.secret_file);
    auto client = kvpool::Client::connect(o);
    if (!client) return record(client.error());
    *client_out = new kvpool_client{std::move(*client)};
    return ok();
  });
}

void kvpool_client_destroy(kvpool_client_t* client) {
  try {
    delete client;
  } catch (...) {
    // Destructors do not throw; nothing to report to a void function.
  }
}

kvpool_status_t kvpool_register_namespace(kvpool_client_t* client, const kvpool_namespace_desc_t* desc,
                                          uint64_t* namespace_id_out) {
  return guarded("kvpool_register_namespace", [&] {
    if (client == nullptr) return invalid("client is NULL");
    kvpool::NamespaceDescriptor d;
    if (!to_descriptor(desc, d)) return invalid("kvpool_namespace_desc_t is NULL or its struct_size is too small");
    auto id = client->client->register_namespace(d);
    if (!id) return record(id.error());
    if (namespace_id_out != nullptr) *namespace_id_out = *id;
    return ok();
  });
}

kvpool_status_t kvpool_block_bytes(kvpool_client_t* client, uint64_t namespace_id, uint64_t* bytes_out) {
  return guarded("kvpool_block_bytes", [&] {
    if (client == nullptr || bytes_out == nullptr) return invalid("client or bytes_out is NULL");
    auto bb = client->client->block_bytes(namespace_id);
    if (!bb) return record(bb.error());
    *bytes_out = *bb;
    return ok();
  });
}

kvpool_status_t kvpool_register_buffer(kvpool_client_t* client, void* data, size_t size) {
  return guarded("kvpool_register_buffer", [&] {
    if (client == nullptr) return invalid("client is NULL");
    if (data == nullptr || size == 0) return invalid("an empty buffer");
    return record(client->client->register_buffer(data, size));
  });
}

kvpool_status_t kvpool_unregister_buffer(kvpool_client_t* client, void* data) {
  return guarded("kvpool_unregister_buffer", [&] {
    if (client == nullptr) return invalid("client is NULL");
    return record(client->client->unregister_buffer(data));
  });
}

void kvpool_put_result_init(kvpool_put_result_t* result) {
  if (result == nullptr) return;
  std::memset(static_cast<void*>(result), 0, sizeof(*result));
  result->struct_size = sizeof(*result);
}

void kvpool_get_result_init(kvpool_get_result_t* result) {
  if (result == nullptr) return;
  std::memset(static_cast<void*>(result), 0, sizeof(*result));
  result->struct_size = sizeof(*result);
}

kvpool_status_t kvpool_put(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                           const void* const* blocks, size_t num_keys, size_t block_size,
                           kvpool_put_result_t* result) {
  return guarded("kvpool_put", [&] {
    if (!result_struct_ok(result, kV1PutResultSize)) return invalid("kvpool_put_result_t: bad struct_size");
    if (auto s = check_batch(client, namespace_id, keys, blocks, num_keys, block_size, true); s != KVPOOL_OK) {
      return s;
    }
    auto k = to_keys(keys, num_keys);
    auto spans = const_spans(blocks, num_keys, block_size);
    auto r = client->client->put(namespace_id, k, spans);
    if (!r) return record(r.error());
    return fill_put_result(*r, result);
  });
}

kvpool_status_t kvpool_get(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                           void* const* buffers, size_t num_keys, size_t buffer_size,
                           kvpool_get_result_t* result) {
  return guarded("kvpool_get", [&] {
    if (!result_struct_ok(result, kV1GetResultSize)) return invalid("kvpool_get_result_t: bad struct_size");
    if (auto s = check_batch(client, namespace_id, keys, buffers, num_keys, buffer_size, false); s != KVPOOL_OK) {
      return s;
    }
    auto k = to_keys(keys, num_keys);
    auto spans = mutable_spans(buffers, num_keys, buffer_size);
    auto r = client->client->get(namespace_id, k, spans);
    if (!r) return record(r.error());
    return fill_get_result(*r, num_keys, result);
  });
}

kvpool_status_t kvpool_lookup(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                              size_t num_keys, size_t* prefix_out) {
  return guarded("kvpool_lookup", [&] {
    if (client == nullptr || prefix_out == nullptr) return invalid("client or prefix_out is NULL");
    if (num_keys > 0 && keys == nullptr) return invalid("keys is NULL");
    auto r = client->client->lookup(namespace_id, to_keys(keys, num_keys));
    if (!r) return record(r.error());
    *prefix_out = *r;
    return ok();
  });
}

kvpool_status_t kvpool_remove(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                              size_t num_keys, kvpool_status_t* key_status, size_t* removed_out) {
  return guarded("kvpool_remove", [&] {
    if (client == nullptr) return invalid("client is NULL");
    if (num_keys > 0 && keys == nullptr) return invalid("keys is NULL");
    auto r = client->client->remove(namespace_id, to_keys(keys, num_keys));
    if (!r) return record(r.error());
    std::size_t removed = 0;
    for (std::size_t i = 0; i < r->size() && i < num_keys; ++i) {
      if (key_status != nullptr) key_status[i] = to_c((*r)[i].code());
      removed += (*r)[i].ok() ? 1 : 0;
    }
    if (removed_out != nullptr) *removed_out = removed;
    return ok();
  });
}

kvpool_status_t kvpool_wait_for(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                                size_t num_keys, uint32_t timeout_ms, uint8_t* committed,
                                size_t* num_committed_out) {
  return guarded("kvpool_wait_for", [&] {
    if (client == nullptr) return invalid("client is NULL");
    if (num_keys > 0 && keys == nullptr) return invalid("keys is NULL");
    auto r = client->client->wait_for(namespace_id, to_keys(keys, num_keys), std::chrono::milliseconds(timeout_ms));
    if (!r) return record(r.error());
    std::size_t n = 0;
    for (std::size_t i = 0; i < num_keys; ++i) {
      const bool c = i < r->size() && (*r)[i];
      if (committed != nullptr) committed[i] = c ? 1 : 0;
      n += c ? 1 : 0;
    }
    if (num_committed_out != nullptr) *num_committed_out = n;
    return ok();
  });
}

kvpool_status_t kvpool_put_async(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                                 const void* const* blocks, size_t num_keys, size_t block_size,
                                 kvpool_future_t** future_out) {
  return guarded("kvpool_put_async", [&] {
    if (future_out == nullptr) return invalid("future_out is NULL");
    *future_out = nullptr;
    if (auto s = check_batch(client, namespace_id, keys, blocks, num_keys, block_size, true); s != KVPOOL_OK) {
      return s;
    }
    auto f = std::make_unique<kvpool_future>();
    f->kind = kvpool_future::Kind::kPut;
    f->keys = to_keys(keys, num_keys);
    f->blocks = const_spans(blocks, num_keys, block_size);
    f->put = client->client->put_async(namespace_id, f->keys, f->blocks);
    *future_out = f.release();
    return ok();
  });
}

kvpool_status_t kvpool_get_async(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                                 void* const* buffers, size_t num_keys, size_t buffer_size,
                                 kvpool_future_t** future_out) {
  return guarded("kvpool_get_async", [&] {
    if (future_out == nullptr) return invalid("future_out is NULL");
    *future_out = nullptr;
    if (auto s = check_batch(client, namespace_id, keys, buffers, num_keys, buffer_size, false); s != KVPOOL_OK) {
      return s;
    }
    auto f = std::make_unique<kvpool_future>();
    f->kind = kvpool_future::Kind::kGet;
    f->keys = to_keys(keys, num_keys);
    f->buffers = mutable_spans(buffers, num_keys, buffer_size);
    f->get = client->client->get_async(namespace_id, f->keys, f->buffers);
    *future_out = f.release();
    return ok();
  });
}

int kvpool_future_test(kvpool_future_t* future) {
  ok();
  if (future == nullptr) return 0;
  try {
    return settle(future, std::chrono::milliseconds(0)) ? 1 : 0;
  } catch (...) {
    return 0;  // std::future::wait_for does not throw on a valid future
  }
}

kvpool_status_t kvpool_future_wait(kvpool_future_t* future, int64_t timeout_ms) {
  return guarded("kvpool_future_wait", [&] {
    if (future == nullptr) return invalid("future is NULL");
    std::optional<std::chrono::milliseconds> timeout;
    if (timeout_ms >= 0) timeout = std::chrono::milliseconds(timeout_ms);
    if (!settle(future, timeout)) return record(KVPOOL_DEADLINE_EXCEEDED, "operation still in progress");
    return record_outcome(future);
  });
}

kvpool_status_t kvpool_future_put_result(kvpool_future_t* future, kvpool_put_result_t* result) {
  return guarded("kvpool_future_put_result", [&] {
    if (future == nullptr) return invalid("future is NULL");
    if (future->kind != kvpool_future::Kind::kPut) return invalid("not a put future");
    if (!settle(future, std::chrono::milliseconds(0))) {
      return record(KVPOOL_FAILED_PRECONDITION, "operation still in progress");
    }
    if (auto s = record_outcome(future); s != KVPOOL_OK) return s;
    return fill_put_result(**future->put_result, result);
  });
}

kvpool_status_t kvpool_future_get_result(kvpool_future_t* future, kvpool_get_result_t* result) {
  return guarded("kvpool_future_get_result", [&] {
    if (future == nullptr) return invalid("future is NULL");
    if (future->kind != kvpool_future::Kind::kGet) return invalid("not a get future");
    if (!settle(future, std::chrono::milliseconds(0))) {
      return record(KVPOOL_FAILED_PRECONDITION, "operation still in progress");
    }
    if (auto s = record_outcome(future); s != KVPOOL_OK) return s;
    return fill_get_result(**future->get_result, future->keys.size(), result);
  });
}

void kvpool_future_destroy(kvpool_future_t* future) {
  if (future == nullptr) return;
  try {
    // The I/O threads still use the keys and buffers: wait for them.
    (void)settle(future, std::nullopt);
  } catch (...) {
    // A broken promise: the operation is no longer running either way.
  }
  delete future;
}

void kvpool_client_stats_init(kvpool_client_stats_t* stats) {
  if (stats == nullptr) return;
  std::memset(static_cast<void*>(stats), 0, sizeof(*stats));
  stats->struct_size = sizeof(*stats);
}

kvpool_status_t kvpool_client_get_stats(kvpool_client_t* client, kvpool_client_stats_t* stats) {
  return guarded("kvpool_client_get_stats", [&] {
    if (client == nullptr) return invalid("client is NULL");
    kvpool_client_stats_t c;
    kvpool_client_stats_init(&c);
    if (!load_struct(stats, kV1ClientStatsSize, c)) {
      return invalid("kvpool_client_stats_t is NULL or its struct_size is too small");
    }
    auto s = client->client->stats();
    const std::size_t n = std::min(s.transports.size(), sizeof(c.transports) - 1);
    std::memcpy(c.transports, s.transports.data(), n);
    c.transports[n] = '\0';
    c.bytes_put = s.bytes_put;
    c.bytes_got = s.bytes_got;
    c.verify_failures = s.verify_failures;
    store_struct(stats, c);
    return ok();
  });
}

}  // extern "C"

