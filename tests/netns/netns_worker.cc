// A scriptable worker for the network-fault tests (tests/netns/): one
// kvpool::Client that stays connected while a driver script breaks and heals
// links around it. Commands come one per line on stdin; each prints exactly
// one line that starts with "RESULT" (or "ERROR" for a bad command), so a
// driver can read the answer to each command it sends.
//
// usage: kvpool_netns_worker --coordinator HOST:PORT [--timeout-ms N] [--block-bytes N]
//
// Commands (SEED names a set of blocks: block i of seed s has key (s, i) and
// the deterministic pattern of seed s*1000+i, so any process can check it):
//   put SEED COUNT      RESULT put ms=.. written=.. exists=.. pending=.. failed=.. err=CODE
//   get SEED FIRST N    one get per block (no prefix stop), blocks FIRST..FIRST+N-1:
//                       RESULT get ms=.. max_ms=.. ok=.. miss=.. failed=.. wrong=.. err=CODE
//   lookup SEED N       RESULT lookup ms=.. present=..   (leading keys present)
//   remove SEED N       RESULT remove ms=.. removed=..
//   stats               RESULT stats transports=.. verify_failures=..
//   quit
// "wrong" counts blocks that came back as data but differ from the pattern:
// the one number that must always be 0.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kvpool/client.h"
#include "runtime/common/pattern.h"

using namespace kvpool;
using Ms = std::chrono::milliseconds;

namespace {

Key128 key_of(std::uint64_t seed, std::uint64_t i) { return Key128{i + 1, 0x6e65746e73000000ull ^ seed}; }
std::uint64_t pattern_seed(std::uint64_t seed, std::uint64_t i) { return seed * 1000 + i; }

long long ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<Ms>(std::chrono::steady_clock::now() - t0).count();
}

std::string code_of(const Status& s) { return s.ok() ? "ok" : std::string(code_name(s.code())); }

}  // namespace

int main(int argc, char** argv) {
  ClientOptions o;
  std::uint64_t block_bytes = 256 << 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i];
    if (f == "--coordinator") {
      o.coordinator = argv[i + 1];
    } else if (f == "--timeout-ms") {
      o.timeout = Ms(std::atoll(argv[i + 1]));
    } else if (f == "--block-bytes") {
      block_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  o.client_id = "netns-worker-" + std::to_string(getpid());
  auto client = Client::connect(o);
  if (!client) {
    std::printf("ERROR connect %s\n", client.error().to_string().c_str());
    return 1;
  }
  NamespaceDescriptor d;
  d.model_id = "netns-test";
  d.dtype = "bf16";
  // Layers, so blocks of two granules or more carry a slice table (slot
  // format version 2) through every fault.
  d.num_layers = 4;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = 16;
  d.layout = "test";
  d.block_bytes = block_bytes;
  auto ns = (*client)->register_namespace(d);
  if (!ns) {
    std::printf("ERROR namespace %s\n", ns.error().to_string().c_str());
    return 1;
  }
  std::printf("READY\n");
  std::fflush(stdout);

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (cmd.empty()) continue;
    if (cmd == "quit") break;
    std::uint64_t seed = 0, a = 0, b = 0;
    in >> seed >> a >> b;
    const auto t0 = std::chrono::steady_clock::now();
    if (cmd == "put") {
      std::vector<std::vector<std::byte>> data(a, std::vector<std::byte>(block_bytes));
      std::vector<Key128> keys;
      std::vector<std::span<const std::byte>> spans;
      for (std::uint64_t i = 0; i < a; ++i) {
        fill_pattern(data[i].data(), 0, block_bytes, pattern_seed(seed, i));
        keys.push_back(key_of(seed, i));
        spans.emplace_back(data[i]);
      }
      auto r = (*client)->put(*ns, keys, spans);
      if (!r) {
        std::printf("RESULT put ms=%lld written=0 exists=0 pending=0 failed=%llu err=%s\n", ms_since(t0),
                    static_cast<unsigned long long>(a), code_of(r.error()).c_str());
      } else {
        Status first;
        for (const auto& e : r->errors) {
          if (!e.ok()) {
            first = e;
            break;
          }
        }
        std::printf("RESULT put ms=%lld written=%zu exists=%zu pending=%zu failed=%zu err=%s\n", ms_since(t0),
                    r->written, r->deduplicated, r->pending, r->failed, code_of(first).c_str());
        if (!first.ok()) std::fprintf(stderr, "put: %s\n", first.to_string().c_str());
      }
    } else if (cmd == "get") {
      std::size_t ok = 0, miss = 0, failed = 0, wrong = 0;
      long long max_ms = 0;
      Status first;
      // A buffer per get: after a failed get the agent may still write into
      // it (client.h), so it is left alive rather than reused.
      auto* buf = new std::vector<std::byte>(block_bytes);
      for (std::uint64_t i = a; i < a + b; ++i) {
        const auto t1 = std::chrono::steady_clock::now();
        Key128 k = key_of(seed, i);
        std::span<std::byte> one(*buf);
        auto r = (*client)->get(*ns, std::span(&k, 1), std::span(&one, 1));
        max_ms = std::max(max_ms, ms_since(t1));
        if (!r || (r->loaded == 0 && r->stopped.code() != StatusCode::kNotFound)) {
          buf = new std::vector<std::byte>(block_bytes);  // the old one leaks on purpose
        }
        if (!r) {
          ++failed;
          if (first.ok()) first = r.error();
        } else if (r->loaded == 1) {
          if (pattern_mismatches(buf->data(), 0, block_bytes, pattern_seed(seed, i)) == 0) {
            ++ok;
          } else {
            ++wrong;
          }
        } else if (r->stopped.code() == StatusCode::kNotFound) {
          ++miss;
        } else {
          ++failed;
          if (first.ok()) first = r->stopped;
        }
      }
      delete buf;
      if (!first.ok()) std::fprintf(stderr, "get: %s\n", first.to_string().c_str());
      std::printf("RESULT get ms=%lld max_ms=%lld ok=%zu miss=%zu failed=%zu wrong=%zu err=%s\n", ms_since(t0),
                  max_ms, ok, miss, failed, wrong, code_of(first).c_str());
    } else if (cmd == "lookup") {
      std::vector<Key128> keys;
      for (std::uint64_t i = 0; i < a; ++i) keys.push_back(key_of(seed, i));
      auto r = (*client)->lookup(*ns, keys);
      std::printf("RESULT lookup ms=%lld present=%lld err=%s\n", ms_since(t0), r ? static_cast<long long>(*r) : -1LL,
                  r ? "ok" : code_of(r.error()).c_str());
    } else if (cmd == "remove") {
      std::vector<Key128> keys;
      for (std::uint64_t i = 0; i < a; ++i) keys.push_back(key_of(seed, i));
      auto r = (*client)->remove(*ns, keys);
      std::size_t removed = 0;
      if (r) {
        for (const auto& s : *r) removed += s.ok() ? 1 : 0;
      }
      std::printf("RESULT remove ms=%lld removed=%zu err=%s\n", ms_since(t0), removed,
                  r ? "ok" : code_of(r.error()).c_str());
    } else if (cmd == "stats") {
      auto s = (*client)->stats();
      std::string t = s.transports.empty() ? "none" : s.transports;
      for (char& c : t) {
        if (c == ' ') c = '_';
      }
      std::printf("RESULT stats transports=%s verify_failures=%llu\n", t.c_str(),
                  static_cast<unsigned long long>(s.verify_failures));
    } else {
      std::printf("ERROR unknown command %s\n", cmd.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}
