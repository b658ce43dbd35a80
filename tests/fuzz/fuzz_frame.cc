// Fuzzes the frame layer (runtime/rpc/frame.h): decode_header and
// FrameReader, fed the stream in reads of fuzzer-chosen sizes.
//
// Checks, beyond "no sanitizer report":
// - FrameReader yields the same frames, and fails at the same frame, as a
//   one-pass reference parse of the whole stream with decode_header;
// - every header that decodes encodes back to the same 24 bytes, and a
//   refused one is kInvalidArgument;
// - buffer() is never empty, and the reader's buffer stays within
//   max(64 KiB, header + max_frame) plus one read, whatever the stream says.
//
// Input layout: inputs.h, "fuzz_frame".

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/rpc/frame.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/inputs.h"

namespace kvpool::fuzz {
namespace {

// FrameReader's initial buffer and minimum read (frame.cc); the memory bound
// below is stated in their terms.
constexpr std::size_t kReaderInitialBuffer = 64 * 1024;
constexpr std::size_t kReaderMinRead = 4096;

struct RefFrame {
  rpc::FrameHeader header;
  std::string_view payload;
};

struct RefParse {
  std::vector<RefFrame> frames;
  bool error = false;        // a bad header follows the frames
  std::size_t consumed = 0;  // bytes of the complete frames
};

RefParse reference_parse(std::string_view stream, std::size_t max_frame) {
  RefParse out;
  while (stream.size() - out.consumed >= rpc::kHeaderSize) {
    const char* at = stream.data() + out.consumed;
    auto h = rpc::decode_header(std::span<const char, rpc::kHeaderSize>(at, rpc::kHeaderSize), max_frame);
    if (!h) {
      KVPOOL_FUZZ_CHECK(h.error().code() == StatusCode::kInvalidArgument);
      out.error = true;
      return out;
    }
    KVPOOL_FUZZ_CHECK(h->payload_size <= max_frame);
    auto again = rpc::encode_header(*h, max_frame);
    KVPOOL_FUZZ_CHECK(again.has_value());
    KVPOOL_FUZZ_CHECK(std::memcmp(again->data(), at, rpc::kHeaderSize) == 0);
    if (stream.size() - out.consumed - rpc::kHeaderSize < h->payload_size) return out;
    out.frames.push_back({*h, stream.substr(out.consumed + rpc::kHeaderSize, h->payload_size)});
    out.consumed += rpc::kHeaderSize + h->payload_size;
  }
  return out;
}

// The stream the input describes: the bytes as they are, or (kFramePad)
// with each frame's missing payload tail filled with zeros.
std::string build_stream(const std::uint8_t* in, std::size_t left, bool pad) {
  std::string s(reinterpret_cast<const char*>(in), left);
  if (!pad) return s;
  std::string out;
  std::size_t padded = 0;
  std::size_t pos = 0;
  while (left - pos >= rpc::kHeaderSize) {
    const std::uint64_t size = load_le(in + pos + 16, 4);
    out.append(s, pos, rpc::kHeaderSize);
    pos += rpc::kHeaderSize;
    const std::size_t take = std::min<std::uint64_t>(size, left - pos);
    out.append(s, pos, take);
    pos += take;
    if (take < size && size - take <= kFramePadLimit - padded) {
      out.append(size - take, '\0');
      padded += size - take;
    }
  }
  out.append(s, pos, std::string::npos);
  return out;
}

bool same_header(const rpc::FrameHeader& a, const rpc::FrameHeader& b) {
  return a.version == b.version && a.type == b.type && a.request_id == b.request_id &&
         a.payload_size == b.payload_size && a.flags == b.flags;
}

}  // namespace
}  // namespace kvpool::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvpool::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvpool;
  using namespace kvpool::fuzz;
  if (size < 2) return 0;
  const std::size_t max_frame = kFrameLimits[data[0] & 7u];
  const std::string stream = build_stream(data + 2, size - 2, (data[0] & kFramePad) != 0);
  const RefParse ref = reference_parse(stream, max_frame);

  // Read sizes from a xorshift seeded by byte 1: deterministic per input.
  std::uint32_t rng = data[1] * 0x9e3779b9u + 1;
  auto next_read = [&](std::size_t room) -> std::size_t {
    if (data[1] == 0) return room;
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    const std::size_t cap = std::size_t{data[1]} * 8;
    return std::min(room, 1 + rng % cap);
  };

  rpc::FrameReader reader(max_frame);
  const std::size_t bound = std::max(kReaderInitialBuffer, rpc::kHeaderSize + max_frame) + kReaderMinRead;
  std::size_t fed = 0;
  std::size_t got = 0;
  bool failed = false;
  while (!failed && fed < stream.size()) {
    std::span<char> room = reader.buffer();
    KVPOOL_FUZZ_CHECK(!room.empty());
    KVPOOL_FUZZ_CHECK(room.size() + reader.buffered() <= bound);
    const std::size_t n = next_read(std::min(room.size(), stream.size() - fed));
    std::memcpy(room.data(), stream.data() + fed, n);
    reader.commit(n);
    fed += n;
    for (;;) {
      auto frame = reader.next();
      if (!frame) {
        KVPOOL_FUZZ_CHECK(frame.error().code() == StatusCode::kInvalidArgument);
        // The reference refuses the same header, right after the same frames.
        KVPOOL_FUZZ_CHECK(ref.error && got == ref.frames.size());
        failed = true;
        break;
      }
      if (!frame->has_value()) break;
      KVPOOL_FUZZ_CHECK(got < ref.frames.size());
      const RefFrame& want = ref.frames[got++];
      KVPOOL_FUZZ_CHECK(same_header((*frame)->header, want.header));
      KVPOOL_FUZZ_CHECK((*frame)->payload == want.payload);
    }
  }
  if (!failed) {
    KVPOOL_FUZZ_CHECK(got == ref.frames.size());
    // A bad header is refused once its 24 bytes are in, and they all are.
    KVPOOL_FUZZ_CHECK(!ref.error);
    KVPOOL_FUZZ_CHECK(reader.buffered() == stream.size() - ref.consumed);
  }
  return 0;
}
