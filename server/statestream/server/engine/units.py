"""Units of work for the batcher (one step, or a frame's steps of idle sessions) and the server-wide queue count."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from statestream.contract.errors import ResourceExhausted, StatestreamError
from statestream.server.engine.sessions import Session, StepResult


class Unit:
    """Steps that arrive together and run together: one step of one session, or one step of each of N
    idle sessions (a frame). The batcher owns `future`; it resolves (to the unit) when every entry is
    settled: applied (`y`, `states`, `counts` rows), replayed, or failed (`errors`)."""

    __slots__ = ("sessions", "x", "seqs", "future", "enqueued", "y", "states", "counts", "errors", "left",
                 "parent", "dead")

    def __init__(self, sessions: list[Session], x: np.ndarray, seqs: list | None, future: asyncio.Future,
                 parent: tuple | None = None):
        self.sessions = sessions
        self.x = x                  # [N, T, F]
        self.seqs = seqs            # None, or a sequence number (or None) per entry
        self.future = future
        self.enqueued = time.perf_counter()
        self.y = self.states = self.counts = None
        self.errors: dict[int, StatestreamError] | None = None
        self.left = len(sessions)   # entries not settled yet
        self.parent = parent        # (unit, index): this re-runs one entry of a frame that lost a compare-and-set
        self.dead = False           # every entry failed while queued: skip it

    def seq_of(self, s: Session) -> int | None:
        if self.seqs is None:
            return None
        return self.seqs[0] if len(self.sessions) == 1 else self.seqs[self.sessions.index(s)]

    def result(self, i: int = 0) -> StepResult:
        """Entry i's result, or its error raised."""
        if self.errors and i in self.errors:
            raise self.errors[i]
        return StepResult(self.y[i], self.states[i], int(self.counts[i]), None if self.seqs is None else self.seqs[i])

    # -- settling (the batcher's side) --

    def _settled(self, n: int = 1) -> None:
        self.left -= n
        if self.left == 0:
            if self.parent is not None:
                parent, i = self.parent
                self._copy_into(parent, i)
            elif not self.future.done():
                self.future.set_result(self)

    def _copy_into(self, parent: "Unit", i: int) -> None:
        if self.errors:
            parent.fail(i, self.errors[0])
        else:
            parent.y[i], parent.states[i], parent.counts[i] = self.y[0], self.states[0], self.counts[0]
            parent._settled()

    def fail(self, i: int, err: StatestreamError) -> None:
        if self.errors is None:
            self.errors = {}
        if i not in self.errors:
            self.errors[i] = err
            self._settled()

    def replay(self, i: int, res: StepResult) -> None:
        """Entry i was applied already (found after a reload): its recorded result stands."""
        self._ensure_buffers(res)
        self.y[i], self.states[i], self.counts[i] = res.output, res.state, res.step_count
        self._settled()

    def _ensure_buffers(self, res: StepResult) -> None:
        if self.y is None:
            n = len(self.sessions)
            self.y = np.zeros((n, *res.output.shape), dtype=np.float32)
            self.states = np.zeros((n, res.state.shape[0]), dtype=np.float32)
            self.counts = np.zeros(n, dtype=np.int64)


class PendingCounter:
    """Steps queued in the whole server, against --max-pending."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    def take(self, n: int) -> None:
        if self.count + n > self.limit:
            raise ResourceExhausted(f"server queue is full: {self.limit} steps pending (--max-pending)")
        self.count += n


def gather(units: list[Unit]) -> tuple[list[Session], np.ndarray]:
    """The sessions and the stacked inputs of units that run together."""
    if len(units) == 1:
        return units[0].sessions, units[0].x
    return [s for u in units for s in u.sessions], np.concatenate([u.x for u in units])
