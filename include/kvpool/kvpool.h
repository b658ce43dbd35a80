#pragma once
/*
 * kvpool C API: what a worker written in C (or any language with a C FFI)
 * links to write KV blocks into the pool and read them back. It wraps the
 * C++ kvpool::Client (include/kvpool/client.h); the semantics are the same.
 * Library: libkvpool_c.so (link -lkvpool_c).
 *
 * Errors. Every function that can fail returns a kvpool_status_t. It also
 * records, for the calling thread, the status of that call:
 * kvpool_last_error_message() is the message of the last call made on this
 * thread (the empty string after a call that returned KVPOOL_OK). The
 * pointer stays valid until the thread's next kvpool call. Codes mirror
 * kvpool::StatusCode; choose what to do next by the code (DESIGN.md):
 * KVPOOL_UNAVAILABLE: retry the call; KVPOOL_RESOURCE_EXHAUSTED: the pool is
 * full; KVPOOL_FAILED_PRECONDITION: do not retry until some state changes.
 *
 * Ownership. Handles (kvpool_client_t, kvpool_future_t) are opaque, created
 * by a *_create / *_async call and released by the matching *_destroy.
 * Arrays passed in are read during the call only, except where an async call
 * says otherwise. Nothing returned needs free() except through *_destroy.
 *
 * Threads. A client may be used from several threads at once. A future is
 * used by one thread at a time. kvpool_last_error_* are per thread.
 *
 * ABI rule (stable across releases; KVPOOL_C_ABI_VERSION is the .so's
 * SOVERSION and changes only if this rule is ever broken):
 *  - functions are never removed and their signatures never change; new
 *    behavior comes as new functions;
 *  - enum values are never renumbered; new values are appended (treat an
 *    unknown status code like KVPOOL_INTERNAL);
 *  - every struct passed by pointer starts with `size_t struct_size`, which
 *    the caller sets to sizeof the struct it was compiled with (the *_init
 *    functions do this and fill in the defaults). Fields are only ever
 *    appended; the library reads and writes only the fields that fit in
 *    struct_size, and gives appended fields their defaults for an older,
 *    smaller struct. A struct_size below the first release's size is
 *    KVPOOL_INVALID_ARGUMENT.
 * No C++ types cross this boundary, and no C++ exception escapes it (an
 * unexpected one becomes KVPOOL_INTERNAL).
 *
 * Keys are 128-bit values, {lo, hi}. As bytes (the Python module's form)
 * a key is lo little-endian then hi little-endian: the 128-bit key as a
 * little-endian integer.
 */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVPOOL_C_ABI_VERSION 1

/* Mirrors kvpool::StatusCode, value for value. */
typedef enum kvpool_status {
  KVPOOL_OK = 0,
  KVPOOL_INVALID_ARGUMENT = 1,
  KVPOOL_NOT_FOUND = 2,
  KVPOOL_ALREADY_EXISTS = 3,
  KVPOOL_FAILED_PRECONDITION = 4,
  KVPOOL_RESOURCE_EXHAUSTED = 5,
  KVPOOL_UNAVAILABLE = 6,
  KVPOOL_DEADLINE_EXCEEDED = 7,
  KVPOOL_CANCELLED = 8,
  KVPOOL_DATA_LOSS = 9, /* bytes failed verification (checksum, torn block) */
  KVPOOL_UNIMPLEMENTED = 10,
  KVPOOL_INTERNAL = 11,
  /* the coordinator and this client do not share the cluster secret
   * (SECURITY.md): fix the secret file, then retry */
  KVPOOL_PERMISSION_DENIED = 12
} kvpool_status_t;

/* Stable lower-case name of a code ("not_found"), as in kvpool's logs and
 * --json output; "unknown" for a value this library does not know. Static
 * storage; thread-safe. */
const char* kvpool_status_name(kvpool_status_t code);

/* The status of the last kvpool call made on this thread (KVPOOL_OK and ""
 * after a success). The message is owned by the library and valid until
 * this thread's next kvpool call. */
