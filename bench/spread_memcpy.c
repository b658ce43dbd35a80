// spread_memcpy: the memory-bandwidth ceiling of the shared-memory rows of
// bench/throughput.py. Maps a file (the agent's pool region, reached through
// /proc/AGENT/map_files/..., or any shm file) MAP_SHARED, and copies blocks
// between it and per-thread local buffers of --batch blocks with glibc
// memcpy, spread over the region as kvbench spreads them (a stride coprime
// with the slot count), in N threads.
//
// First an untimed pass over each thread's share (this process's first touch
// of the mapping: reported as cold_*), then a timed run: every thread starts
// at one barrier and copies its share over and over until --seconds have
// passed; GB/s = all bytes / (last thread's end - start).
//
// Only [--skip, --length) is copied: throughput.py passes the agent's slot
// header table as --skip, so a copy *to* the region never touches a header.
//
// The file is mapped at a 2 MiB boundary, as UCX maps the agent's region
// into a client (SPREAD_MEMCPY_UNALIGNED=1 in the environment: where mmap
// puts it).
//
// Build: gcc -O2 -o spread_memcpy bench/spread_memcpy.c -lpthread
// Run:   spread_memcpy FILE LENGTH SKIP BLOCK BATCH THREADS to|from SECONDS
// Prints one JSON object.

#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static size_t gcd(size_t a, size_t b) {
  while (b) {
    size_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

static size_t stride;
static size_t slot_of(size_t i, size_t slots) { return (i * stride) % slots; }

static char* region;
static size_t skip, block, batch, slots, nthreads;
static int to_region;
static double seconds, start_at;
static pthread_barrier_t barrier;

struct worker {
  pthread_t tid;
  char* local;
  size_t first, count;
  size_t pos;  // next block of the share, in [0, count)
  double end;
  size_t bytes;
};

static void copy_share(struct worker* w, size_t n) {
  for (size_t b = 0; b < n; ++b) {
    size_t i = w->first + w->pos;
    w->pos = (w->pos + 1) % w->count;
    char* remote = region + skip + slot_of(i, slots) * block;
    char* local = w->local + (b % batch) * block;
    if (to_region) memcpy(remote, local, block);
    else memcpy(local, remote, block);
  }
}

static void* run(void* arg) {
  struct worker* w = arg;
  pthread_barrier_wait(&barrier);  // the timed run starts here, for all threads
  double deadline = start_at + seconds;
  size_t done = 0;
  do {
    copy_share(w, batch);
    done += batch;
  } while (now() < deadline);
  w->end = now();
  w->bytes = done * block;
  return NULL;
}

static long minflt(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_minflt;
}

int main(int argc, char** argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: %s FILE LENGTH SKIP BLOCK BATCH THREADS to|from SECONDS\n", argv[0]);
    return 2;
  }
  size_t length = strtoull(argv[2], NULL, 0);
  skip = strtoull(argv[3], NULL, 0);
  block = strtoull(argv[4], NULL, 0);
  batch = strtoull(argv[5], NULL, 0);
  nthreads = strtoull(argv[6], NULL, 0);
  to_region = strcmp(argv[7], "to") == 0;
  seconds = atof(argv[8]);
  if (block == 0 || batch == 0 || nthreads == 0 || nthreads > 64 || skip >= length) return 2;
  slots = (length - skip) / block;
  if (slots < nthreads) return 2;
  stride = slots / 2 + 1;
  while (gcd(stride, slots) != 1) ++stride;

  int fd = open(argv[1], O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    perror(argv[1]);
    return 1;
  }
  // At a 2 MiB boundary, as UCX maps the agent's region into a client
  // (ucp_rkey_ptr): where the region is in huge pages (the agent collapses
  // it), the kernel then maps it here with 2 MiB entries too.
  const size_t huge = 2u << 20;
  char* reserve = mmap(NULL, length + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserve == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  char* aligned = (char*)(((uintptr_t)reserve + huge - 1) & ~(uintptr_t)(huge - 1));
  region = getenv("SPREAD_MEMCPY_UNALIGNED") ? mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                                             : mmap(aligned, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
  if (region == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  close(fd);

  struct worker w[64];
  for (size_t t = 0; t < nthreads; ++t) {
    w[t].local = mmap(NULL, batch * block, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(w[t].local, 0x5a + (int)t, batch * block);  // faulted in before any copy
    w[t].first = slots * t / nthreads;
    w[t].count = slots * (t + 1) / nthreads - w[t].first;
    w[t].pos = 0;
  }
  // Cold pass: every thread's share once, one thread after the other (the
  // first touch of each page of this mapping, as a fresh client pays it).
  long f0 = minflt();
  double c0 = now();
  for (size_t t = 0; t < nthreads; ++t) copy_share(&w[t], w[t].count);
  double cold = now() - c0;
  long cold_faults = minflt() - f0;

  pthread_barrier_init(&barrier, NULL, (unsigned)nthreads + 1);
  for (size_t t = 0; t < nthreads; ++t) pthread_create(&w[t].tid, NULL, run, &w[t]);
  f0 = minflt();
  start_at = now();
  pthread_barrier_wait(&barrier);
  double end = start_at;
  size_t bytes = 0;
  for (size_t t = 0; t < nthreads; ++t) {
    pthread_join(w[t].tid, NULL);
    if (w[t].end > end) end = w[t].end;
    bytes += w[t].bytes;
  }
  printf("{\"direction\": \"%s\", \"threads\": %zu, \"block_bytes\": %zu, \"batch\": %zu, \"region_bytes\": %zu, "
         "\"copied_range_bytes\": %zu, \"cold_seconds\": %.6f, \"cold_bytes\": %zu, \"cold_minor_faults\": %ld, "
         "\"bytes\": %zu, \"seconds\": %.6f, \"gbps\": %.4f, \"minor_faults\": %ld}\n",
         to_region ? "to" : "from", nthreads, block, batch, length, slots * block, cold, slots * block, cold_faults,
         bytes, end - start_at, bytes / (end - start_at) / 1e9, minflt() - f0);
  return 0;
}
