#pragma once
// One kvbench result row, shared by the raw-transport sessions (kvbench.cc)
// and the end-to-end sessions through libkvpool (e2e.cc).

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kvpool::bench {

struct Row {
  std::string mode = "raw";  // raw: transport only; e2e: libkvpool Client through an agent
  std::string transport;     // the UCX_TLS this side used
  std::string lanes;         // what UCX really picked (e2e: Client::stats().transports)
  std::string op;
  std::uint64_t block = 0;
  std::uint64_t batch = 0;
  std::uint64_t blocks = 0;
  double seconds = 0;
  double p50_us = 0;
  double p99_us = 0;
  std::uint64_t verified = 0;
  std::uint64_t wrong = 0;
  bool ok = true;
  std::string error;
  double gbps() const { return seconds > 0 ? static_cast<double>(blocks * block) / seconds / 1e9 : 0; }
};

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto idx = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

}  // namespace kvpool::bench