kvpool_status_t kvpool_last_error_code(void);
const char* kvpool_last_error_message(void);

/* KVPOOL_C_ABI_VERSION of the loaded library, and its release ("0.1.0"). */
uint32_t kvpool_abi_version(void);
const char* kvpool_version_string(void);

/* Sets the level of kvpool's log lines (written to stderr): "trace",
 * "debug", "info", "warn", "error" or "off". The default comes from the
 * environment variable KVPOOL_LOG_LEVEL, else "info". Process-wide;
 * thread-safe. KVPOOL_INVALID_ARGUMENT for an unknown level name. */
kvpool_status_t kvpool_set_log_level(const char* level);

/* ---------------------------------------------------------------- keys -- */

typedef struct kvpool_key {
  uint64_t lo;
  uint64_t hi;
} kvpool_key_t;

/* Namespace descriptor: the model and KV layout (DESIGN.md, "Keys"). Mirrors
 * kvpool::NamespaceDescriptor. Strings are NUL-terminated, read during the
 * call only; NULL is the empty string. */
typedef struct kvpool_namespace_desc {
  size_t struct_size; /* sizeof(kvpool_namespace_desc_t) */
  const char* model_id; /* e.g. "meta-llama/Meta-Llama-3-8B" */
  const char* dtype;    /* "bf16", "fp16", "fp8", ... */
  uint32_t num_layers;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t tokens_per_block;
  const char* layout; /* engine layout name, e.g. "vllm-paged" */
  uint32_t tp_rank;
  uint32_t tp_size;
  /* Bytes of one block. 0: 2 (K and V) x layers x heads x head_dim x
   * tokens_per_block x dtype size. */
  uint64_t block_bytes;
} kvpool_namespace_desc_t;

/* Zeroes *desc, sets struct_size and tp_size = 1. */
void kvpool_namespace_desc_init(kvpool_namespace_desc_t* desc);

/* The namespace id of a descriptor (XXH3-64 of its canonical text), computed
 * locally: the same value kvpool_register_namespace returns. Thread-safe.
 * KVPOOL_INVALID_ARGUMENT for a NULL or too-small struct. */
kvpool_status_t kvpool_namespace_id(const kvpool_namespace_desc_t* desc, uint64_t* id_out);

/* Chained prefix keys of a token sequence (DESIGN.md, "Keys"): only full
 * blocks are keyed, so there are num_tokens / tokens_per_block keys.
 * *num_keys_out is always set to that count; the keys are written to
 * keys_out when capacity is large enough, else KVPOOL_INVALID_ARGUMENT and
 * nothing is written (call with capacity 0 to size the array).
 * KVPOOL_INVALID_ARGUMENT for tokens_per_block == 0. Thread-safe. */
kvpool_status_t kvpool_prefix_keys(uint64_t namespace_id, const uint32_t* tokens, size_t num_tokens,
                                   uint32_t tokens_per_block, kvpool_key_t* keys_out, size_t capacity,
                                   size_t* num_keys_out);

/* kvpool keys for an engine's own block keys (its block hashes, ids or
 * names), the same on every process and machine. Engine key i is the byte
 * string data[offsets[i] .. offsets[i + 1]): a type byte, then the key's
 * bytes: 'b' and raw bytes, 's' and UTF-8 text, or 'i' and an integer in
 * signed decimal ASCII without leading zeros ("-12", "0"), so b"12", "12"
 * and 12 are three different keys. keys_out[i] is XXH3-128 of that string,
 * seeded with namespace_id, so namespaces never share a key. offsets has
 * num_keys + 1 entries and never decreases. KVPOOL_INVALID_ARGUMENT, and
 * nothing written, for a NULL array (num_keys > 0), decreasing offsets, an
 * empty string, an unknown type byte or a malformed integer. Thread-safe.
 * Added after ABI version 1's first release. */
kvpool_status_t kvpool_engine_keys(uint64_t namespace_id, const void* data, const size_t* offsets, size_t num_keys,
                                   kvpool_key_t* keys_out);

