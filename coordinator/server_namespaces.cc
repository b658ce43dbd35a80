// Namespaces, and which tenant's regions each lives in.

#include <string>

#include "coordinator/server_impl.h"

namespace kvpool::coordinator {

using server_detail::ns_label;

void CoordinatorServer::Impl::register_namespace(const Call& c, rpc::RegisterNamespaceRequest& m) {
  std::string owner;
  if (any_isolated) {
    auto o = tenants->isolated_owner(namespace_id(m.descriptor), &m.descriptor.model_id);
    if (!o) return c.resp.fail(o.error());
    owner = std::move(*o);
    if (!c.req.tenant.empty() && owner != region_class(c.req.tenant)) {
      return c.resp.fail(
          Status(StatusCode::kPermissionDenied,
                 "tenant '" + c.req.tenant + "' may not register namespace '" + m.descriptor.model_id + "': " +
                     (owner.empty() ? std::string("it lives in the shared regions and the tenant is isolated")
                                    : "it belongs to isolated tenant '" + owner + "'")));
    }
  }
  auto id = core->register_namespace(m.descriptor, owner, {c.req.peer_id, c.req.tenant});
  if (!id) return c.resp.fail(id.error());
  auto bytes = block_bytes_of(m.descriptor);
  c.resp.reply(rpc::encode(rpc::RegisterNamespaceReply{*id, bytes ? *bytes : 0}));
}

std::string CoordinatorServer::Impl::region_class(const std::string& tenant) const {
  if (tenant.empty() || !tenants) return {};
  const Tenant* t = tenants->find(tenant);
  return t != nullptr && t->isolated() ? tenant : std::string();
}

Status CoordinatorServer::Impl::check_isolation(const rpc::Request& req, NamespaceId ns) const {
  if (!any_isolated) return Status();
  auto owner = core->namespace_tenant(ns);
  if (!owner) return Status();  // unknown: the core says so
  const std::string mine = region_class(req.tenant);
  if (*owner == mine) return Status();
  if (owner->empty()) {
    return Status(StatusCode::kPermissionDenied,
                  "namespace " + ns_label(ns) + " lives in the shared regions, and tenant '" + req.tenant +
                      "' is isolated: it reaches only its own regions (is the namespace among its patterns?)");
  }
  return Status(StatusCode::kPermissionDenied,
                "namespace " + ns_label(ns) + " lives in the isolated regions of tenant '" + *owner +
                    "': only that tenant's credential reaches it on the data path (" +
                    (req.tenant.empty() ? std::string("the cluster secret may list, evict and remove it")
                                        : "tenant '" + req.tenant + "' may not") +
                    ")");
}

}  // namespace kvpool::coordinator
