"""The two ways `Session.stream` drives StreamSteps: pipelined, or one step at a time that survives a broken call.

The asyncio client (statestream.aio) runs the same two with awaits, on the same ReplyDeadline and Attempts."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import grpc

from statestream.contract.errors import DeadlineExceeded, StatestreamError, Unavailable, from_code, from_rpc_error
from statestream.v1 import statestream_pb2 as pb

from .retry import Attempts

if TYPE_CHECKING:
    from .client import Session


class ReplyDeadline:
    """When a stream's reply is overdue: `timeout` seconds after the oldest unanswered step was sent (or after
    the last reply, while steps are still unanswered), not counting the time the caller spends with a result in
    hand (`suspend`/`resume`). The bookkeeping of both clients; a subclass decides how to wait for `deadline`
    (`_guard` is its lock, `_changed` wakes its waiter)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.fired = False
        self.closed = False
        self.deadline: float | None = None
        self._outstanding = 0
        self._suspended = False

    def _guard(self):
        return contextlib.nullcontext()

    def _changed(self) -> None:
        pass

    def sent(self, timeout: float | None = None) -> None:
        with self._guard():
            self._outstanding += 1
            if self._outstanding == 1 and not self._suspended:
                self.deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
                self._changed()

    def received(self) -> None:
        with self._guard():
            self._outstanding = max(0, self._outstanding - 1)
            self._rearm()

    def suspend(self) -> None:
        """The caller holds a result: its time is not the server's."""
        with self._guard():
            self._suspended = True
            self.deadline = None

    def resume(self) -> None:
        with self._guard():
            self._suspended = False
            self._rearm()

    def close(self) -> None:
        with self._guard():
            self.closed = True
            self._changed()

    def _rearm(self) -> None:
        self.deadline = time.monotonic() + self.timeout if self._outstanding and not self._suspended else None
        self._changed()

    def overdue(self) -> float | None:
        """Seconds until the deadline (fires and returns 0 when it has passed), None without one."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.fired = True
            return 0.0
        return left

    def error(self, e: grpc.RpcError) -> StatestreamError:
        """The exception for a call that failed: DeadlineExceeded if this deadline cancelled it."""
        if self.fired:
            return DeadlineExceeded(f"no reply within {self.timeout:g} s of a step being sent; the stream was cancelled")
        return from_rpc_error(e)


class Watchdog(ReplyDeadline):
    """A ReplyDeadline that cancels the call from its own thread, woken per message."""

    def __init__(self, timeout: float):
        super().__init__(timeout)
        self._cond = threading.Condition()

    def _guard(self):
        return self._cond

    def _changed(self) -> None:
        self._cond.notify()

    def watch(self, cancel: Callable[[], object]) -> "Watchdog":
        """Start watching: `cancel` is called once if a reply is overdue."""
        threading.Thread(target=self._run, args=(cancel,), name="statestream-watchdog", daemon=True).start()
        return self

    def _run(self, cancel: Callable[[], object]) -> None:
        with self._cond:
            while not self.closed:
                left = self.overdue()
                if left == 0.0:
                    break
                self._cond.wait(left)
        if self.fired:
            cancel()


class StreamRules:
    """What a stream of either client decides, whatever its waiting: the requests, in-band errors, and the numbering
    and acknowledgement of exactly-once steps (the server records only the last response, so one step is
    unacknowledged at a time; a broken call is replaced by a new one that resends it with its number)."""

    def __init__(self, session: "Session", return_sequences: bool, return_state: bool, timeout: float | None):
        self.session = session
        self.return_sequences, self.return_state = return_sequences, return_state
        self.budget = timeout or session.client.timeout  # exactly-once: one step with its retries

    def request(self, x, sequence_number: int | None = None) -> pb.StreamStepsRequest:
        return pb.StreamStepsRequest(step=self.session.request(x, self.return_sequences, self.return_state,
                                                               sequence_number))

    @staticmethod
    def step_of(reply: pb.StreamStepsResponse) -> pb.StepResponse:
        """The step's response; an in-band error raises its StatestreamError (the stream stays open)."""
        if reply.HasField("error"):
            raise from_code(reply.error.code, reply.error.message)
        return reply.step

    def result(self, step: pb.StepResponse):
        return self.session.result(step, self.return_sequences, self.return_state)

    def numbered(self, x) -> tuple[int, pb.StreamStepsRequest, Attempts]:
        """The next exactly-once step: its sequence number, its request, and the attempts its deadline allows."""
        seq = self.session.last_sequence_number + 1
        return seq, self.request(x, seq), Attempts(self.session.client.retry, self.budget)

    def acknowledged(self, seq: int, attempts: Attempts, step: pb.StepResponse):
        """The step numbered `seq` was answered: its result."""
        self.session.client.retries += attempts.retries
        self.session.acknowledged(seq)
        return self.result(step)


