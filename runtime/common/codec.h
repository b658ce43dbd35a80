#pragma once
// kvpool's wire codec (control protocol payloads, owner-read requests,
// rendezvous blobs): explicit little-endian, every read
// bounds-checked. A Reader never allocates more than the bytes it still has,
// so a length field from the network cannot size an allocation by itself.
//
// Writer appends; Reader consumes. A failed read leaves the Reader failed
// (ok() false) and every later read returns zero values, so a decoder reads
// all its fields and checks ok() once at the end (plus done() to refuse
// trailing bytes).

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "kvpool/status.h"

namespace kvpool {

class Writer {
 public:
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { put(v, 2); }
  void u32(std::uint32_t v) { put(v, 4); }
  void u64(std::uint64_t v) { put(v, 8); }
  void i64(std::int64_t v) { put(static_cast<std::uint64_t>(v), 8); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  // u32 length, then the bytes.
  void bytes(std::string_view b) {
    u32(static_cast<std::uint32_t>(b.size()));
    out_.append(b);
  }
  void raw(const void* p, std::size_t n) { out_.append(static_cast<const char*>(p), n); }

  std::string& buffer() { return out_; }
  std::string take() { return std::move(out_); }
  std::size_t size() const { return out_.size(); }

 private:
  void put(std::uint64_t v, int n) {
    char b[8];
    for (int i = 0; i < n; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    out_.append(b, static_cast<std::size_t>(n));
  }
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  std::uint8_t u8() { return static_cast<std::uint8_t>(get(1)); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
  std::uint64_t u64() { return get(8); }
  std::int64_t i64() { return static_cast<std::int64_t>(get(8)); }
  bool boolean() {
    std::uint8_t v = u8();
    if (v > 1) ok_ = false;
    return v == 1;
  }
  // A u32 length, then that many bytes; fails if the length overruns the
  // message or exceeds `max`.
  std::string bytes(std::size_t max = SIZE_MAX) {
    std::uint32_t n = u32();
    if (!ok_ || n > in_.size() || n > max) {
      ok_ = false;
      return {};
    }
    std::string out(in_.substr(0, n));
    in_.remove_prefix(n);
    return out;
  }
  void raw(void* p, std::size_t n) {
    if (!ok_ || n > in_.size()) {
      ok_ = false;
      std::memset(p, 0, n);
      return;
    }
    std::memcpy(p, in_.data(), n);
    in_.remove_prefix(n);
  }
  // Fails the read with a reason finish() reports (the first one wins).
  void refuse(std::string why) {
    ok_ = false;
    if (why_.empty()) why_ = std::move(why);
  }
  // Reads a u32 element count and checks that `count * min_element_bytes`
  // still fits in the message: a count can never size a vector beyond what
  // the bytes could hold.
  std::uint32_t count(std::size_t min_element_bytes) {
    std::uint32_t n = u32();
    if (!ok_ || (min_element_bytes > 0 && n > in_.size() / min_element_bytes)) {
      ok_ = false;
      return 0;
    }
    return n;
  }

  bool ok() const { return ok_; }
  // True when every byte has been consumed and every read succeeded.
  bool done() const { return ok_ && in_.empty(); }
  std::size_t remaining() const { return in_.size(); }
  // kInvalidArgument naming `what` unless done().
  Status finish(std::string_view what) const {
    if (done()) return Status();
    return Status(StatusCode::kInvalidArgument,
                  std::string(what) + (!why_.empty() ? ": " + why_
                                       : ok_         ? std::string(": trailing bytes")
                                                     : std::string(": truncated or malformed payload")));
  }

 private:
  std::uint64_t get(int n) {
    if (!ok_ || in_.size() < static_cast<std::size_t>(n)) {
      ok_ = false;
      return 0;
    }
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in_[i])) << (8 * i);
    in_.remove_prefix(static_cast<std::size_t>(n));
    return v;
  }
  std::string_view in_;
  bool ok_ = true;
  std::string why_;
};

}  // namespace kvpool
