#pragma once
// TenantGate: what a tenant (runtime/common/tenants.h) may ask of the
// coordinator. The server calls check() before it handles a request from a
// connection that authenticated as a tenant; peers with the cluster secret
// (agents, operators, trusted workers) are never gated.
//
// A tenant may use only the namespaces its patterns match (by model id, so
// a namespace known only by id, from blocks recovered after a restart, is
// refused until someone registers it again: the runtime does on
// reconnect; an id pattern matches either way): register,
// allocate, lookup, remove, wait_for, evict and usage on another namespace
// are kPermissionDenied, and listings (namespaces, usage of all) show only
// its own. Leases are opaque numbers that come from one counter, so a
// tenant may commit, abort or release only leases the coordinator issued
// to that tenant (note_lease). Agent-only messages, set_quota (the
// operator's limit on the tenant) and any type this gate does not know
// (newer operator messages) are refused. A namespace that lives in another
// isolated tenant's regions is refused whatever the patterns say. Agent
// lists and stats are filtered by the server, not here: a tenant is told of
// the regions it may reach only (an isolated tenant: its own; any other:
// the shared ones), and its stats count only those regions and its own
// namespaces (SECURITY.md).
//
// Thread-safe.

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <unordered_map>

#include "coordinator/coordinator_core.h"
#include "kvpool/status.h"
#include "runtime/common/tenants.h"
#include "runtime/rpc/server.h"

namespace kvpool::coordinator {

class TenantGate {
 public:
  // Leases remembered per tenant at most; past it the oldest (smallest id,
  // long expired in any sane use) are forgotten.
  static constexpr std::size_t kMaxLeasesPerTenant = std::size_t{1} << 20;

  explicit TenantGate(std::shared_ptr<const TenantTable> tenants) : tenants_(std::move(tenants)) {}

  // Ok when request.tenant is empty or the tenant may make this request;
  // else kPermissionDenied with a message that names the tenant and what
  // it may not touch (or kInvalidArgument for a payload that does not
  // decode, as the handler would say).
  Status check(const rpc::Request& request, const CoordinatorCore& core);

  // Whether `tenant` (not empty) may use namespace `ns`.
  bool allows(const std::string& tenant, NamespaceId ns, const CoordinatorCore& core);

  // A lease issued to `tenant` (0 and an empty tenant are ignored).
  void note_lease(const std::string& tenant, std::uint64_t lease);
  // A lease that is done (committed): the tenant no longer holds it.
  void forget_lease(const std::string& tenant, std::uint64_t lease);

 private:
  struct PerTenant {
    std::unordered_map<NamespaceId, bool> allowed;  // only namespaces the core knew when asked
    std::set<std::uint64_t> leases;
  };
  Status check_leases(const std::string& tenant, std::span<const std::uint64_t> leases, bool forget);
  Status check_namespace(const std::string& tenant, NamespaceId ns, const CoordinatorCore& core);

  std::shared_ptr<const TenantTable> tenants_;
  std::mutex mu_;
  std::unordered_map<std::string, PerTenant> state_;  // guarded by mu_
};

}  // namespace kvpool::coordinator
