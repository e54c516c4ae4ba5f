"""statestream's asyncio client: `from statestream.aio import Client` (grpc.aio; the sync client's API, awaited)."""

from statestream.client.aio import Client, Group, Session, SessionState
from statestream.client.errors import (
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
from statestream.client.retry import RetryPolicy

__all__ = ["Client", "Group", "Session", "SessionState", "RetryPolicy", "StatestreamError", "InvalidArgument",
           "NotFound", "AlreadyExists", "FailedPrecondition", "ResourceExhausted", "Unavailable", "Unauthenticated",
           "DeadlineExceeded", "Internal"]
