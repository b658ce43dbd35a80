#pragma once
// XXH3-64 (seed 0, default secret: what pool::payload_checksum computes for
// a slot header) of a pool block, read straight from the engine's pages
// through the layout's address arithmetic (plan.h), so the GPU can checksum
// a block without assembling it. One function per accumulator lane: the
// kernel runs the 8 lanes of a block on 8 threads; the host reference (the
// test against libxxhash) runs them in a loop. Needs run_bytes % 64 == 0
// and block_bytes > 240 (blocks are >= 64 KiB).
//
// XXH3's long-input loop, from xxhash.h: 8 u64 accumulators; every 64-byte
// stripe s of a 1024-byte block does, per lane i, acc[i ^ 1] += d[i] and
// acc[i] += lo32(d[i] ^ k) * hi32(d[i] ^ k) with k the secret at 8s + 8i;
// after each full block the accumulators are scrambled; the last stripe is
// accumulated again with the secret at 121; 4 mixes and an avalanche end it.
// Lane i needs d[i] and d[i ^ 1]: one 16-byte load of the pair.

#include <cstdint>

#ifdef __CUDACC__
#define KVPOOL_HD __host__ __device__ __forceinline__
#else
#define KVPOOL_HD inline
#endif
#ifdef __CUDA_ARCH__
#define KVPOOL_UNROLL _Pragma("unroll")
#else
#define KVPOOL_UNROLL
#endif