/* -------------------------------------------------------------- client -- */

typedef struct kvpool_client kvpool_client_t;

typedef struct kvpool_client_options {
  size_t struct_size;      /* sizeof(kvpool_client_options_t) */
  const char* coordinator; /* "host:port" of the coordinator; required */
  const char* client_id;   /* NULL or "": "host:pid" */
  /* Deadline of each coordinator call and of each batch's data movement,
   * in milliseconds; 0: 10000. */
  uint32_t timeout_ms;
  /* UCX transports (UCX_TLS syntax); NULL or "": the environment's or
   * kvpool's default. */
  const char* tls;
  /* The cluster secret file (mode 0600) that authenticates the connection
   * to the coordinator; NULL or "": KVPOOL_SECRET_FILE, else
   * /etc/kvpool/secret for root, ~/.config/kvpool/secret otherwise.
   * KVPOOL_PERMISSION_DENIED when the coordinator's secret differs.
   * Appended after ABI version 1's struct. */
  const char* secret_file;
} kvpool_client_options_t;

/* Zeroes *options and sets struct_size (the defaults are the zero values). */
void kvpool_client_options_init(kvpool_client_options_t* options);

/* Connects to the coordinator. On KVPOOL_OK, *client_out is a new client the
 * caller releases with kvpool_client_destroy. KVPOOL_UNAVAILABLE when the
 * coordinator does not answer within the timeout; KVPOOL_INVALID_ARGUMENT
 * for a malformed address. */
kvpool_status_t kvpool_client_create(const kvpool_client_options_t* options, kvpool_client_t** client_out);

/* Waits for the client's operations still in flight (async ones included),
 * then closes its connections and releases it. Futures made by this client
 * stay valid (and complete) and must still be destroyed. Registered buffers
 * are unregistered. NULL is a no-op. */
void kvpool_client_destroy(kvpool_client_t* client);

/* Registers a namespace (idempotent) and returns its id; the client must
 * register a namespace before putting or getting in it.
 * KVPOOL_INVALID_ARGUMENT for a descriptor whose block size is out of range
 * (64 KiB..256 MiB), an unknown dtype or a zero field. */
kvpool_status_t kvpool_register_namespace(kvpool_client_t* client, const kvpool_namespace_desc_t* desc,
                                          uint64_t* namespace_id_out);

/* The block size of a namespace this client registered;
 * KVPOOL_FAILED_PRECONDITION if it did not. */
kvpool_status_t kvpool_block_bytes(kvpool_client_t* client, uint64_t namespace_id, uint64_t* bytes_out);

/* Registers [data, data + size) for zero-copy transfers until
 * kvpool_unregister_buffer or kvpool_client_destroy. The caller keeps the
 * memory alive and mapped that long. Unregistered memory works too, at the
 * cost of a registration per call. */
kvpool_status_t kvpool_register_buffer(kvpool_client_t* client, void* data, size_t size);
/* KVPOOL_NOT_FOUND when no buffer was registered at exactly `data`. */
kvpool_status_t kvpool_unregister_buffer(kvpool_client_t* client, void* data);

/* ------------------------------------------------------- data movement -- */

/* Per-key outcome of a put. */
typedef enum kvpool_put_outcome {
  KVPOOL_PUT_WRITTEN = 0, /* written and committed by this call */
  KVPOOL_PUT_EXISTS = 1,  /* already in the pool: nothing written (dedupe) */
  KVPOOL_PUT_PENDING = 2, /* another writer holds the key: nothing written */
  KVPOOL_PUT_FAILED = 3   /* see key_status */
} kvpool_put_outcome_t;

typedef struct kvpool_put_result {
  size_t struct_size; /* sizeof(kvpool_put_result_t) */
  /* Optional per-key arrays of num_keys entries, provided by the caller
   * (NULL: not reported). Filled by the library. */
  kvpool_put_outcome_t* outcomes;
  kvpool_status_t* key_status; /* KVPOOL_OK unless the key's outcome is FAILED */
  /* Counts, filled by the library. */
  size_t written;
  size_t deduplicated;
  size_t pending;
  size_t failed;
} kvpool_put_result_t;

