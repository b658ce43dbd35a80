// Tenants with real processes (SECURITY.md, "Tenants"): kvpool-agent
// --standalone with --tenants serves a client holding a tenant credential
// only the namespaces its patterns match, through every call, and lets it
// touch no lease of anyone else. Every secret is a file under a private
// temporary directory.

#include <signal.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>

#include "runtime/common/secret.h"
#include "tests/integration/pool_fixture.h"
#include "tests/rpc/raw_conn.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

struct TenantFiles {
  std::string cluster = make_secret_file();
  std::string dir = cluster.substr(0, cluster.rfind('/'));
  std::string tenants = dir + "/tenants";
  std::string acme = dir + "/acme";
  std::string beta = dir + "/beta";
  std::string acme_key, beta_key;

  TenantFiles() {
    REQUIRE(create_tenant_secret_file(acme, "acme").ok());
    REQUIRE(create_tenant_secret_file(beta, "beta").ok());
    acme_key = std::string(load_secret(acme).value().key());
    beta_key = std::string(load_secret(beta).value().key());
    {
      std::ofstream f(tenants);
      f << "# test tenants\n"
        << "tenant acme " << acme_key << " namespaces=acme/*\n"
        << "tenant beta " << beta_key << " namespaces=beta/*\n";
    }
    REQUIRE(::chmod(tenants.c_str(), 0600) == 0);
  }
};

Result<std::unique_ptr<Client>> connect_with(const std::string& coordinator, const std::string& secret_file) {
  ClientOptions options;
  options.coordinator = coordinator;
  options.timeout = scaled(10s);
  options.secret_file = secret_file;
  return Client::connect(options);
}

Status call_status(rpc::Client& c, std::uint16_t type, const std::string& payload) {
  auto r = c.call(type, payload, Deadline::after(scaled(10s)));
  return r ? Status() : r.error();
}

bool denied(const Status& s) {
  INFO(s.to_string());
  return s.code() == StatusCode::kPermissionDenied;
}

}  // namespace

