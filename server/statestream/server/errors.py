"""Domain errors of statestream and the one place they become gRPC status codes."""

from __future__ import annotations

import grpc


class StatestreamError(Exception):
    """Base of every error a caller can cause or be told about; carries a gRPC code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


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
    """A session or queue limit was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StatestreamError):
    """The server is draining."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(StatestreamError):
    """A missing or wrong bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Internal(StatestreamError):
    """A runtime failure (the model run failed); nothing was applied."""

    code = grpc.StatusCode.INTERNAL


def code_number(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a grpc.StatusCode (as carried in-band)."""
    return code.value[0]


def as_domain_error(exc: BaseException) -> StatestreamError:
    """Any exception as a StatestreamError; unknown ones become INTERNAL without leaking details."""
    if isinstance(exc, StatestreamError):
        return exc
    return Internal(f"internal error ({type(exc).__name__}); nothing was applied")
