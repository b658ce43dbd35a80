#include "tools/pooltool/admin.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tools/common/pool_access.h"

namespace kvpool::pooltool {

Result<std::unique_ptr<AdminClient>> AdminClient::connect(const AdminOptions& options) {
  auto c = tools::connect_tool(options.coordinator, options.timeout, options.secret_file, "pooltool");
  if (!c) return tl::unexpected(c.error());
  return std::unique_ptr<AdminClient>(new AdminClient(options, std::move(*c)));
}

Result<std::string> AdminClient::call(std::uint16_t type, std::string payload) {
  return client_->call(type, std::move(payload), Deadline::after(options_.timeout));
}

template <typename Reply>
Result<Reply> AdminClient::call_decode(std::uint16_t type, std::string payload) {
  auto r = call(type, std::move(payload));
  if (!r) return tl::unexpected(r.error());
  Reply rep;
  if (Status s = rpc::decode(*r, rep); !s.ok()) return tl::unexpected(s);
  return rep;
}

Result<rpc::StatsReply> AdminClient::stats() { return call_decode<rpc::StatsReply>(rpc::kStats, {}); }
Result<rpc::AgentStatsReply> AdminClient::agents() { return call_decode<rpc::AgentStatsReply>(rpc::kAgentStats, {}); }
Result<rpc::ListAgentsReply> AdminClient::list_agents() {
  return call_decode<rpc::ListAgentsReply>(rpc::kListAgents, {});
}
Result<rpc::ListNamespacesReply> AdminClient::namespaces() {
  return call_decode<rpc::ListNamespacesReply>(rpc::kListNamespaces, {});
}
Result<rpc::UsageReply> AdminClient::usage(const rpc::UsageRequest& request) {
  return call_decode<rpc::UsageReply>(rpc::kUsage, rpc::encode(request));
}
Result<rpc::LookupReply> AdminClient::lookup(NamespaceId ns, const std::vector<Key128>& keys) {
  rpc::LookupRequest req;
  req.ns = ns;
  req.take_lease = false;
  req.keys = keys;
  return call_decode<rpc::LookupReply>(rpc::kLookup, rpc::encode(req));
}
Result<rpc::StatusBatch> AdminClient::remove(NamespaceId ns, const std::vector<Key128>& keys) {
  rpc::KeysRequest req;
  req.ns = ns;
  req.keys = keys;
  return call_decode<rpc::StatusBatch>(rpc::kRemove, rpc::encode(req));
}
Result<rpc::EvictNamespaceReply> AdminClient::evict_namespace(NamespaceId ns, bool dry_run,
                                                             std::uint64_t older_than_ms) {
  return call_decode<rpc::EvictNamespaceReply>(rpc::kEvictNamespace,
                                               rpc::encode(rpc::EvictNamespaceRequest{ns, dry_run, older_than_ms}));
}

Status AdminClient::set_quota(NamespaceId ns, std::uint64_t quota_blocks, std::uint64_t quota_bytes) {
  auto reply = call(rpc::kSetQuota, rpc::encode(rpc::SetQuotaRequest{ns, quota_blocks, quota_bytes}));
  return reply ? Status() : reply.error();
}

Result<rpc::DrainReply> AdminClient::drain(const rpc::DrainRequest& request) {
  return call_decode<rpc::DrainReply>(rpc::kDrain, rpc::encode(request));
}

Result<rpc::AgentStatsRecord> AdminClient::resolve_agent(const std::string& text) {
  auto list = agents();
  if (!list) return tl::unexpected(list.error());
  const bool numeric =
      !text.empty() && std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
  for (const auto& a : list->agents) {
    if ((numeric && text.size() < 10 && std::to_string(a.agent) == text) || a.control_address == text) return a;
  }
  return make_error(StatusCode::kNotFound,
                    "no agent '" + text + "': give its id or address as `pooltool agents` lists them");
}

Result<rpc::NamespaceRecord> AdminClient::resolve_namespace(const std::string& text) {
  auto list = namespaces();
  if (!list) return tl::unexpected(list.error());
  std::string hex = text;
  if (hex.rfind("0x", 0) == 0 || hex.rfind("0X", 0) == 0) hex = hex.substr(2);
  bool is_hex = !hex.empty() && hex.size() <= 16 &&
                std::all_of(hex.begin(), hex.end(), [](unsigned char c) { return std::isxdigit(c) != 0; });
  if (is_hex) {
    NamespaceId id = std::stoull(hex, nullptr, 16);
    for (const auto& n : list->namespaces) {
      if (n.id == id) return n;
    }
  }
  const rpc::NamespaceRecord* match = nullptr;
  for (const auto& n : list->namespaces) {
    if (n.descriptor.model_id != text) continue;
    if (match != nullptr) {
      return make_error(StatusCode::kInvalidArgument,
                        "model '" + text + "' has several namespaces: name one by id (pooltool namespaces)");
    }
    match = &n;
  }
  if (match != nullptr) return *match;
  return make_error(StatusCode::kNotFound, "no namespace '" + text + "' (pooltool namespaces lists them)");
}

std::string key_to_hex(const Key128& key) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(key.hi),
                static_cast<unsigned long long>(key.lo));
  return buf;
}

std::string ns_to_hex(NamespaceId id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

Result<Key128> key_from_hex(const std::string& text) {
  std::string t = text;
  if (t.rfind("0x", 0) == 0 || t.rfind("0X", 0) == 0) t = t.substr(2);
  if (t.size() != 32 || !std::all_of(t.begin(), t.end(), [](unsigned char c) { return std::isxdigit(c) != 0; })) {
    return make_error(StatusCode::kInvalidArgument, "key '" + text + "' is not 32 hex digits");
  }
  Key128 k;
  k.hi = std::stoull(t.substr(0, 16), nullptr, 16);
  k.lo = std::stoull(t.substr(16), nullptr, 16);
  return k;
}

Result<std::vector<std::uint32_t>> read_tokens(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(StatusCode::kInvalidArgument, "--tokens: cannot read " + path);
  std::stringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  std::vector<std::uint32_t> tokens;
  auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    auto doc = nlohmann::json::parse(text, nullptr, false);
    if (doc.is_discarded() || !doc.is_array()) {
      return make_error(StatusCode::kInvalidArgument, "--tokens: " + path + " is not a JSON array");
    }
    for (const auto& v : doc) {
      if (!v.is_number_unsigned() || v.get<std::uint64_t>() > UINT32_MAX) {
        return make_error(StatusCode::kInvalidArgument, "--tokens: " + v.dump() + " is not a token id");
      }
      tokens.push_back(v.get<std::uint32_t>());
    }
    return tokens;
  }
  for (char& c : text) {
    if (c == ',') c = ' ';
  }
  std::istringstream words(text);
  std::string w;
  while (words >> w) {
    if (w.empty() || w.size() > 10 ||
        !std::all_of(w.begin(), w.end(), [](unsigned char c) { return std::isdigit(c); }) ||
        std::stoull(w) > UINT32_MAX) {
      return make_error(StatusCode::kInvalidArgument, "--tokens: '" + w + "' is not a token id");
    }
    tokens.push_back(static_cast<std::uint32_t>(std::stoull(w)));
  }
  return tokens;
}

}  // namespace kvpool::pooltool
