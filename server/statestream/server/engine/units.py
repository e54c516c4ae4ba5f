"""Units of work for the batcher (one step of each of N sessions) and the server-wide queue count."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from statestream.contract.errors import ResourceExhausted, StatestreamError
from statestream.server.engine.types import StepResult

PENDING, APPLIED, FAILED = 0, 1, 2  # an entry's fate
PRUNE_WAITERS = 8  # a unit's waits beyond which the cancelled ones are dropped as the next caller comes


class Unit:
    """Steps that arrive together and run together: one step of one session, one step of each of N sessions (a
    frame), or a group step. It is done when every entry is settled (`left` is 0): applied (`y`, `states`, `counts`
    rows), replayed, or failed (`errors`). Its callers wait on futures of their own (`waiter`): a cancelled caller
    cancels only its wait, never the step, and a retry of a step in flight waits for the same unit.

    A unit runs once each of its sessions is ready for it (`blocked` counts those that are not). A group step
    keeps its members' contiguous slab rows: `block` is the first row and `keep` the rows it steps (None: all),
    so it runs alone and gather-free; `x` then has one row per block row and entry i is row `rows[i]`."""

    __slots__ = ("sessions", "x", "seqs", "fps", "waiters", "enqueued", "y", "states", "counts", "errors", "fate",
                 "left", "parent", "blocked", "block", "keep", "rows", "slots", "reset", "group", "group_seq",
                 "group_fp", "deadline")

    def __init__(self, sessions: list, x: np.ndarray, seqs: list | None, fps: list | None, *,
                 parent: tuple | None = None, block: int | None = None, keep: np.ndarray | None = None,
                 reset: bool = False, group=None, slots: np.ndarray | None = None, rows: np.ndarray | None = None,
                 deadline: float | None = None):
        self.sessions = sessions
        self.x = x                  # [N, T, F] (a group: one row per block row)
        self.seqs = seqs            # None, or a sequence number (or None) per entry
        self.fps = fps              # None, or the input's fingerprint per entry (numbered entries only)
        self.waiters: list[asyncio.Future] | None = None  # its callers' waits (`waiter`)
        self.enqueued = time.perf_counter()
        self.y = self.states = self.counts = self.errors = None  # errors: {entry: StatestreamError}
        self.fate = bytearray(len(sessions))  # PENDING / APPLIED / FAILED per entry
        self.left = len(sessions)   # entries not settled yet
        self.parent = parent        # (unit, index): this re-runs one entry of a unit that lost a compare-and-set
        self.blocked = 0            # sessions not yet ready for this unit
        self.block = block
        self.keep = keep
        if rows is None and block is not None:  # (a group passes its own: made once)
            rows = np.arange(len(x)) if keep is None else np.flatnonzero(keep)
        self.rows = rows
        # the sessions' slots: the cells and state rows of entry i are at slots[i] (a block: a slice; a group's, or a
        # frame's whose sessions sit in consecutive slots, sessions.contiguous)
        if slots is not None:
            self.slots = slots
        elif block is None:
            self.slots = np.array((sessions[0].slot,), np.intp) if len(sessions) == 1 else \
                np.fromiter((s.slot for s in sessions), np.intp, len(sessions))
        else:
            self.slots = slice(block, block + len(x)) if keep is None else block + self.rows
        self.reset = reset          # a sequence start: every entry starts from zero states and step 0
        self.group = group          # the Group whose step this is (its ledger records it) ...
        self.group_seq = None       # ... with this group sequence number
        self.group_fp = 0           # ... and input fingerprint
        self.deadline = deadline    # time.monotonic() when its caller gives up (None: no deadline)

    def __repr__(self) -> str:
        return f"Unit({len(self.sessions)} sessions, left {self.left}, blocked {self.blocked})"

    @property
    def alive(self) -> bool:
        """Some entry can still run (not every one failed while queued)."""
        return self.left > 0

    def index(self, s) -> int:
        return 0 if len(self.sessions) == 1 else self.sessions.index(s)

    def seq_of(self, s) -> int | None:
        return None if self.seqs is None else self.seqs[self.index(s)]

    def fp_of(self, s) -> int:
        return 0 if self.fps is None else self.fps[self.index(s)]

    def waiter(self) -> asyncio.Future:
        """A future of the caller's own, resolved (to None: the unit holds the outcome) when the unit is done; await
        it only while `left`. Cancelling it cancels nothing else."""
        w = asyncio.get_running_loop().create_future()
        waiters = self.waiters
        if waiters is None:
            self.waiters = [w]
            return w
        if len(waiters) >= PRUNE_WAITERS:  # callers that gave up: the list holds the live ones and a few more
            waiters[:] = [v for v in waiters if not v.done()]
        waiters.append(w)
        return w

    def waited_by(self, deadline: float | None) -> None:
        """A retry of a step of this unit waits for it: the unit's store write may take until the most patient of
        its callers gives up (None: one set no deadline)."""
        if self.deadline is not None:
            self.deadline = None if deadline is None else max(self.deadline, deadline)

    def result(self, i: int = 0) -> StepResult:
        """Entry i's result, or its error raised."""
        if self.errors and i in self.errors:
            raise self.errors[i]
        return StepResult(self.y[i], self.states[i], int(self.counts[i]), None if self.seqs is None else self.seqs[i])

    # -- settling (the batcher's side) --

    def settle(self, n: int = 1) -> None:
        """n entries were applied or replayed."""
        self.left -= n
        if self.left == 0:
            self._done()

    def recount(self) -> None:
        """After a run broke off halfway: `left` from the entries' fates (the applied ones count as settled)."""
        self.left = self.fate.count(PENDING)
        if self.left == 0:
            self._done()

    def _done(self) -> None:
        if self.parent is not None:
            parent, i = self.parent
            if self.errors:
                parent.fail(i, self.errors[0])
            else:
                parent.y[i], parent.states[i], parent.counts[i] = self.y[0], self.states[0], self.counts[0]
                parent.fate[i] = APPLIED
                parent.settle()
        if self.waiters is not None:  # (a re-run of a parent's entry has its own: a retry may find it in flight)
            for w in self.waiters:
                if not w.done():  # (a caller that gave up cancelled its own)
                    w.set_result(None)
            self.waiters = None

    def fail(self, i: int, err: StatestreamError) -> None:
        """Entry i was not applied (and never will be)."""
        if self.fate[i] != PENDING:
            return
        if self.errors is None:
            self.errors = {}
        self.errors[i] = err
        self.fate[i] = FAILED
        self.left -= 1
        if self.left == 0:
            self._done()

    def replay(self, i: int, res: StepResult) -> None:
        """Entry i was applied already (found after a reload): its recorded result stands."""
        if self.y is None:
            n = len(self.sessions)
            self.y = np.zeros((n, *res.output.shape), dtype=np.float32)
            self.states = np.zeros((n, res.state.shape[0]), dtype=np.float32)
            self.counts = np.zeros(n, dtype=np.int64)
        self.y[i], self.states[i], self.counts[i] = res.output, res.state, res.step_count
        self.fate[i] = APPLIED
        self.settle()


class PendingCounter:
    """Steps queued in the whole server, against --max-pending."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    def room(self) -> int:
        """How many more steps may queue now."""
        return max(0, self.limit - self.count)

    def full(self) -> ResourceExhausted:
        """The refusal of steps the queue has no room for."""
        return ResourceExhausted(f"server queue is full: {self.limit} steps pending (--max-pending)")

    def take(self, n: int) -> None:
        if self.count + n > self.limit:
            raise self.full()
        self.count += n
