#pragma once
// The judgement half of pooltool doctor's RDMA and clock checks: pure
// functions from what was measured to checks with their fixes, so they are
// tested without an RDMA NIC or a skewed clock (doctor.cc gathers the facts:
// libibverbs, the coordinator's and agents' clocks).

#include <cstdint>
#include <string>
#include <vector>

#include "tools/pooltool/doctor.h"

namespace kvpool::pooltool {

// One port of an RDMA device as ibv_query_port / ibv_query_gid show it.
struct RdmaPort {
  std::string device;      // "mlx5_0"
  int port = 1;            // 1-based
  std::string state;       // "active", "down", "init", "armed", ...
  std::string link_layer;  // "InfiniBand" or "Ethernet" (RoCE)
  int active_mtu = 0;      // bytes: 256 .. 4096
  std::vector<std::string> gids;  // non-zero entries of the GID table, as text
};

// One check per port: state, link layer, active MTU, GIDs. Failing: a port
// that is not active (link down: cable, switch port, subnet manager on IB),
// a RoCE port with an empty GID table (no IP address on its netdev, so no
// RoCE GID). Warning: a RoCE port whose active MTU is under 4096 (UCX's rc
// and dc then cut every message into more packets; the netdev MTU must be
// at least 4200, jumbo frames on the switch).
std::vector<Check> rdma_port_checks(const std::vector<RdmaPort>& ports);

// A clock compared with this host's: offset_ms is the other clock minus
// ours, known within +-uncertainty_ms (half a round trip). Ok within
// max_skew_ms (after subtracting the uncertainty), else a warning with the
// fix (chrony/NTP on every host): leases, heartbeat ages and the metrics'
// timestamps assume clocks that agree.
Check clock_check(const std::string& what, std::int64_t offset_ms, std::int64_t uncertainty_ms,
                  std::int64_t max_skew_ms);

}  // namespace kvpool::pooltool
