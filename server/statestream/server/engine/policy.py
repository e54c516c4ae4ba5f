"""BatchPolicy: where and when a unit runs - at once in its caller, on the loop or the executor, after waiting."""

from __future__ import annotations

import time

CALLER, LOOP, EXECUTOR = "caller", "loop", "executor"  # where a unit runs (BatchPolicy.where)
DURABLE_RUNS_IN_FLIGHT = 4  # a durable store's writes overlap: the next run starts while earlier ones commit


class BatchPolicy:
    """The batcher's one decision, kept apart so it can be tested on a fake clock.

    Measured (bench/results, issue 4): with no queue delay, an idle session's unary step is fastest run at
    once in its caller; the steps of many streams are 3x faster queued for one loop turn so they share a
    model run; but a lone busy stream is 20% faster run at once. So a stream step runs at once only while
    no model run has held more than one session for `solo_window` seconds, and one in `probe_every` such
    steps queues anyway: if other streams' steps join it, runs are shared again and streams batch again.
    """

    def __init__(self, max_batch_size: int, max_queue_delay: float, *, inline_max_batch: int = 0,
                 clock=time.perf_counter, solo_window: float = 0.05, probe_every: int = 16):
        self.max_batch_size = max_batch_size
        self.inline_max_batch = inline_max_batch  # session-timesteps of a run below which a thread hop costs more
        self.max_queue_delay = max_queue_delay
        self.clock = clock
        self.solo_window = solo_window
        self.probe_every = probe_every
        self._last_shared = float("-inf")  # when a model run last held more than one session
        self._probes = 0

    def where(self, work: int, *, queued: bool = True, durable: bool = False, stream: bool = False) -> str:
        """The one decision of where a run of `work` session-timesteps happens: CALLER (a unit that is ready, with
        nothing queued before it and nothing to await: the memory store), LOOP (small: a thread hop costs more than
        the run) or EXECUTOR. `queued`: the unit already waits in the queue (the consumer runs it)."""
        small = work <= self.inline_max_batch
        if not queued and small and not durable and self.inline(stream):
            return CALLER
        return LOOP if small else EXECUTOR

    @staticmethod
    def runs_in_flight(durable: bool) -> int:
        """How many of a model's runs may be in flight at once. A durable store's write is a round trip (Redis,
        sqlite's thread) that costs the server nothing while it waits, so the next run starts meanwhile; the runs
        never share a session (a session's next unit is ready only once its run is applied). With the memory store
        a run does not wait for anything but the model: one at a time."""
        return DURABLE_RUNS_IN_FLIGHT if durable else 1

    def inline(self, stream: bool) -> bool:
        """May the step of an idle session, with nothing else queued, run at once in its caller?"""
        if self.max_queue_delay > 0:  # the operator asked for batching
            return False
        if not stream:
            return True
        if self.clock() - self._last_shared < self.solo_window:
            return False
        self._probes += 1
        return self._probes % self.probe_every != 0

    def ran(self, sessions: int) -> None:
        """Record a model run of `sessions` sessions."""
        if sessions > 1:
            self._last_shared = self.clock()

    def wait(self, ready: int, oldest: float) -> float:
        """Seconds to wait for more steps before running the `ready` queued sessions (the oldest queued at
        `oldest`); 0 means run after one loop turn, so steps that arrived together share the run."""
        if self.max_queue_delay <= 0 or ready >= self.max_batch_size:
            return 0.0
        return max(0.0, oldest + self.max_queue_delay - self.clock())
