"""Domain errors (one family, shared with the client) and the one place they become status codes."""

from __future__ import annotations

import grpc

from statestream.client.errors import (AlreadyExists, FailedPrecondition, Internal, InvalidArgument,  # noqa: F401
                                       NotFound, ResourceExhausted, StatestreamError, Unauthenticated, Unavailable)


def code_number(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a grpc.StatusCode (as carried in-band)."""
    return code.value[0]


def as_domain_error(exc: BaseException) -> StatestreamError:
    """Any exception as a StatestreamError; unknown ones become INTERNAL without leaking details."""
    if isinstance(exc, StatestreamError):
        return exc
    return Internal(f"internal error ({type(exc).__name__}); nothing was applied")