/* Zeroes *result and sets struct_size. */
void kvpool_put_result_init(kvpool_put_result_t* result);

typedef struct kvpool_get_result {
  size_t struct_size; /* sizeof(kvpool_get_result_t) */
  /* Blocks loaded, from the first key on: buffers[0..loaded) hold keys
   * [0..loaded). */
  size_t loaded;
  /* Why loading stopped before the last key: KVPOOL_NOT_FOUND for a miss
   * (the normal case), KVPOOL_DATA_LOSS for a block that failed
   * verification, KVPOOL_UNAVAILABLE for an agent that died; KVPOOL_OK when
   * every key was loaded. */
  kvpool_status_t stopped;
} kvpool_get_result_t;

/* Zeroes *result and sets struct_size. */
void kvpool_get_result_init(kvpool_get_result_t* result);

/* Writes blocks[i] (block_size bytes at each) under keys[i], for i in
 * [0, num_keys). block_size must equal the namespace's block size, checked
 * before anything moves (KVPOOL_INVALID_ARGUMENT). The call fails as a
 * whole only when the coordinator cannot be reached or the arguments are
 * malformed; per-key outcomes go to *result (may be NULL).
 * KVPOOL_FAILED_PRECONDITION for a namespace this client did not register. */
kvpool_status_t kvpool_put(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                           const void* const* blocks, size_t num_keys, size_t block_size,
                           kvpool_put_result_t* result);

/* Loads the longest present prefix of keys into buffers (each buffer_size
 * bytes, at least the block size), verifying every block. A miss is not an
 * error: the call returns KVPOOL_OK with result->loaded < num_keys.
 * result may be NULL. */
kvpool_status_t kvpool_get(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                           void* const* buffers, size_t num_keys, size_t buffer_size,
                           kvpool_get_result_t* result);

/* How many leading keys are in the pool (no lease, no data), into
 * *prefix_out. KVPOOL_NOT_FOUND for a namespace the coordinator does not
 * know. */
kvpool_status_t kvpool_lookup(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                              size_t num_keys, size_t* prefix_out);

/* Removes keys. key_status (NULL or num_keys entries): KVPOOL_OK or
 * KVPOOL_NOT_FOUND per key; removed_out (may be NULL): how many were
 * removed. */
kvpool_status_t kvpool_remove(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                              size_t num_keys, kvpool_status_t* key_status, size_t* removed_out);

/* Returns when every key is committed or after timeout_ms, with which ones
 * are: committed (NULL or num_keys entries) gets 1 or 0 per key,
 * num_committed_out (may be NULL) their count. Reaching the timeout is not
 * an error. How a decode worker waits for a prefill worker's KV without
 * polling. */
kvpool_status_t kvpool_wait_for(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                                size_t num_keys, uint32_t timeout_ms, uint8_t* committed,
                                size_t* num_committed_out);

/* --------------------------------------------------------------- async -- */

typedef struct kvpool_future kvpool_future_t;

/* Asynchronous put and get: the work runs on the client's I/O threads. The
 * keys and the blocks/buffers pointer arrays are copied; the memory they
 * point to (the blocks or buffers themselves) must stay alive and untouched
 * until the future is complete. On KVPOOL_OK, *future_out is a new future
 * the caller releases with kvpool_future_destroy. Argument errors (block
 * size, a namespace this client did not register) are returned by the call
 * itself, as by kvpool_put / kvpool_get, and then no future is made. */
kvpool_status_t kvpool_put_async(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                                 const void* const* blocks, size_t num_keys, size_t block_size,
                                 kvpool_future_t** future_out);
kvpool_status_t kvpool_get_async(kvpool_client_t* client, uint64_t namespace_id, const kvpool_key_t* keys,
                                 void* const* buffers, size_t num_keys, size_t buffer_size,
                                 kvpool_future_t** future_out);

