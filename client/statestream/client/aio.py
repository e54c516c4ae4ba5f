"""The asyncio client (grpc.aio): the sync client's API with awaits; `statestream.aio` re-exports it.

    async with Client("localhost:50051") as client:
        async with await client.session("demo") as s:
            y = await s.step([0.1, 0.2, 0.3])
            async for y in s.stream(readings):   # readings: an iterable or an async iterable
                ...

Requests, validation, exactly-once numbering and retry decisions are the sync client's own (`core`, `retry`,
`streaming.ReplyDeadline`); only the waiting differs.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterable, AsyncIterator, Iterable

import grpc
from grpc import aio

from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

from .core import (
    DEFAULT_CHANNEL_OPTIONS,
    SESSION_HEADER,
    Call,
    ClientPlans,
    GroupPlans,
    SessionPlans,
    SessionState,
    States,
    awaitable,
)
from .errors import DeadlineExceeded, StatestreamError, Unavailable, from_code, from_rpc_error
from .retry import Attempts, RetryPolicy
from .streaming import ReplyDeadline, StreamRules

__all__ = ["Client", "Session", "Group", "SessionState", "States"]


class _AsyncCloses:
    """Async context manager: `await close()` on leaving; an error from close is raised only if the block raised
    none."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.close()
        except Exception:
            if exc[0] is None:
                raise


class Client(ClientPlans):
    """A grpc.aio connection to a statestream server; create it inside the event loop that uses it.

    Every method of the sync `statestream.client.Client` is a coroutine here, with the same arguments.
    """

    def __init__(self, target: str = "localhost:50051", *, timeout: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 options: list | None = None, retry: RetryPolicy | None = None):
        """As `statestream.client.Client`: timeout bounds each call (each exactly-once step with its retries)
        and each reply of a stream; retry is the backoff of exactly-once sessions."""
        opts = list({**DEFAULT_CHANNEL_OPTIONS, **dict(options or [])}.items())
        self.target = target
        self.channel = aio.secure_channel(target, credentials, opts) if credentials \
            else aio.insecure_channel(target, opts)
        self.stub = pb_grpc.StateStreamServiceStub(self.channel)
        self.kserve = ipb_grpc.GRPCInferenceServiceStub(self.channel)  # the same port: model repository control
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.retries = 0  # attempts resent by exactly-once sessions, over this client's life
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, method: str, request, timeout: float | None = None, *, session_id: str = "",
                   retry: bool = False):
        """One unary RPC with this client's deadline and credentials; errors translated (see the sync client)."""
        return await self._send(Call(method, request, timeout, session_id, retry))

    async def _send(self, call: Call):
        metadata = self.metadata + ((SESSION_HEADER, call.session_id),) if call.session_id else self.metadata
        fn = getattr(self.kserve if call.service == "kserve" else self.stub, call.method)
        if not call.retry:
            try:
                return await fn(call.request, timeout=call.timeout or self.timeout, metadata=metadata)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
        attempts = Attempts(self.retry, call.timeout or self.timeout)
        async for attempt_timeout in attempts:
            try:
                reply = await fn(call.request, timeout=attempt_timeout, metadata=metadata,
                                 wait_for_ready=attempts.retries > 0)
                self.retries += attempts.retries
                return reply
            except grpc.RpcError as e:
                attempts.failed(from_rpc_error(e))

    models = awaitable(ClientPlans.models)
    model = awaitable(ClientPlans.model)
    session = awaitable(ClientPlans.session)
    attach = awaitable(ClientPlans.attach)
    open_or_attach = awaitable(ClientPlans.open_or_attach)
    group = awaitable(ClientPlans.group)
    frame = awaitable(ClientPlans.frame)
    load_model = awaitable(ClientPlans.load_model)
    unload_model = awaitable(ClientPlans.unload_model)
    repository = awaitable(ClientPlans.repository)
    migrate = awaitable(ClientPlans.migrate)


class Session(SessionPlans, _AsyncCloses):
    """One server-side session (see the sync `statestream.client.Session`); `async with` closes it."""

    step = awaitable(SessionPlans.step)
    get_state = awaitable(SessionPlans.get_state)
    set_state = awaitable(SessionPlans.set_state)
    close = awaitable(SessionPlans.close)

    def stream(self, steps: Iterable | AsyncIterable, return_sequences: bool = False, return_state: bool = False,
               timeout: float | None = None) -> AsyncIterator:
        """An async iterator of one result per step, in order, over one bidirectional call (see the sync
        `Session.stream`: in-band errors, per-reply deadlines, exactly-once resume on a new call)."""
        run = exactly_once if self.exactly_once else pipelined
        return run(self, steps, return_sequences, return_state, timeout)


