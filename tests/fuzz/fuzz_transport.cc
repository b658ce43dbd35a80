// Fuzzes the two wire formats of transport/: the owner-read request that a
// peer sends over UCX active messages (transport/internal.h) and the
// rendezvous region info (transport/rendezvous.h). The first input byte
// picks one (inputs.h). Nothing here touches UCX; the library just links it.
//
// Checks, beyond "no sanitizer report":
// - a decoded read request keeps the promises the owner relies on: a
//   non-empty reader address, 1..kMaxReadRkeys non-empty rkeys, at most
//   kMaxReadOps ops, every op naming an rkey that is there;
// - round trip: re-encoding a decoded message decodes to the same fields,
//   and gives back the input bytes (for a read request, unless the flags
//   word has bits other than bit 0, which decode drops);
// - a refused message is kInvalidArgument.

#include <cstdint>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/inputs.h"
#include "transport/internal.h"
#include "transport/rendezvous.h"

namespace kvpool::fuzz {
namespace {

using namespace kvpool::transport;

bool same(const ReadRequest& a, const ReadRequest& b) {
  if (a.id != b.id || a.reader_address != b.reader_address || a.reader_peer_errors != b.reader_peer_errors ||
      a.rkeys != b.rkeys || a.ops.size() != b.ops.size() || a.source_rkey != b.source_rkey || a.stream != b.stream) {
    return false;
  }
  for (std::size_t i = 0; i < a.ops.size(); ++i) {
    const ReadOp& x = a.ops[i];
    const ReadOp& y = b.ops[i];
    if (x.src != y.src || x.dst != y.dst || x.length != y.length || x.rkey != y.rkey) return false;
  }
  return true;
}

void check_read_request(const std::uint8_t* data, std::size_t size) {
  auto req = decode_read_request(data, size);
  if (!req) {
    KVPOOL_FUZZ_CHECK(req.error().code() == StatusCode::kInvalidArgument);
    return;
  }
  KVPOOL_FUZZ_CHECK(!req->reader_address.empty());
  // A streamed read names no reader rkeys (the owner writes nothing
  // one-sided); any other names 1 to 8, and every op one of them.
  KVPOOL_FUZZ_CHECK(req->stream ? req->rkeys.empty() : !req->rkeys.empty() && req->rkeys.size() <= kMaxReadRkeys);
  for (const std::string& rkey : req->rkeys) KVPOOL_FUZZ_CHECK(!rkey.empty());
  KVPOOL_FUZZ_CHECK(req->ops.size() <= kMaxReadOps);
  if (!req->stream) {
    for (const ReadOp& op : req->ops) KVPOOL_FUZZ_CHECK(op.rkey < req->rkeys.size());
  }

  const std::string q = encode_read_request(*req);
  auto back = decode_read_request(q.data(), q.size());
  KVPOOL_FUZZ_CHECK(back.has_value() && same(*req, *back));
  // magic, id, address length, address, then the flags word.
  const std::size_t flags_at = 4 + 8 + 4 + req->reader_address.size();
  KVPOOL_FUZZ_CHECK(q.size() == size);
  if (load_le(data + flags_at, 4) <= (kReadFlagPeerErrors | kReadFlagStream)) {
    KVPOOL_FUZZ_CHECK(q == as_chars(data, size));
  }
}

void check_region_info(std::string_view p) {
  auto info = decode_region_info(p);
  if (!info) {
    KVPOOL_FUZZ_CHECK(info.error().code() == StatusCode::kInvalidArgument);
    return;
  }
  const std::string q = encode_region_info(*info);
  KVPOOL_FUZZ_CHECK(q == p);
  auto back = decode_region_info(q);
  KVPOOL_FUZZ_CHECK(back.has_value());
  KVPOOL_FUZZ_CHECK(back->worker_address == info->worker_address && back->packed_rkey == info->packed_rkey &&
                    back->base == info->base && back->length == info->length && back->host_id == info->host_id);
}

}  // namespace
}  // namespace kvpool::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvpool::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvpool::fuzz;
  if (size < 1) return 0;
  // Exactly the fuzzer's bytes, so ASan sees any read past the end.
  if ((data[0] & 1u) == kTransportReadRequest) {
    check_read_request(data + 1, size - 1);
  } else {
    check_region_info(as_chars(data + 1, size - 1));
  }
  return 0;
}