TEST_CASE("a tenant uses its own namespaces and is refused every call on another's", "[integration][tenants]") {
  TenantFiles files;
  const bool tls = GENERATE(false, true);
  INFO("--control-tls " << tls);
  std::vector<std::string> flags = {"--secret-file", files.cluster, "--tenants", files.tenants};
  if (tls) flags.push_back("--control-tls");
  auto pool = start_standalone("64MiB", flags);
  REQUIRE(pool);

  // The operator (cluster secret) sets up a namespace of beta's with a block.
  auto admin = connect_with(pool->coordinator, files.cluster);
  REQUIRE(admin);
  auto beta_ns = (*admin)->register_namespace(test_namespace(64 << 10, "beta/model"));
  REQUIRE(beta_ns);
  std::vector<std::uint32_t> tokens(16, 3);
  auto beta_keys = prefix_keys(*beta_ns, tokens, 16);
  std::vector<std::byte> block(64 << 10, std::byte{0x42});
  std::vector<std::span<const std::byte>> spans = {block};
  REQUIRE((*admin)->put(*beta_ns, beta_keys, spans).value().written == 1);

  // Tenant acme: its own namespace works end to end.
  auto acme = connect_with(pool->coordinator, files.acme);
  REQUIRE(acme);
  auto acme_ns = (*acme)->register_namespace(test_namespace(64 << 10, "acme/model"));
  REQUIRE(acme_ns);
  auto acme_keys = prefix_keys(*acme_ns, tokens, 16);
  REQUIRE((*acme)->put(*acme_ns, acme_keys, spans).value().written == 1);
  CHECK((*acme)->lookup(*acme_ns, acme_keys).value() == 1);
  std::vector<std::byte> out(64 << 10);
  std::vector<std::span<std::byte>> outs = {out};
  auto got = (*acme)->get(*acme_ns, acme_keys, outs);
  REQUIRE(got);
  CHECK(std::memcmp(out.data(), block.data(), block.size()) == 0);
  CHECK((*acme)->wait_for(*acme_ns, acme_keys, scaled(1000ms)).value() == std::vector<bool>{true});

  // ...and every call on beta's namespace is refused, with the reason.
  auto reg = (*acme)->register_namespace(test_namespace(64 << 10, "beta/other"));
  REQUIRE(!reg);
  CHECK(denied(reg.error()));
  CHECK(reg.error().message().find("acme") != std::string::npos);
  auto look = (*acme)->lookup(*beta_ns, beta_keys);
  REQUIRE(!look);
  CHECK(denied(look.error()));
  // get and put need the namespace registered by this client, which acme
  // cannot do (the coordinator's own refusal of allocate is checked below).
  std::fill(out.begin(), out.end(), std::byte{0});
  auto get = (*acme)->get(*beta_ns, beta_keys, outs);
  CHECK((!get || get->loaded == 0));
  CHECK(out[0] == std::byte{0});
  auto put = (*acme)->put(*beta_ns, prefix_keys(*beta_ns, std::vector<std::uint32_t>(16, 9), 16), spans);
  CHECK(!put);
  auto rm = (*acme)->remove(*beta_ns, beta_keys);
  REQUIRE(!rm);
  CHECK(denied(rm.error()));
  auto wait = (*acme)->wait_for(*beta_ns, beta_keys, scaled(100ms));
  REQUIRE(!wait);
  CHECK(denied(wait.error()));

  // The raw protocol, for what the Client API does not expose.
  auto raw = raw_with(pool->coordinator, files.acme);
  REQUIRE(raw);
  CHECK(denied(call_status(*raw, rpc::kAllocate, rpc::encode(rpc::AllocateRequest{*beta_ns, "h", {{beta_keys[0], 64 << 10}}}))));
  CHECK(denied(call_status(*raw, rpc::kEvictNamespace, rpc::encode(rpc::EvictNamespaceRequest{*beta_ns, false}))));
  CHECK(denied(call_status(*raw, rpc::kUsage, rpc::encode(rpc::UsageRequest{false, *beta_ns}))));
  CHECK(denied(call_status(*raw, rpc::kSetQuota, rpc::encode(rpc::SetQuotaRequest{*acme_ns, 0, 0}))));
  CHECK(denied(call_status(*raw, rpc::kHeartbeat, rpc::encode(rpc::HeartbeatRequest{1, 1}))));
  CHECK(denied(call_status(*raw, rpc::kRegisterAgent, rpc::encode(rpc::RegisterAgentRequest{}))));

  // Listings show only acme's namespace.
  rpc::ListNamespacesReply list;
  auto list_bytes = raw->call(rpc::kListNamespaces, std::string(), Deadline::after(scaled(10s)));
  REQUIRE(list_bytes);
  REQUIRE(rpc::decode(*list_bytes, list).ok());
  REQUIRE(list.namespaces.size() == 1);
  CHECK(list.namespaces[0].id == *acme_ns);
  rpc::UsageReply usage;
  REQUIRE(raw_call(*raw, rpc::kUsage, rpc::UsageRequest{true, 0}, usage).ok());
  REQUIRE(!usage.rows.empty());
  for (const auto& row : usage.rows) CHECK(row.ns == *acme_ns);
  rpc::UsageReply all;
  auto admin_raw = raw_with(pool->coordinator, files.cluster);
  REQUIRE(admin_raw);
  REQUIRE(raw_call(*admin_raw, rpc::kUsage, rpc::UsageRequest{true, 0}, all).ok());
  CHECK(all.rows.size() == 2);

  // Leases: the coordinator's are numbers from one counter; a tenant may
  // not release, commit or abort one it was not issued.
  rpc::LookupReply beta_read;
  REQUIRE(raw_call(*admin_raw, rpc::kLookup, rpc::LookupRequest{*beta_ns, true, beta_keys}, beta_read).ok());
  REQUIRE(beta_read.lease != 0);
  CHECK(denied(call_status(*raw, rpc::kRelease, rpc::encode(rpc::ReleaseRequest{beta_read.lease}))));
  CHECK(denied(call_status(*raw, rpc::kCommit, rpc::encode(rpc::LeaseBatch{{beta_read.lease}}))));
  CHECK(denied(call_status(*raw, rpc::kAbort, rpc::encode(rpc::LeaseBatch{{beta_read.lease}}))));
  CHECK(call_status(*admin_raw, rpc::kRelease, rpc::encode(rpc::ReleaseRequest{beta_read.lease})).ok());
  // Its own leases it may.
  rpc::LookupReply acme_read;
  REQUIRE(raw_call(*raw, rpc::kLookup, rpc::LookupRequest{*acme_ns, true, acme_keys}, acme_read).ok());
  CHECK(call_status(*raw, rpc::kRelease, rpc::encode(rpc::ReleaseRequest{acme_read.lease})).ok());
  rpc::AllocateReply placed;
  auto fresh = prefix_keys(*acme_ns, std::vector<std::uint32_t>(16, 11), 16);
  REQUIRE(raw_call(*raw, rpc::kAllocate, rpc::AllocateRequest{*acme_ns, "h", {{fresh[0], 64 << 10}}}, placed).ok());
  REQUIRE(placed.results.size() == 1);
  REQUIRE(placed.results[0].outcome == rpc::AllocateOutcome::kPlaced);
  // beta may not abort acme's write lease; acme may.
  auto beta_raw = raw_with(pool->coordinator, files.beta);
  REQUIRE(beta_raw);
  CHECK(denied(call_status(*beta_raw, rpc::kAbort, rpc::encode(rpc::LeaseBatch{{placed.results[0].lease}}))));
  CHECK(call_status(*raw, rpc::kAbort, rpc::encode(rpc::LeaseBatch{{placed.results[0].lease}})).ok());

  // beta's block is untouched and still beta's to read.
  auto beta = connect_with(pool->coordinator, files.beta);
  REQUIRE(beta);
  CHECK((*beta)->lookup(*beta_ns, beta_keys).value() == 1);
  auto beta_on_acme = (*beta)->lookup(*acme_ns, acme_keys);
  REQUIRE(!beta_on_acme);
  CHECK(denied(beta_on_acme.error()));
}

