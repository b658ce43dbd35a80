#include "runtime/common/stream_copy.h"

#include <emmintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace kvpool {

void stream_copy_unfenced(std::byte* dst, const std::byte* src, std::size_t n) {
  std::size_t head = (16 - reinterpret_cast<std::uintptr_t>(dst) % 16) % 16;
  head = std::min(head, n);
  std::memcpy(dst, src, head);
  std::size_t at = head;
  for (; at + 64 <= n; at += 64) {
    const auto* s = reinterpret_cast<const __m128i*>(src + at);
    auto* d = reinterpret_cast<__m128i*>(dst + at);
    const __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1), c = _mm_loadu_si128(s + 2),
                  e = _mm_loadu_si128(s + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
  }
  std::memcpy(dst + at, src + at, n - at);
}

void stream_copy(std::byte* dst, const std::byte* src, std::size_t n) {
  stream_copy_unfenced(dst, src, n);
  _mm_sfence();
}

}  // namespace kvpool
