#pragma once
// The one mapping from Asio's (Boost.System) error space to Status, shared by
// the control protocol, the metrics endpoint and whatever else opens sockets
// through Asio (STYLE.md: one mapper per foreign error space).

#include <string_view>

#include <boost/system/error_code.hpp>

#include "kvpool/status.h"

namespace kvpool {

// ok for a zero `ec`. Network failures (refused, reset, EOF, unreachable,
// timed out) are kUnavailable (retry, perhaps later), a cancelled operation
// is kCancelled, an address in use or a permission refusal is
// kFailedPrecondition, a malformed address is kInvalidArgument, anything else
// kInternal. `what` says what failed ("connect to 10.0.0.5:7000"); the message
// is "<what>: <Asio's message>".
Status to_status(const boost::system::error_code& ec, std::string_view what);

}  // namespace kvpool
