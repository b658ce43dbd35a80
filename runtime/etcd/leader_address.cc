#include "runtime/etcd/leader_address.h"

#include <nlohmann/json.hpp>

namespace kvpool::etcd {

using json = nlohmann::json;

std::string leader_key(std::uint32_t shard) {
  return std::string(kKeyRoot) + "shards/" + std::to_string(shard) + "/leader";
}

std::string encode_leader(const LeaderInfo& info) {
  return json{{"address", info.address}, {"epoch", info.epoch}, {"id", info.id}}.dump();
}

Result<LeaderInfo> decode_leader(const std::string& value) {
  json j = json::parse(value, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("address") || !j["address"].is_string()) {
    return make_error(StatusCode::kInvalidArgument, "not a leader record: '" + value.substr(0, 200) + "'");
  }
  LeaderInfo info;
  info.address = j["address"].get<std::string>();
  if (auto e = j.find("epoch"); e != j.end() && e->is_number_integer()) info.epoch = e->get<std::int64_t>();
  if (auto id = j.find("id"); id != j.end() && id->is_string()) info.id = id->get<std::string>();
  return info;
}

bool is_etcd_address(const std::string& coordinator) { return coordinator.rfind("etcd://", 0) == 0; }

Result<EtcdAddress> parse_etcd_address(const std::string& coordinator) {
  if (!is_etcd_address(coordinator)) {
    return make_error(StatusCode::kInvalidArgument, "'" + coordinator + "' is not an etcd:// address");
  }
  std::string rest = coordinator.substr(7);
  EtcdAddress out;
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    const std::string shard = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    if (!shard.empty()) {
      try {
        std::size_t used = 0;
        long v = std::stol(shard, &used);
        if (used != shard.size() || v < 0 || v > 0xffffffffl) throw std::out_of_range("shard");
        out.shard = static_cast<std::uint32_t>(v);
        out.has_shard = true;
      } catch (...) {
        return make_error(StatusCode::kInvalidArgument, "'" + coordinator + "': bad shard number '" + shard + "'");
      }
    }
  }
  auto eps = parse_endpoints(rest);
  if (!eps) return make_error(StatusCode::kInvalidArgument, "'" + coordinator + "': " + eps.error().message());
  out.endpoints = std::move(*eps);
  return out;
}

Result<LeaderInfo> find_leader(const Client& client, std::uint32_t shard) {
  auto r = client.get(leader_key(shard));
  if (!r) return tl::unexpected(r.error());
  if (r->kvs.empty()) {
    return make_error(StatusCode::kUnavailable, "coordinator shard " + std::to_string(shard) +
                                                    " has no leader in etcd (an election may be in progress)");
  }
  auto info = decode_leader(r->kvs[0].value);
  if (!info) return make_error(StatusCode::kUnavailable, "shard " + std::to_string(shard) + ": " + info.error().message());
  info->epoch = r->kvs[0].create_revision;
  if (info->address.empty()) {
    return make_error(StatusCode::kUnavailable, "coordinator shard " + std::to_string(shard) + ": the new leader (" +
                                                    info->id + ") is starting");
  }
  return info;
}

Result<std::string> resolve_coordinator(const std::string& coordinator, std::chrono::milliseconds timeout) {
  if (!is_etcd_address(coordinator)) return coordinator;
  auto addr = parse_etcd_address(coordinator);
  if (!addr) return tl::unexpected(addr.error());
  auto client = Client::create({addr->endpoints, timeout});
  if (!client) return tl::unexpected(client.error());
  auto leader = find_leader(**client, addr->shard);
  if (!leader) return tl::unexpected(leader.error());
  return leader->address;
}

}  // namespace kvpool::etcd
