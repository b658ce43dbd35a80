// Decoding etcd's JSON gateway answers: missing numbers are 0 (the gateway
// omits zeros), malformed ones are errors, never 0.

#include "runtime/etcd/gateway_json.h"

#include <catch2/catch.hpp>

using namespace kvpool;
using namespace kvpool::etcd;
using nlohmann::json;

TEST_CASE("gateway integers: strings and numbers read, missing is 0, malformed is an error", "[etcd]") {
  const json j = json::parse(R"({"a": "42", "b": 7, "c": "-3", "big": "18446744073709551615",
                                 "junk": "12x", "empty": "", "float": 1.5, "obj": {}, "neg": -1, "null": null})");
  CHECK(gateway::int_field(j, "a").value() == 42);
  CHECK(gateway::int_field(j, "b").value() == 7);
  CHECK(gateway::int_field(j, "c").value() == -3);
  CHECK(gateway::int_field(j, "missing").value() == 0);
  CHECK(gateway::int_field(j, "null").value() == 0);
  CHECK(gateway::uint_field(j, "big").value() == UINT64_MAX);
  for (const char* bad : {"junk", "empty", "float", "obj", "big"}) {
    INFO(bad);
    auto r = gateway::int_field(j, bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == StatusCode::kInternal);
    CHECK(r.error().message().find(bad) != std::string::npos);
  }
  CHECK_FALSE(gateway::uint_field(j, "c"));
  CHECK_FALSE(gateway::uint_field(j, "neg"));
  CHECK_FALSE(gateway::uint_field(j, "junk"));
}

TEST_CASE("a range answer with a malformed revision or key-value is refused, not read as zeros", "[etcd]") {
  const std::string key = base64_encode("/kvpool/k"), value = base64_encode("v");
  const json good = json::parse(R"({"header": {"revision": "12"}, "kvs": [{"key": ")" + key + R"(", "value": ")" +
                                value + R"(", "create_revision": "3", "mod_revision": "11", "version": "2"}]})");
  auto r = gateway::range_result(good);
  REQUIRE(r);
  CHECK(r->revision == 12);
  REQUIRE(r->kvs.size() == 1);
  CHECK(r->kvs[0].key == "/kvpool/k");
  CHECK(r->kvs[0].value == "v");
  CHECK(r->kvs[0].mod_revision == 11);
  CHECK(r->kvs[0].lease == 0);  // omitted by the gateway: zero

  json bad_revision = good;
  bad_revision["header"]["revision"] = "12abc";
  CHECK_FALSE(gateway::range_result(bad_revision));
  CHECK_FALSE(gateway::header_revision(bad_revision));
  json bad_mod = good;
  bad_mod["kvs"][0]["mod_revision"] = "eleven";
  CHECK_FALSE(gateway::range_result(bad_mod));
  json bad_lease = good;
  bad_lease["kvs"][0]["lease"] = true;
  CHECK_FALSE(gateway::key_value(bad_lease["kvs"][0]));
  json bad_value = good;
  bad_value["kvs"][0]["value"] = "not base64!";
  CHECK_FALSE(gateway::range_result(bad_value));
  CHECK(gateway::header_revision(json::object()).value() == 0);
}
