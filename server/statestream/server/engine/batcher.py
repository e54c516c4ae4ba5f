"""Batcher: one consumer per model runs queued units of work in shared model runs, each step exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor

import numpy as np

from statestream.contract.errors import FailedPrecondition, Internal, NotFound, StatestreamError
from statestream.server.engine.model import ModelRunner, finite
from statestream.server.engine.policy import CALLER, EXECUTOR, LOOP, BatchPolicy
from statestream.server.engine.sessions import (
    BULK,
    READY,
    RUNNING,
    Session,
    all_idle,
    claim_many,
    closed_among,
    enqueue_many,
    finish_many,
    indexes,
    start_block,
    start_many,
)
from statestream.server.engine.table import SessionTable, gone
from statestream.server.engine.types import StepResult
from statestream.server.engine.units import APPLIED, PENDING, PendingCounter, Unit
from statestream.server.store.base import CLOSED, CONFLICT, MISSING, OK, Records
from statestream.server.store.persistence import Persistence

log = logging.getLogger("statestream.batcher")

DEADLINE_MARGIN = 0.05  # seconds kept for the answer to reach a caller whose deadline bounds the store write


class Batcher:
    """Runs the units of one model's sessions: strictly in order per session, at most one step of a session per
    model run, every entry applied fully (state, counters, recorded response, store) or not at all. Callers wait
    for a unit on futures of their own (Unit.waiter): a cancelled caller never cancels a step, and a retry of a step
    in flight waits for that same unit. Every run of units goes through `_execute`; `where` (BatchPolicy) decides
    whether it runs in the caller, on the loop or on the executor. A lone step that runs in its caller needs no
    unit (`step`, `_run_alone`)."""

    def __init__(self, runner: ModelRunner, table: SessionTable, executor: Executor, *, policy: BatchPolicy,
                 pending: PendingCounter, persistence: Persistence, metrics=None):
        self.runner = runner
        self.table = table
        self.slab = table.slabs[runner.key]
        self.executor = executor
        self.policy = policy
        self.max_batch_size = policy.max_batch_size
        self.pending = pending
        self.persistence = persistence
        self.metrics = metrics
        self._ready: deque[Unit] = deque()  # units every session of which is ready for them
        self._ready_sessions = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running = 0  # runs in flight (model run, store write, apply)
        self._runs: set[asyncio.Task] = set()  # the consumer's runs in flight, when it keeps several (durable stores)

    # -- life -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._consume(), name=f"batcher:{self.runner.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._runs:  # runs in flight finish: their callers are answered
            await asyncio.gather(*self._runs, return_exceptions=True)

    async def drained(self) -> None:
        """Wait until nothing is queued or running."""
        while self._ready or self._running:
            await asyncio.sleep(0.005)

    # -- submitting -----------------------------------------------------------------

    async def submit(self, unit: Unit, *, stream: bool = False) -> None:
        """Queue a unit behind its sessions' earlier ones (the engine checked the entries); it runs in the caller
        when BatchPolicy.where says so. Returns once it is queued or done: while `unit.left`, await `unit.waiter()`
        for its outcome."""
        if self._at_once(all_idle(self.slab, unit.sessions, unit.slots), len(unit.x) * unit.x.shape[1], stream):
            claim_many(self.slab, unit.sessions, unit.slots, unit, unit.seqs)
            await self._execute([unit], LOOP)
            return
        self._enqueue(unit)

    def step(self, s: Session, x: np.ndarray, seq: int | None, fp: int, *, reset: bool = False, stream: bool = False,
             deadline: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | Unit:
        """One new step of one session (the engine decided it), the most common request. When BatchPolicy.where
        says it runs in its caller, it runs right here and needs no unit: nothing comes between the session's
        claim and its finish (no await), so no other caller can see it in flight. (y [1, T, O], states [1, W],
        step counts [1]); a failed run raises its domain error, nothing applied. Otherwise it is queued as a unit,
        returned: while `left`, await its `waiter()`."""
        if self._at_once(s.idle, x.shape[1], stream):
            return self._run_alone(s, x, seq, fp, reset)
        unit = Unit([s], x, None if seq is None else [seq], None if seq is None else [fp], reset=reset,
                    deadline=deadline)
        self._enqueue(unit)
        return unit

    def _at_once(self, idle: bool, work: int, stream: bool) -> bool:
        """Does a unit of `work` session-timesteps whose sessions are `idle` run now, in its caller?"""
        return idle and self.policy.where(work, queued=bool(self._ready), durable=self.persistence.durable,
                                          stream=stream) is CALLER

    def _enqueue(self, unit: Unit) -> None:
        """Queue a unit behind its sessions' earlier ones (ResourceExhausted when the server's queue is full)."""
        self.pending.take(len(unit.sessions))
        unit.blocked = enqueue_many(self.slab, unit.sessions, unit.slots, unit, unit.seqs)
        if not unit.blocked:
            self._push(unit)

    def _one_ready(self, unit: Unit) -> None:
        """One more session of `unit` is ready for it."""
        unit.blocked -= 1
        if unit.blocked == 0 and unit.alive:
            self._push(unit)

    def _push(self, unit: Unit, front: bool = False) -> None:
        (self._ready.appendleft if front else self._ready.append)(unit)
        self._ready_sessions += len(unit.sessions)
        self._wake.set()

    # -- the consumer ---------------------------------------------------------------

    async def _consume(self) -> None:
        limit = self.policy.runs_in_flight(self.persistence.durable)
        while True:
            if not self._ready or self._running >= limit:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self.policy.wait(self._ready_sessions, self._ready[0].enqueued)
            await asyncio.sleep(delay)  # 0: one loop turn, so steps that arrived together share the run
            units, slots = self._take()
            if not units:
                continue
            if limit == 1:
                await self._run(units, slots)
            else:  # the next run may start while this one's store write is in flight (their sessions differ)
                task = asyncio.get_running_loop().create_task(self._run(units, slots))
                self._runs.add(task)
                task.add_done_callback(self._runs.discard)

    async def _run(self, units: list[Unit], slots: np.ndarray | None) -> None:
        self._running += 1
        try:
            await self._execute(units, slots=slots)
        finally:
            self._running -= 1
            self._wake.set()

    def _take(self) -> tuple[list[Unit], np.ndarray | None]:
        """Ready units sharing the first one's T, up to max_batch_size sessions (a group step runs alone); their
        sessions start. (the units, the run's slots when starting them made those)"""
        ready, limit = self._ready, self.max_batch_size
        taken: list[Unit] = []
        skipped: list[Unit] = []
        size = left = 0  # sessions taken; sessions that left the ready queue
        T = None
        while ready:
            unit = ready[0]
            n = len(unit.sessions)
            if not unit.alive:
                ready.popleft()
                left += n
                continue
            if taken and (size + n > limit or unit.block is not None or taken[0].block is not None):
                break
            ready.popleft()
            left += n
            t = unit.x.shape[1]
            if T is None:
                T = t
            elif t != T:
                skipped.append(unit)
                continue
            taken.append(unit)
            size += n
        for unit in reversed(skipped):
            ready.appendleft(unit)
            left -= len(unit.sessions)
        self._ready_sessions -= left
        return taken, self._start(taken)

    def _start(self, units: list[Unit]) -> np.ndarray | None:
        """Start the units' sessions; the run's slots when a run of one-session units started in one pass."""
        n = len(units)
        if n >= BULK and all(len(u.sessions) == 1 and u.fate[0] == PENDING for u in units):
            slots = np.fromiter((u.sessions[0].slot for u in units), np.intp, n)
            if start_block(self.slab, slots, _owners(units, n)):
                self.pending.count -= n  # streams' steps sharing a run, started in one pass
                return slots
        for unit in units:
            fate = unit.fate
            pending = fate.count(PENDING)
            self.pending.count -= pending
            start_many(self.slab, unit.sessions, unit.slots, unit,
                       None if pending == len(fate) else [f == PENDING for f in fate])

    # -- the run paths: a lone step at once, units -----------------------------------------

    def _run_alone(self, s: Session, x: np.ndarray, seq: int | None, fp: int, reset: bool) -> tuple:
        """A lone step of an idle session, run now: the model on its row, its counters and recorded response, the
        row written back. On any failure the session is idle again, nothing applied, the sequence numbers it took
        free, and the failure raised (a bug logged once, INTERNAL)."""
        t0 = time.perf_counter()
        T = x.shape[1]
        slot = s.slot
        ran = False
        s.claim(None, seq)
        try:
            y, new = self._infer(x, np.zeros_like(self.slab.rows[:1]) if reset else self.slab.rows[slot:slot + 1])
            ran = True
            counts = self.slab.steps[slot:slot + 1] + T
            if reset:
                counts[0] = T
            count = int(counts[0])
            s.finish(count, None if seq is None else StepResult(y[0].copy(), new[0].copy(), count, seq), fp, reset)
        except Exception as e:
            err = self._internal(e, "running a step")
            if s.phase is RUNNING:
                s.undo()
            s.forget_accepted()
            if self.metrics is not None:
                self.metrics.observe_step(self.runner.key, T, t0, time.perf_counter(), ran=ran, ok=False)
            raise err from None
        self.slab.rows[slot] = new[0]
        if self.metrics is not None:
            self.metrics.observe_step(self.runner.key, T, t0, time.perf_counter())
        return y, new, counts

    async def _execute(self, units: list[Unit], where: str | None = None, slots: np.ndarray | None = None) -> None:
        """Run units in one model run (`where`: LOOP or EXECUTOR, None: BatchPolicy.where says), commit, apply. An
        exception at any stage fails exactly the entries not applied (their sessions go back to idle); store errors
        are UNAVAILABLE "nothing was applied", anything else INTERNAL, logged once here."""
        t0 = time.perf_counter()
        try:
            sessions, x, states, slots = self._gather(units, slots)
            if where is None:
                where = self.policy.where(len(sessions) * x.shape[1])
            if where is EXECUTOR:
                y, new = await asyncio.get_running_loop().run_in_executor(self.executor, self._infer, x, states)
            else:
                y, new = self._infer(x, states)
            counts = self._counts(units, slots, y.shape[1])
            new_entries = new if units[0].keep is None else new[units[0].rows]
            results = self._results(units, y, new_entries, counts)
            statuses = None
            if self.persistence.durable:
                records, closed = self._records(units, sessions, slots, new_entries, counts, results)
                statuses = await self.persistence.commit(records, timeout=self._patience(units), closed=closed)
        except Exception as e:  # nothing applied
            self._fail_units(units, self._internal(e, "running a batch"))
            if self.metrics is not None:
                self.metrics.observe_batch(self.runner.key, units, 0, 0, t0, time.perf_counter(), ran=False)
            return
        try:
            self._apply(units, sessions, slots, y, new_entries, counts, results, statuses)
        except Exception as e:  # the entries applied so far stand; the others fail
            self._fail_units(units, self._internal(e, "applying a batch"))
            return
        finally:
            self.policy.ran(len(sessions))
            if self.metrics is not None:
                self.metrics.observe_batch(self.runner.key, units, len(sessions), x.shape[1], t0, time.perf_counter())
        if statuses is not None and (CONFLICT in statuses or MISSING in statuses):  # after the apply: these wait
            try:
                await self._redo(units, statuses)
            except Exception as e:
                self._fail_units(units, self._internal(e, "re-reading sessions that lost a compare-and-set"))

    @staticmethod
    def _patience(units: list[Unit]) -> float | None:
        """How long a run's store write may take: until its most patient caller gives up (a caller that is gone by
        then learns nothing, the others learn "nothing was applied" in time to retry); None: the store's default."""
        if any(u.deadline is None for u in units):
            return None
        return max(0.0, max(u.deadline for u in units) - time.monotonic() - DEADLINE_MARGIN)

    def _gather(self, units: list[Unit], slots: np.ndarray | None = None) -> tuple[list[Session], np.ndarray,
                                                                                    np.ndarray, np.ndarray | slice]:
        """The sessions, stacked inputs, states and slots of a run: a group step's rows are a view of the slab (no
        gather); a sequence start runs from zero states."""
        rows = self.slab.rows
        if len(units) == 1:
            unit = units[0]
            if unit.block is not None:
                return unit.sessions, unit.x, rows[unit.block:unit.block + len(unit.x)], unit.slots
            sessions, x, slots = unit.sessions, unit.x, unit.slots
        else:
            sessions = [s for u in units for s in u.sessions]
            x = np.concatenate([u.x for u in units])
            if slots is None:  # (known when _start started a run of one-session units, streams' steps, in one pass)
                slots = np.fromiter((s.slot for s in sessions), np.intp, len(sessions)) \
                    if len(sessions) == len(units) else np.concatenate([indexes(u.slots) for u in units])
        if len(sessions) == 1:
            slot = slots[0]
            states = rows[slot:slot + 1]
        else:
            states = rows[slots]
        if units[0].reset if len(units) == 1 else any(u.reset for u in units):
            states = states.copy()
            a = 0
            for u in units:
                if u.reset:
                    states[a:a + len(u.sessions)] = 0.0
                a += len(u.sessions)
        return sessions, x, states, slots

    def _infer(self, x: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on these states; a failure or a non-finite result is Internal (nothing applied)."""
        try:
            y, new_states = self.runner.run(x, states)
        except Exception as e:
            log.error("model %r: batch of %d failed: %r", self.runner.name, x.shape[0], e)
            raise Internal(f"model {self.runner.name!r} failed to run ({type(e).__name__}); nothing was applied")
        if not (finite(y) and finite(new_states)):
            raise Internal("the model produced NaN or Inf; nothing was applied")
        return y, new_states

    def _counts(self, units: list[Unit], slots, T: int) -> np.ndarray:
        """Each entry's step count after this run (entry j's session is in slots[j]; a sequence start counts from 0)."""
        counts = self.slab.steps[slots] + T
        a = 0
        for u in units:
            if u.reset:
                counts[a:a + len(u.sessions)] = T
            a += len(u.sessions)
        return counts

    @staticmethod
    def _results(units, y, new_states, counts) -> list | None:
        """The responses to record (copies), for the numbered steps of a run; None when it has none."""
        if units[0].seqs is None and (len(units) == 1 or all(u.seqs is None for u in units)):
            return None
        seqs = [q for u in units for q in (u.seqs or [None] * len(u.sessions))]
        return [None if q is None else StepResult(y[i].copy(), new_states[i].copy(), int(counts[i]), q)
                for i, q in enumerate(seqs)]

    def _records(self, units, sessions, slots, new_states, counts, results) -> tuple[Records, list[int]]:
        """What the (durable) store must hold after this run, by column, and the entries whose sessions were closed
        meanwhile (not written)."""
        fps = None if results is None else [f for u in units for f in (u.fps or [0] * len(u.sessions))]
        restarts = [u.reset for u in units for _ in u.sessions] if any(u.reset for u in units) else None
        return (self.table.records(sessions, slots, new_states, counts, results, fps, restarts),
                closed_among(self.slab, slots))

    def _apply(self, units, sessions, slots, y, new_entries, counts, results, statuses) -> None:
        """Make a finished run the truth of its sessions and settle their entries: all at once (_finish_all), or
        unit by unit, entry by entry. An entry whose commit lost a compare-and-set (conflict, missing) is left to
        _redo; one of a session closed meanwhile is answered but not written."""
        a = 0
        for unit in units:
            n = len(unit.sessions)
            if len(units) == 1:
                unit.y, unit.states, unit.counts = (y if unit.keep is None else y[unit.rows]), new_entries, counts
            else:
                unit.y, unit.states, unit.counts = y[a:a + n], new_entries[a:a + n], counts[a:a + n]
            a += n
        if len(sessions) >= BULK and self._finish_all(units, sessions, slots, new_entries, counts, results, statuses):
            return
        counts_list = counts.tolist()
        running = self.slab.running
        a = 0
        for unit in units:
            n = len(unit.sessions)
            skip: list[int] = []  # entries whose row is not written
            complete = False
            fps, fate = unit.fps, unit.fate
            try:
                for i, s in enumerate(unit.sessions):
                    j = a + i
                    status = OK if statuses is None else statuses[j]
                    if fate[i] != PENDING or running[s.slot] is not unit or (
                            status is not OK and (status == CONFLICT or status == MISSING)):
                        skip.append(i)  # failed while queued; or lost a compare-and-set: _redo settles it
                        continue
                    after = s.finish(counts_list[j], results[j] if results else None, fps[i] if fps else 0,
                                     unit.reset)
                    fate[i] = APPLIED
                    if after:
                        if after is READY:
                            self._one_ready(s.head)
                        else:  # GONE: closed meanwhile
                            skip.append(i)
                            self.table.release(s)
                    elif status == CLOSED:
                        skip.append(i)
                        self.table.release(s)
                    unit.settle()
                complete = True
            finally:  # what was applied is written, also when an entry after it broke off
                if not complete:
                    skip.extend(i for i in range(n) if unit.fate[i] != APPLIED and i not in skip)
                self._write_rows(unit.slots, new_entries if len(units) == 1 else new_entries[a:a + n], skip)
            if unit.group is not None:
                unit.group.applied(unit)
            a += n

    def _finish_all(self, units, sessions, slots, new_entries, counts, results, statuses) -> bool:
        """Apply a whole run in one pass over the cells when every entry committed and is still running its unit
        (the common case for a run of >= BULK sessions); False: entry by entry."""
        n = len(sessions)
        one = len(units) == 1
        if (units[0].left != n if one else any(u.left != len(u.sessions) for u in units)) or (
                statuses is not None and statuses.count(OK) != n):
            return False
        owner = units[0] if one else _owners(units, n)
        done = finish_many(self.slab, slots, owner, counts)
        if done is None:
            return False
        ready, closed = done
        for u in units:
            u.fate[:] = bytes([APPLIED]) * len(u.sessions)
        skip = closed.tolist()
        try:
            if results or (units[0].reset if one else any(u.reset for u in units)):
                j = 0
                for u in units:
                    for i, s in enumerate(u.sessions):
                        if u.reset:
                            s.restarted()
                        if results and results[j] is not None:
                            s.record(results[j].sequence_number, results[j], u.fps[i] if u.fps else 0)
                        j += 1
            for j in skip:
                self.table.release(sessions[j])
        finally:  # applied: written, and the sessions' next units may run, also when a bookkeeping step broke off
            self._write_rows(slots, new_entries, skip)
            for head in ready:
                self._one_ready(head)
        for u in units:
            if u.group is not None:
                u.group.applied(u)
            u.settle(len(u.sessions))
        return True

    def _write_rows(self, slots, new: np.ndarray, skip: list[int]) -> None:
        """One slab write for applied entries: entry j's row into slots[j] (a group's block: in place)."""
        rows = self.slab.rows
        n = len(new)
        if not skip:
            if n == 1 and not isinstance(slots, slice):  # unary: no fancy-indexing overheads
                rows[slots[0]] = new[0]
            else:
                rows[slots] = new
        elif len(skip) < n:
            keep = np.ones(n, dtype=bool)
            keep[skip] = False
            rows[indexes(slots)[keep]] = new[keep]

    async def _redo(self, units: list[Unit], statuses: list[str]) -> None:
        """Entries whose commit lost a compare-and-set: reload the sessions (one store read for all of them),
        then replay, refuse or re-run each."""
        a, conflicts = 0, []
        for unit in units:
            for i, s in enumerate(unit.sessions):
                status = statuses[a + i]
                if status == CONFLICT:
                    conflicts.append((unit, i, s))
                elif status == MISSING:
                    self._gone(unit, i, s)
            a += len(unit.sessions)
        if not conflicts:
            return
        try:
            found = await self.persistence.fetch_many([(s.owner, s.id) for _, _, s in conflicts])
        except StatestreamError as e:
            for unit, i, s in conflicts:
                self._fail_entry(unit, i, s, e)
            return
        for (unit, i, s), rec in zip(conflicts, found):
            if rec is None:
                self._gone(unit, i, s)
            else:
                self.table.adopt(rec)
                self._reconcile(unit, i, s)

    def _reconcile(self, unit: Unit, i: int, s: Session) -> None:
        seq = None if unit.seqs is None else unit.seqs[i]
        if seq is not None and seq <= s.last_seq:  # another process applied it: its record stands
            if seq == s.last_seq and s.last_result is not None:
                unit.replay(i, s.last_result)
                if s.undo():
                    self._one_ready(s.head)
                self.table.release(s)
            else:
                self._fail_entry(unit, i, s, FailedPrecondition(
                    f"sequence number {seq} is stale for session {s.id!r}; expected {s.last_seq + 1}"))
            return
        if seq is not None and seq != s.last_seq + 1 and not unit.reset:
            self._fail_entry(unit, i, s, FailedPrecondition(
                f"sequence number {seq} is out of order (gap) for session {s.id!r}; expected {s.last_seq + 1}"))
            return
        # re-run on the fresh state, ahead of this session's later steps: a unit of the one queue
        redo = unit if len(unit.sessions) == 1 and unit.block is None else Unit(
            [s], unit.x[i:i + 1] if unit.block is None else unit.x[unit.rows[i]:unit.rows[i] + 1],
            None if seq is None else [seq], None if unit.fps is None else [unit.fps[i]], parent=(unit, i), reset=unit.reset)
        s.retry(redo)
        self.pending.count += 1
        self._push(redo, front=True)

    def _gone(self, unit: Unit, i: int, s: Session) -> None:
        """Entry i's session is no longer in the store: the entry fails NOT_FOUND and the session leaves here."""
        self._fail_entry(unit, i, s, gone(s))
        self.table.close(s)

    def _fail_entry(self, unit: Unit, i: int, s: Session, err: StatestreamError) -> None:
        """Entry i failed and was not applied; the session's queued steps fail with it (they were ordered after it,
        and their sequence numbers would now be a gap)."""
        unit.fail(i, err)
        if s.running is unit and s.undo():
            self._one_ready(s.head)
        self.fail_queued(s, err)
        s.forget_accepted()
        self.table.release(s)

    def _fail_units(self, units: list[Unit], err: StatestreamError) -> None:
        """Every entry of these units that is not applied fails with `err`."""
        for unit in units:
            unit.recount()
            for i, s in enumerate(unit.sessions):
                if unit.fate[i] == PENDING:
                    self._fail_entry(unit, i, s, err)

    def _internal(self, e: Exception, doing: str) -> StatestreamError:
        """The domain error for an exception of a run: store and model errors as they are; anything else is a bug,
        logged here once with its traceback, INTERNAL to the caller."""
        if isinstance(e, StatestreamError):
            return e
        log.error("model %r: unexpected error %s", self.runner.name, doing, exc_info=e)
        return Internal(f"model {self.runner.name!r}: internal error ({type(e).__name__}); nothing was applied")

    # -- other writers of a session: SetState, close ----------------------------------------

    def release(self, s: Session) -> None:
        """A held session is free again: steps queued meanwhile may run."""
        if s.release():
            self._one_ready(s.head)

    def fail_queued(self, s: Session, err: StatestreamError) -> None:
        """Fail the queued (not running) steps of a session: it is going away, or a step before them failed."""
        units, was_ready = s.drain()
        for k, unit in enumerate(units):
            i = unit.index(s)
            if unit.fate[i] == PENDING:
                self.pending.count -= 1
            unit.fail(i, err)
            if not (k == 0 and was_ready):  # this session was blocking it: one fewer to wait for
                self._one_ready(unit)

    def close(self, s: Session) -> None:
        """Close a session: its queued steps fail NOT_FOUND; a step already running finishes unapplied."""
        self.fail_queued(s, NotFound(f"session {s.id!r} was closed"))
        self.table.close(s)


def _owners(units: list[Unit], n: int) -> np.ndarray:
    """The unit of each entry of a run of several units, as an array (for finish_many)."""
    owners = np.empty(n, dtype=object)
    if n == len(units):  # one session per unit (streams' steps)
        owners[:] = units
        return owners
    a = 0
    for u in units:
        owners[a:a + len(u.sessions)] = u
        a += len(u.sessions)
    return owners
