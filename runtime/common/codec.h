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
//
// Field lists: a struct's wire format is one function template that names
// its fields in wire order, found by argument-dependent lookup (so it lives
// in the struct's own namespace, not an unnamed one):
//   template <class Io> void fields(Io& io, KeysRequest& m) { io(m.ns, m.epoch); io.list(m.keys); }
// The same function encodes (Io = Writer) and decodes (Io = Reader), so the
// two directions cannot drift apart. What io takes:
// - io(x, ...): integers and bools at their own width; StatusCode as a u16
//   (a code above kLastStatusCode, a newer peer's, reads as kInternal);
//   strings as a u32 length and the bytes, within the Reader's max_string;
//   structs through their own fields().
// - io.bytes(s, max): a string with its own limit.
// - io.list(v): a u32 count, then the elements. The Reader refuses a count
//   that the remaining bytes cannot hold at min_wire_bytes<T>() each, or
//   over its max_count; io.list(v, n) names that minimum where a field list
//   branches on a value (a default T then says nothing about the fewest).
// - io.enumeration(e, last, why): an enum at its underlying width; the
//   Reader refuses a value above `last` with why(value).
// fields() takes the struct non-const for both directions; Writer casts
// const away and only reads it.

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
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

  // Field lists (top of file).
  template <class... T>
  void operator()(const T&... v) {
    (field(v), ...);
  }
  void bytes(std::string_view b, std::size_t /*max: the Reader's limit*/) { bytes(b); }
  template <class T>
  void list(const std::vector<T>& v, std::size_t /*min_element_bytes*/ = 0) {
    u32(static_cast<std::uint32_t>(v.size()));
    for (const T& e : v) field(e);
  }
  template <class E, class Why>
  void enumeration(const E& e, E /*last*/, const Why& /*why*/) {
    field(static_cast<std::underlying_type_t<E>>(e));
  }

  std::string& buffer() { return out_; }
  std::string take() { return std::move(out_); }
  std::size_t size() const { return out_.size(); }

 private:
  template <class T>
  void field(const T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      boolean(v);
    } else if constexpr (std::is_integral_v<T>) {
      put(static_cast<std::uint64_t>(v), static_cast<int>(sizeof(T)));
    } else if constexpr (std::is_same_v<T, StatusCode>) {
      u16(static_cast<std::uint16_t>(v));
    } else if constexpr (std::is_same_v<T, std::string>) {
      bytes(v);
    } else {
      fields(*this, const_cast<T&>(v));
    }
  }
  void put(std::uint64_t v, int n) {
    char b[8];
    for (int i = 0; i < n; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    out_.append(b, static_cast<std::size_t>(n));
  }
  std::string out_;
};

class Reader {
 public:
  // What a field list may claim: longer strings and longer lists are refused.
  struct Limits {
    std::size_t max_string = SIZE_MAX;
    std::uint32_t max_count = UINT32_MAX;
  };
  explicit Reader(std::string_view in) : in_(in) {}
  Reader(std::string_view in, Limits limits) : in_(in), limits_(limits) {}

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

  // Field lists (top of file).
  template <class... T>
  void operator()(T&... v) {
    (field(v), ...);
  }
  void bytes(std::string& s, std::size_t max) { s = bytes(max); }
  template <class T>
  void list(std::vector<T>& v) {
    list(v, min_wire_bytes<T>());
  }
  template <class T>
  void list(std::vector<T>& v, std::size_t min_element_bytes) {
    std::uint32_t n = count(min_element_bytes);
    if (n > limits_.max_count) {
      refuse("a batch of " + std::to_string(n) + " items is over the limit of " + std::to_string(limits_.max_count) +
             ": split it");
      n = 0;
    }
    v.clear();
    v.reserve(n);
    for (std::uint32_t i = 0; i < n && ok_; ++i) {
      T e{};
      field(e);
      v.push_back(std::move(e));
    }
  }
  template <class E, class Why>
  void enumeration(E& e, E last, const Why& why) {
    std::underlying_type_t<E> v{};
    field(v);
    if (v > static_cast<std::underlying_type_t<E>>(last)) {
      refuse(why(v));
      return;
    }
    e = static_cast<E>(v);
  }
  // The fewest bytes a T takes: its encoding with every string and list
  // empty, which is what a default T has.
  template <class T>
  static std::size_t min_wire_bytes() {
    static const std::size_t n = [] {
      Writer w;
      w(T{});
      return w.size();
    }();
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
  template <class T>
  void field(T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      v = boolean();
    } else if constexpr (std::is_integral_v<T>) {
      v = static_cast<T>(get(static_cast<int>(sizeof(T))));
    } else if constexpr (std::is_same_v<T, StatusCode>) {
      const std::uint16_t code = u16();
      v = code > static_cast<std::uint16_t>(kLastStatusCode) ? StatusCode::kInternal : static_cast<StatusCode>(code);
    } else if constexpr (std::is_same_v<T, std::string>) {
      v = bytes(limits_.max_string);
    } else {
      fields(*this, v);
    }
  }
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
  Limits limits_;
  bool ok_ = true;
  std::string why_;
};

// A struct as one whole payload, through its field list.
template <class T>
std::string encode_fields(const T& m) {
  Writer w;
  w(m);
  return w.take();
}
// Fills `out` from a payload that is exactly one T; else kInvalidArgument
// naming `what` (Reader::finish). Every field is assigned and every list
// rebuilt, so decoding into a used T leaves nothing of what it held.
template <class T>
Status decode_fields(std::string_view payload, T& out, std::string_view what, Reader::Limits limits = {}) {
  Reader r(payload, limits);
  r(out);
  return r.finish(what);
}

}  // namespace kvpool
