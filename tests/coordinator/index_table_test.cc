#include "coordinator/index_table.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

using kvpool::coordinator::IndexTable;
using kvpool::coordinator::mix64;

namespace {

// Values stand for slab entries; the "key" of value v is keys[v].
struct Model {
  std::vector<std::uint64_t> keys;
  std::uint64_t hash(std::uint32_t v) const { return mix64(keys[v]); }
};

}  // namespace

TEST_CASE("index table finds, grows and erases like a reference map", "[coordinator][index_table]") {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    std::mt19937_64 rng(seed);
    IndexTable table;
    Model m;
    std::unordered_map<std::uint64_t, std::uint32_t> ref;  // key -> value
    for (int op = 0; op < 60000; ++op) {
      const std::uint64_t k = rng() % 20000;
      auto it = ref.find(k);
      const std::uint64_t h = mix64(k);
      const std::uint32_t found = table.find(h, [&](std::uint32_t v) { return m.keys[v] == k; });
      if (it == ref.end()) {
        REQUIRE(found == IndexTable::kNone);
        const auto v = static_cast<std::uint32_t>(m.keys.size());
        m.keys.push_back(k);
        table.insert(h, v);
        ref.emplace(k, v);
      } else {
        REQUIRE(found == it->second);
        if (rng() % 2 == 0) {
          REQUIRE(table.erase(h, it->second));
          REQUIRE_FALSE(table.erase(h, it->second));
          ref.erase(it);
        }
      }
      REQUIRE(table.size() == ref.size());
    }
    for (const auto& [k, v] : ref) {
      REQUIRE(table.find(mix64(k), [&](std::uint32_t x) { return m.keys[x] == k; }) == v);
    }
    CHECK(table.capacity() * 4 >= table.size() * 5);
  }
}

TEST_CASE("index table keeps entries with colliding tags apart by the equality callback",
          "[coordinator][index_table]") {
  IndexTable table;
  // The same hash for three different "keys": only eq tells them apart.
  const std::uint64_t h = 0x1234567890abcdefull;
  std::vector<int> keys{10, 20, 30};
  for (std::uint32_t v = 0; v < 3; ++v) table.insert(h, v);
  for (std::uint32_t v = 0; v < 3; ++v) {
    CHECK(table.find(h, [&](std::uint32_t x) { return keys[x] == keys[v]; }) == v);
  }
  REQUIRE(table.erase(h, 1));
  CHECK(table.find(h, [&](std::uint32_t x) { return keys[x] == 20; }) == IndexTable::kNone);
  CHECK(table.find(h, [&](std::uint32_t x) { return keys[x] == 30; }) == 2);
}
