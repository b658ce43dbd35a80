// Namespaces: registration, per-client and per-tenant limits, quotas.

#include <cstdint>
#include <string>
#include <string_view>

#include "coordinator/core_state.h"

namespace kvpool::coordinator {

Result<NamespaceId> CoordinatorCore::register_namespace(const NamespaceDescriptor& desc, std::string_view tenant,
                                                        const NamespaceRegistrant& by) {
  auto bytes = block_bytes_of(desc);
  if (!bytes) return tl::unexpected(bytes.error());
  const NamespaceId id = namespace_id(desc);
  std::lock_guard lock(mu_);
  State& s = *s_;
  if (auto it = s.ns_index.find(id); it != s.ns_index.end()) {
    Namespace& n = s.namespaces[it->second];
    if (n.block_bytes == 0) {  // known from recovered blocks until now
      n.descriptor = desc;
      n.block_bytes = *bytes;
      logger()->info("namespace {} registered again: {} {}", hex(id), desc.model_id, desc.layout);
    }
    if (n.tenant != tenant) {
      // The tenants file changed (or the blocks came back from another kind
      // of region): new blocks go to the new regions; blocks already placed
      // stay where they are until evicted.
      logger()->warn("namespace {} ({}) moves from {} to {}: its {} blocks stay where they are", hex(id), desc.model_id,
                     n.tenant.empty() ? "the shared regions" : "isolated tenant '" + n.tenant + "'",
                     tenant.empty() ? "the shared regions" : "isolated tenant '" + std::string(tenant) + "'", n.blocks);
      n.tenant = std::string(tenant);
    }
    return id;
  }
  if (s.namespaces.size() >= s.config.max_namespaces) {
    return make_error(StatusCode::kResourceExhausted, "too many namespaces: the limit is " +
                                                          std::to_string(s.config.max_namespaces) +
                                                          " (coordinator config max_namespaces)");
  }
  std::uint32_t* by_client = by.client.empty() ? nullptr : &s.namespaces_by_client[by.client];
  std::uint32_t* by_tenant = by.tenant.empty() ? nullptr : &s.namespaces_by_tenant[by.tenant];
  if (by_tenant != nullptr && s.config.max_namespaces_per_tenant != 0 &&
      *by_tenant >= s.config.max_namespaces_per_tenant) {
    return make_error(StatusCode::kResourceExhausted,
                      "tenant '" + by.tenant + "' has registered " + std::to_string(*by_tenant) +
                          " namespaces, its limit (coordinator flag --max-namespaces-per-tenant)");
  }
  if (by_client != nullptr && s.config.max_namespaces_per_client != 0 &&
      *by_client >= s.config.max_namespaces_per_client) {
    return make_error(StatusCode::kResourceExhausted,
                      "client '" + by.client + "' has registered " + std::to_string(*by_client) +
                          " namespaces, its limit (coordinator flag --max-namespaces-per-client)");
  }
  if (by_client != nullptr) ++*by_client;
  if (by_tenant != nullptr) ++*by_tenant;
  s.ns_index.emplace(id, static_cast<std::uint32_t>(s.namespaces.size()));
  Namespace& fresh = s.namespaces.emplace_back();
  fresh.id = id;
  fresh.descriptor = desc;
  fresh.block_bytes = *bytes;
  fresh.tenant = std::string(tenant);
  logger()->info("namespace {} registered: {} {} block {} bytes{}", hex(id), desc.model_id, desc.layout, *bytes,
                 tenant.empty() ? std::string() : ", in the regions of isolated tenant '" + std::string(tenant) + "'");
  return id;
}

std::vector<NamespaceView> CoordinatorCore::namespaces() const {
  std::lock_guard lock(mu_);
  std::vector<NamespaceView> out;
  for (const Namespace& n : s_->namespaces) {
    // Blocks being evicted still count until their agent acknowledges.
    out.push_back(NamespaceView{n.id, n.descriptor, n.block_bytes, n.blocks + n.evicting, n.live_bytes, n.quota_blocks,
                                n.quota_bytes, n.live_blocks, n.tenant});
  }
  return out;
}

Result<std::string> CoordinatorCore::namespace_tenant(NamespaceId id) const {
  std::lock_guard lock(mu_);
  auto it = s_->ns_index.find(id);
  if (it == s_->ns_index.end()) return make_error(StatusCode::kNotFound, "unknown namespace " + hex(id));
  return s_->namespaces[it->second].tenant;
}

Result<BatchResult> CoordinatorCore::set_quota(NamespaceId ns_id, std::uint64_t quota_blocks, std::uint64_t quota_bytes,
                                               Clock::time_point now) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  s.sweep(now);
  auto ns = s.ns_lookup(ns_id);
  if (!ns) return tl::unexpected(ns.error());
  Namespace& n = s.namespaces[*ns];
  const bool had = n.has_quota();
  n.quota_blocks = quota_blocks;
  n.quota_bytes = quota_bytes;
  if (!n.has_quota()) {
    n.lru.clear();
  } else if (!had) {
    // Start following the namespace's committed blocks: one pass over the
    // slab (an operator's command, not a data-path call).
    for (std::uint32_t i = 0; i < s.slab.high_water(); ++i) {
      const BlockEntry& e = s.slab[i];
      if (e.state == BlockState::kCommitted && e.ns == *ns) n.lru.emplace(e.stamp, i);
    }
  }
  // Down to the new quota now, as far as unleased blocks allow.
  for (auto it = n.lru.begin(); n.over_quota(0, 0) && it != n.lru.end();) {
    const std::uint32_t i = (it++)->second;
    if (s.slab[i].pins == 0) s.evict(i);
  }
  logger()->info("namespace {} quota: {} blocks, {} bytes (0: none)", hex(ns_id), quota_blocks, quota_bytes);
  BatchResult r;
  r.invalidations = s.collect_ready(now);
  return r;
}

}  // namespace kvpool::coordinator