/* 1 once the operation has completed (successfully or not), else 0. Never
 * blocks. Sets the thread's last error to KVPOOL_OK. */
int kvpool_future_test(kvpool_future_t* future);

/* Waits up to timeout_ms (negative: no limit) for the operation. Returns its
 * status when it has completed (KVPOOL_OK, or why the whole call failed),
 * KVPOOL_DEADLINE_EXCEEDED with the message "operation still in progress"
 * when it has not: then the future stays usable (wait again, or test; a
 * completed operation can fail with KVPOOL_DEADLINE_EXCEEDED too, which
 * kvpool_future_test tells apart). Waiting again on a completed future
 * returns the same status. */
kvpool_status_t kvpool_future_wait(kvpool_future_t* future, int64_t timeout_ms);

/* The result of a completed put (or get) future. KVPOOL_FAILED_PRECONDITION
 * if it has not completed, KVPOOL_INVALID_ARGUMENT for a future of the
 * other kind; the operation's own status when it failed as a whole. */
kvpool_status_t kvpool_future_put_result(kvpool_future_t* future, kvpool_put_result_t* result);
kvpool_status_t kvpool_future_get_result(kvpool_future_t* future, kvpool_get_result_t* result);

/* Waits for the operation if it is still running (its buffers are in use
 * until then), then releases the future. NULL is a no-op. */
void kvpool_future_destroy(kvpool_future_t* future);

/* --------------------------------------------------------------- stats -- */

typedef struct kvpool_client_stats {
  size_t struct_size;   /* sizeof(kvpool_client_stats_t) */
  char transports[128]; /* where bytes moved, e.g. "posix" or "tcp"; NUL-terminated, may be cut */
  uint64_t bytes_put;
  uint64_t bytes_got;
  uint64_t verify_failures;
} kvpool_client_stats_t;

/* Zeroes *stats and sets struct_size. */
void kvpool_client_stats_init(kvpool_client_stats_t* stats);
kvpool_status_t kvpool_client_get_stats(kvpool_client_t* client, kvpool_client_stats_t* stats);

/* ----------------------------------------------------------------- gpu -- */
/*
 * The GPU path (C++: include/kvpool/gpu.h, which documents the semantics):
 * moving KV blocks between an engine's KV cache in GPU memory and the pool.
 * Device pointers and CUDA streams/events are passed as void*. In a build
 * without CUDA, kvpool_gpu_mover_create returns KVPOOL_UNIMPLEMENTED.
 */

/* Engine KV layouts (kvpool::gpu::KvLayoutKind). */
typedef enum kvpool_gpu_layout_kind {
  /* vLLM: per layer [2, num_pages, tokens_per_block, kv_heads, head_dim] */
  KVPOOL_GPU_VLLM_PAGED = 0,
  /* vLLM K/V split: per layer K and V [num_pages, tokens_per_block, kv_heads, head_dim] */
  KVPOOL_GPU_VLLM_PAGED_SPLIT = 1,
  /* transformers: per layer K and V [batch, kv_heads, max_seq, head_dim]; page p is
   * tokens [(p % (max_seq / tokens_per_block)) * tokens_per_block, ...) of row
   * p / (max_seq / tokens_per_block) */
  KVPOOL_GPU_HF_CONTIGUOUS = 2
} kvpool_gpu_layout_kind_t;

typedef struct kvpool_gpu_layout {
  size_t struct_size; /* sizeof(kvpool_gpu_layout_t) */
  kvpool_gpu_layout_kind_t kind;
  const char* dtype; /* "bf16", "fp16", "fp8"; NULL: "bf16" */
  uint32_t num_layers;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t tokens_per_block;
  uint64_t num_pages; /* vLLM kinds */
  uint32_t batch;     /* HF */
  uint64_t max_seq;   /* HF */
} kvpool_gpu_layout_t;

/* Zeroes *layout, sets struct_size, tokens_per_block 16 and batch 1. */
void kvpool_gpu_layout_init(kvpool_gpu_layout_t* layout);

