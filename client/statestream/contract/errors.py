"""The statestream error family, one class per gRPC status code; shared by the client and the server."""

from __future__ import annotations

import grpc


def show(text: str, limit: int = 64) -> str:
    """A client-supplied string for an error message: repr, cut to `limit` characters (status details travel in
    HTTP/2 trailers, which clients cap at 8-16 KiB)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


class StatestreamError(Exception):
    """A call failed; `code` is the gRPC status code, `message` the server's explanation."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(StatestreamError):
    """Wrong input size, NaN/Inf, a bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StatestreamError):
    """Unknown model, unknown or expired session."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StatestreamError):
    """A session id that is already open."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(StatestreamError):
    """A sequence number gap or a stale one; a state change while steps are in flight."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(StatestreamError):
    """A session, queue or size limit was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StatestreamError):
    """The server is draining or loading, or cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(StatestreamError):
    """A missing or wrong bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(StatestreamError):
    """The call's deadline passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(StatestreamError):
    """A runtime failure (the model run failed); nothing was applied."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
                                      ResourceExhausted, Unavailable, Unauthenticated, DeadlineExceeded, Internal)}
_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def from_code(code: grpc.StatusCode | int, message: str) -> StatestreamError:
    """The exception for a status code (a grpc.StatusCode or its number, as in-band errors carry)."""
    if isinstance(code, int):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, StatestreamError)(message, code)


def from_rpc_error(e: grpc.RpcError) -> StatestreamError:
    return from_code(e.code(), e.details() or "")
