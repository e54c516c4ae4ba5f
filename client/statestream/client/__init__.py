"""Python client for statestream: sessions that keep recurrent state on the server."""

from .client import Client, Group, MigrationReport, Session, SessionState
from .errors import (
                     AlreadyExists,
                     DeadlineExceeded,
                     FailedPrecondition,
                     Internal,
                     InvalidArgument,
                     NotFound,
                     ResourceExhausted,
                     StatestreamError,
                     Unauthenticated,
                     Unavailable,
)
from .retry import RetryPolicy

__all__ = ["Client", "Group", "MigrationReport", "Session", "SessionState", "RetryPolicy", "StatestreamError",
           "InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition", "ResourceExhausted", "Unavailable",
           "Unauthenticated", "DeadlineExceeded", "Internal"]
