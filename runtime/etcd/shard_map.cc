#include "runtime/etcd/shard_map.h"

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

namespace kvpool::etcd {

using json = nlohmann::json;

ShardMap ShardMap::equal(std::uint32_t count, std::int64_t version) {
  ShardMap m;
  m.version = version;
  for (std::uint32_t i = 0; i < count; ++i) {
    // ceil(i * 2^32 / count): the first p with (p * count) >> 32 == i.
    const std::uint64_t start = (std::uint64_t{i} * kPointSpace + count - 1) / count;
    const std::uint64_t end = (std::uint64_t{i + 1} * kPointSpace + count - 1) / count;
    m.ranges.push_back({start, end, i, std::nullopt});
  }
  return m;
}

const ShardRange& ShardMap::range_of(std::uint32_t point) const {
  // The last range starting at or before point (ranges[0].start == 0).
  auto it = std::upper_bound(ranges.begin(), ranges.end(), std::uint64_t{point},
                             [](std::uint64_t p, const ShardRange& r) { return p < r.start; });
  return *(it - 1);
}

std::vector<std::uint32_t> ShardMap::shards() const {
  std::set<std::uint32_t> s;
  for (const auto& r : ranges) {
    s.insert(r.shard);
    if (r.from) s.insert(*r.from);
  }
  return {s.begin(), s.end()};
}

std::vector<ShardRange> ShardMap::owned_by(std::uint32_t shard) const {
  std::vector<ShardRange> out;
  for (const auto& r : ranges) {
    if (r.shard == shard) out.push_back(r);
  }
  return out;
}

std::string ShardMap::describe() const {
  std::string out = "version " + std::to_string(version) + ":";
  for (const auto& r : ranges) {
    out += " [" + std::to_string(r.start) + ", " + std::to_string(r.end) + ") shard " + std::to_string(r.shard);
    if (r.from) out += " (moving from " + std::to_string(*r.from) + ")";
  }
  return out;
}

Result<ShardMap> add_shard(const ShardMap& map, std::uint32_t shard) {
  for (std::uint32_t s : map.shards()) {
    if (s == shard) return make_error(StatusCode::kInvalidArgument, "shard " + std::to_string(shard) + " is in the map already");
  }
  std::size_t best = map.ranges.size();
  for (std::size_t i = 0; i < map.ranges.size(); ++i) {
    const auto& r = map.ranges[i];
    if (r.from || r.end - r.start < 2) continue;
    if (best == map.ranges.size() || r.end - r.start > map.ranges[best].end - map.ranges[best].start) best = i;
  }
  if (best == map.ranges.size()) return make_error(StatusCode::kInvalidArgument, "no key range can be split now");
  ShardMap next = map;
  ++next.version;
  const ShardRange old = map.ranges[best];
  const std::uint64_t mid = old.start + (old.end - old.start) / 2;
  next.ranges[best].end = mid;
  next.ranges.insert(next.ranges.begin() + static_cast<std::ptrdiff_t>(best) + 1,
                     ShardRange{mid, old.end, shard, old.shard});
  return next;
}

namespace {

Status bad(const std::string& why) { return Status(StatusCode::kInvalidArgument, "shard map: " + why); }

Result<std::uint64_t> number(const json& j, const char* field, std::uint64_t most) {
  auto it = j.find(field);
  if (it == j.end()) return tl::unexpected(bad(std::string("'") + field + "' is missing"));
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<std::int64_t>() >= 0)) {
    return tl::unexpected(bad(std::string("'") + field + "' is not a non-negative integer"));
  }
  const std::uint64_t v = it->get<std::uint64_t>();
  if (v > most) return tl::unexpected(bad(std::string("'") + field + "' is " + std::to_string(v) + ", above " +
                                          std::to_string(most)));
  return v;
}

}  // namespace

Result<ShardMap> parse_shard_map(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return tl::unexpected(bad("not a JSON object: '" + text.substr(0, 200) + "'"));
  }
  auto version = number(j, "version", std::uint64_t{1} << 62);
  if (!version) return tl::unexpected(version.error());
  const bool has_shards = j.contains("shards"), has_ranges = j.contains("ranges");
  if (has_shards == has_ranges) return tl::unexpected(bad("give exactly one of 'shards' (a count) and 'ranges'"));
  if (has_shards) {
    auto count = number(j, "shards", 65536);
    if (!count) return tl::unexpected(count.error());
    if (*count == 0) return tl::unexpected(bad("'shards' must be at least 1"));
    return ShardMap::equal(static_cast<std::uint32_t>(*count), static_cast<std::int64_t>(*version));
  }
  const json& rs = j["ranges"];
  if (!rs.is_array() || rs.empty()) return tl::unexpected(bad("'ranges' must be a non-empty array"));
  ShardMap m;
  m.version = static_cast<std::int64_t>(*version);
  std::uint64_t next = 0;
  for (const json& r : rs) {
    if (!r.is_object()) return tl::unexpected(bad("a range is not an object"));
    ShardRange range;
    auto start = number(r, "start", kPointSpace - 1);
    auto end = number(r, "end", kPointSpace);
    auto shard = number(r, "shard", 65535);
    if (!start) return tl::unexpected(start.error());
    if (!end) return tl::unexpected(end.error());
    if (!shard) return tl::unexpected(shard.error());
    range.start = *start;
    range.end = *end;
    range.shard = static_cast<std::uint32_t>(*shard);
    if (r.contains("from")) {
      auto from = number(r, "from", 65535);
      if (!from) return tl::unexpected(from.error());
      if (*from == *shard) return tl::unexpected(bad("a range moves from shard " + std::to_string(*from) + " to itself"));
      range.from = static_cast<std::uint32_t>(*from);
    }
    if (range.start != next) {
      return tl::unexpected(bad("ranges must be sorted and contiguous from 0: a range starts at " +
                                std::to_string(range.start) + " where " + std::to_string(next) + " was expected"));
    }
    if (range.end <= range.start) return tl::unexpected(bad("an empty range at " + std::to_string(range.start)));
    next = range.end;
    m.ranges.push_back(range);
  }
  if (next != kPointSpace) {
    return tl::unexpected(bad("ranges end at " + std::to_string(next) + ", not 4294967296 (2^32)"));
  }
  return m;
}

std::string encode_shard_map(const ShardMap& map) {
  json rs = json::array();
  for (const auto& r : map.ranges) {
    json o{{"start", r.start}, {"end", r.end}, {"shard", r.shard}};
    if (r.from) o["from"] = *r.from;
    rs.push_back(std::move(o));
  }
  return json{{"version", map.version}, {"ranges", std::move(rs)}}.dump();
}

Result<ShardMap> read_shard_map(const Client& client, std::int64_t* revision) {
  auto r = client.get(kShardMapKey);
  if (!r) return tl::unexpected(r.error());
  if (revision != nullptr) *revision = r->revision;
  if (r->kvs.empty()) return ShardMap::equal(1, 0);
  auto m = parse_shard_map(r->kvs[0].value);
  if (!m) {
    return make_error(StatusCode::kFailedPrecondition,
                      std::string("etcd key ") + kShardMapKey + " is malformed: " + m.error().message());
  }
  return m;
}

}  // namespace kvpool::etcd
