"""kvpool's exceptions: one class per runtime status code.

Documented with the rest of the API in ``kvpool``'s docstring ("Errors").
Every class is a ``RuntimeError`` (engines such as UCM catch only that), and
some also derive from the matching built-in exception.
"""


class Error(RuntimeError):
    """Base of every kvpool error: a RuntimeError with ``code`` and ``message``."""

    code = "unknown"

    def __init__(self, message="", code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return f"{self.code}: {self.message}"


class InvalidArgument(Error, ValueError):
    code = "invalid_argument"


class NotFound(Error, LookupError):
    code = "not_found"


class AlreadyExists(Error):
    code = "already_exists"


class FailedPrecondition(Error):
    code = "failed_precondition"


class ResourceExhausted(Error):
    code = "resource_exhausted"


class Unavailable(Error, ConnectionError):
    code = "unavailable"


class DeadlineExceeded(Error, TimeoutError):
    code = "deadline_exceeded"


class Cancelled(Error):
    code = "cancelled"


class DataLoss(Error):
    code = "data_loss"


class Unimplemented(Error, NotImplementedError):
    code = "unimplemented"


class Internal(Error):
    code = "internal"


class PermissionDenied(Error, PermissionError):
    """The coordinator and this client do not share the cluster secret."""

    code = "permission_denied"


_BY_CODE = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted, Unavailable,
                DeadlineExceeded, Cancelled, DataLoss, Unimplemented, Internal, PermissionDenied)
}


def from_status(code, message):
    """The exception for a runtime status (code name, message)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return Error(message, code)
    return cls(message)


__all__ = ["Error", "from_status"] + [cls.__name__ for cls in _BY_CODE.values()]
