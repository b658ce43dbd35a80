// pooltool secret new: a cluster secret, or a tenant credential and its
// line in the coordinator's tenants file (SECURITY.md).

#include <cstdio>
#include <iostream>

#include "runtime/common/secret.h"
#include "runtime/common/tenants.h"
#include "runtime/common/units.h"
#include "tools/pooltool/commands.h"
#include "tools/pooltool/output.h"

namespace kvpool::pooltool {

// ---- secret ----
int cmd_secret_new(const Globals& g, const std::string& path, const std::string& tenant, const std::string& namespaces,
                   const std::string& tenants_file, const std::string& isolated) {
  if (!isolated.empty() && tenant.empty()) {
    return fail(g, Status(StatusCode::kInvalidArgument, "--isolated needs --tenant"), kExitUsage);
  }
  if (!tenant.empty()) {
    if (namespaces.empty() || tenants_file.empty()) {
      return fail(g, Status(StatusCode::kInvalidArgument, "--tenant needs --namespaces and --tenants"), kExitUsage);
    }
    Tenant t;
    t.name = tenant;
    if (!isolated.empty()) {
      auto size = parse_size(isolated);
      if (!size || *size < kMinIsolatedBytes) {
        return fail(g, Status(StatusCode::kInvalidArgument, "--isolated: a region size of at least 1MiB (e.g. 4GiB)"),
                    kExitUsage);
      }
      t.isolated_bytes = *size;
    }
    for (std::size_t at = 0;;) {
      std::size_t comma = namespaces.find(',', at);
      t.namespaces.push_back(namespaces.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
    // Checked before anything is written, so a refusal leaves no file.
    if (auto existing = TenantTable::load(tenants_file); existing && existing->find(tenant) != nullptr) {
      return fail(g, Status(StatusCode::kAlreadyExists,
                            "tenants file " + tenants_file + " names tenant '" + tenant + "' already"));
    }
    if (Status s = create_tenant_secret_file(path, tenant); !s.ok()) return fail(g, s);
    auto cred = load_secret(path);
    if (!cred) return fail(g, cred.error());
    t.key = std::string(cred->key());
    if (Status s = append_tenant(tenants_file, t); !s.ok()) {
      std::remove(path.c_str());
      return fail(g, s);
    }
    if (g.json) {
      print_json({{"path", path}, {"tenant", tenant}, {"tenants_file", tenants_file}});
    } else {
      std::cout << "wrote tenant '" << tenant << "''s credential to " << path << " (mode 0600) and added the tenant to "
                << tenants_file << ": give the credential to the tenant's workers (--secret-file), and restart the "
                << "coordinator with --tenants " << tenants_file << "\n";
    }
    return kExitOk;
  }
  if (Status s = create_secret_file(path); !s.ok()) return fail(g, s);
  if (g.json) {
    print_json({{"path", path}});
  } else {
    std::cout << "wrote a new cluster secret to " << path
              << " (mode 0600): copy it to every host of the pool, or point --secret-file at it\n";
  }
  return kExitOk;
}

}  // namespace kvpool::pooltool
