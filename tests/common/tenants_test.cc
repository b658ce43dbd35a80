#include "runtime/common/tenants.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>

#include "runtime/common/secret.h"
#include "tests/common/test_util.h"

using namespace kvpool;

namespace {

const std::string kKeyA(64, 'a');
const std::string kKeyB(64, 'b');

std::string write_file(const std::string& text, mode_t mode) {
  static int n = 0;
  std::string path = "/tmp/kvpool-tenants-test-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
  std::remove(path.c_str());
  { std::ofstream(path) << text; }
  ::chmod(path.c_str(), mode);
  return path;
}

}  // namespace

TEST_CASE("a tenants file names each tenant's key and namespace patterns", "[tenants]") {
  auto t = TenantTable::parse("# comment\n\ntenant acme " + kKeyA + " namespaces=acme/*,0123456789abcdef  # inline\n" +
                                  "tenant beta " + kKeyB + " namespaces=beta/llama\n",
                              "test");
  REQUIRE(t);
  REQUIRE(t->size() == 2);
  const Tenant* acme = t->find("acme");
  REQUIRE(acme);
  CHECK(acme->key == kKeyA);
  CHECK(t->find("gamma") == nullptr);
  std::string model = "acme/llama-3-8b";
  CHECK(acme->allows(1, &model));
  model = "beta/llama";
  CHECK(!acme->allows(1, &model));
  CHECK(t->find("beta")->allows(1, &model));
  SECTION("an id pattern matches a namespace known only by id") {
    CHECK(acme->allows(0x0123456789abcdefull, nullptr));
    CHECK(!acme->allows(0x0123456789abcdeeull, nullptr));
    CHECK(!t->find("beta")->allows(1, nullptr));
  }
}

TEST_CASE("a malformed tenants file is refused with the line and the reason", "[tenants]") {
  struct Case {
    std::string text, needle;
  };
  for (const Case& c : {Case{"tenant acme short namespaces=a", "key of 5 bytes"},
                        Case{"tenant acme " + kKeyA, "too few fields"},
                        Case{"tenant acme " + kKeyA + " isolated namespaces=a", "isolated"},
                        Case{"tenant acme " + kKeyA + " isolated=lots namespaces=a", "isolated="},
                        Case{"tenant acme " + kKeyA + " isolated=4096 namespaces=a", "too small"},
                        Case{"tenant acme " + kKeyA + " isolated=1GiB isolated=1GiB namespaces=a", "twice"},
                        Case{"tenant acme " + kKeyA + " namespaces=a,,b", "empty namespace pattern"},
                        Case{"tenant acme " + kKeyA + " colour=red", "unknown option"},
                        Case{"tenant a/b " + kKeyA + " namespaces=a", "tenant name"},
                        Case{"user acme " + kKeyA + " namespaces=a", "unknown directive"},
                        Case{"tenant acme " + kKeyA + " namespaces=a\ntenant acme " + kKeyB + " namespaces=b",
                             "named twice"}}) {
    INFO(c.text);
    auto t = TenantTable::parse(c.text, "test");
    REQUIRE(!t);
    CHECK(t.error().code() == StatusCode::kFailedPrecondition);
    CHECK(t.error().message().find(c.needle) != std::string::npos);
  }
}

TEST_CASE("an isolated tenant has a region size and owns the namespaces its patterns match", "[tenants]") {
  auto t = TenantTable::parse("tenant acme " + kKeyA + " namespaces=acme/* isolated=64MiB\n" +
                                  "tenant beta " + kKeyB + " isolated=1GiB namespaces=beta/*,shared/*\n" +
                                  "tenant gamma " + kKeyA + " namespaces=*\n",
                              "test");
  REQUIRE(t);
  CHECK(t->any_isolated());
  CHECK(t->find("acme")->isolated_bytes == (64ull << 20));
  CHECK(t->find("beta")->isolated_bytes == (1ull << 30));
  CHECK(!t->find("gamma")->isolated());
  std::string model = "acme/llama";
  auto owner = t->isolated_owner(7, &model);
  REQUIRE(owner);
  CHECK(*owner == "acme");  // gamma matches too, but gamma is not isolated
  model = "other/llama";
  owner = t->isolated_owner(7, &model);
  REQUIRE(owner);
  CHECK(owner->empty());
  SECTION("two isolated tenants may not own one namespace") {
    auto both = TenantTable::parse("tenant acme " + kKeyA + " namespaces=m/* isolated=1MiB\n" + "tenant beta " +
                                       kKeyB + " namespaces=m/x isolated=1MiB\n",
                                   "test");
    REQUIRE(both);
    model = "m/x";
    auto o = both->isolated_owner(7, &model);
    REQUIRE(!o);
    CHECK(o.error().code() == StatusCode::kFailedPrecondition);
    CHECK(o.error().message().find("two isolated tenants") != std::string::npos);
  }
  SECTION("append_tenant writes the size back") {
    Tenant n;
    n.name = "delta";
    n.key = kKeyB;
    n.namespaces = {"d/*"};
    n.isolated_bytes = 8ull << 20;
    std::string path = write_file("", 0600);
    REQUIRE(append_tenant(path, n).ok());
    auto back = TenantTable::load(path);
    REQUIRE(back);
    CHECK(back->find("delta")->isolated_bytes == (8ull << 20));
  }
}

TEST_CASE("a tenants file that others may read is refused", "[tenants]") {
  std::string text = "tenant acme " + kKeyA + " namespaces=acme/*\n";
  std::string ok = write_file(text, 0600);
  CHECK(TenantTable::load(ok));
  std::string open = write_file(text, 0644);
  auto t = TenantTable::load(open);
  REQUIRE(!t);
  CHECK(t.error().message().find("chmod 600") != std::string::npos);
  CHECK(!TenantTable::load(ok + ".missing"));
  std::remove(ok.c_str());
  std::remove(open.c_str());
}

TEST_CASE("a tenant credential file names the tenant and holds its key", "[tenants][secret]") {
  std::string path = "/tmp/kvpool-tenant-cred-" + std::to_string(::getpid());
  std::remove(path.c_str());
  REQUIRE(create_tenant_secret_file(path, "acme").ok());
  CHECK(create_tenant_secret_file(path, "acme").code() == StatusCode::kAlreadyExists);
  auto s = load_secret(path);
  REQUIRE(s);
  CHECK(s->tenant() == "acme");
  CHECK(s->key().size() == 64);
  std::remove(path.c_str());
  CHECK(create_tenant_secret_file(path, "bad name").code() == StatusCode::kInvalidArgument);

  std::string cluster = write_file(std::string(64, 'c') + "\n", 0600);
  auto c = load_secret(cluster);
  REQUIRE(c);
  CHECK(c->tenant().empty());
  std::string broken = write_file("kvpool-tenant bad/name " + std::string(40, 'k') + "\n", 0600);
  auto b = load_secret(broken);
  REQUIRE(!b);
  CHECK(b.error().message().find("tenant credential") != std::string::npos);
  std::remove(cluster.c_str());
  std::remove(broken.c_str());
}
