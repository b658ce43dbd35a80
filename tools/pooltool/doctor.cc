#include "tools/pooltool/doctor.h"

#include <infiniband/verbs.h>
#include <sys/resource.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>

#include "kvpool/client.h"
#include "runtime/etcd/leader_address.h"
#include "tools/common/pool_access.h"
#include "tools/pooltool/admin.h"
#include "tools/pooltool/checks.h"
#include "tools/pooltool/cluster.h"
#include "tools/pooltool/output.h"
#include "transport/transport.h"

namespace kvpool::pooltool {
namespace {

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// The bracketed choice of a sysfs multiple-choice file: "always [madvise] never".
std::string sysfs_choice(const std::string& text) {
  auto open = text.find('[');
  auto close = text.find(']', open);
  if (open == std::string::npos || close == std::string::npos) return {};
  return text.substr(open + 1, close - open - 1);
}

bool has_cap_ipc_lock() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      unsigned long long caps = std::strtoull(line.c_str() + 7, nullptr, 16);
      return (caps >> 14) & 1ull;  // CAP_IPC_LOCK
    }
  }
  return false;
}

Check check_thp() {
  Check c{"transparent huge pages", CheckLevel::kOk, "", ""};
  std::string enabled = read_first_line("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string shmem = read_first_line("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string mode = sysfs_choice(enabled);
  std::string shmem_mode = sysfs_choice(shmem);
  if (mode.empty()) {
    c.level = CheckLevel::kWarn;
    c.detail = "/sys/kernel/mm/transparent_hugepage/enabled not readable";
    c.fix = "a kernel with CONFIG_TRANSPARENT_HUGEPAGE: the pool then takes 2 MiB pages (fewer TLB misses)";
    return c;
  }
  c.detail = "enabled=" + mode + (shmem_mode.empty() ? "" : ", shmem_enabled=" + shmem_mode);
  if (mode == "never") {
    c.level = CheckLevel::kWarn;
    c.fix = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (the agent asks with madvise)";
  } else if (shmem_mode == "never" || shmem_mode == "deny") {
    // The region is UCX-allocated shared memory (DESIGN.md): its huge pages
    // follow shmem_enabled, not enabled.
    c.level = CheckLevel::kInfo;
    c.fix =
        "for huge pages in the shared-memory region: echo advise > "
        "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
  }
  return c;
}

Check check_memlock() {
  Check c{"locked memory (RLIMIT_MEMLOCK)", CheckLevel::kOk, "", ""};
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  bool cap = has_cap_ipc_lock();
  std::string limit = rl.rlim_cur == RLIM_INFINITY ? "unlimited" : human_bytes(rl.rlim_cur);
  c.detail = "limit " + limit + (cap ? ", CAP_IPC_LOCK held (the limit does not apply)" : ", no CAP_IPC_LOCK");
  if (rl.rlim_cur != RLIM_INFINITY && !cap) {
    c.level = CheckLevel::kWarn;
    c.fix =
        "let the agent lock its pool: LimitMEMLOCK=infinity in its systemd unit (cluster-configs/systemd), "
        "or `ulimit -l unlimited` / memlock in /etc/security/limits.conf; otherwise pages may be swapped "
        "(kvpool-agent --lock try logs it and goes on)";
  }
  return c;
}

// `ucx_info -d` lists "#      Transport: tcp" lines for every transport the
// library can use on this host.
std::string ucx_transports() {
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen("ucx_info -d 2>/dev/null", "r"), pclose);
  if (!p) return {};
  std::set<std::string> seen;
  std::string order;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p.get()) != nullptr) {
    std::string line(buf);
    auto at = line.find("Transport:");
    if (at == std::string::npos) continue;
    std::istringstream rest(line.substr(at + 10));
    std::string name;
    rest >> name;
    if (!name.empty() && seen.insert(name).second) order += (order.empty() ? "" : ",") + name;
  }
  return order;
}