def pipelined(session: "Session", steps: Iterable, return_sequences: bool, return_state: bool,
              timeout: float | None) -> Iterator:
    """Every step sent as soon as it is produced; replies in order. Each reply must come within the client's
    timeout of its step (a whole-call deadline would cut long streams); `timeout` also bounds the whole call."""
    client = session.client
    rules = StreamRules(session, return_sequences, return_state, timeout)
    dog = Watchdog(client.timeout)
    failed: list[Exception] = []  # raised by `steps` on gRPC's sending thread: re-raised here, after the replies

    def requests():
        try:
            for x in steps:
                req = rules.request(x)
                dog.sent()
                yield req
        except Exception as e:  # noqa: BLE001 - the caller's own error, handed back to the caller
            failed.append(e)

    call = client.stub.StreamSteps(requests(), timeout=timeout, metadata=session.metadata)
    dog.watch(call.cancel)
    try:
        for reply in call:
            dog.received()
            result = rules.result(rules.step_of(reply))
            dog.suspend()
            yield result
            dog.resume()
        if failed:
            raise failed[0]
    except grpc.RpcError as e:
        if failed:
            raise failed[0] from None
        raise dog.error(e) from None
    finally:
        call.cancel()
        dog.close()


class LockstepCall:
    """One StreamSteps call carrying one step at a time: `exchange` sends a step and waits for its reply."""

    def __init__(self, session: "Session", wait_for_ready: bool):
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.call = session.client.stub.StreamSteps(iter(self._outbox.get, None), metadata=session.metadata,
                                                    wait_for_ready=wait_for_ready)
        self.dog = Watchdog(session.client.timeout).watch(self.call.cancel)

    def exchange(self, req: pb.StreamStepsRequest, timeout: float) -> pb.StepResponse:
        """The step's reply; an in-band error or a broken call raises (then this call is done: `close` it)."""
        self.dog.timeout = timeout
        self.dog.sent(timeout)
        self._outbox.put(req)
        try:
            reply = next(self.call)
        except StopIteration:
            raise Unavailable("the server ended the stream before answering") from None
        except grpc.RpcError as e:
            raise self.dog.error(e) from None
        self.dog.received()
        return StreamRules.step_of(reply)

    def close(self) -> None:
        self._outbox.put(None)
        self.call.cancel()
        self.dog.close()


def exactly_once(session: "Session", steps: Iterable, return_sequences: bool, return_state: bool,
                 timeout: float | None) -> Iterator:
    """Steps numbered by the session, one unacknowledged at a time (the server records only the last response:
    two applied-but-unanswered steps would lose an output). A broken call is replaced by a new one that resends
    the unacknowledged step with its sequence number; each step's retries are bounded by `timeout` (default:
    the client's)."""
    rules = StreamRules(session, return_sequences, return_state, timeout)
    call: LockstepCall | None = None
    try:
        for x in steps:
            seq, req, attempts = rules.numbered(x)
            for attempt_timeout in attempts:
                try:
                    if call is None:
                        call = LockstepCall(session, wait_for_ready=attempts.retries > 0)
                    reply = call.exchange(req, attempt_timeout)
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