/* The block size of a layout, and its namespace descriptor's layout name
 * ("vllm-paged", "vllm-paged-split", "hf-contiguous"; static storage).
 * KVPOOL_INVALID_ARGUMENT for a layout kvpool cannot move (see gpu.h). */
kvpool_status_t kvpool_gpu_layout_block_bytes(const kvpool_gpu_layout_t* layout, uint64_t* bytes_out);
const char* kvpool_gpu_layout_name(kvpool_gpu_layout_kind_t kind);

typedef struct kvpool_gpu_options {
  size_t struct_size;   /* sizeof(kvpool_gpu_options_t) */
  uint32_t path;        /* 0 auto, 1 mapped (same host only), 2 staged */
  uint32_t mover;       /* 0 copy engine, 1 kernel, 2 one copy per page (baseline) */
  uint64_t chunk_bytes; /* 0: 64 MiB */
  int32_t verify_loads; /* nonzero (the default): check payload checksums on mapped loads */
  uint32_t hash_threads; /* 0: 8 */
  int32_t device;       /* CUDA device of the tensors; -1: the current one */
  int32_t gpu_checksums; /* nonzero (the default): payload checksums computed on the GPU */
  int32_t staged_stream_order; /* nonzero: the staged path holds the caller's stream and records
                                * the transfer's event after it (gpu.h: the cost) */
} kvpool_gpu_options_t;

/* Zeroes *options, sets struct_size, verify_loads 1, gpu_checksums 1 and
 * device -1. */
void kvpool_gpu_options_init(kvpool_gpu_options_t* options);

typedef struct kvpool_gpu_mover kvpool_gpu_mover_t;
typedef struct kvpool_gpu_transfer kvpool_gpu_transfer_t;

/* A mover for the engine tensors k[0..num_layers) (vLLM paged: the combined
 * per-layer tensors, v NULL) and v[0..num_layers), in namespace_id (which
 * the client registered, with this layout's block size). The client must
 * outlive the mover; options may be NULL. Release with
 * kvpool_gpu_mover_destroy after its transfers. KVPOOL_FAILED_PRECONDITION
 * when no GPU is usable, KVPOOL_UNIMPLEMENTED without CUDA. */
kvpool_status_t kvpool_gpu_mover_create(kvpool_client_t* client, uint64_t namespace_id,
                                        const kvpool_gpu_layout_t* layout, void* const* k, void* const* v,
                                        const kvpool_gpu_options_t* options, kvpool_gpu_mover_t** mover_out);
void kvpool_gpu_mover_destroy(kvpool_gpu_mover_t* mover);
/* Replaces the mover's options (between transfers). */
kvpool_status_t kvpool_gpu_mover_set_options(kvpool_gpu_mover_t* mover, const kvpool_gpu_options_t* options);

/* Saves pages[i] under keys[i] / loads the longest present prefix of keys
 * into pages[i], asynchronously on `stream` (a cudaStream_t; NULL: the
 * legacy default stream). On KVPOOL_OK, *transfer_out is a new transfer to
 * wait on and destroy. keys and pages are read during the call only. */
kvpool_status_t kvpool_gpu_save(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* pages,
                                size_t num_keys, void* stream, kvpool_gpu_transfer_t** transfer_out);
kvpool_status_t kvpool_gpu_load(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* pages,
                                size_t num_keys, void* stream, kvpool_gpu_transfer_t** transfer_out);

/* Pointer rows (gpu.h, KvMover::create_rows: the semantics): a mover for
 * blocks given per call as rows of `units` device addresses (UCM's
 * load_data/dump_data), each run block_bytes / units bytes. rows holds
 * num_rows = num_keys * units addresses (key i's at rows[i * units ..]);
 * `after` (a cudaEvent_t, may be NULL) is waited for before the copies;
 * stream NULL: the mover's own stream. Such a mover takes only these two
 * calls, and a layout's mover not them (KVPOOL_INVALID_ARGUMENT). */
kvpool_status_t kvpool_gpu_row_mover_create(kvpool_client_t* client, uint64_t namespace_id, uint32_t units,
                                            const kvpool_gpu_options_t* options, kvpool_gpu_mover_t** mover_out);
