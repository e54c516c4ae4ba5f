"""Domain errors (one family, shared with the client) and the one place they become status codes."""

from __future__ import annotations

import grpc

from statestream.client.errors import (AlreadyExists, FailedPrecondition, Internal, InvalidArgument,
                                       NotFound, ResourceExhausted, StatestreamError, Unauthenticated, Unavailable)

__all__ = ["AlreadyExists", "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "ResourceExhausted",
           "StatestreamError", "Unauthenticated", "Unavailable", "code_number", "as_domain_error"]


def show(text: str, limit: int = 64) -> str:
    """A client-supplied string for an error message: repr, cut to `limit` characters (status details travel in
    HTTP/2 trailers, which clients cap at 8-16 KiB)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


def code_number(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a grpc.StatusCode (as carried in-band)."""
    return code.value[0]


def as_domain_error(exc: BaseException) -> StatestreamError:
    """Any exception as a StatestreamError; unknown ones become INTERNAL without leaking details."""
    if isinstance(exc, StatestreamError):
        return exc
    return Internal(f"internal error ({type(exc).__name__}); nothing was applied")
