"""Python client for statestream: sessions that keep recurrent state on the server."""

from .client import Client, Session, SessionState
from .retry import RetryPolicy
from .errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound,
                     ResourceExhausted, StatestreamError, Unauthenticated, Unavailable)

__all__ = ["Client", "Session", "SessionState", "RetryPolicy", "StatestreamError", "InvalidArgument", "NotFound",
           "AlreadyExists", "FailedPrecondition", "ResourceExhausted", "Unavailable", "Unauthenticated", "DeadlineExceeded", "Internal"]