kvpool_status_t kvpool_gpu_save_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* rows,
                                     size_t num_rows, size_t num_keys, void* stream, void* after,
                                     kvpool_gpu_transfer_t** transfer_out);
kvpool_status_t kvpool_gpu_load_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* rows,
                                     size_t num_rows, size_t num_keys, void* stream, void* after,
                                     kvpool_gpu_transfer_t** transfer_out);
/* A rows mover whose blocks are `layers` equal groups of units / layers
 * runs, layer-major (kvpool_gpu_row_mover_create is this with layers 1),
 * for the layer-wise row calls: kvpool_gpu_load_layer_rows moves layer
 * `layer` of each block into num_keys * units / layers addresses;
 * kvpool_gpu_begin_save_layer_rows starts a save (a kvpool_gpu_layer_save_t)
 * whose layers are given by kvpool_gpu_save_layer_rows, each with its
 * addresses and an event its copies wait for, and committed by
 * kvpool_gpu_save_finish (gpu.h, KvMover::load_layer_rows: the semantics). */
kvpool_status_t kvpool_gpu_layer_row_mover_create(kvpool_client_t* client, uint64_t namespace_id, uint32_t units,
                                                  uint32_t layers, const kvpool_gpu_options_t* options,
                                                  kvpool_gpu_mover_t** mover_out);
kvpool_status_t kvpool_gpu_load_layer_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* rows,
                                           size_t num_rows, size_t num_keys, uint32_t layer, void* stream, void* after,
                                           kvpool_gpu_transfer_t** transfer_out);

/* The cudaEvent_t recorded on the caller's stream after the transfer's
 * copies (NULL on the staged path: gpu.h); owned by the transfer. */
void* kvpool_gpu_transfer_event(kvpool_gpu_transfer_t* transfer);

typedef struct kvpool_gpu_transfer_result {
  size_t struct_size;     /* sizeof(kvpool_gpu_transfer_result_t) */
  size_t done;            /* save: keys now in the pool; load: leading blocks loaded and verified */
  size_t failed;          /* save: keys that failed */
  kvpool_status_t stopped; /* load: why it stopped early (KVPOOL_OK when all loaded) */
  char path[16];          /* "mapped" or "staged" */
  uint64_t bytes;         /* payload bytes moved */
  /* Milliseconds since the call: */
  double control_ms;   /* coordinator calls done */
  double enqueue_ms;   /* the call returned */
  double copy_done_ms; /* last copy complete */
  double hash_ms;      /* CPU time hashing, summed over threads */
  double hash_done_ms; /* last checksum known */
  double commit_ms;    /* headers + commit, or release (mapped); the puts/gets (staged) */
  double total_ms;     /* outcome known */
} kvpool_gpu_transfer_result_t;

void kvpool_gpu_transfer_result_init(kvpool_gpu_transfer_result_t* result);

/* Blocks until the transfer's outcome is known; result may be NULL. The
 * transfer's own status when it failed as a whole. */
kvpool_status_t kvpool_gpu_transfer_wait(kvpool_gpu_transfer_t* transfer, kvpool_gpu_transfer_result_t* result);
/* Waits, then releases the transfer. NULL is a no-op. */
void kvpool_gpu_transfer_destroy(kvpool_gpu_transfer_t* transfer);

/* Layer by layer (gpu.h, LayerTransfer and LayerSave: the semantics, and
 * the staged path's fallback to whole blocks).
 *
 * kvpool_gpu_load_layers: like kvpool_gpu_load, the copies ordered after the
 * work queued on `stream`, but run layer after layer on the mover's own
 * stream. Where the load starts on the mover's thread (gpu.h,
 * KvMover::load_layers) it returns before the lookup unless found_out is
 * non-NULL: then it waits for the lookup and *found_out gets the leading
 * keys found in the pool (a lookup that fails is then the transfer's
 * error). The transfer is waited on and destroyed like any other; its
 * kvpool_gpu_transfer_wait reports done = leading blocks whose every layer
 * verified. */