namespace kvpool::gpu::xxh3 {

struct Keys {
  std::uint64_t stripe[16][8];  // secret + 8s + 8i
  std::uint64_t scramble[8];    // secret + 128 + 8i
  std::uint64_t last[8];        // secret + 121 + 8i
  std::uint64_t merge[8];       // secret + 11 + 8i
  std::uint64_t init[8];
};

inline constexpr unsigned char kSecret[192] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

inline Keys make_keys() {
  Keys k{};
  auto rd = [](int off) {
    std::uint64_t v = 0;
    for (int b = 7; b >= 0; --b) v = (v << 8) | kSecret[off + b];
    return v;
  };
  for (int s = 0; s < 16; ++s)
    for (int i = 0; i < 8; ++i) k.stripe[s][i] = rd(8 * s + 8 * i);
  for (int i = 0; i < 8; ++i) {
    k.scramble[i] = rd(128 + 8 * i);
    k.last[i] = rd(121 + 8 * i);
    k.merge[i] = rd(11 + 8 * i);
  }
  const std::uint64_t init[8] = {0xC2B2AE3DULL,         0x9E3779B185EBCA87ULL, 0xC2B2AE3D27D4EB4FULL,
                                 0x165667B19E3779F9ULL, 0x85EBCA77C2B2AE63ULL, 0x85EBCA77ULL,
                                 0x27D4EB2F165667C5ULL, 0x9E3779B1ULL};
  for (int i = 0; i < 8; ++i) k.init[i] = init[i];
  return k;
}

// One lane's share of the keys, in registers (the kernel's lanes differ).
struct LaneKeys {
  std::uint64_t stripe[16];
  std::uint64_t scramble;
  std::uint64_t last;
  std::uint64_t init;
};

KVPOOL_HD LaneKeys lane_keys(const Keys& k, int i) {
  LaneKeys l;
  for (int s = 0; s < 16; ++s) l.stripe[s] = k.stripe[s][i];
  l.scramble = k.scramble[i];
  l.last = k.last[i];
  l.init = k.init[i];
  return l;
}

// The block's layout, as plain values (plan.h).
struct BlockMap {
  std::uint64_t run_bytes;
  std::uint32_t segs;
  std::uint32_t units;
  std::uint64_t seg_stride;
  std::uint64_t pages_per_row;
  std::uint64_t row_stride;
  std::uint64_t page_stride;
};

KVPOOL_HD void accumulate(std::uint64_t& acc, std::uint64_t own, std::uint64_t other, std::uint64_t key) {
  const std::uint64_t dk = own ^ key;
  acc += other + (dk & 0xffffffffULL) * (dk >> 32);
}

KVPOOL_HD std::uint64_t scramble(std::uint64_t acc, std::uint64_t key) {
  acc ^= acc >> 47;
  acc ^= key;
  return acc * 0x9E3779B1ULL;
}

// Lane i's accumulator after runs [u_begin, u_end) of page's block (the
// whole block by default; one layer slice is 2 * segs runs). bases: the
// 2 x layers tensor addresses; load16(addr, lo, hi) reads 16 bytes. The
// range's bytes must be > 240 (XXH3's long input).
template <typename Load16>
KVPOOL_HD std::uint64_t lane(const LaneKeys& k, const BlockMap& m, const std::uint64_t* bases, std::uint64_t page,
                             int i, Load16 load16, std::uint32_t u_begin = 0, std::uint32_t u_end = 0xffffffffu) {
  if (u_end > m.units) u_end = m.units;
  std::uint64_t acc = k.init;
  const std::uint64_t total = static_cast<std::uint64_t>(u_end - u_begin) * m.run_bytes / 64;  // stripes
  const std::uint64_t pair = static_cast<std::uint64_t>(i / 2) * 16;
  const bool odd = (i & 1) != 0;
  const std::uint64_t page_off = (page / m.pages_per_row) * m.row_stride + (page % m.pages_per_row) * m.page_stride;
  const std::uint64_t run_stripes = m.run_bytes / 64;
  std::uint64_t g = 0;
  for (std::uint32_t u = u_begin; u < u_end; ++u) {
    const std::uint64_t base = bases[u / m.segs] + page_off + static_cast<std::uint64_t>(u % m.segs) * m.seg_stride;
    std::uint64_t j = 0;
    // Whole XXH3 blocks (16 stripes) inside this run, but never the block
    // holding the last stripe: 16 loads at a time, and the next block's
    // loads issued before this one's arithmetic, so a lane always has loads
    // in flight (its chain over the block is what bounds the kernel).
    if ((g & 15) == 0) {
      const std::uint64_t groups_run = (run_stripes - j) / 16;
      const std::uint64_t groups_left = (total - 1 - g) / 16;
      const std::uint64_t groups = groups_run < groups_left ? groups_run : groups_left;
      if (groups > 0) {
        std::uint64_t lo[16], hi[16], nlo[16] = {}, nhi[16] = {};
        KVPOOL_UNROLL
        for (int s = 0; s < 16; ++s) load16(base + s * 64 + pair, lo[s], hi[s]);
        for (std::uint64_t q = 0; q < groups; ++q) {
          const bool more = q + 1 < groups;
          const std::uint64_t next = base + (q + 1) * 1024 + pair;
          KVPOOL_UNROLL
          for (int s = 0; s < 16; ++s) {
            if (more) load16(next + s * 64, nlo[s], nhi[s]);
          }
          KVPOOL_UNROLL
          for (int s = 0; s < 16; ++s) accumulate(acc, odd ? hi[s] : lo[s], odd ? lo[s] : hi[s], k.stripe[s]);
          acc = scramble(acc, k.scramble);
          KVPOOL_UNROLL
          for (int s = 0; s < 16; ++s) {
            lo[s] = nlo[s];
            hi[s] = nhi[s];
          }
        }
        j += 16 * groups;
        g += 16 * groups;
      }
    }
    for (; j < run_stripes; ++j, ++g) {
      std::uint64_t lo, hi;
      load16(base + j * 64 + pair, lo, hi);
      if (g + 1 == total) {
        accumulate(acc, odd ? hi : lo, odd ? lo : hi, k.last);
      } else {
        accumulate(acc, odd ? hi : lo, odd ? lo : hi, k.stripe[g & 15]);
        if ((g & 15) == 15) acc = scramble(acc, k.scramble);
      }
    }
  }
  return acc;
}

KVPOOL_HD std::uint64_t mul_fold(std::uint64_t a, std::uint64_t b) {
#ifdef __CUDA_ARCH__
  return (a * b) ^ __umul64hi(a, b);
#else
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
#endif
}

// The hash from the 8 lanes' accumulators.
KVPOOL_HD std::uint64_t merge(const Keys& k, const std::uint64_t acc[8], std::uint64_t len) {
  std::uint64_t r = len * 0x9E3779B185EBCA87ULL;
  for (int i = 0; i < 4; ++i) r += mul_fold(acc[2 * i] ^ k.merge[2 * i], acc[2 * i + 1] ^ k.merge[2 * i + 1]);
  r ^= r >> 37;
  r *= 0x165667919E3779F9ULL;
  r ^= r >> 32;
  return r;
}

}  // namespace kvpool::gpu::xxh3
