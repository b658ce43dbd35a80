#include "tools/pooltool/checks.h"

#include <cstdlib>

namespace kvpool::pooltool {

std::vector<Check> rdma_port_checks(const std::vector<RdmaPort>& ports) {
  std::vector<Check> out;
  for (const RdmaPort& p : ports) {
    Check c{"RDMA " + p.device + " port " + std::to_string(p.port), CheckLevel::kOk, "", ""};
    const bool roce = p.link_layer == "Ethernet";
    c.detail = p.state + ", " + (roce ? "RoCE (Ethernet)" : p.link_layer) + ", active MTU " +
               std::to_string(p.active_mtu) + ", " + std::to_string(p.gids.size()) + " GID" +
               (p.gids.size() == 1 ? "" : "s");
    if (!p.gids.empty()) c.detail += " (" + p.gids.front() + (p.gids.size() > 1 ? ", ..." : "") + ")";
    std::string fix;
    if (p.state != "active") {
      c.level = CheckLevel::kFail;
      fix = roce ? "link down: check the cable and the switch port, and `ip link set <netdev> up` for the port's "
                   "netdev (rdma link show names it)"
                 : "port not active: check the cable and that a subnet manager runs on the fabric (opensm, or the "
                   "switch's); ibstat shows the state";
    }
    if (roce && p.gids.empty()) {
      c.level = CheckLevel::kFail;
      fix += std::string(fix.empty() ? "" : "; ") +
             "empty GID table: RoCE GIDs come from the netdev's IP addresses: give the port's netdev an address "
             "(ip addr add ...), then check with `rdma link` / show_gids";
    }
    if (roce && p.active_mtu < 4096) {
      if (c.level == CheckLevel::kOk) c.level = CheckLevel::kWarn;
      fix += std::string(fix.empty() ? "" : "; ") + "active MTU " + std::to_string(p.active_mtu) +
             " < 4096: set the netdev MTU to 9000 (ip link set <netdev> mtu 9000; at least 4200 for a 4096 RoCE "
             "MTU) and enable jumbo frames on the switch ports";
    }
    c.fix = fix;
    out.push_back(std::move(c));
  }
  return out;
}

Check clock_check(const std::string& what, std::int64_t offset_ms, std::int64_t uncertainty_ms,
                  std::int64_t max_skew_ms) {
  Check c{"clock skew: " + what, CheckLevel::kOk, "", ""};
  const std::int64_t magnitude = std::llabs(offset_ms);
  c.detail = std::string(offset_ms >= 0 ? "+" : "-") + std::to_string(magnitude) + " ms against this host (+-" +
             std::to_string(uncertainty_ms) + " ms)";
  if (magnitude - uncertainty_ms > max_skew_ms) {
    c.level = CheckLevel::kWarn;
    c.detail += ", more than " + std::to_string(max_skew_ms) + " ms";
    c.fix = "synchronise the clocks of every host of the pool: apt-get install chrony (or run ntpd / "
            "systemd-timesyncd) and check with `chronyc tracking` or `timedatectl`";
  }
  return c;
}

}  // namespace kvpool::pooltool