Check check_ucx() {
  Check c{"UCX", CheckLevel::kOk, "", ""};
  c.detail = "library " + transport::ucx_version();
  std::string tls = ucx_transports();
  if (tls.empty()) {
    c.level = CheckLevel::kWarn;
    c.detail += "; transports unknown (ucx_info -d gave nothing)";
    c.fix = "apt-get install ucx-utils to list transports";
  } else {
    c.detail += "; transports " + tls;
  }
  return c;
}

const char* port_state_name(ibv_port_state s) {
  switch (s) {
    case IBV_PORT_NOP:
      return "nop";
    case IBV_PORT_DOWN:
      return "down";
    case IBV_PORT_INIT:
      return "init";
    case IBV_PORT_ARMED:
      return "armed";
    case IBV_PORT_ACTIVE:
      return "active";
    case IBV_PORT_ACTIVE_DEFER:
      return "active-defer";
  }
  return "unknown";
}

int mtu_bytes(ibv_mtu m) {
  switch (m) {
    case IBV_MTU_256:
      return 256;
    case IBV_MTU_512:
      return 512;
    case IBV_MTU_1024:
      return 1024;
    case IBV_MTU_2048:
      return 2048;
    case IBV_MTU_4096:
      return 4096;
  }
  return 0;
}

std::string gid_text(const ibv_gid& gid) {
  char buf[48];
  const std::uint8_t* r = gid.raw;
  std::snprintf(buf, sizeof buf, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x", r[0],
                r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
  return buf;
}

// Every RDMA device's ports through libibverbs (read-only queries: no
// protection domain, no queue pair). A device that cannot be opened or
// queried gets a failing check of its own.
std::vector<Check> check_rdma() {
  Check c{"RDMA devices", CheckLevel::kInfo, "", ""};
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr || n == 0) {
    if (list != nullptr) ibv_free_device_list(list);
    c.detail = "none: UCX moves bytes over shared memory on one host and TCP between hosts";
    c.fix =
        "for RDMA: an RDMA NIC with its driver (rdma-core) and UCX_TLS=rc,dc,sm,self "
        "(cluster-configs/rdma-host.json)";
    return {c};
  }
  std::vector<Check> out;
  std::vector<RdmaPort> ports;
  c.level = CheckLevel::kOk;
  for (int i = 0; i < n; ++i) {
    const std::string name = ibv_get_device_name(list[i]);
    c.detail += (i ? ", " : "") + name;
    ibv_context* ctx = ibv_open_device(list[i]);
    ibv_device_attr attr{};
    if (ctx == nullptr || ibv_query_device(ctx, &attr) != 0) {
      out.push_back({"RDMA " + name, CheckLevel::kFail, std::string("cannot open or query: ") + std::strerror(errno),
                     "check the driver (dmesg, rdma link) and the permissions of /dev/infiniband/*"});
      if (ctx != nullptr) ibv_close_device(ctx);
      continue;
    }
    for (int p = 1; p <= attr.phys_port_cnt; ++p) {
      ibv_port_attr pa{};
      if (ibv_query_port(ctx, static_cast<std::uint8_t>(p), &pa) != 0) {
        out.push_back({"RDMA " + name + " port " + std::to_string(p), CheckLevel::kFail,
                       std::string("ibv_query_port: ") + std::strerror(errno), "check the driver (dmesg)"});
        continue;
      }
      RdmaPort port;
      port.device = name;
      port.port = p;
      port.state = port_state_name(pa.state);
      port.link_layer = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand";
      port.active_mtu = mtu_bytes(pa.active_mtu);
      for (int g = 0; g < pa.gid_tbl_len; ++g) {
        ibv_gid gid{};
        if (ibv_query_gid(ctx, static_cast<std::uint8_t>(p), g, &gid) != 0) continue;
        bool zero = true;
        for (auto b : gid.raw) zero = zero && b == 0;
        if (!zero) port.gids.push_back(gid_text(gid));
      }
      ports.push_back(std::move(port));
    }
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
  out.insert(out.begin(), c);
  for (auto& pc : rdma_port_checks(ports)) out.push_back(std::move(pc));
  return out;
}

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Fresh keys: random tokens, so a probe never dedupes against an earlier one.
std::vector<Key128> fresh_keys(NamespaceId ns, std::size_t n) {
  std::mt19937_64 rng(std::random_device{}() ^ static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()));
  std::vector<std::uint32_t> tokens(n * 16);
  for (auto& t : tokens) t = static_cast<std::uint32_t>(rng());
  return prefix_keys(ns, tokens, 16);
}

