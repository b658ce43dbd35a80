#pragma once
// Internal to transport/: the one place UCX's headers are included from, and
// the mapping of UCX's status space onto ours.

#include <string>
#include <string_view>

#include <ucp/api/ucp.h>

#include "kvpool/status.h"

namespace kvpool::transport {

// Maps a UCX status onto the code that tells the caller what to do next, with
// UCX's own message and what we were doing: "put 64 KiB to peer 3: Endpoint
// timeout (ucx)".
Status to_status(ucs_status_t status, std::string_view what);

}  // namespace kvpool::transport
