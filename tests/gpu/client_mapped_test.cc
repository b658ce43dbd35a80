// The client's zero-copy slot API (begin/finish_mapped_put, begin/
// finish_mapped_get) that the GPU path DMAs through, exercised from the CPU
// against a real standalone agent: no GPU needed, runs in CI.
#include <catch2/catch.hpp>
#include <cstring>

#include "pool/slot_header.h"
#include "tests/integration/pool_fixture.h"

using namespace kvpool;
using namespace kvpool::testing;

namespace {

constexpr std::uint64_t kBlock = 256 << 10;

std::vector<Key128> keys_for(std::size_t n, std::uint64_t salt) {
  std::vector<Key128> k;
  for (std::size_t i = 0; i < n; ++i) k.push_back({salt * 7919 + i, salt});
  return k;
}

void fill(std::byte* p, std::size_t n, std::uint64_t seed) {
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>((i * 131 + seed * 17) & 0xff);
}

std::unique_ptr<Client> connect(const std::string& coordinator, const std::string& tls = "") {
  ClientOptions co;
  co.coordinator = coordinator;
  co.tls = tls;
  auto c = Client::connect(co);
  REQUIRE(c);
  return std::move(*c);
}

}  // namespace

TEST_CASE("mapped slots are written in place and read back by every reader", "[gpu][mapped]") {
  use_test_secret();
  auto pool = start_standalone("128MiB");
  REQUIRE(pool);
  auto client = connect(pool->coordinator);
  auto ns = client->register_namespace(test_namespace(kBlock, "mapped"));
  REQUIRE(ns);
  auto keys = keys_for(5, 1);
  auto mp = client->begin_mapped_put(*ns, keys);
  REQUIRE(mp);
  // test_namespace's four layers: four slice checksums per block.
  REQUIRE(mp->slices == 4);
  std::vector<std::uint64_t> sums;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(mp->outcomes[i] == PutOutcome::kWritten);
    REQUIRE(mp->slots[i].payload != nullptr);
    CHECK(mp->slots[i].payload >= mp->slots[i].region);
    CHECK(mp->slots[i].payload + kBlock <= mp->slots[i].region + mp->slots[i].region_bytes);
    fill(mp->slots[i].payload, kBlock, i);
    const auto table = slice_sums(mp->slots[i].payload, kBlock, mp->slices);
    sums.insert(sums.end(), table.begin(), table.end());
  }
  CHECK(client->lookup(*ns, keys).value() == 0);  // not visible before the commit
  auto put = client->finish_mapped_put(*mp, sums);
  REQUIRE(put);
  CHECK(put->written == keys.size());
  CHECK(client->finish_mapped_put(*mp, sums).error().code() == StatusCode::kFailedPrecondition);

  SECTION("a plain get verifies and returns the bytes") {
    auto other = connect(pool->coordinator);
    REQUIRE(other->register_namespace(test_namespace(kBlock, "mapped")));
    std::vector<std::vector<std::byte>> bufs(keys.size(), std::vector<std::byte>(kBlock));
    std::vector<std::span<std::byte>> spans(bufs.begin(), bufs.end());
    auto got = other->get(*ns, keys, spans);
    REQUIRE(got);
    CHECK(got->loaded == keys.size());
    std::vector<std::byte> want(kBlock);
    fill(want.data(), kBlock, 3);
    CHECK(bufs[3] == want);
  }
  SECTION("a mapped get hands out the slots and their checksums") {
    auto mg = client->begin_mapped_get(*ns, keys);
    REQUIRE(mg);
    CHECK(mg->found == keys.size());
    CHECK(mg->stopped.ok());
    REQUIRE(mg->slices == 4);
    CHECK(mg->checksums == sums);  // each block's slice table, as written
    for (std::size_t i = 0; i < mg->found; ++i) {
      const auto table = slice_sums(mg->slots[i].payload, kBlock, mg->slices);
      CHECK(std::equal(table.begin(), table.end(), sums.begin() + i * 4));
    }
    client->finish_mapped_get(*mg, mg->found);
    CHECK(client->stats().bytes_got == keys.size() * kBlock);
  }
  SECTION("a second mapped put of the same keys writes nothing") {
    auto again = client->begin_mapped_put(*ns, keys);
    REQUIRE(again);
    for (auto o : again->outcomes) CHECK(o == PutOutcome::kExists);
    auto r = client->finish_mapped_put(*again, std::vector<std::uint64_t>(keys.size() * again->slices));
    REQUIRE(r);
    CHECK(r->deduplicated == keys.size());
  }
  SECTION("a mapped get stops at the first missing key") {
    auto more = keys;
    more.push_back({999999, 1});
    more.push_back(keys[0]);
    auto mg = client->begin_mapped_get(*ns, more);
    REQUIRE(mg);
    CHECK(mg->found == keys.size());
    CHECK(mg->stopped.code() == StatusCode::kNotFound);
    client->finish_mapped_get(*mg, 0);
  }
}