void fill(std::vector<std::byte>& buf, std::uint64_t seed) {
  std::uint64_t x = seed | 1;
  for (std::size_t i = 0; i + 8 <= buf.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(buf.data() + i, &x, 8);
  }
}

Check check_probe(const DoctorOptions& options) {
  Check c{"probe put/get", CheckLevel::kOk, "", ""};
  auto client = tools::connect_client(options.coordinator, options.timeout, options.secret_file, "pooltool-doctor");
  auto failed = [&](const std::string& what, const Status& s) {
    c.level = CheckLevel::kFail;
    c.detail = what + ": " + s.to_string();
    c.fix =
        "check the agents' logs; run with UCX_TLS=tcp to rule out shared memory, or UCX_LOG_LEVEL=info to see "
        "what UCX picks";
    return c;
  };
  if (!client) return failed("connect", client.error());
  constexpr std::uint64_t kProbeBytes = 64 << 10;
  auto ns = (*client)->register_namespace(tools::tool_namespace("pooltool-probe", "pooltool", 16, kProbeBytes));
  if (!ns) return failed("register namespace", ns.error());
  auto keys = fresh_keys(*ns, 1);
  std::vector<std::byte> data(kProbeBytes), back(kProbeBytes);
  fill(data, keys[0].lo);
  std::vector<std::span<const std::byte>> in = {data};
  std::vector<std::span<std::byte>> out = {back};
  auto start = Clock::now();
  auto put = (*client)->put(*ns, keys, in);
  if (!put) return failed("put", put.error());
  if (put->outcomes[0] != PutOutcome::kWritten) return failed("put", put->errors[0]);
  auto got = (*client)->get(*ns, keys, out);
  if (!got) return failed("get", got.error());
  if (got->loaded != 1) return failed("get", got->stopped);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  if (data != back) return failed("get", Status(StatusCode::kDataLoss, "the block read back differs"));
  (void)(*client)->remove(*ns, keys);
  c.detail =
      "wrote, read and verified a 64 KiB block in " + std::to_string(us) + " us over " + (*client)->stats().transports;
  return c;
}

}  // namespace

Result<std::vector<AgentProbe>> probe_agents(const std::vector<rpc::AgentRecord>& agents,
                                             std::chrono::milliseconds timeout) {
  auto t = transport::Transport::create({});
  if (!t) return tl::unexpected(t.error());
  // The transport's progress runs inside the blocking calls below.
  std::vector<AgentProbe> out;
  for (const auto& a : agents) {
    if (!a.alive) continue;
    AgentProbe p;
    p.agent = a.agent;
    auto peer = (*t)->connect(a.worker_address, transport::ErrorMode::kAuto, a.host_id);
    if (!peer) {
      p.status = peer.error();
      out.push_back(std::move(p));
      continue;
    }
    p.transports = (*peer)->rma_transports();
    auto region = (*peer)->import_region(
        transport::RegionInfo{a.worker_address, a.packed_rkey, a.region_base, a.region_bytes, a.host_id});
    if (!region) {
      p.status = region.error();
      out.push_back(std::move(p));
      continue;
    }
    std::array<std::byte, 64> header{};
    const transport::RmaOp op{header.data(), 0, header.size()};
    const auto start = Clock::now();
    p.status = (*peer)->get(*region, std::span<const transport::RmaOp>(&op, 1), Deadline::after(timeout));
    p.get_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
    out.push_back(std::move(p));
    // The region goes before its peer, the peer before the transport.
  }
  return out;
}

