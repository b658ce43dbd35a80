#include "runtime/common/asio_status.h"

#include <string>

#include <boost/asio/error.hpp>

namespace kvpool {

Status to_status(const boost::system::error_code& ec, std::string_view what) {
  namespace err = boost::asio::error;
  if (!ec) return Status();
  std::string message = std::string(what) + ": " + ec.message();
  if (ec == err::operation_aborted) return Status(StatusCode::kCancelled, std::move(message));
  if (ec == err::eof || ec == err::connection_refused || ec == err::connection_reset || ec == err::connection_aborted ||
      ec == err::broken_pipe || ec == err::not_connected || ec == err::timed_out || ec == err::host_unreachable ||
      ec == err::network_unreachable || ec == err::network_down || ec == err::network_reset || ec == err::shut_down ||
      ec == err::host_not_found || ec == err::host_not_found_try_again || ec == err::try_again ||
      ec == err::no_buffer_space) {
    return Status(StatusCode::kUnavailable, std::move(message));
  }
  if (ec == err::address_in_use || ec == err::access_denied || ec == err::address_family_not_supported) {
    return Status(StatusCode::kFailedPrecondition, std::move(message));
  }
  if (ec == err::invalid_argument || ec == err::service_not_found) {
    return Status(StatusCode::kInvalidArgument, std::move(message));
  }
  return Status(StatusCode::kInternal, std::move(message));
}

}  // namespace kvpool