TEST_CASE("a wrong checksum from a mapped writer is caught by readers", "[gpu][mapped]") {
  use_test_secret();
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto client = connect(pool->coordinator);
  auto ns = client->register_namespace(test_namespace(kBlock, "mapped-bad"));
  REQUIRE(ns);
  auto keys = keys_for(3, 2);
  auto mp = client->begin_mapped_put(*ns, keys);
  REQUIRE(mp);
  std::vector<std::uint64_t> sums;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    fill(mp->slots[i].payload, kBlock, i);
    const auto table = slice_sums(mp->slots[i].payload, kBlock, mp->slices);
    sums.insert(sums.end(), table.begin(), table.end());
  }
  sums[1 * mp->slices + 2] ^= 1;  // as if slice 2 of block 1 had been torn after hashing
  REQUIRE(client->finish_mapped_put(*mp, sums));
  std::vector<std::vector<std::byte>> bufs(keys.size(), std::vector<std::byte>(kBlock));
  std::vector<std::span<std::byte>> spans(bufs.begin(), bufs.end());
  auto got = client->get(*ns, keys, spans);
  REQUIRE(got);
  CHECK(got->loaded == 1);
  CHECK(got->stopped.code() == StatusCode::kDataLoss);
}

TEST_CASE("an aborted mapped put leaves nothing behind", "[gpu][mapped]") {
  use_test_secret();
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto client = connect(pool->coordinator);
  auto ns = client->register_namespace(test_namespace(kBlock, "mapped-abort"));
  REQUIRE(ns);
  auto keys = keys_for(4, 3);
  auto mp = client->begin_mapped_put(*ns, keys);
  REQUIRE(mp);
  client->abort_mapped_put(*mp);
  CHECK(client->lookup(*ns, keys).value() == 0);
  // The keys are free to be written again.
  std::vector<std::vector<std::byte>> blocks(keys.size(), std::vector<std::byte>(kBlock, std::byte{7}));
  std::vector<std::span<const std::byte>> spans(blocks.begin(), blocks.end());
  auto put = client->put(*ns, keys, spans);
  REQUIRE(put);
  CHECK(put->written == keys.size());
}

TEST_CASE("an agent not mapped into the worker says so", "[gpu][mapped]") {
  use_test_secret();
  auto pool = start_standalone("64MiB", {"--tls", "tcp"});
  REQUIRE(pool);
  auto client = connect(pool->coordinator, "tcp");
  auto ns = client->register_namespace(test_namespace(kBlock, "mapped-tcp"));
  REQUIRE(ns);
  auto keys = keys_for(2, 4);
  auto mp = client->begin_mapped_put(*ns, keys);
  REQUIRE(mp);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    CHECK(mp->outcomes[i] == PutOutcome::kFailed);
    CHECK(mp->errors[i].code() == StatusCode::kUnimplemented);
  }
  // Its leases were given back: a plain put of the same keys works.
  std::vector<std::vector<std::byte>> blocks(keys.size(), std::vector<std::byte>(kBlock, std::byte{9}));
  std::vector<std::span<const std::byte>> spans(blocks.begin(), blocks.end());
  auto put = client->put(*ns, keys, spans);
  REQUIRE(put);
  CHECK(put->written == keys.size());
  auto mg = client->begin_mapped_get(*ns, keys);
  REQUIRE(mg);
  CHECK(mg->found == 0);
  CHECK(mg->stopped.code() == StatusCode::kUnimplemented);
  client->finish_mapped_get(*mg, 0);
}

TEST_CASE("a mapped get hands out each block's slice table and refuses one damaged in the pool", "[gpu][mapped]") {
  use_test_secret();
  auto pool = start_standalone("64MiB");
  REQUIRE(pool);
  auto client = connect(pool->coordinator);
  auto ns = client->register_namespace(test_namespace(kBlock, "mapped-table"));
  REQUIRE(ns);
  auto keys = keys_for(3, 5);
  // Written by put(), whose mapped path writes each table before its header.
  std::vector<std::vector<std::byte>> blocks(keys.size(), std::vector<std::byte>(kBlock));
  for (std::size_t i = 0; i < keys.size(); ++i) fill(blocks[i].data(), kBlock, 10 + i);
  std::vector<std::span<const std::byte>> spans(blocks.begin(), blocks.end());
  REQUIRE(client->put(*ns, keys, spans).value().written == keys.size());

  auto mg = client->begin_mapped_get(*ns, keys);
  REQUIRE(mg);
  REQUIRE(mg->found == keys.size());
  REQUIRE(mg->slices == 4);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto table = slice_sums(blocks[i].data(), kBlock, 4);
    CHECK(std::equal(table.begin(), table.end(), mg->checksums.begin() + i * 4));
  }
  // Block 1's table lies right after its header (pool/slot_header.h).
  auto layout = pool::RegionLayout::create(mg->slots[1].region_bytes);
  REQUIRE(layout);
  const std::uint64_t payload_offset = mg->slots[1].payload - mg->slots[1].region - layout->payload_base;
  std::byte* entry = mg->slots[1].region + layout->table_offset(payload_offset) + 2 * 8;  // slice 2's
  client->finish_mapped_get(*mg, mg->found);
  *entry ^= std::byte{1};

  auto again = client->begin_mapped_get(*ns, keys);
  REQUIRE(again);
  CHECK(again->found == 1);
  CHECK(again->stopped.code() == StatusCode::kDataLoss);
  CHECK_THAT(again->stopped.message(), Catch::Contains("slice table"));
  client->finish_mapped_get(*again, again->found);
  CHECK(client->stats().verify_failures >= 1);
}
