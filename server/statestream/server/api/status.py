"""The one place domain errors (statestream.contract.errors) become gRPC status codes."""

from __future__ import annotations

import grpc

from statestream.contract.errors import (AlreadyExists, FailedPrecondition, Internal, InvalidArgument,
                                       NotFound, ResourceExhausted, StatestreamError, Unauthenticated, Unavailable)

__all__ = ["AlreadyExists", "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "ResourceExhausted",
           "StatestreamError", "Unauthenticated", "Unavailable", "code_number", "as_domain_error"]



def code_number(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a grpc.StatusCode (as carried in-band)."""
    return code.value[0]


def as_domain_error(exc: BaseException) -> StatestreamError:
    """Any exception as a StatestreamError; unknown ones become INTERNAL without leaking details."""
    if isinstance(exc, StatestreamError):
        return exc
    return Internal(f"internal error ({type(exc).__name__}); nothing was applied")
