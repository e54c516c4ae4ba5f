"""Client and Session: step a server-side recurrent state with numpy in, numpy out (blocking calls)."""

from __future__ import annotations

from typing import Iterable, Iterator

import grpc

from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.v1 import statestream_pb2_grpc as pb_grpc

from . import streaming
from .core import (
    DEFAULT_CHANNEL_OPTIONS,
    SESSION_HEADER,
    Call,
    ClientPlans,
    GroupPlans,
    MigrationReport,
    SessionPlans,
    SessionState,
    States,
    blocking,
)
from .errors import from_rpc_error
from .retry import Attempts, RetryPolicy

__all__ = ["Client", "Session", "Group", "MigrationReport", "SessionState", "States", "SESSION_HEADER"]


class _Closes:
    """Context manager: `close()` on leaving; an error from close is raised only if the block raised none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except Exception:
            if exc[0] is None:
                raise


class Client(ClientPlans):
    """A connection to a statestream server.

    >>> with Client("localhost:50051") as client, client.session("demo") as s:
    ...     y = s.step([0.1, 0.2, 0.3])
    """

    def __init__(self, target: str = "localhost:50051", *, timeout: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 options: list | None = None, retry: RetryPolicy | None = None):
        """timeout: the deadline of each call (of each step, with its retries, in exactly-once mode); a stream's
        replies must each come within it. retry: the backoff of exactly-once sessions."""
        opts = list({**DEFAULT_CHANNEL_OPTIONS, **dict(options or [])}.items())
        self.target = target
        self.channel = grpc.secure_channel(target, credentials, opts) if credentials \
            else grpc.insecure_channel(target, opts)
        self.stub = pb_grpc.StateStreamServiceStub(self.channel)
        self.kserve = ipb_grpc.GRPCInferenceServiceStub(self.channel)  # the same port: model repository control
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.retries = 0  # attempts resent by exactly-once sessions, over this client's life
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request, timeout: float | None = None, *, session_id: str = "",
             retry: bool = False):
        """One unary RPC with this client's deadline and credentials; errors translated.

        session_id: sent as the x-session-id header (a group's calls send the group id). retry: resend on a
        retryable failure (`retry.retryable`) until the deadline; only for requests that are safe to repeat
        (reads, numbered steps).
        """
        return self._send(Call(method, request, timeout, session_id, retry))

    def _send(self, call: Call):
        metadata = self.metadata + ((SESSION_HEADER, call.session_id),) if call.session_id else self.metadata
        fn = getattr(self.kserve if call.service == "kserve" else self.stub, call.method)
        if not call.retry:
            try:
                return fn(call.request, timeout=call.timeout or self.timeout, metadata=metadata)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
        attempts = Attempts(self.retry, call.timeout or self.timeout)
        for attempt_timeout in attempts:
            try:
                reply = fn(call.request, timeout=attempt_timeout, metadata=metadata,
                           wait_for_ready=attempts.retries > 0)
                self.retries += attempts.retries
                return reply
            except grpc.RpcError as e:
                attempts.failed(from_rpc_error(e))

    models = blocking(ClientPlans.models)
    model = blocking(ClientPlans.model)
    session = blocking(ClientPlans.session)
    attach = blocking(ClientPlans.attach)
    open_or_attach = blocking(ClientPlans.open_or_attach)
    group = blocking(ClientPlans.group)
    frame = blocking(ClientPlans.frame)
    load_model = blocking(ClientPlans.load_model)
    unload_model = blocking(ClientPlans.unload_model)
    repository = blocking(ClientPlans.repository)
    migrate = blocking(ClientPlans.migrate)


class Session(SessionPlans, _Closes):
    """One server-side session: its states stay on the server between calls.

    Every call names the session in the x-session-id header, so a proxy can keep it on one replica.

    exactly_once=True: the session numbers its steps (sequence_number = last + 1; `attach` and
    `open_or_attach` resume from the server's last one) and retries a step with the same number on
    UNAVAILABLE, CANCELLED, an INTERNAL that did not come from our server, a timed-out attempt and a lost
    connection, backing off until the call's deadline (`retry.retryable`). The server applies a sequence number
    once and replays its recorded response to a retry, so a step lost on the way back is answered without being
    applied twice. `stream` then sends one step at a time and resumes a broken stream on a new call.
    """

    step = blocking(SessionPlans.step)
    get_state = blocking(SessionPlans.get_state)
    set_state = blocking(SessionPlans.set_state)
    close = blocking(SessionPlans.close)

    def stream(self, steps: Iterable, return_sequences: bool = False, return_state: bool = False,
               timeout: float | None = None) -> Iterator:
        """Stream many steps over one bidirectional call; yields one result per step, in order.

        An in-band error on one step raises that step's exception here (the server keeps the stream open, the
        session unchanged by that step); a broken call raises its StatestreamError. Each reply must come within
        the client's timeout of its step; `timeout` also bounds the whole call.

        exactly_once: one step in flight at a time; a broken call is resumed on a new one from the last
        acknowledged step, and `timeout` bounds each step with its retries (default: the client's timeout).
        """
        run = streaming.exactly_once if self.exactly_once else streaming.pipelined
        return run(self, steps, return_sequences, return_state, timeout)


class Group(GroupPlans, _Closes):
    """A session group: N sessions whose states the server keeps side by side, stepped by one message."""

    step = blocking(GroupPlans.step)
    close = blocking(GroupPlans.close)


Client.session_class = Session
Client.group_class = Group
