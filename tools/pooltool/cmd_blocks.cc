// pooltool namespaces, usage, lookup, remove, evict and quota: what the
// pool holds, by namespace and key.

#include <iostream>
#include <map>

#include "runtime/common/units.h"
#include "tools/pooltool/admin.h"
#include "tools/pooltool/commands.h"
#include "tools/pooltool/output.h"

namespace kvpool::pooltool {
namespace {

std::string model_of(const std::map<NamespaceId, rpc::NamespaceRecord>& ns, NamespaceId id) {
  auto it = ns.find(id);
  return it == ns.end() ? std::string() : it->second.descriptor.model_id;
}

// The fraction of its quota a namespace uses (the larger of blocks and
// bytes when it has both); null without a quota.
json quota_used(const rpc::NamespaceRecord& n) {
  double f = -1;
  if (n.quota_blocks != 0) f = static_cast<double>(n.live_blocks) / static_cast<double>(n.quota_blocks);
  if (n.quota_bytes != 0) f = std::max(f, static_cast<double>(n.live_bytes) / static_cast<double>(n.quota_bytes));
  return f < 0 ? json(nullptr) : json(f);
}

// "812 of 1000 blocks (81.2%)", "1.5 GiB of 2.0 GiB (75.0%)", or "-".
std::string quota_text(const rpc::NamespaceRecord& n) {
  std::string out;
  if (n.quota_blocks != 0) {
    out = std::to_string(n.live_blocks) + " of " + std::to_string(n.quota_blocks) + " blocks (" +
          percent(static_cast<double>(n.live_blocks) / static_cast<double>(n.quota_blocks)) + ")";
  }
  if (n.quota_bytes != 0) {
    out += (out.empty() ? "" : ", ") + human_bytes(n.live_bytes) + " of " + human_bytes(n.quota_bytes) + " (" +
           percent(static_cast<double>(n.live_bytes) / static_cast<double>(n.quota_bytes)) + ")";
  }
  return out.empty() ? "-" : out;
}

json namespace_json(const rpc::NamespaceRecord& n) {
  const auto& d = n.descriptor;
  return {{"id", ns_to_hex(n.id)},
          {"model", d.model_id},
          {"dtype", d.dtype},
          {"layers", d.num_layers},
          {"kv_heads", d.num_kv_heads},
          {"head_dim", d.head_dim},
          {"tokens_per_block", d.tokens_per_block},
          {"layout", d.layout},
          {"tp_rank", d.tp_rank},
          {"tp_size", d.tp_size},
          {"block_bytes", n.block_bytes},
          {"blocks", n.blocks},
          {"live_blocks", n.live_blocks},
          {"live_bytes", n.live_bytes},
          {"quota_blocks", n.quota_blocks},
          {"quota_bytes", n.quota_bytes},
          {"quota_used", quota_used(n)}};
}

// Keys from the command line (32 hex digits each) or from a token file.
Result<std::vector<Key128>> keys_from(const std::vector<std::string>& hex, const std::string& tokens_file,
                                      const rpc::NamespaceRecord& ns, std::size_t* tokens_out) {
  std::vector<Key128> keys;
  if (!tokens_file.empty()) {
    auto tokens = read_tokens(tokens_file);
    if (!tokens) return tl::unexpected(tokens.error());
    *tokens_out = tokens->size();
    return prefix_keys(ns.id, *tokens, ns.descriptor.tokens_per_block);
  }
  for (const auto& h : hex) {
    auto k = key_from_hex(h);
    if (!k) return tl::unexpected(k.error());
    keys.push_back(*k);
  }
  return keys;
}

}  // namespace

// ---- namespaces ----
int cmd_namespaces(const Globals& g) {
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->namespaces();
  if (!ns) return fail(g, ns.error());
  if (g.json) {
    json arr = json::array();
    for (const auto& n : ns->namespaces) arr.push_back(namespace_json(n));
    print_json({{"namespaces", arr}});
    return kExitOk;
  }
  Table t({"ID", "MODEL", "DTYPE", "LAYOUT", "TOKENS/BLOCK", "TP", "BLOCK", "BLOCKS", "QUOTA (USED OF)"});
  for (const auto& n : ns->namespaces) {
    const auto& d = n.descriptor;
    t.add({ns_to_hex(n.id), d.model_id, d.dtype, d.layout, std::to_string(d.tokens_per_block),
           std::to_string(d.tp_rank) + "/" + std::to_string(d.tp_size), human_bytes(n.block_bytes),
           std::to_string(n.blocks), quota_text(n)});
  }
  std::cout << t.render();
  return kExitOk;
}

// ---- usage ----
int cmd_usage(const Globals& g, const std::string& ns_text) {
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto list = (*c)->namespaces();
  if (!list) return fail(g, list.error());
  std::map<NamespaceId, rpc::NamespaceRecord> by_id;
  for (const auto& n : list->namespaces) by_id[n.id] = n;
  rpc::UsageRequest req;
  if (!ns_text.empty()) {
    auto ns = (*c)->resolve_namespace(ns_text);
    if (!ns) return fail(g, ns.error());
    req.all = false;
    req.ns = ns->id;
  }
  auto usage = (*c)->usage(req);
  if (!usage) return fail(g, usage.error());
  auto agents = (*c)->agents();
  if (!agents) return fail(g, agents.error());
  struct Sum {
    std::uint64_t blocks = 0, bytes = 0;
  };
  std::map<NamespaceId, Sum> per_ns;
  std::map<std::uint32_t, Sum> per_agent;
  std::map<std::uint32_t, std::uint64_t> capacity;
  std::map<std::uint32_t, std::string> address;
  for (const auto& a : agents->agents) {
    capacity[a.agent] = a.capacity_bytes;
    address[a.agent] = a.control_address;
    if (a.alive) per_agent[a.agent];  // every live agent gets a row, empty or not
  }
  if (!req.all) per_ns[req.ns];
  for (const auto& r : usage->rows) {
    per_ns[r.ns].blocks += r.blocks;
    per_ns[r.ns].bytes += r.bytes;
    per_agent[r.agent].blocks += r.blocks;
    per_agent[r.agent].bytes += r.bytes;
  }
  if (g.json) {
    json jn = json::array(), ja = json::array(), jr = json::array();
    for (const auto& [id, s] : per_ns) {
      jn.push_back(
          {{"namespace", ns_to_hex(id)}, {"model", model_of(by_id, id)}, {"blocks", s.blocks}, {"bytes", s.bytes}});
    }
    for (const auto& [id, s] : per_agent) {
      ja.push_back({{"agent", id},
                    {"address", address[id]},
                    {"blocks", s.blocks},
                    {"bytes", s.bytes},
                    {"capacity_bytes", capacity[id]}});
    }
    for (const auto& r : usage->rows) {
      jr.push_back({{"namespace", ns_to_hex(r.ns)}, {"agent", r.agent}, {"blocks", r.blocks}, {"bytes", r.bytes}});
    }
    print_json({{"by_namespace", jn}, {"by_agent", ja}, {"rows", jr}});
    return kExitOk;
  }
  Table tn({"NAMESPACE", "MODEL", "BLOCKS", "BYTES"});
  for (const auto& [id, s] : per_ns) {
    tn.add({ns_to_hex(id), model_of(by_id, id), std::to_string(s.blocks), human_bytes(s.bytes)});
  }
  Table ta({"AGENT", "ADDRESS", "BLOCKS", "BYTES", "OF CAPACITY"});
  for (const auto& [id, s] : per_agent) {
    ta.add({std::to_string(id), address[id], std::to_string(s.blocks), human_bytes(s.bytes),
            capacity[id] ? percent(static_cast<double>(s.bytes) / static_cast<double>(capacity[id])) : "-"});
  }
  std::cout << "By namespace:\n" << tn.render() << "\nBy agent:\n" << ta.render();
  return kExitOk;
}

// ---- lookup ----
int cmd_lookup(const Globals& g, const std::string& ns_text, const std::vector<std::string>& hex,
               const std::string& tokens_file) {
  if (hex.empty() == tokens_file.empty()) {
    return fail(g, Status(StatusCode::kInvalidArgument, "lookup: give keys or --tokens FILE (one of them)"),
                kExitUsage);
  }
  for (const auto& h : hex) {
    if (auto k = key_from_hex(h); !k) return fail(g, k.error(), kExitUsage);
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  std::size_t tokens = 0;
  auto keys = keys_from(hex, tokens_file, *ns, &tokens);
  if (!keys) return fail(g, keys.error(), kExitUsage);
  auto agents = (*c)->agents();
  if (!agents) return fail(g, agents.error());
  std::map<std::uint32_t, std::string> address;
  for (const auto& a : agents->agents) address[a.agent] = a.control_address;
  rpc::LookupReply rep;
  if (!keys->empty()) {
    auto r = (*c)->lookup(ns->id, *keys);
    if (!r) return fail(g, r.error());
    rep = *r;
  }
  const std::size_t prefix = rep.locations.size();
  const std::uint32_t tpb = ns->descriptor.tokens_per_block;
  if (g.json) {
    json blocks = json::array();
    for (std::size_t i = 0; i < prefix; ++i) {
      const auto& l = rep.locations[i];
      blocks.push_back({{"index", i},
                        {"key", key_to_hex((*keys)[i])},
                        {"agent", l.agent},
                        {"address", address[l.agent]},
                        {"payload_offset", l.payload_offset},
                        {"length", l.length},
                        {"generation", l.generation}});
    }
    json out = {{"namespace", ns_to_hex(ns->id)},
                {"keys", keys->size()},
                {"prefix_blocks", prefix},
                {"cached_tokens", prefix * tpb},
                {"blocks", blocks}};
    if (!tokens_file.empty()) out["tokens"] = tokens;
    print_json(out);
    return kExitOk;
  }
  std::cout << "cached prefix: " << prefix << " of " << keys->size() << " blocks (" << prefix * tpb << " tokens";
  if (!tokens_file.empty()) std::cout << " of " << tokens;
  std::cout << ")\n";
  if (prefix > 0) {
    Table t({"#", "KEY", "AGENT", "ADDRESS", "OFFSET", "LENGTH", "GENERATION"});
    for (std::size_t i = 0; i < prefix; ++i) {
      const auto& l = rep.locations[i];
      t.add({std::to_string(i), key_to_hex((*keys)[i]), std::to_string(l.agent), address[l.agent],
             std::to_string(l.payload_offset), human_bytes(l.length), std::to_string(l.generation)});
    }
    std::cout << t.render();
  }
  return kExitOk;
}

// ---- remove ----
int cmd_remove(const Globals& g, const std::string& ns_text, const std::vector<std::string>& hex) {
  std::vector<Key128> keys;
  for (const auto& h : hex) {
    auto k = key_from_hex(h);
    if (!k) return fail(g, k.error(), kExitUsage);
    keys.push_back(*k);
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  auto rep = (*c)->remove(ns->id, keys);
  if (!rep) return fail(g, rep.error());
  std::size_t removed = 0;
  json results = json::array();
  Table t({"KEY", "RESULT"});
  for (std::size_t i = 0; i < keys.size() && i < rep->results.size(); ++i) {
    Status s = rep->results[i].to_status();
    removed += s.ok() ? 1 : 0;
    results.push_back(
        {{"key", key_to_hex(keys[i])}, {"status", std::string(code_name(s.code()))}, {"message", s.message()}});
    t.add({key_to_hex(keys[i]), s.ok() ? "removed" : s.to_string()});
  }
  const bool all = removed == keys.size();
  if (g.json) {
    print_json({{"namespace", ns_to_hex(ns->id)},
                {"removed", removed},
                {"failed", keys.size() - removed},
                {"results", results}});
  } else {
    std::cout << t.render();
  }
  return all ? kExitOk : kExitFailed;
}

// ---- evict ----
int cmd_evict(const Globals& g, const std::string& ns_text, bool dry_run, const std::string& older_than) {
  std::uint64_t older_ms = 0;
  if (!older_than.empty()) {
    auto d = parse_duration(older_than);
    if (!d || d->count() <= 0) {
      return fail(g, Status(StatusCode::kInvalidArgument, "--older-than: not a positive duration"), kExitUsage);
    }
    older_ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(*d).count());
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  auto rep = (*c)->evict_namespace(ns->id, dry_run, older_ms);
  if (!rep) return fail(g, rep.error());
  if (g.json) {
    print_json({{"namespace", ns_to_hex(ns->id)},
                {"model", ns->descriptor.model_id},
                {"dry_run", dry_run},
                {"older_than_seconds", older_ms == 0 ? json(nullptr) : json(static_cast<double>(older_ms) / 1000)},
                {"blocks", rep->blocks},
                {"bytes", rep->bytes},
                {"removed", rep->removed},
                {"failed", rep->failed}});
  } else if (dry_run) {
    std::cout << "would evict " << rep->blocks << " blocks (" << human_bytes(rep->bytes) << ") of namespace "
              << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << ")\n";
  } else {
    std::cout << "evicted " << rep->removed << " of " << rep->blocks << " blocks (" << human_bytes(rep->bytes)
              << ") of namespace " << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << ")";
    if (rep->failed) std::cout << "; " << rep->failed << " could not be removed (being written or read)";
    std::cout << "\n";
  }
  return rep->failed == 0 ? kExitOk : kExitFailed;
}

// ---- quota ----
int cmd_quota(const Globals& g, const std::string& ns_text, const std::string& size_text) {
  std::uint64_t blocks = 0, bytes = 0;
  const std::string suffix = "blocks";
  if (size_text.size() > suffix.size() && size_text.compare(size_text.size() - suffix.size(), suffix.size(), suffix) == 0) {
    try {
      blocks = std::stoull(size_text.substr(0, size_text.size() - suffix.size()));
    } catch (...) {
      return fail(g, Status(StatusCode::kInvalidArgument, "quota: '" + size_text + "' is not a block count"), kExitUsage);
    }
  } else {
    auto b = parse_size(size_text);
    if (!b) return fail(g, Status(StatusCode::kInvalidArgument, "quota: " + b.error().message()), kExitUsage);
    bytes = *b;
  }
  auto c = connect(g);
  if (!c) return fail_connect(g, c.error());
  auto ns = (*c)->resolve_namespace(ns_text);
  if (!ns) return fail(g, ns.error());
  if (Status st = (*c)->set_quota(ns->id, blocks, bytes); !st.ok()) return fail(g, st);
  if (g.json) {
    print_json({{"namespace", ns_to_hex(ns->id)}, {"quota_blocks", blocks}, {"quota_bytes", bytes}});
  } else if (blocks == 0 && bytes == 0) {
    std::cout << "namespace " << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << "): no quota\n";
  } else {
    std::cout << "namespace " << ns_to_hex(ns->id) << " (" << ns->descriptor.model_id << "): quota "
              << (blocks != 0 ? std::to_string(blocks) + " blocks" : human_bytes(bytes)) << "\n";
  }
  return kExitOk;
}

}  // namespace kvpool::pooltool
