"""The exactly-once retry policy in-process: which failures are retried, and backoff bounded by the deadline (fake clock)."""

from __future__ import annotations

import grpc
import pytest

from statestream.client import errors
from statestream.client.retry import Attempts, RetryPolicy, retryable

C = grpc.StatusCode


@pytest.mark.parametrize("code, message, expected", [
    (C.UNAVAILABLE, "Socket closed", True),
    (C.UNAVAILABLE, "server is draining (shutting down); retry on another replica", True),
    (C.UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused", True),
    (C.CANCELLED, "Received RST_STREAM with error code 8", True),
    (C.INTERNAL, "Received RST_STREAM with error code 2", True),  # a proxy reset the HTTP/2 stream
    (C.INTERNAL, "model 'demo' failed to run (RuntimeError); nothing was applied", False),  # our server's own
    (C.INTERNAL, "the model produced NaN or Inf; nothing was applied", False),
    (C.DEADLINE_EXCEEDED, "Deadline Exceeded", True),
    (C.INVALID_ARGUMENT, "input has 2 values; expected 3", False),
    (C.NOT_FOUND, "session 's' is not open", False),
    (C.FAILED_PRECONDITION, "sequence number 5 skips 4", False),
    (C.RESOURCE_EXHAUSTED, "queue full", False),
    (C.UNAUTHENTICATED, "missing token", False),
    (C.UNKNOWN, "?", False),
])
def test_classification(code, message, expected):
    assert retryable(errors.from_code(code, message)) is expected


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.slept.append(s)
        self.now += s


def run(attempts: Attempts, outcomes: list, t: FakeTime, cost: float = 0.0):
    """Drive `attempts` like a caller does: each attempt takes `cost` seconds and fails with the next outcome."""
    timeouts = []
    for attempt_timeout in attempts:
        timeouts.append(attempt_timeout)
        t.now += cost
        outcome = outcomes.pop(0)
        if outcome == "ok":
            return timeouts
        attempts.failed(outcome)
    raise AssertionError("unreachable")


def unavailable() -> errors.StatestreamError:
    return errors.Unavailable("Socket closed")


def test_retries_until_success_with_growing_capped_jittered_backoff():
    t = FakeTime()
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.4, multiplier=2.0)
    a = Attempts(policy, 30.0, clock=t.clock, sleep=t.sleep, rand=lambda: 1.0)
    run(a, [unavailable()] * 5 + ["ok"], t)
    assert t.slept == [0.1, 0.2, 0.4, 0.4, 0.4]
    a = Attempts(policy, 30.0, clock=t.clock, sleep=t.sleep, rand=lambda: 0.0)
    t.slept.clear()
    run(a, [unavailable()] * 2 + ["ok"], t)
    assert t.slept == [0.05, 0.1]  # jitter: between half and all of the capped exponential


def test_never_waits_past_the_deadline_and_raises_the_last_error():
    t = FakeTime()
    start = t.now
    a = Attempts(RetryPolicy(initial_backoff=0.5, max_backoff=2.0), 3.0, clock=t.clock, sleep=t.sleep,
                 rand=lambda: 1.0)
    with pytest.raises(errors.Unavailable, match=r"gave up after \d+ attempts in 3 s"):
        run(a, [unavailable()] * 100, t, cost=0.2)
    assert t.now - start <= 3.0  # no sleep that ends past the deadline
    assert len(t.slept) >= 2


def test_each_attempt_gets_a_third_of_the_deadline_or_the_policys_and_never_more_than_remains():
    t = FakeTime()
    a = Attempts(RetryPolicy(initial_backoff=0.01), 9.0, clock=t.clock, sleep=t.sleep, rand=lambda: 1.0)
    deadline = errors.DeadlineExceeded("Deadline Exceeded")
    with pytest.raises(errors.DeadlineExceeded):
        timeouts = []
        for attempt_timeout in a:
            timeouts.append(attempt_timeout)
            t.now += attempt_timeout  # the attempt hangs until its own deadline
            a.failed(deadline)
    assert timeouts[:2] == [3.0, 3.0] and sum(timeouts) + sum(t.slept) <= 9.0 + 1e-9
    t2 = FakeTime()
    a = Attempts(RetryPolicy(attempt_timeout=0.5), 9.0, clock=t2.clock, sleep=t2.sleep)
    assert run(a, [deadline, "ok"], t2, cost=0.5) == [0.5, 0.5]


def test_an_answer_is_raised_at_once():
    t = FakeTime()
    a = Attempts(RetryPolicy(), 10.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(errors.FailedPrecondition):
        run(a, [errors.FailedPrecondition("gap"), "ok"], t)
    assert t.slept == []
    a = Attempts(RetryPolicy(), 10.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(errors.Internal):
        run(a, [errors.Internal("model 'demo' failed to run (X); nothing was applied"), "ok"], t)


def test_a_deadline_already_past_makes_no_attempt():
    t = FakeTime()
    a = Attempts(RetryPolicy(), 0.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(errors.DeadlineExceeded, match="no attempt possible"):
        run(a, ["ok"], t)


def test_async_iteration_makes_the_same_decisions_and_awaits_the_pauses():
    import asyncio

    t = FakeTime()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        t.sleep(seconds)

    a = Attempts(RetryPolicy(initial_backoff=0.5, max_backoff=2.0), 3.0, clock=t.clock, sleep=t.sleep,
                 rand=lambda: 1.0, asleep=fake_sleep)

    async def main():
        timeouts = []
        async for attempt_timeout in a:
            timeouts.append(attempt_timeout)
            a.failed(errors.Unavailable("down"))
        return timeouts

    with pytest.raises(errors.Unavailable, match=r"gave up after 3 attempts in 3 s"):
        asyncio.run(main())
    assert slept == [0.5, 1.0]  # the same backoff as the sync loop; a third pause would end past the deadline