const char* level_name(CheckLevel level) {
  switch (level) {
    case CheckLevel::kOk:
      return "ok";
    case CheckLevel::kInfo:
      return "info";
    case CheckLevel::kWarn:
      return "warn";
    case CheckLevel::kFail:
      return "fail";
  }
  return "?";
}

namespace {

// Every live agent reached over UCX from here (probe_agents): a check each.
void add_ucx_checks(AdminClient& admin, std::chrono::milliseconds timeout, std::vector<Check>& checks) {
  auto list = admin.list_agents();
  auto probes = list ? probe_agents(list->agents, std::min(timeout, std::chrono::milliseconds(5000)))
                     : Result<std::vector<AgentProbe>>(tl::unexpected(list.error()));
  if (!probes) {
    checks.push_back({"agents reachable over UCX", CheckLevel::kFail, probes.error().to_string(),
                      "check UCX_TLS and `ucx_info -d` on this host"});
    return;
  }
  for (const auto& p : *probes) {
    std::string address;
    for (const auto& a : list->agents) {
      if (a.agent == p.agent) address = a.control_address;
    }
    Check c{"agent " + std::to_string(p.agent) + " (" + address + ") over UCX", CheckLevel::kOk, "", ""};
    if (p.status.ok()) {
      char us[32];
      std::snprintf(us, sizeof us, "%.0f", p.get_us);
      c.detail = "read its region over " + p.transports + " in " + us + " us";
    } else {
      c.level = CheckLevel::kFail;
      c.detail = p.status.to_string() + (p.transports.empty() ? "" : " (over " + p.transports + ")");
      c.fix = "the agent's host must be reachable from here on a transport both sides have: check routes and "
              "firewalls (UCX over TCP uses ephemeral ports), and UCX_TLS on both sides";
    }
    checks.push_back(std::move(c));
  }
}

}  // namespace

std::vector<Check> run_doctor(const DoctorOptions& options) {
  std::vector<Check> checks = {check_thp(), check_memlock(), check_ucx()};
  for (auto& c : check_rdma()) checks.push_back(std::move(c));
  // Behind etcd: etcd itself, the shard map and every shard's leader.
  if (etcd::is_etcd_address(options.coordinator)) {
    auto view = inspect_cluster(options.coordinator, options.timeout, options.secret_file);
    if (view) {
      for (auto& c : check_cluster(*view, tools::etcd_endpoints(options.coordinator))) checks.push_back(std::move(c));
    }
  }
  Check reach{"coordinator", CheckLevel::kOk, "", ""};
  AdminOptions ao;
  ao.coordinator = options.coordinator;
  ao.timeout = options.timeout;
  ao.secret_file = options.secret_file;
  auto admin = AdminClient::connect(ao);
  if (!admin) {
    reach.level = CheckLevel::kFail;
    reach.detail = options.coordinator + ": " + admin.error().to_string();
    reach.fix = "start kvpool-coordinator (or kvpool-agent --standalone), or point --coordinator HOST:PORT at it";
    checks.push_back(reach);
    return checks;
  }
  const std::int64_t sent_ms = unix_ms_now();
  auto stats = (*admin)->stats();
  const std::int64_t got_ms = unix_ms_now();
  if (!stats) {
    reach.level = CheckLevel::kFail;
    reach.detail = options.coordinator + ": stats: " + stats.error().to_string();
    checks.push_back(reach);
    return checks;
  }
  reach.detail = options.coordinator + " (" + (*admin)->server().server_version + ", up " +
                 human_duration_ms(stats->uptime_ms) + ")";
  checks.push_back(reach);
  Check agents{"agents", CheckLevel::kOk, "", ""};
  agents.detail = std::to_string(stats->agents_alive) + " alive, " + std::to_string(stats->agents_dead) + " dead, " +
                  human_bytes(stats->capacity_bytes) + " capacity";
  if (stats->agents_alive == 0) {
    agents.level = CheckLevel::kFail;
    agents.fix = "start kvpool-agent --coordinator " + options.coordinator + " on the hosts that lend DRAM";
  } else if (stats->agents_dead > 0) {
    agents.level = CheckLevel::kWarn;
    agents.fix = "pooltool agents shows which; restart them (their blocks are gone from the index)";
  }
  checks.push_back(agents);
  // The coordinator's clock read at the middle of the round trip, so known
  // within half of it; an agent's offset from the coordinator was taken at
  // its last heartbeat (within that heartbeat's one-way delay).
  const std::int64_t rtt = got_ms - sent_ms;
  const std::int64_t coordinator_offset = stats->unix_ms - (sent_ms + rtt / 2);
  checks.push_back(clock_check("coordinator", coordinator_offset, rtt / 2 + 1, options.max_clock_skew_ms));
  if (auto list = (*admin)->agents()) {
    for (const auto& a : list->agents) {
      if (!a.alive || !a.clock_known) continue;
      checks.push_back(clock_check("agent " + std::to_string(a.agent) + " (" + a.control_address + ")",
                                   coordinator_offset + a.clock_offset_ms, rtt / 2 + 1 + 50,
                                   options.max_clock_skew_ms));
    }
  }
  if (options.probe && stats->agents_alive > 0) {
    add_ucx_checks(**admin, options.timeout, checks);
    checks.push_back(check_probe(options));
  }
  return checks;
}

