#include "transport/ucx_util.h"

namespace kvpool::transport {

Status to_status(ucs_status_t status, std::string_view what) {
  if (status == UCS_OK) return Status();
  StatusCode code = StatusCode::kInternal;
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      code = StatusCode::kResourceExhausted;
      break;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
    case UCS_ERR_MESSAGE_TRUNCATED:
      code = StatusCode::kInvalidArgument;
      break;
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_UNREACHABLE:
      code = StatusCode::kFailedPrecondition;
      break;
    case UCS_ERR_TIMED_OUT:
      code = StatusCode::kDeadlineExceeded;
      break;
    case UCS_ERR_CANCELED:
      code = StatusCode::kCancelled;
      break;
    case UCS_ERR_ENDPOINT_TIMEOUT:  // the peer stopped answering: go elsewhere
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_BUSY:
    case UCS_ERR_NO_PROGRESS:
    case UCS_ERR_SOME_CONNECTS_FAILED:
      code = StatusCode::kUnavailable;
      break;
    case UCS_ERR_NO_ELEM:
      code = StatusCode::kNotFound;
      break;
    default:
      break;
  }
  std::string msg(what);
  msg += ": ";
  msg += ucs_status_string(status);
  msg += " (ucx)";
  return Status(code, std::move(msg));
}

}  // namespace kvpool::transport
