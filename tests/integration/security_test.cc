// Authentication with real processes: kvpool-agent --standalone started with
// --secret-file serves clients that hold that secret and nobody else
// (SECURITY.md). Every secret here is a file under a private temporary
// directory: nothing reads or writes the machine's default secret path.

#include <catch2/catch.hpp>

#include "tests/integration/pool_fixture.h"
#include "tests/rpc/raw_conn.h"

using namespace kvpool;
using namespace kvpool::testing;
using namespace std::chrono_literals;

namespace {

Result<std::unique_ptr<Client>> connect_with(const std::string& coordinator, const std::string& secret_file) {
  ClientOptions options;
  options.coordinator = coordinator;
  options.timeout = scaled(10s);
  options.secret_file = secret_file;
  return Client::connect(options);
}

}  // namespace

TEST_CASE("a pool started with --secret-file serves clients with that secret and refuses others",
          "[integration][auth]") {
  const std::string a = make_secret_file();
  const std::string b = make_secret_file();
  const bool tls = GENERATE(false, true);
  INFO("--control-tls " << tls);
  std::vector<std::string> flags = {"--secret-file", a};
  if (tls) flags.push_back("--control-tls");
  auto pool = start_standalone("64MiB", flags);
  REQUIRE(pool);

  // Secret A: the whole API works (the embedded agent registered with A too).
  auto good = connect_with(pool->coordinator, a);
  REQUIRE(good);
  auto ns = (*good)->register_namespace(test_namespace(64 << 10, "auth"));
  REQUIRE(ns);
  std::vector<std::uint32_t> tokens(16, 7);
  auto keys = prefix_keys(*ns, tokens, 16);
  std::vector<std::byte> block(64 << 10, std::byte{0x5a});
  std::vector<std::span<const std::byte>> spans = {block};
  auto put = (*good)->put(*ns, keys, spans);
  REQUIRE(put);
  CHECK(put->written == 1);

  // Secret B: refused, with a clear code, before anything else happens.
  auto bad = connect_with(pool->coordinator, b);
  REQUIRE(!bad);
  CHECK(bad.error().code() == StatusCode::kPermissionDenied);
  CHECK(bad.error().message().find("secret") != std::string::npos);

  // An agent with secret B cannot join (it exits with an error).
  auto intruder = start_agent(pool->coordinator, "16MiB", {{"KVPOOL_SECRET_FILE", b}});
  REQUIRE(intruder);
  auto status = intruder->wait(Deadline::after(scaled(20s)));
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) != 0);

  // A raw peer asking for agents (worker addresses, rkeys) or block
  // locations without authenticating gets one auth error and a closed
  // connection.
  auto hp = parse_host_port(pool->coordinator);
  REQUIRE(hp);
  for (std::uint16_t type : {std::uint16_t{rpc::kListAgents}, std::uint16_t{rpc::kLookup}}) {
    rpc::RawConn raw(hp->second);
    std::string payload = type == rpc::kLookup ? rpc::encode(rpc::LookupRequest{*ns, false, keys}) : std::string();
    raw.send(rpc::frame(type, 3, payload));
    std::string received;
    CHECK(raw.read_until_closed(received));
    if (tls) {
      // The server waited for a TLS handshake: not a single frame back.
      CHECK(received.find("KVPC") == std::string::npos);
      continue;
    }
    rpc::FrameReader reader(rpc::kDefaultMaxFrame);
    auto space = reader.buffer();
    REQUIRE(space.size() >= received.size());
    std::memcpy(space.data(), received.data(), received.size());
    reader.commit(received.size());
    auto f = reader.next();
    REQUIRE(f);
    REQUIRE(*f);
    CHECK((*f)->header.is_error());
    CHECK(rpc::decode_error((*f)->payload).code() == StatusCode::kPermissionDenied);
    auto more = reader.next();
    REQUIRE(more);
    CHECK(!*more);
    CHECK(reader.buffered() == 0);
  }

  // The pool still serves the client that holds A.
  CHECK((*good)->lookup(*ns, keys).value() == 1);
}