TEST_CASE("a tenant with a wrong key, an unknown name or a replayed hello is refused", "[integration][tenants][auth]") {
  TenantFiles files;
  auto pool = start_standalone("32MiB", {"--secret-file", files.cluster, "--tenants", files.tenants});
  REQUIRE(pool);

  // A credential with acme's name and another key.
  std::string forged = files.dir + "/forged";
  {
    std::ofstream f(forged);
    f << "kvpool-tenant acme " << std::string(64, 'f') << "\n";
  }
  REQUIRE(::chmod(forged.c_str(), 0600) == 0);
  auto bad = connect_with(pool->coordinator, forged);
  REQUIRE(!bad);
  CHECK(bad.error().code() == StatusCode::kPermissionDenied);

  // A tenant this coordinator does not know, with a real-looking key.
  std::string stranger = files.dir + "/stranger";
  REQUIRE(create_tenant_secret_file(stranger, "stranger").ok());
  auto unknown = connect_with(pool->coordinator, stranger);
  REQUIRE(!unknown);
  CHECK(unknown.error().code() == StatusCode::kPermissionDenied);

  // A pool without --tenants accepts no tenant at all.
  auto plain = start_standalone("32MiB", {"--secret-file", files.cluster});
  REQUIRE(plain);
  auto no_tenants = connect_with(plain->coordinator, files.acme);
  REQUIRE(!no_tenants);
  CHECK(no_tenants.error().code() == StatusCode::kPermissionDenied);

  // A valid tenant hello recorded on one connection is useless on another.
  auto hp = parse_host_port(pool->coordinator);
  REQUIRE(hp);
  rpc::RawConn first(hp->second);
  std::string hello = first.tenant_hello("replay", "acme", files.acme_key);
  first.send(hello);
  rpc::Frame ok = first.recv_frame();
  CHECK(!ok.header.is_error());
  rpc::RawConn second(hp->second);
  second.send(hello);
  rpc::Frame refused = second.recv_frame();
  REQUIRE(refused.header.is_error());
  CHECK(rpc::decode_error(refused.payload).code() == StatusCode::kPermissionDenied);
}

