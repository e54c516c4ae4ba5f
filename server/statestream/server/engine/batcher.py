"""Batcher: one consumer per model runs queued units of work in shared model runs, each step exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor

import numpy as np

from statestream.contract.errors import FailedPrecondition, Internal, NotFound, ResourceExhausted, StatestreamError
from statestream.server.engine.model import ModelRunner
from statestream.server.store.persistence import Persistence, gone
from statestream.server.engine.policy import BatchPolicy
from statestream.server.engine.sessions import GONE, READY, Session, StepResult
from statestream.server.engine.units import PendingCounter, Unit, gather
from statestream.server.engine.table import SessionTable

log = logging.getLogger("statestream.batcher")


class Batcher:
    """Runs the steps of one model's sessions: strictly in order per session, at most one step of a
    session per model run, every run applied fully (state, counters, recorded response, store) or not at
    all. Callers await futures the batcher owns through asyncio.shield: a cancelled caller never cancels
    a step, and a retry of a step in flight waits for that same step."""

    def __init__(self, runner: ModelRunner, table: SessionTable, executor: Executor, *, policy: BatchPolicy,
                 max_pending_per_session: int, pending: PendingCounter, persistence: Persistence,
                 inline_max_batch: int = 0, metrics=None):
        self.runner = runner
        self.table = table
        self.slab = table.slabs[runner.name]
        self.executor = executor
        self.policy = policy
        self.max_batch_size = policy.max_batch_size
        self.max_pending_per_session = max_pending_per_session
        self.pending = pending
        self.persistence = persistence
        self.inline_max_batch = inline_max_batch
        self.metrics = metrics
        self._ready: deque[Unit] = deque()  # units whose sessions are all QUEUED with it at their head
        self._ready_sessions = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running = 0
        self._refreshing: dict[Session, asyncio.Task] = {}  # shared store: re-reads of stale cached sessions

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

    async def drained(self) -> None:
        """Wait until nothing is queued or running."""
        while self._ready or self._running:
            await asyncio.sleep(0.005)

    # -- submitting -----------------------------------------------------------------

    async def step(self, s: Session, x: np.ndarray, seq: int | None, stream: bool = False) -> tuple[StepResult, bool]:
        """One step (x: float32 [T,F]) of session s; returns (result, replayed).

        Exactly-once: a repeat of the last applied sequence number returns the recorded result; a repeat of
        a step still queued or running waits for it; either way nothing runs twice."""
        try:
            found = s.accept(seq)
        except FailedPrecondition:
            found = await self._accept_fresh(s, seq)
        if found is not None:
            if isinstance(found, StepResult):
                return found, True
            if not found.future.done():
                await asyncio.shield(found.future)
            return found.result(found.sessions.index(s)), True
        unit = Unit([s], x[None], None if seq is None else [seq], asyncio.get_running_loop().create_future())
        if self._inline_ok(s, x.shape[0], stream):
            s.run_now(unit, seq)
            self._run_inline([unit])
        else:
            self._enqueue(s, unit, seq)
        if not unit.future.done():
            await asyncio.shield(unit.future)
        return unit.result(0), False

    async def _accept_fresh(self, s: Session, seq: int | None):
        """A sequence number Session.accept refused: with a shared store, re-read an idle cached session first
        (another process may have stepped it since) and check again against the fresh record; else refuse."""
        if not self.persistence.shared or not (s.idle or s in self._refreshing):
            return s.accept(seq)  # raises the same refusal
        await self.reread(s)
        return s.accept(seq)

    async def reread(self, s: Session) -> None:
        """Replace an idle cached session by the shared store's record (one re-read at a time per session:
        callers arriving meanwhile wait for it); NotFound, and dropped here, when the store has it no more."""
        task = self._refreshing.get(s)
        if task is None:
            s.hold()
            task = self._refreshing[s] = asyncio.get_running_loop().create_task(self._refresh(s))
        if not await asyncio.shield(task):
            raise gone(s)

    async def _refresh(self, s: Session) -> bool:
        try:
            found = await self.persistence.reload(s)
        finally:
            del self._refreshing[s]
            self.release(s)
        if not found:
            self.persistence.forget(s)
        return found

    def submit_group(self, sessions: list[Session], x: np.ndarray, seqs: list | None) -> Unit:
        """One step for each of N distinct idle sessions (a frame) as one unit; x: [N,T,F].

        The caller checked (Session.accept) that each sequence number is the next one."""
        if len(sessions) > self.max_batch_size:
            raise ValueError("a group is at most max_batch_size sessions")
        self.pending.take(len(sessions))
        unit = Unit(sessions, x, seqs, asyncio.get_running_loop().create_future())
        for i, s in enumerate(sessions):
            s.enqueue(unit, None if seqs is None else seqs[i])
        self._push(unit)
        return unit

    def _inline_ok(self, s: Session, timesteps: int, stream: bool) -> bool:
        """Nothing is waiting, the session is idle, the run is small and nothing must be awaited."""
        return (not self.persistence.durable and s.idle and not self._ready and timesteps <= self.inline_max_batch
                and self.policy.inline(stream))

    def _enqueue(self, s: Session, unit: Unit, seq: int | None) -> None:
        if s.waiting >= self.max_pending_per_session:
            raise ResourceExhausted(
                f"session {s.id!r} has {s.waiting} queued steps; the limit is {self.max_pending_per_session} "
                "(--max-pending-per-session)")
        self.pending.take(1)
        if s.enqueue(unit, seq):
            self._push(unit)

    def _push(self, unit: Unit, front: bool = False) -> None:
        (self._ready.appendleft if front else self._ready.append)(unit)
        self._ready_sessions += len(unit.sessions)
        self._wake.set()

    # -- the consumer ---------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self.policy.wait(self._ready_sessions, self._ready[0].enqueued)
            await asyncio.sleep(delay)  # 0: one loop turn, so steps that arrived together share the run
            units = self._take()
            if units:
                self._running += 1
                try:
                    await self._run(units)
                except Exception:  # never let the consumer die
                    log.exception("batcher %r: unexpected error", self.runner.name)
                finally:
                    self._running -= 1

    def _take(self) -> list[Unit]:
        """Ready units sharing the first one's T, up to max_batch_size sessions; their sessions start."""
        taken: list[Unit] = []
        skipped: list[Unit] = []
        size = 0
        T = None
        while self._ready:
            unit = self._ready[0]
            if unit.dead:
                self._ready.popleft()
                self._ready_sessions -= len(unit.sessions)
                continue
            n = len(unit.sessions)
            if taken and size + n > self.max_batch_size:
                break
            self._ready.popleft()
            self._ready_sessions -= n
            if T is None:
                T = unit.x.shape[1]
            if unit.x.shape[1] != T:
                skipped.append(unit)
                continue
            taken.append(unit)
            size += n
        for unit in reversed(skipped):
            self._ready.appendleft(unit)
            self._ready_sessions += len(unit.sessions)
        for unit in taken:
            failed = unit.errors or ()
            self.pending.count -= len(unit.sessions) - len(failed)
            for i, s in enumerate(unit.sessions):
                if i not in failed:
                    s.start(unit)
        return taken

    # -- running ----------------------------------------------------------------------

    def _run_inline(self, units: list[Unit]) -> None:
        """Run and apply now, in the caller (memory store: nothing to await)."""
        sessions, x = gather(units)
        t0 = time.perf_counter()
        try:
            y, new_states = self._model(x, sessions)
            counts = self._counts(sessions, y)
            results = self._results(units, sessions, y, new_states, counts)
            self._apply(units, sessions, y, new_states, results, counts, None, t0, time.perf_counter())
        except Exception as e:
            self._fail_run(units, self._internal(e))

    async def _run(self, units: list[Unit]) -> None:
        sessions, x = gather(units)
        t0 = time.perf_counter()
        try:
            if len(sessions) * x.shape[1] <= self.inline_max_batch:  # a thread hop costs more than the run
                y, new_states = self._model(x, sessions)
            else:
                y, new_states = await asyncio.get_running_loop().run_in_executor(self.executor, self._model, x, sessions)
            t1 = time.perf_counter()
            counts = self._counts(sessions, y)
            results = self._results(units, sessions, y, new_states, counts)
            statuses = await self.persistence.batch(sessions, new_states, counts.tolist(), results)
        except Exception as e:  # nothing applied; later queued steps of these sessions neither
            self._fail_run(units, self._internal(e))
            return
        self._apply(units, sessions, y, new_states, results, counts, statuses, t0, t1)
        if statuses is not None and any(st in ("conflict", "missing") for st in statuses):
            await self._redo(units, statuses)

    async def run_block(self, start: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One model run on the contiguous slab rows [start, start + N) of a session group, x: [N,T,F].

        No gather: the states are a view of the slab. The caller keeps the batcher off those sessions
        (they are idle and nothing is awaited before it applies, or it holds them) and applies the result.
        Inline when small, else on the executor, like a queued run; recorded in the metrics."""
        n = x.shape[0]
        t0 = time.perf_counter()
        if n * x.shape[1] <= self.inline_max_batch:
            y, new_states = self._infer(x, self.slab.rows[start:start + n])
        else:
            y, new_states = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._infer, x, self.slab.rows[start:start + n])
        self.policy.ran(n)
        if self.metrics is not None:
            self.metrics.observe_batch(self.runner.name, n, x.shape[1], 0.0, time.perf_counter() - t0)
        return y, new_states

    def _model(self, x: np.ndarray, sessions: list[Session]) -> tuple[np.ndarray, np.ndarray]:
        """One model run; any failure becomes Internal (nothing applied)."""
        if len(sessions) == 1:
            slot = sessions[0].slot
            return self._infer(x, self.slab.rows[slot:slot + 1])
        return self._infer(x, self.slab.rows[[s.slot for s in sessions]])

    def _infer(self, x: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on these states; any failure becomes Internal (nothing applied)."""
        try:
            y, new_states = self.runner.run(x, states)
        except Exception as e:
            log.error("model %r: batch of %d failed: %r", self.runner.name, x.shape[0], e)
            raise Internal(f"model {self.runner.name!r} failed to run ({type(e).__name__}); nothing was applied")
        if not (np.isfinite(y).all() and np.isfinite(new_states).all()):
            raise Internal("the model produced NaN or Inf; nothing was applied")
        return y, new_states

    @staticmethod
    def _counts(sessions: list[Session], y: np.ndarray) -> np.ndarray:
        return np.fromiter((s.step_count for s in sessions), dtype=np.int64, count=len(sessions)) + y.shape[1]

    @staticmethod
    def _results(units, sessions, y, new_states, counts) -> list | None:
        """The responses to record (copies), for the sequenced steps of a run; None when it has none."""
        if all(u.seqs is None for u in units):
            return None
        seqs = [q for u in units for q in (u.seqs or [None] * len(u.sessions))]
        return [None if q is None else StepResult(y[i].copy(), new_states[i].copy(), int(counts[i]), q)
                for i, q in enumerate(seqs)]

    def _apply(self, units, sessions, y, new_states, results, counts, statuses, t0, t1) -> None:
        """Make a finished run the truth of its sessions ("ok" ones) and settle their entries."""
        counts_list = counts.tolist()
        slots = [s.slot for s in sessions]
        skip: list[int] = []  # rows not to write: not committed, failed while queued, or closed meanwhile
        push = self._push
        a = 0
        for unit in units:
            n = len(unit.sessions)
            unit.y, unit.states, unit.counts = (y, new_states, counts) if len(units) == 1 else \
                (y[a:a + n], new_states[a:a + n], counts[a:a + n])
            settled = 0
            for i, s in enumerate(unit.sessions):
                j = a + i
                if statuses is not None and statuses[j] != "ok":
                    skip.append(j)
                    if statuses[j] != "closed":
                        continue  # conflict or missing: _redo settles it
                settled += 1
                if s.running is not unit:  # its entry failed while queued
                    skip.append(j)
                    continue
                after = s.finish(counts_list[j], results[j] if results else None)
                if after is READY:
                    push(s.head)
                elif after is GONE:
                    skip.append(j)
                    self.table.release(s)
            if settled:
                unit._settled(settled)
            a += n
        rows = self.slab.rows
        if not skip:
            if len(slots) == 1:  # the common unary case, without numpy's fancy-indexing overheads
                rows[slots[0]] = new_states[0]
            else:
                rows[slots] = new_states
        elif len(skip) < len(slots):
            keep = np.ones(len(slots), dtype=bool)
            keep[skip] = False
            rows[np.asarray(slots)[keep]] = new_states[keep]
        self.policy.ran(len(sessions))
        if self.metrics is not None:
            self.metrics.observe_batch(self.runner.name, len(sessions), y.shape[1],
                                       t0 - min(u.enqueued for u in units), t1 - t0)

    async def _redo(self, units: list[Unit], statuses: list[str]) -> None:
        """Entries whose commit lost a compare-and-set: reload the sessions (one store read for all of them),
        then replay, refuse or re-run each."""
        a, conflicts = 0, []
        for unit in units:
            for i, s in enumerate(unit.sessions):
                status = statuses[a + i]
                if status == "conflict":
                    conflicts.append((unit, i, s))
                elif status == "missing":
                    self._gone(unit, i, s)
            a += len(unit.sessions)
        if not conflicts:
            return
        try:
            found = await self.persistence.reload_many([s for _, _, s in conflicts])
        except StatestreamError as e:
            for unit, i, s in conflicts:
                self._fail_entry(unit, i, s, e)
            return
        for (unit, i, s), there in zip(conflicts, found):
            self._reconcile(unit, i, s, there)

    def _reconcile(self, unit: Unit, i: int, s: Session, found: bool) -> None:
        if not found:
            self._gone(unit, i, s)
            return
        seq = None if unit.seqs is None else unit.seqs[i]
        if seq is not None and seq <= s.last_seq:  # another process applied it: its record stands
            if seq == s.last_seq and s.last_result is not None:
                unit.replay(i, s.last_result)
                self._after(s)
            else:
                self._fail_entry(unit, i, s, FailedPrecondition(
                    f"sequence number {seq} is stale for session {s.id!r}; expected {s.last_seq + 1}"))
            return
        if seq is not None and seq != s.last_seq + 1:
            self._fail_entry(unit, i, s, FailedPrecondition(
                f"sequence number {seq} is out of order (gap) for session {s.id!r}; expected {s.last_seq + 1}"))
            return
        # re-run on the fresh state, ahead of this session's later steps
        redo = unit if len(unit.sessions) == 1 else Unit(
            [s], unit.x[i:i + 1], None if seq is None else [seq], unit.future, parent=(unit, i))
        s.retry(redo)
        self.pending.count += 1
        self._push(redo, front=True)

    def _gone(self, unit: Unit, i: int, s: Session) -> None:
        """Entry i's session is no longer in the store: the entry fails NOT_FOUND and the session leaves here."""
        self._fail_entry(unit, i, s, gone(s))
        self.persistence.forget(s)

    def _after(self, s: Session) -> None:
        if s.undo():
            self._push(s.head)
        self.table.release(s)

    def _fail_entry(self, unit: Unit, i: int, s: Session, err: StatestreamError) -> None:
        """Entry i failed and was not applied; the session's queued steps fail with it (they were ordered
        after it, and their sequence numbers would now be a gap)."""
        unit.fail(i, err)
        if s.running is unit:
            s.undo()
        self.fail_queued(s, err)
        s.forget_accepted()
        self.table.release(s)

    def _fail_run(self, units: list[Unit], err: StatestreamError) -> None:
        for unit in units:
            for i, s in enumerate(unit.sessions):
                self._fail_entry(unit, i, s, err)

    def _internal(self, e: Exception) -> StatestreamError:
        if isinstance(e, StatestreamError):
            return e
        log.exception("model %r: unexpected error applying a batch", self.runner.name, exc_info=e)
        return Internal(f"model {self.runner.name!r}: internal error ({type(e).__name__}); nothing was applied")

    # -- other writers of a session: SetState, close ----------------------------------------

    def hold(self, s: Session) -> None:
        """Keep the batcher off a session while its state is changed elsewhere (steps queue behind)."""
        s.hold()

    def release(self, s: Session) -> None:
        if s.release():
            self._push(s.head)

    def fail_queued(self, s: Session, err: StatestreamError) -> None:
        """Fail the queued (not running) steps of a session: it is going away, or a step before them failed."""
        for unit in s.drain():
            self.pending.count -= 1
            unit.fail(unit.sessions.index(s) if len(unit.sessions) > 1 else 0, err)
            if len(unit.errors) == len(unit.sessions):
                unit.dead = True

    def close(self, s: Session) -> None:
        """Close a session: its queued steps fail NOT_FOUND; a step already running finishes unapplied."""
        self.fail_queued(s, NotFound(f"session {s.id!r} was closed"))
        self.table.close(s)
