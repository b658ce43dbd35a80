#include "tools/common/pool_access.h"

#include "runtime/common/process_util.h"
#include "runtime/etcd/leader_address.h"

namespace kvpool::tools {

Result<std::unique_ptr<rpc::Client>> connect_tool(const std::string& coordinator, std::chrono::milliseconds timeout,
                                                  const std::string& secret_file, const std::string& client_id) {
  // etcd://...: the shard's current leader (coordinator/README.md, "High availability").
  auto target = etcd::resolve_coordinator(coordinator, timeout);
  if (!target) return tl::unexpected(target.error());
  auto hp = parse_host_port(*target);
  if (!hp) return make_error(StatusCode::kInvalidArgument, "--coordinator: " + hp.error().message());
  rpc::ClientOptions o;
  o.host = hp->first;
  o.port = hp->second;
  o.role = rpc::Role::kTool;
  o.client_id = client_id;
  o.secret_file = secret_file;
  return rpc::Client::connect(o, Deadline::after(timeout));
}

Result<std::unique_ptr<Client>> connect_client(const std::string& coordinator, std::chrono::milliseconds timeout,
                                               const std::string& secret_file, const std::string& client_id) {
  ClientOptions o;
  o.coordinator = coordinator;
  o.timeout = timeout;
  o.client_id = client_id;
  o.secret_file = secret_file;
  return Client::connect(o);
}

std::string etcd_endpoints(const std::string& coordinator) {
  const std::string rest = coordinator.substr(7);  // after etcd://
  return rest.substr(0, rest.find('/'));
}

NamespaceDescriptor tool_namespace(const std::string& model, const std::string& layout, std::uint32_t tokens_per_block,
                                   std::uint64_t block_bytes) {
  NamespaceDescriptor d;
  d.model_id = model;
  d.dtype = "bf16";
  d.num_layers = 1;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = tokens_per_block;
  d.layout = layout;
  d.block_bytes = block_bytes;
  return d;
}

}  // namespace kvpool::tools
