#include "coordinator/tenant_gate.h"

#include "runtime/rpc/messages.h"

namespace kvpool::coordinator {

bool TenantGate::allows(const std::string& tenant, NamespaceId ns, const CoordinatorCore& core) {
  const Tenant* t = tenants_ ? tenants_->find(tenant) : nullptr;
  if (t == nullptr) return false;
  {
    std::lock_guard lock(mu_);
    auto& cache = state_[tenant].allowed;
    if (auto it = cache.find(ns); it != cache.end()) return it->second;
  }
  // A namespace's id is the hash of its descriptor, so the answer for a
  // known id never changes and can be kept. O(namespaces) once per id.
  for (const NamespaceView& v : core.namespaces()) {
    if (v.id != ns) continue;
    // Known only from blocks recovered after a restart: no descriptor yet
    // (the tenant's client registers it again when it reconnects).
    if (v.block_bytes == 0) break;
    // Another isolated tenant's namespace is that tenant's alone, whatever
    // this tenant's patterns say.
    bool ok = t->allows(ns, &v.descriptor.model_id) && (v.tenant.empty() || v.tenant == tenant);
    std::lock_guard lock(mu_);
    state_[tenant].allowed[ns] = ok;
    return ok;
  }
  // Known only by id (blocks recovered before anyone registered it), or
  // not at all: only an id pattern can match.
  if (!t->allows(ns, nullptr)) return false;
  auto owner = core.namespace_tenant(ns);
  return !owner || owner->empty() || *owner == tenant;
}

void TenantGate::note_lease(const std::string& tenant, std::uint64_t lease) {
  if (tenant.empty() || lease == 0) return;
  std::lock_guard lock(mu_);
  auto& leases = state_[tenant].leases;
  leases.insert(lease);
  if (leases.size() > kMaxLeasesPerTenant) leases.erase(leases.begin());
}

void TenantGate::forget_lease(const std::string& tenant, std::uint64_t lease) {
  if (tenant.empty()) return;
  std::lock_guard lock(mu_);
  state_[tenant].leases.erase(lease);
}

Status TenantGate::check_leases(const std::string& tenant, std::span<const std::uint64_t> leases, bool forget) {
  std::lock_guard lock(mu_);
  auto& mine = state_[tenant].leases;
  for (std::uint64_t l : leases) {
    if (mine.count(l) == 0) {
      return Status(StatusCode::kPermissionDenied,
                    "tenant '" + tenant + "' holds no lease " + std::to_string(l) + ": it may only commit, abort or " +
                        "release leases issued to it");
    }
  }
  // Abort and release end the lease whatever the core says (an unknown or
  // expired one fails there all the same); a commit that fails may still
  // be aborted, so commit forgets only what it committed (forget_lease).
  if (forget) {
    for (std::uint64_t l : leases) mine.erase(l);
  }
  return Status();
}

Status TenantGate::check_namespace(const std::string& tenant, NamespaceId ns, const CoordinatorCore& core) {
  if (allows(tenant, ns, core)) return Status();
  return Status(StatusCode::kPermissionDenied, "tenant '" + tenant + "' may not use namespace " + namespace_hex(ns) +
                                                   " (not among its namespaces= patterns in the coordinator's "
                                                   "--tenants file)");
}

Status TenantGate::check(const rpc::Request& req, const CoordinatorCore& core) {
  if (req.tenant.empty()) return Status();
  if (!tenants_ || tenants_->find(req.tenant) == nullptr) {
    return Status(StatusCode::kPermissionDenied, "unknown tenant '" + req.tenant + "'");
  }
  // Decodes into T; a payload that does not decode is the handler's to
  // refuse (it decodes again and answers kInvalidArgument).
  auto decoded = [&](auto& msg) { return rpc::decode(req.payload, msg).ok(); };
  switch (req.type) {
    case rpc::kRegisterNamespace: {
      rpc::RegisterNamespaceRequest m;
      if (!decoded(m)) return Status();
      const Tenant* t = tenants_->find(req.tenant);
      if (t->allows(namespace_id(m.descriptor), &m.descriptor.model_id)) return Status();
      return Status(StatusCode::kPermissionDenied,
                    "tenant '" + req.tenant + "' may not register namespace '" + m.descriptor.model_id + "' (" +
                        namespace_hex(namespace_id(m.descriptor)) +
                        "): not among its namespaces= patterns in the coordinator's --tenants file");
    }
    case rpc::kAllocate: {
      rpc::AllocateRequest m;
      return decoded(m) ? check_namespace(req.tenant, m.ns, core) : Status();
    }
    case rpc::kLookup: {
      rpc::LookupRequest m;
      return decoded(m) ? check_namespace(req.tenant, m.ns, core) : Status();
    }
    case rpc::kRemove: {
      rpc::KeysRequest m;
      return decoded(m) ? check_namespace(req.tenant, m.ns, core) : Status();
    }
    case rpc::kWaitFor: {
      rpc::WaitForRequest m;
      return decoded(m) ? check_namespace(req.tenant, m.ns, core) : Status();
    }
    case rpc::kEvictNamespace: {
      rpc::EvictNamespaceRequest m;
      return decoded(m) ? check_namespace(req.tenant, m.ns, core) : Status();
    }
    case rpc::kUsage: {
      rpc::UsageRequest m;
      if (!decoded(m) || m.all) return Status();  // the reply is filtered
      return check_namespace(req.tenant, m.ns, core);
    }
    case rpc::kCommit:
    case rpc::kAbort: {
      rpc::LeaseBatch m;
      return decoded(m) ? check_leases(req.tenant, m.leases, req.type == rpc::kAbort) : Status();
    }
    case rpc::kRelease: {
      rpc::ReleaseRequest m;
      if (!decoded(m)) return Status();
      return check_leases(req.tenant, std::span<const std::uint64_t>(&m.lease, 1), true);
    }
    case rpc::kListNamespaces:  // filtered
    case rpc::kListAgents:
    case rpc::kStats:
    case rpc::kAgentStats:
      return Status();
    case rpc::kRegisterAgent:
    case rpc::kHeartbeat:
    case rpc::kRecoverBlocks:
    case rpc::kInvalidateDone:
    case rpc::kRemovedDone:
      return Status(StatusCode::kPermissionDenied,
                    "tenant '" + req.tenant + "' may not send agent messages: agents use the cluster secret");
    default:
      return Status(StatusCode::kPermissionDenied, "tenant '" + req.tenant + "' may not send message type " +
                                                       std::to_string(req.type) +
                                                       " (operator only: use the cluster secret)");
  }
}

}  // namespace kvpool::coordinator
