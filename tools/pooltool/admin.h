#pragma once
// AdminClient: pooltool's view of a coordinator, over the control protocol
// (rpc::Client with the tool role). One method per admin request; each
// returns the decoded reply or the call's error (kUnavailable when the
// coordinator went away, kDeadlineExceeded, or the coordinator's own error).
// Thread-safe (rpc::Client is, and these methods only call it).

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "kvpool/status.h"
#include "kvpool/types.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"

namespace kvpool::pooltool {

struct AdminOptions {
  std::string coordinator = "127.0.0.1:7400";
  std::chrono::milliseconds timeout{10000};
  // The cluster secret file (--secret-file); empty: discovered like every
  // component's (SECURITY.md).
  std::string secret_file;
};

class AdminClient {
 public:
  // kUnavailable / kDeadlineExceeded when the coordinator cannot be reached.
  static Result<std::unique_ptr<AdminClient>> connect(const AdminOptions& options);

  const rpc::HelloReply& server() const { return client_->server(); }
  const std::string& coordinator() const { return options_.coordinator; }

  Result<rpc::StatsReply> stats();
  Result<rpc::AgentStatsReply> agents();
  // What workers connect with: every agent's worker address, rkey, region.
  Result<rpc::ListAgentsReply> list_agents();
  Result<rpc::ListNamespacesReply> namespaces();
  Result<rpc::UsageReply> usage(const rpc::UsageRequest& request);
  // No read lease: looking does not pin anything.
  Result<rpc::LookupReply> lookup(NamespaceId ns, const std::vector<Key128>& keys);
  Result<rpc::StatusBatch> remove(NamespaceId ns, const std::vector<Key128>& keys);
  Result<rpc::EvictNamespaceReply> evict_namespace(NamespaceId ns, bool dry_run, std::uint64_t older_than_ms = 0);
  // A namespace's budget in blocks and bytes (0 and 0: none).
  Status set_quota(NamespaceId ns, std::uint64_t quota_blocks, std::uint64_t quota_bytes);

  // One step of an agent's drain (issues more moves, reports progress), or
  // its undrain.
  Result<rpc::DrainReply> drain(const rpc::DrainRequest& request);
  // The agent an operator named: its id, or its address (control address,
  // as `pooltool agents` shows it). kNotFound when none matches.
  Result<rpc::AgentStatsRecord> resolve_agent(const std::string& text);

  // The namespace an operator named: its id in hex (with or without 0x), or
  // a model id that exactly one registered namespace has. kNotFound when
  // nothing matches, kInvalidArgument when a model id is ambiguous.
  Result<rpc::NamespaceRecord> resolve_namespace(const std::string& text);

 private:
  AdminClient(AdminOptions options, std::unique_ptr<rpc::Client> client)
      : options_(std::move(options)), client_(std::move(client)) {}
  Result<std::string> call(std::uint16_t type, std::string payload);
  template <typename Reply>
  Result<Reply> call_decode(std::uint16_t type, std::string payload);

  AdminOptions options_;
  std::unique_ptr<rpc::Client> client_;
};

// Keys as operators type them: 32 hex digits, high 64 bits first (how the
// coordinator logs them).
std::string key_to_hex(const Key128& key);
Result<Key128> key_from_hex(const std::string& text);
std::string ns_to_hex(NamespaceId id);

// Token ids from a file: whitespace- or comma-separated integers, or a JSON
// array of integers. kInvalidArgument naming the first bad token.
Result<std::vector<std::uint32_t>> read_tokens(const std::string& path);

}  // namespace kvpool::pooltool