Result<BenchResult> run_bench(const BenchOptions& options) {
  auto client = tools::connect_client(options.coordinator, options.timeout, options.secret_file, "pooltool-bench");
  if (!client) return tl::unexpected(client.error());
  auto ns = (*client)->register_namespace(tools::tool_namespace("pooltool-bench", "pooltool", 16, options.block_bytes));
  if (!ns) return tl::unexpected(ns.error());
  const std::size_t n = options.blocks;
  std::vector<std::byte> data(n * options.block_bytes), back(n * options.block_bytes);
  if (Status s = (*client)->register_buffer(back.data(), back.size()); !s.ok()) return tl::unexpected(s);
  BenchResult res;
  res.block_bytes = options.block_bytes;
  res.blocks = options.blocks;
  res.rounds = options.rounds;
  const double bytes = static_cast<double>(data.size());
  for (std::uint32_t round = 0; round < options.rounds; ++round) {
    auto keys = fresh_keys(*ns, n);
    std::vector<std::span<const std::byte>> in;
    std::vector<std::span<std::byte>> out;
    for (std::size_t i = 0; i < n; ++i) {
      in.emplace_back(data.data() + i * options.block_bytes, options.block_bytes);
      out.emplace_back(back.data() + i * options.block_bytes, options.block_bytes);
    }
    fill(data, keys[0].lo);
    auto t0 = Clock::now();
    auto put = (*client)->put(*ns, keys, in);
    auto t1 = Clock::now();
    if (!put) return tl::unexpected(put.error());
    if (put->failed > 0) {
      for (const auto& e : put->errors) {
        if (!e.ok()) return tl::unexpected(e);
      }
    }
    auto got = (*client)->get(*ns, keys, out);
    auto t2 = Clock::now();
    if (!got) return tl::unexpected(got.error());
    auto looked = (*client)->lookup(*ns, keys);
    auto t3 = Clock::now();
    (void)(*client)->remove(*ns, keys);
    if (got->loaded != n) return tl::unexpected(got->stopped);
    if (data != back) return make_error(StatusCode::kDataLoss, "bench: blocks read back differ");
    if (!looked) return tl::unexpected(looked.error());
    auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    res.put_gbps = std::max(res.put_gbps, bytes / secs(t0, t1) / 1e9);
    res.get_gbps = std::max(res.get_gbps, bytes / secs(t1, t2) / 1e9);
    double lus = secs(t2, t3) * 1e6;
    res.lookup_us = round == 0 ? lus : std::min(res.lookup_us, lus);
    if (options.progress) options.progress(round + 1, options.rounds);
  }
  (void)(*client)->unregister_buffer(back.data());
  auto st = (*client)->stats();
  res.transports = st.transports;
  res.verify_failures = st.verify_failures;
  return res;
}

}  // namespace kvpool::pooltool
