#pragma once
// Tenants: clients restricted to some namespaces (SECURITY.md, "Tenants").
//
// The coordinator reads them from a tenants file (--tenants FILE), separate
// from the cluster secret: the cluster secret is copied to every agent and
// operator host, and tenant keys have no business there. The file is a
// regular file readable by its owner only (0600 or 0400), like the secret.
// One tenant per line; '#' starts a comment; blank lines are ignored:
//
//   tenant NAME KEY namespaces=PATTERN[,PATTERN...] [isolated=SIZE]
//
// NAME: 1..64 bytes of [A-Za-z0-9._-]. KEY: at least kMinSecretBytes bytes
// with no whitespace (`pooltool secret new --tenant NAME` makes 64 hex
// digits). A PATTERN matches a namespace when it is the namespace's id as 16
// hex digits, or a shell glob (fnmatch: * ? [..]) that matches its model id
// ("acme/*" matches every model id starting with "acme/").
//
// `isolated=SIZE` (4GiB, 512MiB or bytes; at least 1MiB) gives the tenant a
// region of its own of SIZE bytes on every agent, on top of the agent's
// --pool-size: its own UCX registration and rkey, handed to that tenant
// only, so on RDMA the NIC keeps everyone else out (SECURITY.md). The
// coordinator tells each agent which isolated tenants exist when the agent
// registers (rpc::RegisterAgentReply::isolated); the tenant's namespaces
// are placed only in its regions, everyone else's only in the shared ones,
// and only the tenant's credential reaches them on the data path. Two
// isolated tenants may not match one namespace.
//
// A tenant's client holds a tenant credential (secret.h): a secret file
// whose single line is `kvpool-tenant NAME KEY`. It authenticates with the
// tenant's key (auth.h); the coordinator then serves it only the namespaces
// its patterns match.
//
// Immutable after load: thread-safe to share.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvpool/status.h"
#include "kvpool/types.h"

namespace kvpool {

inline constexpr std::size_t kMaxTenantNameBytes = 64;

inline constexpr std::uint64_t kMinIsolatedBytes = std::uint64_t{1} << 20;

struct Tenant {
  std::string name;
  std::string key;
  std::vector<std::string> namespaces;  // patterns
  std::uint64_t isolated_bytes = 0;     // isolated=SIZE: its region on each agent; 0: shares the pool

  bool isolated() const { return isolated_bytes != 0; }

  // Whether a pattern matches: by id, or by `model_id` when known (null for
  // a namespace the coordinator knows only by id).
  bool allows(NamespaceId id, const std::string* model_id) const;
};

class TenantTable {
 public:
  TenantTable() = default;
  // Reads and checks `path`. kFailedPrecondition (message names the path,
  // the line and the fix) when it is missing, readable by group or others,
  // malformed, or names a tenant twice; kInternal on an
  // I/O error.
  static Result<TenantTable> load(const std::string& path);
  // As load, from text already read (`where` names it in messages).
  static Result<TenantTable> parse(std::string_view text, const std::string& where);
  ~TenantTable();
  TenantTable(TenantTable&&) noexcept = default;
  TenantTable& operator=(TenantTable&&) noexcept = default;
  TenantTable(const TenantTable&) = delete;
  TenantTable& operator=(const TenantTable&) = delete;

  // The isolated tenant whose patterns match the namespace (empty: none, the
  // namespace lives in the shared regions). kFailedPrecondition when two
  // isolated tenants match it. `model_id` as Tenant::allows.
  Result<std::string> isolated_owner(NamespaceId id, const std::string* model_id) const;
  bool any_isolated() const;

  // Null when no tenant has that name.
  const Tenant* find(std::string_view name) const;
  std::size_t size() const { return tenants_.size(); }
  const std::vector<Tenant>& all() const { return tenants_; }

 private:
  std::vector<Tenant> tenants_;
};

// Appends `tenant NAME KEY namespaces=...` to the tenants file at `path`,
// creating it with mode 0600 when missing (for `pooltool secret new
// --tenant`). kAlreadyExists when the file names that tenant already;
// kInvalidArgument for a tenant the file format would refuse; errors of
// load() for an existing file.
Status append_tenant(const std::string& path, const Tenant& tenant);

// Whether `name` is a valid tenant name (see above).
bool valid_tenant_name(std::string_view name);

// A namespace id as the 16 hex digits patterns and logs use.
std::string namespace_hex(NamespaceId id);

}  // namespace kvpool
