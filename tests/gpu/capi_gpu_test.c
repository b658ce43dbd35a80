/* The GPU part of the C API (include/kvpool/kvpool.h) from strict C11: layout
 * sizes and names, option defaults, argument errors; and, where no GPU is
 * usable (CI), that it says so instead of failing later. Exits non-zero on
 * any failure. */
#include <stdio.h>
#include <string.h>

#include "kvpool/kvpool.h"

static int g_failures = 0;
#define CHECK(cond)                                                                         \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      ++g_failures;                                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s (%s)\n", __FILE__, __LINE__, #cond,         \
              kvpool_last_error_message());                                                 \
    }                                                                                       \
  } while (0)

int main(void) {
  kvpool_gpu_layout_t l;
  kvpool_gpu_options_t o;
  kvpool_gpu_mover_t* mover = NULL;
  uint64_t bytes = 0;
  void* k[32] = {0};

  kvpool_gpu_layout_init(&l);
  CHECK(l.struct_size == sizeof(l) && l.tokens_per_block == 16 && l.batch == 1);
  l.kind = KVPOOL_GPU_VLLM_PAGED;
  l.dtype = "bf16";
  l.num_layers = 32;
  l.num_kv_heads = 8;
  l.head_dim = 128;
  l.num_pages = 10;
  CHECK(kvpool_gpu_layout_block_bytes(&l, &bytes) == KVPOOL_OK && bytes == 2u << 20);
  l.kind = KVPOOL_GPU_HF_CONTIGUOUS;
  l.max_seq = 4096;
  CHECK(kvpool_gpu_layout_block_bytes(&l, &bytes) == KVPOOL_OK && bytes == 2u << 20);
  l.max_seq = 4001;
  CHECK(kvpool_gpu_layout_block_bytes(&l, &bytes) == KVPOOL_INVALID_ARGUMENT);
  l.struct_size = 8;
  CHECK(kvpool_gpu_layout_block_bytes(&l, &bytes) == KVPOOL_INVALID_ARGUMENT);
  CHECK(strcmp(kvpool_gpu_layout_name(KVPOOL_GPU_VLLM_PAGED_SPLIT), "vllm-paged-split") == 0);
  CHECK(strcmp(kvpool_gpu_layout_name(KVPOOL_GPU_HF_CONTIGUOUS), "hf-contiguous") == 0);

  kvpool_gpu_options_init(&o);
  CHECK(o.struct_size == sizeof(o) && o.verify_loads == 1 && o.gpu_checksums == 1 && o.device == -1);
  kvpool_gpu_layout_init(&l);
  CHECK(kvpool_gpu_mover_create(NULL, 1, &l, k, NULL, &o, &mover) == KVPOOL_INVALID_ARGUMENT && mover == NULL);
  CHECK(kvpool_gpu_save(NULL, NULL, NULL, 0, NULL, NULL) == KVPOOL_INVALID_ARGUMENT);
  CHECK(kvpool_gpu_transfer_wait(NULL, NULL) == KVPOOL_INVALID_ARGUMENT);
  kvpool_gpu_transfer_destroy(NULL);
  kvpool_gpu_mover_destroy(NULL);
  /* Layer by layer: the same argument errors, and no layers for no transfer. */
  {
    kvpool_gpu_transfer_t* t = NULL;
    kvpool_gpu_layer_save_t* save = NULL;
    size_t found = 7;
    kvpool_key_t key = {1, 2};
    uint64_t page = 0;
    CHECK(kvpool_gpu_load_layers(NULL, &key, &page, 1, NULL, &t, &found) == KVPOOL_INVALID_ARGUMENT && t == NULL);
    CHECK(found == 7);
    CHECK(kvpool_gpu_transfer_layers(NULL) == 0);
    CHECK(kvpool_gpu_transfer_found(NULL) == 0);
    CHECK(kvpool_gpu_transfer_layer_event(NULL, 0) == NULL);
    CHECK(kvpool_gpu_transfer_wait_layer(NULL, 0, NULL) == KVPOOL_INVALID_ARGUMENT);
    CHECK(kvpool_gpu_begin_save_layers(NULL, &key, &page, 1, &save) == KVPOOL_INVALID_ARGUMENT && save == NULL);
    CHECK(kvpool_gpu_save_layer(NULL, 0, NULL) == KVPOOL_INVALID_ARGUMENT);
    CHECK(kvpool_gpu_save_finish(NULL, NULL) == KVPOOL_INVALID_ARGUMENT);
    kvpool_gpu_save_destroy(NULL);
  }
  /* Pointer rows: the same argument errors. */
  {
    kvpool_gpu_mover_t* rows_mover = NULL;
    kvpool_gpu_transfer_t* t = NULL;
    kvpool_key_t key = {1, 2};
    uint64_t row[2] = {4096, 8192};
    CHECK(kvpool_gpu_row_mover_create(NULL, 1, 2, NULL, &rows_mover) == KVPOOL_INVALID_ARGUMENT && rows_mover == NULL);
    CHECK(kvpool_gpu_save_rows(NULL, &key, row, 2, 1, NULL, NULL, &t) == KVPOOL_INVALID_ARGUMENT && t == NULL);
    CHECK(kvpool_gpu_load_rows(NULL, &key, row, 2, 1, NULL, NULL, &t) == KVPOOL_INVALID_ARGUMENT && t == NULL);
    /* Layer by layer. */
    kvpool_gpu_layer_save_t* s = NULL;
    CHECK(kvpool_gpu_layer_row_mover_create(NULL, 1, 4, 2, NULL, &rows_mover) == KVPOOL_INVALID_ARGUMENT &&
          rows_mover == NULL);
    CHECK(kvpool_gpu_load_layer_rows(NULL, &key, row, 2, 1, 0, NULL, NULL, &t) == KVPOOL_INVALID_ARGUMENT && t == NULL);
    CHECK(kvpool_gpu_begin_save_layer_rows(NULL, &key, 1, &s) == KVPOOL_INVALID_ARGUMENT && s == NULL);
    CHECK(kvpool_gpu_save_layer_rows(NULL, 0, row, 2, NULL) == KVPOOL_INVALID_ARGUMENT);
  }
  printf("kvpool_gpu_available: %d\n", kvpool_gpu_available());
  printf("capi_gpu_test: %s\n", g_failures == 0 ? "ok" : "FAILED");
  return g_failures == 0 ? 0 : 1;
}