class Group(GroupPlans, _AsyncCloses):
    """A session group (see the sync `statestream.client.Group`); `async with` closes it."""

    step = awaitable(GroupPlans.step)
    close = awaitable(GroupPlans.close)


Client.session_class = Session
Client.group_class = Group


async def _items(steps: Iterable | AsyncIterable) -> AsyncIterator:
    if hasattr(steps, "__aiter__"):
        async for x in steps:
            yield x
    else:
        for x in steps:
            yield x


class AsyncWatchdog(ReplyDeadline):
    """A ReplyDeadline that cancels the call from a task on the caller's loop, woken per message."""

    def __init__(self, timeout: float):
        super().__init__(timeout)
        self._event = asyncio.Event()
        self._task: asyncio.Task | None = None

    def _changed(self) -> None:
        self._event.set()

    def watch(self, call) -> "AsyncWatchdog":
        self._task = asyncio.ensure_future(self._run(call))
        return self

    async def _run(self, call) -> None:
        while not self.closed:
            self._event.clear()
            left = self.overdue()
            if left == 0.0:
                call.cancel()
                return
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        super().close()
        if self._task is not None:
            self._task.cancel()


async def pipelined(session: Session, steps, return_sequences: bool, return_state: bool,
                    timeout: float | None) -> AsyncIterator:
    """Every step sent as soon as it is produced, replies in order; as `streaming.pipelined`."""
    rules = StreamRules(session, return_sequences, return_state, timeout)
    dog = AsyncWatchdog(session.client.timeout)
    failed: list[BaseException] = []  # raised by `steps`: re-raised here, after the replies before it

    async def requests():
        try:
            async for x in _items(steps):
                req = rules.request(x)
                dog.sent()
                yield req
        except Exception as e:  # noqa: BLE001 - the caller's own error, handed back to the caller
            failed.append(e)

    call = session.client.stub.StreamSteps(requests(), timeout=timeout, metadata=session.metadata)
    dog.watch(call)
    try:
        while True:
            reply = await call.read()
            if reply is aio.EOF:
                break
            dog.received()
            result = rules.result(rules.step_of(reply))
            dog.suspend()
            yield result
            dog.resume()
        if failed:
            raise failed[0]
    except (grpc.RpcError, asyncio.CancelledError) as e:
        if failed:
            raise failed[0] from None
        if isinstance(e, asyncio.CancelledError) and not dog.fired:
            raise
        raise dog.error(e) from None
    finally:
        call.cancel()
        dog.close()


class LockstepCall:
    """One StreamSteps call carrying one step at a time: `exchange` sends a step and awaits its reply."""

    def __init__(self, session: Session, wait_for_ready: bool):
        self.call = session.client.stub.StreamSteps(metadata=session.metadata, wait_for_ready=wait_for_ready)

    async def exchange(self, req: pb.StreamStepsRequest, timeout: float) -> pb.StepResponse:
        """The step's reply; an in-band error or a broken call raises (then this call is done: `close` it)."""
        try:
            await asyncio.wait_for(self.call.write(req), timeout)
            reply = await asyncio.wait_for(self.call.read(), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no reply within {timeout:g} s of a step being sent") from None
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        except asyncio.InvalidStateError:  # the call ended before this write: its status says why
            code, details = await self.call.code(), await self.call.details()
            if code == grpc.StatusCode.OK:
                raise Unavailable("the server ended the stream before answering") from None
            raise from_code(code, details or "") from None
        if reply is aio.EOF:
            raise Unavailable("the server ended the stream before answering")
        return StreamRules.step_of(reply)

    def close(self) -> None:
        self.call.cancel()


async def exactly_once(session: Session, steps, return_sequences: bool, return_state: bool,
                       timeout: float | None) -> AsyncIterator:
    """Numbered steps, one unacknowledged at a time, a broken call resumed on a new one; as
    `streaming.exactly_once`."""
    rules = StreamRules(session, return_sequences, return_state, timeout)
    call: LockstepCall | None = None
    try:
        async for x in _items(steps):
            seq, req, attempts = rules.numbered(x)
            async for attempt_timeout in attempts:
                try:
                    if call is None:
                        call = LockstepCall(session, wait_for_ready=attempts.retries > 0)
                    reply = await call.exchange(req, attempt_timeout)
                    break
                except StatestreamError as e:
                    if call is not None:
                        call.close()
                    call = None
                    attempts.failed(e)
            yield rules.acknowledged(seq, attempts, reply)
    finally:
        if call is not None:
            call.close()
