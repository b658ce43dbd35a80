// shm_probe: why a copy *from* a pool region mapped into a client can move
// far less than a copy *to* it (issue 20). No kvpool, no UCX: it makes the
// same kind of memory the agent lends and maps it the way a client does,
// then times passes of block copies over it.
//
// The agent's region (transport::Transport::allocate through UCX 1.13's
// posix md, then pool::PoolRegion::create): a file in /dev/shm (O_CREAT |
// O_EXCL, unlinked at once, ftruncate), mapped MAP_SHARED at a 2 MiB
// boundary, then MADV_HUGEPAGE + MADV_COLLAPSE (2 MiB pages where the host
// allows), MADV_POPULATE_WRITE, mlock. Here the "owner" does the same in
// this process and writes a byte into every 4 KiB page.
//
// A client's view (ucp_rkey_ptr: UCX maps the same file MAP_SHARED, at a
// 2 MiB boundary): every scenario maps the file afresh (a new mapping has no
// page-table entries; they are per mapping, the pages are shared) and runs
// its steps in order:
//   r  read pass: memcpy each block of the region into a local buffer
//   w  write pass: memcpy a local buffer into each block of the region
//   W  madvise(MADV_POPULATE_WRITE) on the whole mapping (what
//      transport::RemoteRegion::prefault does), timed like a pass
//   R  madvise(MADV_POPULATE_READ)
// A pass copies every block once, in kvbench's spread order (a stride
// coprime with the slot count), batches of 16 blocks in the local buffer;
// it prints GB/s and the minor page faults it took (getrusage: all of this
// process's faults, so 0 means no page fault at all).
//
// --anon: instead of a shared file, each scenario gets fresh private
// anonymous memory (--thp: with MADV_HUGEPAGE, 2 MiB-aligned): the same
// steps on memory no other mapping shares.
//
// Build (one file, no cmake): gcc -O2 -o /tmp/shm_probe bench/shm_probe.c -lpthread
// Examples (bench/README.md has what they showed on the 2-core VM):
//   /tmp/shm_probe --huge off --scenarios rrww,wwrr,Wrw,Rrw   # 4 KiB pages
//   /tmp/shm_probe --scenarios w,r,r,w                         # 2 MiB pages, as the agent's
//   /tmp/shm_probe --anon --scenarios wr,Wrr                   # private memory, 4 KiB
//   /tmp/shm_probe --anon --thp --scenarios wr,Wrr             # private memory, THP

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static const size_t kHuge = 2u << 20;
static size_t region_bytes = 1ul << 30;
static size_t block = 64 << 10;
static const size_t batch = 16;
static int threads = 1;
static int huge = 1, do_mlock = 1, anon = 0, thp = 0, owner_passes = 0;
static int fd = -1;
static const char* scenarios[32] = {"w", "r", "r", "w"};
static int nscenarios = 4;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static long minflt(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);  // every thread of the process
  return r.ru_minflt;
}

