/* The C API (include/kvpool/kvpool.h) from C, against a real pool: starts
 * kvpool-agent --standalone on a port the OS picks, then puts, gets, looks up,
 * removes and waits through libkvpool_c, checking bytes and status codes.
 * Compiled as C11 with the C compiler; exits non-zero on any failure. */

#define _GNU_SOURCE

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvpool/kvpool.h"

/* ------------------------------------------------------------ harness -- */

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                               \
  do {                                                                            \
    ++g_checks;                                                                   \
    if (!(cond)) {                                                                \
      ++g_failures;                                                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s: %s)\n", __FILE__, \
              __LINE__, #cond, kvpool_status_name(kvpool_last_error_code()),      \
              kvpool_last_error_message());                                       \
    }                                                                             \
  } while (0)

/* A failed REQUIRE ends the test case: later steps depend on it. */
#define REQUIRE(cond)     \
  do {                    \
    int ok_ = (cond);     \
    CHECK(ok_);           \
    if (!ok_) return;     \
  } while (0)

#define REQUIRE_OK(call) REQUIRE((call) == KVPOOL_OK)

static double time_scale(void) {
  const char* env = getenv("KVPOOL_TEST_TIME_SCALE");
  double v = env != NULL ? strtod(env, NULL) : 1.0;
  return v >= 1.0 ? v : 1.0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ------------------------------------------------------------ the pool -- */

static pid_t g_agent = -1;
static char g_coordinator[64];

static void bin_dir(char* out, size_t size) {
  const char* env = getenv("KVPOOL_TEST_BIN_DIR");
  if (env != NULL && env[0] != '\0') {
    snprintf(out, size, "%s", env);
    return;
  }
  ssize_t n = readlink("/proc/self/exe", out, size - 1);
  if (n <= 0) {
    snprintf(out, size, ".");
    return;
  }
  out[n] = '\0';
  char* slash = strrchr(out, '/');
  if (slash != NULL) *slash = '\0';
}

static void stop_pool(void) {
  if (g_agent <= 0) return;
  kill(g_agent, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    if (waitpid(g_agent, NULL, WNOHANG) == g_agent) {
      g_agent = -1;
      return;
    }
    sleep_ms(10);
  }
  kill(g_agent, SIGKILL);
  waitpid(g_agent, NULL, 0);
  g_agent = -1;
}

/* kvpool-agent --standalone (agent + embedded coordinator) on a port the OS
 * picks; fills g_coordinator. Returns 0 on success. */
static int start_pool(void) {
  char dir[4096], agent[4200], port_file[128];
  bin_dir(dir, sizeof(dir));
  snprintf(agent, sizeof(agent), "%s/kvpool-agent", dir);
  snprintf(port_file, sizeof(port_file), "/tmp/kvpool-capi-test-%d-port", (int)getpid());
  unlink(port_file);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    /* The agent dies with the test, even if the test crashes. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    execl(agent, agent, "--standalone", "--listen", "127.0.0.1:0", "--port-file", port_file, "--pool-size",
          "64MiB", "--log-level", "warn", (char*)NULL);
    fprintf(stderr, "exec %s: %s\n", agent, strerror(errno));
    _exit(127);
  }
  g_agent = pid;
  double deadline = now_s() + 30.0 * time_scale();
  while (now_s() < deadline) {
    FILE* f = fopen(port_file, "r");
    if (f != NULL) {
      unsigned port = 0;
      int n = fscanf(f, "%u", &port);
      fclose(f);
      if (n == 1 && port > 0) {
        unlink(port_file);
        snprintf(g_coordinator, sizeof(g_coordinator), "127.0.0.1:%u", port);
        return 0;
      }
    }
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      g_agent = -1;
      fprintf(stderr, "kvpool-agent exited before writing its port\n");
      return -1;
    }
    sleep_ms(10);
  }
  fprintf(stderr, "kvpool-agent wrote no port file within the deadline\n");
  stop_pool();
  return -1;
}

/* ------------------------------------------------------------- helpers -- */

enum { kBlock = 256 << 10, kMaxBlocks = 8 };

static kvpool_namespace_desc_t test_namespace(const char* model) {
  kvpool_namespace_desc_t d;
  kvpool_namespace_desc_init(&d);
  d.model_id = model;
  d.dtype = "bf16";
  d.num_layers = 1;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = 16;
  d.layout = "test";
  d.block_bytes = kBlock;
  return d;
}

static kvpool_client_t* connect_client(void) {
  kvpool_client_options_t o;
  kvpool_client_options_init(&o);
  o.coordinator = g_coordinator;
  o.timeout_ms = (uint32_t)(10000 * time_scale());
  kvpool_client_t* c = NULL;
  if (kvpool_client_create(&o, &c) != KVPOOL_OK) return NULL;
  return c;
}

/* n blocks keyed from tokens first_token.., each filled with a pattern of its
 * key, plus zeroed output buffers. */
typedef struct blocks {
  size_t n;
  kvpool_key_t keys[kMaxBlocks];
  unsigned char* in[kMaxBlocks];
  unsigned char* out[kMaxBlocks];
} blocks_t;

static int blocks_make(blocks_t* b, uint64_t ns, size_t n, uint32_t first_token) {
  uint32_t tokens[kMaxBlocks * 16];
  size_t num_keys = 0;
  memset(b, 0, sizeof(*b));
  b->n = n;
  for (size_t i = 0; i < n * 16; ++i) tokens[i] = first_token + (uint32_t)i;
  if (kvpool_prefix_keys(ns, tokens, n * 16, 16, b->keys, kMaxBlocks, &num_keys) != KVPOOL_OK || num_keys != n) {
    return -1;
  }
  for (size_t i = 0; i < n; ++i) {
    b->in[i] = malloc(kBlock);
    b->out[i] = calloc(1, kBlock);
    if (b->in[i] == NULL || b->out[i] == NULL) return -1;
    uint64_t x = b->keys[i].lo | 1;
    for (size_t j = 0; j < kBlock; ++j) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      b->in[i][j] = (unsigned char)x;
    }
  }
  return 0;
}

static void blocks_free(blocks_t* b) {
  for (size_t i = 0; i < b->n; ++i) {
    free(b->in[i]);
    free(b->out[i]);
  }
}

/* How many of the first n output buffers differ from their input. */
static size_t blocks_wrong(const blocks_t* b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += memcmp(b->in[i], b->out[i], kBlock) != 0;
  return bad;
}

/* --------------------------------------------------------------- tests -- */

static void test_keys_match_the_cpp_vectors(void) {
  kvpool_namespace_desc_t d;
  kvpool_namespace_desc_init(&d);
  d.model_id = "meta-llama/Meta-Llama-3-8B";
  d.dtype = "bf16";
  d.num_layers = 32;
  d.num_kv_heads = 8;
  d.head_dim = 128;
  d.tokens_per_block = 16;
  d.layout = "vllm-paged";
  uint64_t id = 0;
  REQUIRE_OK(kvpool_namespace_id(&d, &id));
  CHECK(id == 0x5f01ad67c1242feeull);

  uint32_t tokens[40];
  for (uint32_t i = 0; i < 40; ++i) tokens[i] = i * 1000 + 7;
  kvpool_key_t keys[4];
  size_t n = 99;
  REQUIRE_OK(kvpool_prefix_keys(0x5f01ad67c1242feeull, tokens, 40, 16, keys, 4, &n));
  REQUIRE(n == 2);
  CHECK(keys[0].lo == 0xb230d67248536de7ull && keys[0].hi == 0xc53e13d5e8b5ff5aull);
  CHECK(keys[1].lo == 0x840661979fad7c56ull && keys[1].hi == 0x66778081e9b895ffull);

  const uint32_t small[4] = {1, 2, 3, 4};
  REQUIRE_OK(kvpool_prefix_keys(0x0123456789abcdefull, small, 4, 2, keys, 4, &n));
  REQUIRE(n == 2);
  CHECK(keys[0].lo == 0x2192ed86ef61cd9dull && keys[0].hi == 0x3e10bb7f49220d40ull);
  CHECK(keys[1].lo == 0x63bbc33f62def66aull && keys[1].hi == 0x1d7a01f3b3bdc3e5ull);

  /* Too little room: the count is reported, nothing written. */
  n = 0;
  CHECK(kvpool_prefix_keys(1, tokens, 40, 16, keys, 1, &n) == KVPOOL_INVALID_ARGUMENT);
  CHECK(n == 2);
  CHECK(kvpool_last_error_code() == KVPOOL_INVALID_ARGUMENT);
  CHECK(strlen(kvpool_last_error_message()) > 0);
  CHECK(kvpool_prefix_keys(1, tokens, 40, 0, keys, 4, &n) == KVPOOL_INVALID_ARGUMENT);
  /* A success clears the thread's last error. */
  REQUIRE_OK(kvpool_prefix_keys(1, tokens, 8, 16, NULL, 0, &n));
  CHECK(n == 0);
  CHECK(kvpool_last_error_code() == KVPOOL_OK);
  CHECK(strcmp(kvpool_last_error_message(), "") == 0);
}

/* Engine keys are stored under these values: pinned. With namespace id 0
 * (seed 0) a key is plain XXH3-128 of its type byte and bytes, values from
 * Debian's xxhsum 0.8.1 (`printf 'sabc' | xxhsum -H2`, printed big-endian);
 * the seeded one is pinned from this implementation (the Python tests pin
 * the same values). */
static void test_engine_keys_match_pinned_vectors(void) {
  static const char data[] = "sabc" "b\x00\x01\x02" "i-12" "ssglang-page-0#1";
  const size_t offsets[] = {0, 4, 8, 12, 28};
  kvpool_key_t keys[4];
  REQUIRE_OK(kvpool_engine_keys(0, data, offsets, 3, keys));
  CHECK(keys[0].hi == 0xeea9e19f08f2632eull && keys[0].lo == 0xe39c97239db4c3faull);
  CHECK(keys[1].hi == 0x1856a007f8c62d9eull && keys[1].lo == 0x38f03eb6b9db6d17ull);
  CHECK(keys[2].hi == 0xf9ce3bc4681916d7ull && keys[2].lo == 0xd81f4c568a18e2d7ull);
  /* The Python form of this key is the bytes 48c440f4002d31d4 99fc44b5f289d811:
   * lo little-endian, then hi little-endian. */
  REQUIRE_OK(kvpool_engine_keys(0x0123456789abcdefull, data, offsets + 3, 1, keys + 3));
  CHECK(keys[3].lo == 0xd4312d00f440c448ull && keys[3].hi == 0x11d889f2b544fc99ull);
  /* The seed separates namespaces. */
  kvpool_key_t other;
  REQUIRE_OK(kvpool_engine_keys(1, data, offsets, 1, &other));
  CHECK(other.lo != keys[0].lo || other.hi != keys[0].hi);
  CHECK(kvpool_engine_keys(0, NULL, NULL, 0, NULL) == KVPOOL_OK);

  /* Malformed strings are refused, naming the key, and nothing is written. */
  static const char bad[] = "sok" "x12" "i012" "i-0" "i1a" "i-" "";
  struct {
    size_t begin, end;
    const char* why;
  } cases[] = {{3, 6, "unknown type byte"}, {6, 10, "leading zero"}, {10, 13, "leading zero"},
               {13, 16, "non-digit"},       {16, 18, "without digits"}, {18, 18, "empty"}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    const size_t off[] = {cases[i].begin, cases[i].end};
    kvpool_key_t out = {7, 7};
    CHECK(kvpool_engine_keys(0, bad, off, 1, &out) == KVPOOL_INVALID_ARGUMENT);
    CHECK(strstr(kvpool_last_error_message(), "engine key 0") != NULL);
    CHECK(strstr(kvpool_last_error_message(), cases[i].why) != NULL);
    CHECK(out.lo == 7 && out.hi == 7);
  }
  /* The first key fine, the second bad: nothing written, the second named. */
  const size_t mixed[] = {0, 3, 6};
  kvpool_key_t out[2] = {{7, 7}, {7, 7}};
  CHECK(kvpool_engine_keys(0, bad, mixed, 2, out) == KVPOOL_INVALID_ARGUMENT);
  CHECK(strstr(kvpool_last_error_message(), "engine key 1") != NULL);
  CHECK(out[0].lo == 7 && out[0].hi == 7);
  const size_t decreasing[] = {0, 3, 2};
  CHECK(kvpool_engine_keys(0, bad, decreasing, 2, out) == KVPOOL_INVALID_ARGUMENT);
  CHECK(strstr(kvpool_last_error_message(), "decrease") != NULL);
  CHECK(kvpool_engine_keys(0, NULL, mixed, 1, out) == KVPOOL_INVALID_ARGUMENT);
}

static void test_names_and_versions(void) {
  CHECK(strcmp(kvpool_status_name(KVPOOL_OK), "ok") == 0);
  CHECK(strcmp(kvpool_status_name(KVPOOL_NOT_FOUND), "not_found") == 0);
  CHECK(strcmp(kvpool_status_name(KVPOOL_DATA_LOSS), "data_loss") == 0);
  CHECK(strcmp(kvpool_status_name(KVPOOL_PERMISSION_DENIED), "permission_denied") == 0);
  CHECK(strcmp(kvpool_status_name((kvpool_status_t)1234), "unknown") == 0);
  CHECK(kvpool_abi_version() == KVPOOL_C_ABI_VERSION);
  CHECK(strlen(kvpool_version_string()) > 0);
}

static void test_bad_connects_give_clear_errors(void) {
  kvpool_client_options_t o;
  kvpool_client_options_init(&o);
  kvpool_client_t* c = (kvpool_client_t*)&o; /* must be reset to NULL on failure */
  o.coordinator = "no-port-here";
  CHECK(kvpool_client_create(&o, &c) == KVPOOL_INVALID_ARGUMENT);
  CHECK(c == NULL);
  CHECK(strlen(kvpool_last_error_message()) > 0);

  o.struct_size = 0; /* a struct from no release at all */
  o.coordinator = g_coordinator;
  CHECK(kvpool_client_create(&o, &c) == KVPOOL_INVALID_ARGUMENT);
  CHECK(kvpool_client_create(NULL, &c) == KVPOOL_INVALID_ARGUMENT);

  /* A secret the coordinator does not share is refused. */
  char other[] = "/tmp/kvpool-capi-secret-XXXXXX";
  int fd = mkstemp(other); /* mode 0600 */
  REQUIRE(fd >= 0);
  const char* key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
  REQUIRE(write(fd, key, strlen(key)) == (ssize_t)strlen(key));
  close(fd);
  kvpool_client_options_init(&o);
  o.coordinator = g_coordinator;
  o.secret_file = other;
  c = NULL;
  CHECK(kvpool_client_create(&o, &c) == KVPOOL_PERMISSION_DENIED);
  CHECK(c == NULL);
  CHECK(strstr(kvpool_last_error_message(), "secret") != NULL);
  unlink(other);

  /* A struct from ABI version 1 (no secret_file) finds the default secret. */
  kvpool_client_options_init(&o);
  o.struct_size = offsetof(kvpool_client_options_t, secret_file);
  o.coordinator = g_coordinator;
  o.secret_file = "/nonexistent/ignored";
  REQUIRE_OK(kvpool_client_create(&o, &c));
  kvpool_client_destroy(c);
}

static void test_put_get_lookup_remove(void) {
  kvpool_client_t* c = connect_client();
  REQUIRE(c != NULL);
  kvpool_namespace_desc_t d = test_namespace("capi-sync");
  uint64_t ns = 0, expected = 0, bb = 0;
  REQUIRE_OK(kvpool_register_namespace(c, &d, &ns));
  REQUIRE_OK(kvpool_namespace_id(&d, &expected));
  CHECK(ns == expected);
  REQUIRE_OK(kvpool_block_bytes(c, ns, &bb));
  CHECK(bb == kBlock);

  blocks_t b;
  REQUIRE(blocks_make(&b, ns, 6, 0) == 0);
  for (size_t i = 0; i < b.n; ++i) CHECK(kvpool_register_buffer(c, b.out[i], kBlock) == KVPOOL_OK);

  /* Four blocks, then all six: the first four are deduplicated. */
  kvpool_put_result_t pr;
  kvpool_put_result_init(&pr);
  REQUIRE_OK(kvpool_put(c, ns, b.keys, (const void* const*)b.in, 4, kBlock, &pr));
  CHECK(pr.written == 4 && pr.deduplicated == 0 && pr.failed == 0);
  kvpool_put_outcome_t outcomes[6];
  kvpool_status_t key_status[6];
  kvpool_put_result_init(&pr);
  pr.outcomes = outcomes;
  pr.key_status = key_status;
  REQUIRE_OK(kvpool_put(c, ns, b.keys, (const void* const*)b.in, 6, kBlock, &pr));
  CHECK(pr.deduplicated == 4 && pr.written == 2 && pr.pending == 0 && pr.failed == 0);
  for (int i = 0; i < 6; ++i) {
    CHECK(outcomes[i] == (i < 4 ? KVPOOL_PUT_EXISTS : KVPOOL_PUT_WRITTEN));
    CHECK(key_status[i] == KVPOOL_OK);
  }

  size_t prefix = 0;
  REQUIRE_OK(kvpool_lookup(c, ns, b.keys, 6, &prefix));
  CHECK(prefix == 6);

  /* Every block comes back byte for byte. */
  kvpool_get_result_t gr;
  kvpool_get_result_init(&gr);
  REQUIRE_OK(kvpool_get(c, ns, b.keys, (void* const*)b.out, 6, kBlock, &gr));
  CHECK(gr.loaded == 6);
  CHECK(gr.stopped == KVPOOL_OK);
  CHECK(blocks_wrong(&b, 6) == 0);

  /* Remove block 3: lookups and gets stop there, with a miss. */
  kvpool_status_t rs[1];
  size_t removed = 0;
  REQUIRE_OK(kvpool_remove(c, ns, &b.keys[3], 1, rs, &removed));
  CHECK(removed == 1 && rs[0] == KVPOOL_OK);
  REQUIRE_OK(kvpool_remove(c, ns, &b.keys[3], 1, rs, &removed));
  CHECK(removed == 0 && rs[0] == KVPOOL_NOT_FOUND);
  REQUIRE_OK(kvpool_lookup(c, ns, b.keys, 6, &prefix));
  CHECK(prefix == 3);
  for (size_t i = 0; i < b.n; ++i) memset(b.out[i], 0, kBlock);
  kvpool_get_result_init(&gr);
  REQUIRE_OK(kvpool_get(c, ns, b.keys, (void* const*)b.out, 6, kBlock, &gr));
  CHECK(gr.loaded == 3);
  CHECK(gr.stopped == KVPOOL_NOT_FOUND);
  CHECK(blocks_wrong(&b, 3) == 0);

  kvpool_client_stats_t st;
  kvpool_client_stats_init(&st);
  REQUIRE_OK(kvpool_client_get_stats(c, &st));
  CHECK(st.bytes_put >= 6u * kBlock);
  CHECK(st.bytes_got >= 9u * kBlock);
  CHECK(strlen(st.transports) > 0);

  for (size_t i = 0; i < b.n; ++i) CHECK(kvpool_unregister_buffer(c, b.out[i]) == KVPOOL_OK);
  CHECK(kvpool_unregister_buffer(c, b.out[0]) == KVPOOL_NOT_FOUND);
  blocks_free(&b);
  kvpool_client_destroy(c);
}

static void test_errors_carry_the_right_code_and_a_message(void) {
  kvpool_client_t* c = connect_client();
  REQUIRE(c != NULL);
  kvpool_namespace_desc_t d = test_namespace("capi-errors");
  uint64_t ns = 0;
  REQUIRE_OK(kvpool_register_namespace(c, &d, &ns));
  blocks_t b;
  REQUIRE(blocks_make(&b, ns, 2, 0) == 0);
  const uint64_t unknown = ns + 1;

  /* A namespace this client never registered: refused before anything moves. */
  CHECK(kvpool_put(c, unknown, b.keys, (const void* const*)b.in, 2, kBlock, NULL) == KVPOOL_FAILED_PRECONDITION);
  CHECK(kvpool_last_error_code() == KVPOOL_FAILED_PRECONDITION);
  CHECK(strlen(kvpool_last_error_message()) > 0);
  CHECK(kvpool_get(c, unknown, b.keys, (void* const*)b.out, 2, kBlock, NULL) == KVPOOL_FAILED_PRECONDITION);
  /* ... and one the coordinator does not know. */
  size_t prefix = 7;
  CHECK(kvpool_lookup(c, unknown, b.keys, 2, &prefix) == KVPOOL_NOT_FOUND);
  CHECK(strlen(kvpool_last_error_message()) > 0);
  CHECK(prefix == 7);

  /* Wrong sizes. */
  CHECK(kvpool_put(c, ns, b.keys, (const void* const*)b.in, 2, kBlock - 1, NULL) == KVPOOL_INVALID_ARGUMENT);
  CHECK(strstr(kvpool_last_error_message(), "262144") != NULL);
  CHECK(kvpool_get(c, ns, b.keys, (void* const*)b.out, 2, kBlock / 2, NULL) == KVPOOL_INVALID_ARGUMENT);
  size_t found = 9;
  REQUIRE_OK(kvpool_lookup(c, ns, b.keys, 2, &found));
  CHECK(found == 0); /* the refused put wrote nothing */

  /* A descriptor out of range, a result struct from no release. */
  kvpool_namespace_desc_t bad = test_namespace("capi-bad");
  bad.dtype = "fp7";
  bad.block_bytes = 0;
  CHECK(kvpool_register_namespace(c, &bad, &ns) == KVPOOL_INVALID_ARGUMENT);
  bad = test_namespace("capi-bad");
  bad.block_bytes = 1024;
  CHECK(kvpool_register_namespace(c, &bad, &ns) == KVPOOL_INVALID_ARGUMENT);
  kvpool_put_result_t pr;
  kvpool_put_result_init(&pr);
  pr.struct_size = 8;
  CHECK(kvpool_put(c, ns, b.keys, (const void* const*)b.in, 2, kBlock, &pr) == KVPOOL_INVALID_ARGUMENT);
  CHECK(kvpool_put(NULL, ns, b.keys, (const void* const*)b.in, 2, kBlock, NULL) == KVPOOL_INVALID_ARGUMENT);

  blocks_free(&b);
  kvpool_client_destroy(c);
}

static void test_async_put_and_get(void) {
  kvpool_client_t* c = connect_client();
  REQUIRE(c != NULL);
  kvpool_namespace_desc_t d = test_namespace("capi-async");
  uint64_t ns = 0;
  REQUIRE_OK(kvpool_register_namespace(c, &d, &ns));
  blocks_t b;
  REQUIRE(blocks_make(&b, ns, 5, 100) == 0);

  kvpool_future_t* put = NULL;
  {
    /* The key and pointer arrays are copied: these copies die at once. */
    kvpool_key_t keys[5];
    const void* blocks[5];
    for (int i = 0; i < 5; ++i) {
      keys[i] = b.keys[i];
      blocks[i] = b.in[i];
    }
    REQUIRE_OK(kvpool_put_async(c, ns, keys, blocks, 5, kBlock, &put));
    memset(keys, 0, sizeof(keys));
    memset(blocks, 0, sizeof(blocks));
  }
  REQUIRE(put != NULL);
  CHECK(kvpool_future_wait(put, -1) == KVPOOL_OK);
  CHECK(kvpool_future_test(put) == 1);
  CHECK(kvpool_future_wait(put, 0) == KVPOOL_OK); /* again: the same status */
  kvpool_put_result_t pr;
  kvpool_put_result_init(&pr);
  REQUIRE_OK(kvpool_future_put_result(put, &pr));
  CHECK(pr.written == 5);
  kvpool_get_result_t wrong_kind;
  kvpool_get_result_init(&wrong_kind);
  CHECK(kvpool_future_get_result(put, &wrong_kind) == KVPOOL_INVALID_ARGUMENT);
  kvpool_future_destroy(put);

  kvpool_future_t* get = NULL;
  REQUIRE_OK(kvpool_get_async(c, ns, b.keys, (void* const*)b.out, 5, kBlock, &get));
  double deadline = now_s() + 10.0 * time_scale();
  while (!kvpool_future_test(get) && now_s() < deadline) sleep_ms(1);
  CHECK(kvpool_future_test(get) == 1);
  CHECK(kvpool_future_wait(get, 1000) == KVPOOL_OK);
  kvpool_get_result_t gr;
  kvpool_get_result_init(&gr);
  REQUIRE_OK(kvpool_future_get_result(get, &gr));
  CHECK(gr.loaded == 5 && gr.stopped == KVPOOL_OK);
  CHECK(blocks_wrong(&b, 5) == 0);
  kvpool_future_destroy(get);

  /* Argument errors come from the call itself, and no future is made. */
  kvpool_future_t* none = (kvpool_future_t*)&gr;
  CHECK(kvpool_get_async(c, ns + 1, b.keys, (void* const*)b.out, 5, kBlock, &none) == KVPOOL_FAILED_PRECONDITION);
  CHECK(none == NULL);
  CHECK(kvpool_put_async(c, ns, b.keys, (const void* const*)b.in, 5, 100, &none) == KVPOOL_INVALID_ARGUMENT);
  CHECK(none == NULL);

  /* Destroying a future still in flight waits for it; so does destroying
   * the client with one in flight. */
  REQUIRE_OK(kvpool_get_async(c, ns, b.keys, (void* const*)b.out, 5, kBlock, &get));
  kvpool_future_destroy(get);
  REQUIRE_OK(kvpool_get_async(c, ns, b.keys, (void* const*)b.out, 5, kBlock, &get));
  kvpool_client_destroy(c);
  CHECK(kvpool_future_wait(get, 0) == KVPOOL_OK);
  kvpool_get_result_init(&gr);
  CHECK(kvpool_future_get_result(get, &gr) == KVPOOL_OK);
  CHECK(gr.loaded == 5);
  kvpool_future_destroy(get);
  blocks_free(&b);
}

typedef struct writer_args {
  uint64_t ns;
  blocks_t* blocks;
  long delay_ms;
  kvpool_status_t status;
} writer_args_t;

static void* delayed_writer(void* p) {
  writer_args_t* a = p;
  sleep_ms(a->delay_ms);
  kvpool_client_t* c = connect_client();
  if (c == NULL) {
    a->status = kvpool_last_error_code();
    return NULL;
  }
  kvpool_namespace_desc_t d = test_namespace("capi-wait");
  uint64_t ns = 0;
  a->status = kvpool_register_namespace(c, &d, &ns);
  if (a->status == KVPOOL_OK) {
    a->status = kvpool_put(c, a->ns, a->blocks->keys, (const void* const*)a->blocks->in, a->blocks->n, kBlock, NULL);
  }
  kvpool_client_destroy(c);
  return NULL;
}

static void test_wait_for_wakes_when_a_writer_commits(void) {
  kvpool_client_t* c = connect_client();
  REQUIRE(c != NULL);
  kvpool_namespace_desc_t d = test_namespace("capi-wait");
  uint64_t ns = 0;
  REQUIRE_OK(kvpool_register_namespace(c, &d, &ns));
  blocks_t b;
  REQUIRE(blocks_make(&b, ns, 3, 500) == 0);

  writer_args_t args = {ns, &b, 300, KVPOOL_INTERNAL};
  pthread_t writer;
  REQUIRE(pthread_create(&writer, NULL, delayed_writer, &args) == 0);
  double start = now_s();
  uint8_t committed[3] = {0, 0, 0};
  size_t n = 0;
  kvpool_status_t s = kvpool_wait_for(c, ns, b.keys, 3, (uint32_t)(20000 * time_scale()), committed, &n);
  double waited = now_s() - start;
  pthread_join(writer, NULL);
  CHECK(s == KVPOOL_OK);
  CHECK(args.status == KVPOOL_OK);
  CHECK(n == 3);
  CHECK(committed[0] == 1 && committed[1] == 1 && committed[2] == 1);
  CHECK(waited >= 0.25);                      /* it did wait for the writer */
  CHECK(waited < 10.0 * time_scale());        /* and woke at the commit, not the timeout */

  /* Keys nobody writes: back at the timeout, none committed, not an error. */
  blocks_t missing;
  REQUIRE(blocks_make(&missing, ns, 2, 9000) == 0);
  start = now_s();
  REQUIRE_OK(kvpool_wait_for(c, ns, missing.keys, 2, 200, committed, &n));
  CHECK(n == 0 && committed[0] == 0 && committed[1] == 0);
  CHECK(now_s() - start >= 0.15);
  blocks_free(&missing);
  blocks_free(&b);
  kvpool_client_destroy(c);
}

int main(void) {
  test_keys_match_the_cpp_vectors();
  test_engine_keys_match_pinned_vectors();
  test_names_and_versions();
  if (start_pool() != 0) {
    fprintf(stderr, "FAILED: could not start kvpool-agent --standalone\n");
    return 1;
  }
  atexit(stop_pool);
  test_bad_connects_give_clear_errors();
  test_put_get_lookup_remove();
  test_errors_carry_the_right_code_and_a_message();
  test_async_put_and_get();
  test_wait_for_wakes_when_a_writer_commits();
  stop_pool();
  printf("capi_test: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