TEST_CASE("after a coordinator restart a tenant gets its namespace back once it registers it again",
          "[integration][tenants][restart]") {
  TenantFiles files;
  const std::string port_file = temp_path("coordinator-port");
  auto start_coordinator = [&](std::uint16_t port) {
    auto p = Subprocess::spawn({bin_dir() + "/kvpool-coordinator", "--listen", "127.0.0.1:" + std::to_string(port),
                                "--port-file", port_file, "--log-level", "warn", "--secret-file", files.cluster,
                                "--tenants", files.tenants, "--agent-timeout", "2s", "--heartbeat-interval", "200ms"});
    REQUIRE(p);
    return std::make_unique<Subprocess>(std::move(*p));
  };
  auto coordinator = start_coordinator(0);
  const std::uint16_t port = read_port_file(port_file, Deadline::after(scaled(10s)));
  REQUIRE(port != 0);
  std::remove(port_file.c_str());
  const std::string address = "127.0.0.1:" + std::to_string(port);
  auto agent = start_agent(address, "32MiB", {{"KVPOOL_SECRET_FILE", files.cluster}});
  REQUIRE(agent);
  auto admin = raw_with(address, files.cluster);
  REQUIRE(admin);
  REQUIRE(eventually([&] { return stats(*admin).agents_alive == 1; }, scaled(10s)));

  const NamespaceDescriptor desc = test_namespace(64 << 10, "acme/restart");
  const NamespaceId ns = namespace_id(desc);
  const Key128 key{1, 2};
  {
    auto acme = connect_with(address, files.acme);
    REQUIRE(acme);
    REQUIRE((*acme)->register_namespace(desc));
    std::vector<std::byte> block(64 << 10, std::byte{0x11});
    std::vector<std::span<const std::byte>> spans = {block};
    REQUIRE((*acme)->put(ns, std::span<const Key128>(&key, 1), spans).value().written == 1);
  }

  coordinator->kill(SIGKILL);
  REQUIRE(coordinator->wait(Deadline::after(scaled(5s))));
  coordinator = start_coordinator(port);
  REQUIRE(read_port_file(port_file, Deadline::after(scaled(10s))) == port);
  std::remove(port_file.c_str());
  admin = raw_with(address, files.cluster);
  REQUIRE(admin);
  // The agent rejoins and its scan brings the block back, under the
  // namespace's id only: nobody has registered it with this coordinator.
  REQUIRE(eventually([&] { return stats(*admin).blocks == 1; }, scaled(15s)));
  auto raw = raw_with(address, files.acme);
  REQUIRE(raw);
  CHECK(denied(call_status(*raw, rpc::kLookup, rpc::encode(rpc::LookupRequest{ns, false, {key}}))));
  // Registering it again (as a reconnecting client does) proves the model
  // id, and the namespace is the tenant's again.
  rpc::RegisterNamespaceReply reg;
  REQUIRE(raw_call(*raw, rpc::kRegisterNamespace, rpc::RegisterNamespaceRequest{desc}, reg).ok());
  rpc::LookupReply found;
  REQUIRE(raw_call(*raw, rpc::kLookup, rpc::LookupRequest{ns, false, {key}}, found).ok());
  CHECK(found.locations.size() == 1);
}
