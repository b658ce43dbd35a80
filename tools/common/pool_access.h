#pragma once
// How the tools (pooltool, trace replay) reach a pool from the address their
// --coordinator gives: HOST:PORT, or etcd://HOST:PORT[,...][/SHARD] (the
// shard's leader; without /SHARD, libkvpool routes by the shard map). One
// way for all of them: a control connection with the tool role, libkvpool's
// client, and the namespace a tool writes its own blocks into.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "kvpool/client.h"
#include "kvpool/status.h"
#include "runtime/rpc/client.h"

namespace kvpool::tools {

// A control connection with the tool role to the coordinator at
// `coordinator` (through etcd: the shard's leader, looked up now), connected
// within `timeout`; `secret_file` empty: discovered (SECURITY.md). The
// caller owns it. kInvalidArgument for a malformed address; else the
// connect's error (kUnavailable, kDeadlineExceeded, the server's refusal).
Result<std::unique_ptr<rpc::Client>> connect_tool(const std::string& coordinator, std::chrono::milliseconds timeout,
                                                  const std::string& secret_file, const std::string& client_id);

// libkvpool's client for the pool at `coordinator`, each call's deadline
// `timeout`. The caller owns it; errors as Client::connect.
Result<std::unique_ptr<Client>> connect_client(const std::string& coordinator, std::chrono::milliseconds timeout,
                                               const std::string& secret_file, const std::string& client_id);

// The etcd endpoints of an etcd:// address as it gives them
// ("HOST:PORT,..."), without its /SHARD: for the commands a fix names.
std::string etcd_endpoints(const std::string& coordinator);

// A namespace for a tool's own blocks, whose bytes no model reads: bf16,
// one layer, one KV head of dimension one.
NamespaceDescriptor tool_namespace(const std::string& model, const std::string& layout, std::uint32_t tokens_per_block,
                                   std::uint64_t block_bytes);

}  // namespace kvpool::tools
