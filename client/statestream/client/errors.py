"""The statestream error family, as the client's users import it (defined in statestream.contract.errors)."""

from statestream.contract.errors import (
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
                                         from_code,
                                         from_rpc_error,
)

__all__ = ["AlreadyExists", "DeadlineExceeded", "FailedPrecondition", "Internal", "InvalidArgument", "NotFound",
           "ResourceExhausted", "StatestreamError", "Unauthenticated", "Unavailable", "from_code", "from_rpc_error"]
