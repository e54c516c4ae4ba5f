"""Metrics.observe_batch: the per-model counters a run moves (KServe's ModelStatistics and Prometheus read them)."""

import pytest

from statestream.server.app.metrics import Metrics


class FakeUnit:
    def __init__(self, n: int, enqueued: float, errors: dict | None = None):
        self.sessions = [object()] * n
        self.enqueued = enqueued
        self.errors = errors


@pytest.mark.parametrize("units", [
    [FakeUnit(3, 1.0, {1: "x"})],                                 # a frame with a failed entry
    [FakeUnit(1, 1.0), FakeUnit(1, 2.0), FakeUnit(1, 4.0)],       # streams' steps sharing a run, all applied
    [FakeUnit(1, 1.0), FakeUnit(1, 2.0, {0: "x"}), FakeUnit(1, 4.0)],  # ... one failed
    [FakeUnit(2, 1.0), FakeUnit(1, 2.0)],
], ids=["frame", "streams", "streams-one-failed", "mixed"])
def test_a_run_counts_each_entry_once_with_its_time_from_queued_to_answered(units):
    m = Metrics()
    size = sum(len(u.sessions) for u in units)
    m.observe_batch(("demo", 1), units, size, 1, started=5.0, now=10.0)
    s = m.models[("demo", 1)]
    failed = [(u, len(u.errors)) for u in units if u.errors]
    ok = [(u, len(u.sessions) - len(u.errors or ())) for u in units]
    assert (s.executions, s.steps, s.timesteps) == (1, size, size)
    assert s.failure == sum(k for _, k in failed)
    assert s.success == sum(k for _, k in ok)
    assert s.success_seconds == pytest.approx(sum(k * (10.0 - u.enqueued) for u, k in ok))
    assert s.failure_seconds == pytest.approx(sum(k * (10.0 - u.enqueued) for u, k in failed))
    assert s.runs == [(size, 5.0 - min(u.enqueued for u in units), 5.0)]


@pytest.mark.parametrize("ran, ok", [(True, True), (True, False), (False, False)])
def test_a_lone_step_counts_as_a_run_of_one_that_never_waited(ran, ok):
    m = Metrics()
    m.observe_step(("demo", 1), 2, started=5.0, now=7.0, ran=ran, ok=ok)
    s = m.models[("demo", 1)]
    assert (s.executions, s.steps, s.timesteps) == ((1, 1, 2) if ran else (0, 0, 0))
    assert s.runs == ([(1, 0.0, 2.0)] if ran else [])
    assert (s.success, s.success_seconds, s.failure, s.failure_seconds) == ((1, 2.0, 0, 0.0) if ok else (0, 0.0, 1, 2.0))