static size_t gcd(size_t a, size_t b) {
  while (b) {
    size_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// kvbench's slot_of: a stride coprime with the slot count walks the region.
static size_t slot_of(size_t i, size_t slots) {
  size_t stride = slots / 2 + 1;
  while (gcd(stride, slots) != 1) ++stride;
  return (i * stride) % slots;
}

// `length` bytes of address space at a 2 MiB boundary (reserved, then the
// caller maps over it with MAP_FIXED).
static char* aligned_hole(size_t length) {
  char* r = mmap(NULL, length + kHuge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  return (char*)(((uintptr_t)r + kHuge - 1) & ~(uintptr_t)(kHuge - 1));
}

struct job {
  char* region;
  char* local;
  size_t first, count, slots;
  int write;
};

static void* run_job(void* arg) {
  struct job* j = arg;
  for (size_t b = 0; b < j->count; ++b) {
    char* remote = j->region + slot_of(j->first + b, j->slots) * block;
    char* local = j->local + (b % batch) * block;
    if (j->write) memcpy(remote, local, block);
    else memcpy(local, remote, block);
  }
  return NULL;
}

static char* locals[64];

static void pass(const char* name, char* region, int write) {
  size_t slots = region_bytes / block;
  pthread_t tid[64];
  struct job jobs[64];
  long f0 = minflt();
  double t0 = now();
  for (int t = 0; t < threads; ++t) {
    jobs[t] = (struct job){region, locals[t], slots * t / threads, slots * (t + 1) / threads - slots * t / threads,
                           slots, write};
    pthread_create(&tid[t], NULL, run_job, &jobs[t]);
  }
  for (int t = 0; t < threads; ++t) pthread_join(tid[t], NULL);
  double s = now() - t0;
  long f = minflt() - f0;
  printf("  %-20s %8.2f GB/s %7.3f s %8ld minor faults", name, region_bytes / s / 1e9, s, f);
  if (f) printf(" (%.0f KiB per fault)", region_bytes / 1024.0 / f);
  printf(", %.2f us per 4 KiB\n", s / (region_bytes / 4096.0) * 1e6);
}

static void advise(const char* name, char* region, int advice) {
  long f0 = minflt();
  double t0 = now();
  int rc = madvise(region, region_bytes, advice);
  double s = now() - t0;
  printf("  %-20s %13s %7.3f s %8ld minor faults%s%s\n", name, "", s, minflt() - f0, rc ? ", FAILED: " : "",
         rc ? strerror(errno) : "");
}

// What /proc/self/smaps says of the mapping holding p.
static void smaps(const char* who, char* p) {
  FILE* f = fopen("/proc/self/smaps", "r");
  char line[512];
  int in = 0;
  unsigned long rss = 0, pmd = 0, anonhuge = 0, locked = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long a, b;
    char* dash = strchr(line, '-');
    char* space = strchr(line, ' ');
    if (dash && space && dash < space && sscanf(line, "%lx-%lx ", &a, &b) == 2) {
      in = (char*)a <= p && p < (char*)b;
      continue;
    }
    if (!in) continue;
    sscanf(line, "Rss: %lu kB", &rss);
    sscanf(line, "ShmemPmdMapped: %lu kB", &pmd);
    sscanf(line, "AnonHugePages: %lu kB", &anonhuge);
    sscanf(line, "Locked: %lu kB", &locked);
  }
  if (f) fclose(f);
  printf("  %-20s Rss %lu MiB, mapped by 2 MiB entries %lu MiB, locked %lu MiB, at %p\n", who, rss >> 10,
         (pmd + anonhuge) >> 10, locked >> 10, (void*)p);
}

static char* fresh_mapping(void) {
  char* at = aligned_hole(region_bytes);
  char* p = anon ? mmap(at, region_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                 : mmap(at, region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  if (anon && thp) madvise(p, region_bytes, MADV_HUGEPAGE);
  return p;
}

static void scenario(int index, const char* steps) {
  char* c = fresh_mapping();
  printf("%s %d, fresh: %s\n", anon ? "private anonymous mapping" : "client mapping", index, steps);
  for (const char* s = steps; *s; ++s) {
    switch (*s) {
      case 'r': pass("read (from region)", c, 0); break;
      case 'w': pass("write (to region)", c, 1); break;
      case 'W': advise("MADV_POPULATE_WRITE", c, MADV_POPULATE_WRITE); break;
      case 'R': advise("MADV_POPULATE_READ", c, MADV_POPULATE_READ); break;
      default: fprintf(stderr, "unknown step '%c'\n", *s); exit(2);
    }
  }
  smaps("this mapping:", c);
  munmap(c, region_bytes);
}

static void usage(const char* argv0) {
  fprintf(stderr,
          "usage: %s [--region MiB] [--block KiB] [--threads N] [--huge on|off] [--no-mlock] [--owner-passes]\n"
          "          [--anon [--thp]] [--scenarios STEPS,STEPS,...]   (steps: r w W R)\n",
          argv0);
  exit(2);
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--region") && i + 1 < argc) region_bytes = strtoul(argv[++i], NULL, 0) << 20;
    else if (!strcmp(argv[i], "--block") && i + 1 < argc) block = strtoul(argv[++i], NULL, 0) << 10;
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--huge") && i + 1 < argc) huge = strcmp(argv[++i], "off") != 0;
    else if (!strcmp(argv[i], "--no-mlock")) do_mlock = 0;
    else if (!strcmp(argv[i], "--owner-passes")) owner_passes = 1;
    else if (!strcmp(argv[i], "--anon")) anon = 1;
    else if (!strcmp(argv[i], "--thp")) thp = 1;
    else if (!strcmp(argv[i], "--scenarios") && i + 1 < argc) {
      nscenarios = 0;
      for (char* tok = strtok(argv[++i], ","); tok && nscenarios < 32; tok = strtok(NULL, ",")) {
        scenarios[nscenarios++] = tok;
      }
    } else usage(argv[0]);
  }
  if (threads < 1 || threads > 64 || block == 0 || region_bytes % block) usage(argv[0]);
  for (int t = 0; t < threads; ++t) {
    locals[t] = aligned_alloc(4096, batch * block);
    memset(locals[t], 0x5a, batch * block);  // faulted in before any pass
  }
  char load[128] = "";
  FILE* la = fopen("/proc/loadavg", "r");
  if (la && fgets(load, sizeof load, la)) load[strcspn(load, "\n")] = 0;
  if (la) fclose(la);
  printf("shm_probe: %zu MiB, blocks of %zu KiB, %d thread(s); load average %s\n", region_bytes >> 20, block >> 10,
         threads, load);

  if (!anon) {
    char name[64];
    snprintf(name, sizeof name, "/dev/shm/kvpool_shm_probe_%d", getpid());
    fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, region_bytes) != 0) {
      perror(name);
      return 1;
    }
    unlink(name);  // as UCX does: the segment lives while mapped or open
    char* owner = mmap(aligned_hole(region_bytes), region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    if (owner == MAP_FAILED) {
      perror("mmap");
      return 1;
    }
    double t0 = now();
    // UCX writes the segment before the agent can advise it; MADV_COLLAPSE
    // needs the pages to exist.
    memset(owner, 0, region_bytes);
    if (huge) {
      madvise(owner, region_bytes, MADV_HUGEPAGE);
      if (madvise(owner, region_bytes, MADV_COLLAPSE) != 0) printf("  MADV_COLLAPSE failed: %s\n", strerror(errno));
    }
    if (madvise(owner, region_bytes, MADV_POPULATE_WRITE) != 0) {
      printf("  MADV_POPULATE_WRITE failed: %s\n", strerror(errno));
    }
    if (do_mlock && mlock(owner, region_bytes) != 0) printf("  mlock failed: %s\n", strerror(errno));
    for (size_t off = 0; off < region_bytes; off += 4096) owner[off] = (char)(off >> 12);
    printf("owner: /dev/shm file%s, MADV_POPULATE_WRITE%s, a byte written per 4 KiB: %.2f s\n",
           huge ? ", MADV_HUGEPAGE + MADV_COLLAPSE" : "", do_mlock ? ", mlock" : "", now() - t0);
    smaps("owner's mapping:", owner);
    if (owner_passes) {
      printf("owner's own mapping\n");
      pass("read (from region)", owner, 0);
      pass("write (to region)", owner, 1);
      pass("read (from region)", owner, 0);
    }
  }
  for (int i = 0; i < nscenarios; ++i) scenario(i + 1, scenarios[i]);
  return 0;
}