kvpool_status_t kvpool_gpu_load_layers(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, const uint64_t* pages,
                                       size_t num_keys, void* stream, kvpool_gpu_transfer_t** transfer_out,
                                       size_t* found_out);
/* The leading keys a layer-wise load found in the pool, once its lookup
 * answered (blocks until then); 0 for NULL, a failed lookup or a transfer
 * that is not layer-wise. */
size_t kvpool_gpu_transfer_found(kvpool_gpu_transfer_t* transfer);
/* Layers of a layer-wise transfer (0 for a transfer from kvpool_gpu_load or
 * kvpool_gpu_save), and the cudaEvent_t recorded once layer `layer` is in its
 * pages and checksummed (NULL past the layers; blocks until the load has
 * started); owned by the transfer. A model's stream waits on it with
 * cudaStreamWaitEvent before that layer.
 * kvpool_gpu_transfer_event of a layer-wise transfer is recorded after its
 * last layer; a failed layer checksum shows as done < found and stopped
 * KVPOOL_DATA_LOSS in its result. */
uint32_t kvpool_gpu_transfer_layers(kvpool_gpu_transfer_t* transfer);
void* kvpool_gpu_transfer_layer_event(kvpool_gpu_transfer_t* transfer, uint32_t layer);
/* Makes `stream` wait until layer `layer` is in (no host synchronisation,
 * and no wait for the lookup: gpu.h, LayerTransfer::wait_layer): for
 * callers without the CUDA runtime of their own, e.g. a forward-pre-hook in
 * Python. KVPOOL_INVALID_ARGUMENT for a layer out of range or a transfer
 * that is not layer-wise. */
kvpool_status_t kvpool_gpu_transfer_wait_layer(kvpool_gpu_transfer_t* transfer, uint32_t layer, void* stream);

typedef struct kvpool_gpu_layer_save kvpool_gpu_layer_save_t;
/* Allocates slots for keys (pages[i] stay the source until finish). */
kvpool_status_t kvpool_gpu_begin_save_layers(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys,
                                             const uint64_t* pages, size_t num_keys,
                                             kvpool_gpu_layer_save_t** save_out);
/* Saves layer `layer` once the work queued on `stream` so far has written
 * it (stream is not held). KVPOOL_INVALID_ARGUMENT for a layer out of range
 * or saved twice. */
kvpool_status_t kvpool_gpu_save_layer(kvpool_gpu_layer_save_t* save, uint32_t layer, void* stream);
/* Rows forms (kvpool_gpu_layer_row_mover_create): a save of keys whose
 * layers come with their addresses (num_keys * units / layers of them) and
 * a cudaEvent_t `after` (may be NULL) the layer's copies wait for. */
kvpool_status_t kvpool_gpu_begin_save_layer_rows(kvpool_gpu_mover_t* mover, const kvpool_key_t* keys, size_t num_keys,
                                                 kvpool_gpu_layer_save_t** save_out);
kvpool_status_t kvpool_gpu_save_layer_rows(kvpool_gpu_layer_save_t* save, uint32_t layer, const uint64_t* rows,
                                           size_t num_rows, void* after);
/* Waits for the copies and commits the blocks once every layer was saved
 * (whole or not at all); KVPOOL_FAILED_PRECONDITION (nothing committed) when
 * a layer was not. A second call returns the first outcome; save_layer after
 * it is KVPOOL_FAILED_PRECONDITION. result may be NULL. */
kvpool_status_t kvpool_gpu_save_finish(kvpool_gpu_layer_save_t* save, kvpool_gpu_transfer_result_t* result);
/* Aborts an unfinished save (after its copies end), then releases it. NULL
 * is a no-op. */
void kvpool_gpu_save_destroy(kvpool_gpu_layer_save_t* save);

/* 1 when a CUDA device is usable (and kvpool was built with CUDA), else 0. */
int kvpool_gpu_available(void);

#ifdef __cplusplus
} /* extern "C" */
#endif
