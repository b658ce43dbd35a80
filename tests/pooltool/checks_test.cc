// pooltool doctor's judgement of RDMA ports and clocks, on made-up facts:
// the classic RoCE bring-up failures each get a failing (or warning) check
// that names the fix. (There is no RDMA NIC here: the libibverbs half is
// covered by the doctor integration test's "no devices" case.)

#include <catch2/catch.hpp>

#include "tools/pooltool/checks.h"

using namespace kvpool::pooltool;

namespace {

RdmaPort healthy_roce() {
  RdmaPort p;
  p.device = "mlx5_0";
  p.port = 1;
  p.state = "active";
  p.link_layer = "Ethernet";
  p.active_mtu = 4096;
  p.gids = {"fe80:0000:0000:0000:0a00:27ff:fe00:0001", "0000:0000:0000:0000:0000:ffff:c612:0001"};
  return p;
}

bool contains(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

}  // namespace

TEST_CASE("doctor passes an active RoCE port with GIDs and a 4096 MTU", "[pooltool][doctor]") {
  auto checks = rdma_port_checks({healthy_roce()});
  REQUIRE(checks.size() == 1);
  CHECK(checks[0].level == CheckLevel::kOk);
  CHECK(checks[0].name == "RDMA mlx5_0 port 1");
  CHECK(contains(checks[0].detail, "active"));
  CHECK(contains(checks[0].detail, "RoCE"));
  CHECK(contains(checks[0].detail, "4096"));
  CHECK(contains(checks[0].detail, "2 GIDs"));
  CHECK(checks[0].fix.empty());
}

TEST_CASE("doctor fails a RoCE port with an empty GID table and says to give its netdev an address",
          "[pooltool][doctor]") {
  RdmaPort p = healthy_roce();
  p.gids.clear();
  auto checks = rdma_port_checks({p});
  REQUIRE(checks.size() == 1);
  CHECK(checks[0].level == CheckLevel::kFail);
  CHECK(contains(checks[0].fix, "GID"));
  CHECK(contains(checks[0].fix, "ip addr"));
}

TEST_CASE("doctor fails a port that is down and names cable, switch and subnet manager", "[pooltool][doctor]") {
  RdmaPort roce = healthy_roce();
  roce.state = "down";
  RdmaPort ib = healthy_roce();
  ib.device = "mlx5_1";
  ib.link_layer = "InfiniBand";
  ib.state = "init";
  ib.gids.clear();  // an IB port's GID table is not judged like RoCE's
  auto checks = rdma_port_checks({roce, ib});
  REQUIRE(checks.size() == 2);
  CHECK(checks[0].level == CheckLevel::kFail);
  CHECK(contains(checks[0].fix, "link down"));
  CHECK(checks[1].level == CheckLevel::kFail);
  CHECK(contains(checks[1].fix, "subnet manager"));
  CHECK_FALSE(contains(checks[1].fix, "GID"));
}

TEST_CASE("doctor warns about a RoCE MTU under 4096 and gives the netdev MTU to set", "[pooltool][doctor]") {
  RdmaPort p = healthy_roce();
  p.active_mtu = 1024;
  auto checks = rdma_port_checks({p});
  REQUIRE(checks.size() == 1);
  CHECK(checks[0].level == CheckLevel::kWarn);
  CHECK(contains(checks[0].fix, "mtu 9000"));
  // An InfiniBand port's MTU is the fabric's business: no warning.
  p.link_layer = "InfiniBand";
  CHECK(rdma_port_checks({p})[0].level == CheckLevel::kOk);
}

TEST_CASE("doctor's clock check warns past the threshold, net of the measurement's uncertainty, and names chrony",
          "[pooltool][doctor]") {
  CHECK(clock_check("coordinator", 120, 5, 500).level == CheckLevel::kOk);
  CHECK(clock_check("coordinator", -480, 5, 500).level == CheckLevel::kOk);
  // 600 ms off but only known within 150 ms: could be 450, so not flagged.
  CHECK(clock_check("coordinator", 600, 150, 500).level == CheckLevel::kOk);
  Check off = clock_check("agent 2 (b)", -2500, 3, 500);
  CHECK(off.level == CheckLevel::kWarn);
  CHECK(off.name == "clock skew: agent 2 (b)");
  CHECK(contains(off.detail, "-2500 ms"));
  CHECK(contains(off.fix, "chrony"));
}
