"""When an exactly-once step may be sent again, and how long to wait in between (bounded by the call's deadline)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Iterator

import grpc

from statestream.contract.errors import DeadlineExceeded, StatestreamError

# Every INTERNAL our own server raises says so: it is a deterministic failure (model run, NaN) that a retry would
# repeat. Any other INTERNAL comes from a proxy or the transport (an HTTP/2 RST_STREAM, a reset connection), where
# the step may or may not have been applied: a retry with the same sequence number finds out.
SERVER_INTERNAL_MARK = "nothing was applied"

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.DEADLINE_EXCEEDED)


def retryable(err: StatestreamError) -> bool:
    """True for a failure where sending the same sequence number again is both safe and useful.

    UNAVAILABLE (connection refused or lost, a draining server, a proxy with no backend), CANCELLED (a proxy or a
    broken connection reset the call), INTERNAL unless our server raised it (its message ends "nothing was applied"),
    DEADLINE_EXCEEDED (of one attempt; `Attempts` stops at the overall deadline). Everything else is an answer.
    """
    if err.code not in RETRYABLE:
        return False
    return not (err.code == grpc.StatusCode.INTERNAL and SERVER_INTERNAL_MARK in err.message)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts; one attempt waits at most `attempt_timeout` seconds.

    attempt_timeout: None lets one attempt use a third of the call's deadline, so a hung connection is given up
    in time for two more tries; the whole call never outlives its deadline.
    """

    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    attempt_timeout: float | None = None

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...): full jitter over the capped exponential."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return cap * (0.5 + 0.5 * rand())


class Attempts:
    """The attempts of one call within `timeout` seconds: iterate for each attempt's timeout.

        attempts = Attempts(policy, 10.0)
        for attempt_timeout in attempts:          # `async for` in asyncio code: the pause is awaited
            try:
                return send(timeout=attempt_timeout)
            except StatestreamError as e:
                attempts.failed(e)   # re-raises unless retryable and time remains

    Sleeping between attempts is bounded by the deadline: when the next backoff would end past it, the last
    error is raised instead of waiting for nothing. The decisions are `attempt_timeout` and `pause`; the
    sync and async iterations differ only in how they wait.
    """

    def __init__(self, policy: RetryPolicy, timeout: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rand: Callable[[], float] = random.random,
                 asleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.policy = policy
        self.timeout = timeout
        self.clock, self.sleep, self.rand, self.asleep = clock, sleep, rand, asleep
        self.deadline = clock() + timeout
        self.retries = 0
        self.last_error: StatestreamError | None = None

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def attempt_timeout(self) -> float:
        """The timeout of the next attempt; raises when no time is left."""
        left = self.remaining()
        if left <= 0:
            raise self._expired()
        return min(self.policy.attempt_timeout or self.timeout / 3, left)

    def pause(self) -> float:
        """After a failed attempt: the seconds to wait before the next; raises if that would end past the deadline."""
        self.retries += 1
        pause = self.policy.backoff(self.retries, self.rand)
        if pause >= self.remaining():
            raise self._expired()
        return pause

    def __iter__(self) -> Iterator[float]:
        while True:
            yield self.attempt_timeout()
            self.sleep(self.pause())

    def __aiter__(self) -> AsyncIterator[float]:
        return _AsyncAttempts(self)

    def failed(self, err: StatestreamError) -> None:
        """Record a failed attempt; raise it unless another attempt is worth making.

        The raised error's `attempts` says how many were made (more than 1: an earlier one may have been applied).
        """
        self.last_error = err
        err.attempts = self.retries + 1
        if not retryable(err) or self.remaining() <= 0:
            raise err from None

    def _expired(self) -> StatestreamError:
        err = self.last_error
        if err is None:
            return DeadlineExceeded(f"no attempt possible within {self.timeout:g} s")
        err.message = f"{err.message} (gave up after {self.retries} attempts in {self.timeout:g} s)"
        return err


class _AsyncAttempts:
    """`async for` over Attempts: the pause is awaited. A plain iterator, not an async generator, so a caller that
    returns from inside the loop leaves nothing for the event loop to finalise."""

    def __init__(self, attempts: Attempts):
        self.attempts = attempts
        self.started = False

    def __aiter__(self) -> "_AsyncAttempts":
        return self

    async def __anext__(self) -> float:
        if self.started:
            await self.attempts.asleep(self.attempts.pause())
        self.started = True
        return self.attempts.attempt_timeout()
