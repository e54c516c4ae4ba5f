"""Batcher: one consumer per model runs at most one pending step per session per batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor

import numpy as np

from .errors import FailedPrecondition, Internal, InvalidArgument, ResourceExhausted, StatestreamError
from .model import ModelRunner
from .sessions import Session, SessionTable, StepResult

log = logging.getLogger("statestream.batcher")


SHARED_MEMORY_SECONDS = 0.05  # how long one shared run keeps stream steps queuing (so they keep batching)


class _Item:
    __slots__ = ("session", "x", "seq", "future", "enqueued")

    def __init__(self, session: Session, x: np.ndarray, seq: int | None, future: asyncio.Future):
        self.session = session
        self.x = x
        self.seq = seq
        self.future = future
        self.enqueued = time.perf_counter()


class PendingCounter:
    """Steps queued in the whole server, against --max-pending."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0


class Batcher:
    """Gathers ready sessions of one model into batches and applies them atomically."""

    def __init__(self, runner: ModelRunner, table: SessionTable, executor: Executor, *, max_batch_size: int,
                 max_queue_delay: float, max_pending_per_session: int, pending: PendingCounter, store,
                 inline_max_batch: int = 0, metrics=None):
        self.runner = runner
        self.table = table
        self.slab = table.slabs[runner.name]
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_pending_per_session = max_pending_per_session
        self.pending = pending
        self.metrics = metrics
        self.store = store
        self.inline_max_batch = inline_max_batch
        # With a queue delay the operator asked for batching; with a durable store a step must await its commit.
        self.direct = max_queue_delay == 0 and not store.durable
        self._last_shared = 0.0  # when a model run last held more than one session
        self._probe = 0
        self._ready: deque[Session] = deque()
        self._groups: deque = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

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
        while self._ready or self._groups or not self._idle.is_set():
            await asyncio.sleep(0.005)

    def submit(self, s: Session, x: np.ndarray, seq: int | None, direct: bool | str = True) -> tuple[asyncio.Future, bool]:
        """Queue one step (x: float32 [T,F]) of session s. Returns (future of StepResult, replayed).

        Exactly-once: `seq` must be accepted+1; a repeat of the last accepted
        number returns that step's result (recorded, or still to come) and
        queues nothing.
        """
        loop = asyncio.get_running_loop()
        if seq is not None:
            if seq <= 0:
                raise InvalidArgument(f"sequence_number must be >= 1, got {seq}")
            if seq == s.accepted_seq:
                if s.last_seq == seq and s.last_result is not None:
                    fut = loop.create_future()
                    fut.set_result(s.last_result)
                    return fut, True
                for item in reversed(s.pending):
                    if item.seq == seq:
                        return item.future, True
                raise FailedPrecondition(
                    f"sequence number {seq} was applied but its response is no longer held; expected {s.accepted_seq + 1}")
            if seq != s.accepted_seq + 1:
                kind = "stale" if seq < s.accepted_seq else "out of order (gap)"
                raise FailedPrecondition(
                    f"sequence number {seq} is {kind} for session {s.id!r}; expected {s.accepted_seq + 1}")
        if len(s.pending) >= self.max_pending_per_session:
            raise ResourceExhausted(
                f"session {s.id!r} has {len(s.pending)} queued steps; the limit is {self.max_pending_per_session} "
                "(--max-pending-per-session)")
        if self.pending.count >= self.pending.limit:
            raise ResourceExhausted(f"server queue is full: {self.pending.limit} steps pending (--max-pending)")
        fut = loop.create_future()
        if seq is not None:
            s.accepted_seq = seq
        if direct == "auto":
            direct = self._lone()
        if direct and self._direct_ok(s, x):
            self._direct(s, x, seq, fut)
            return fut, False
        if not s.pending:
            s.pending = deque()
        s.pending.append(_Item(s, x, seq, fut))
        self.pending.count += 1
        if not s.busy and len(s.pending) == 1:
            self._ready.append(s)
            self._wake.set()
        return fut, False

    def _direct_ok(self, s: Session, x: np.ndarray) -> bool:
        """Nothing is waiting, the session is idle and the run is small: no reason to queue it."""
        return (self.direct and not s.busy and not s.pending and not self._ready and not self._groups
                and x.shape[0] <= self.inline_max_batch)

    def _lone(self) -> bool:
        """For stream steps: run at once only while runs have been solo for a while (one busy stream).

        One in 16 such steps queues anyway as a probe: if other streams' steps join it, runs are shared
        again and streams go back to batching.
        """
        if time.perf_counter() - self._last_shared < SHARED_MEMORY_SECONDS:
            return False
        self._probe += 1
        return self._probe % 16 != 0

    def submit_group(self, sessions: list[Session], x: np.ndarray) -> asyncio.Future:
        """Queue one step for each of N distinct idle sessions (a frame) as one unit; x: [N,T,F].

        The caller checked that none of them is busy or has queued steps, so the
        group can run as it is; they are busy from now until it has run. The
        future resolves to (y[N,T,O], states[N,W], step_counts[N]).
        """
        if self.pending.count + len(sessions) > self.pending.limit:
            raise ResourceExhausted(f"server queue is full: {self.pending.limit} steps pending (--max-pending)")
        fut = asyncio.get_running_loop().create_future()
        for s in sessions:
            s.busy = True
        self.pending.count += len(sessions)
        self._groups.append((sessions, x, fut, time.perf_counter()))
        self._wake.set()
        return fut

    def _take(self) -> list[_Item]:
        """Up to max_batch_size heads of ready sessions that share the first one's T."""
        while self._ready and (self._ready[0].closed or not self._ready[0].pending):
            self._ready.popleft()
        if not self._ready:
            return []
        first = self._ready[0].pending[0].x.shape[0]
        batch: list[_Item] = []
        skipped: list[Session] = []
        while self._ready and len(batch) < self.max_batch_size:
            s = self._ready.popleft()
            if s.closed or not s.pending:
                continue
            head = s.pending[0]
            if head.x.shape[0] != first:
                skipped.append(s)
                continue
            s.pending.popleft()
            s.busy = True
            batch.append(head)
        self._ready.extendleft(reversed(skipped))
        self.pending.count -= len(batch)
        return batch

    async def _consume(self) -> None:
        while True:
            if not self._ready and not self._groups:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._idle.clear()
            try:
                if self._groups:  # frames first: they are whole batches already
                    await self._run_group(*self._groups.popleft())
                if self._ready:
                    if self.max_queue_delay > 0 and len(self._ready) < self.max_batch_size:
                        await asyncio.sleep(self.max_queue_delay)
                    else:  # one loop turn: requests that arrived together join this batch (3x on streams)
                        await asyncio.sleep(0)
                    batch = self._take()
                    if batch:
                        await self._run_items(batch)
            except Exception:  # never let the consumer die
                log.exception("batcher %r: unexpected error", self.runner.name)
            finally:
                self._idle.set()

    def _run_model(self, x: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One model run on this thread; any failure becomes Internal (nothing applied)."""
        try:
            y, new_states = self.runner.run(x, states)
        except Exception as e:
            log.error("model %r: batch of %d failed: %r", self.runner.name, x.shape[0], e)
            raise Internal(f"model {self.runner.name!r} failed to run ({type(e).__name__}); nothing was applied")
        if not (np.isfinite(y).all() and np.isfinite(new_states).all()):
            raise Internal("the model produced NaN or Inf; nothing was applied")
        return y, new_states

    def _outcome(self, sessions, y, new_states, seqs):
        """(new step counts, StepResults of sequenced steps or None) for a finished run."""
        counts = np.fromiter((s.step_count for s in sessions), dtype=np.int64, count=len(sessions)) + y.shape[1]
        results = None
        if seqs is not None:
            results = [StepResult(y[i], new_states[i], int(counts[i]), seq) if seq is not None else None
                       for i, seq in enumerate(seqs)]
        return counts, results

    def _commit(self, sessions, slots, new_states, counts, results, timesteps: int, wait: float,
                compute: float) -> None:
        """Make a finished run the sessions' truth (states, step counts, recorded responses); count it."""
        if len(sessions) == 1:  # the common unary case, without numpy's fancy-indexing overheads
            if not sessions[0].closed:
                self.slab.rows[slots[0]] = new_states[0]
        else:
            live = np.fromiter((not s.closed for s in sessions), dtype=bool, count=len(sessions))
            self.slab.rows[slots[live]] = new_states[live]
        for s, count in zip(sessions, counts.tolist()):
            s.step_count = count
        if results:
            for s, res in zip(sessions, results):
                if res is not None:
                    s.last_seq = res.sequence_number
                    s.last_result = StepResult(res.output.copy(), res.state.copy(), res.step_count,
                                               res.sequence_number)
        if len(sessions) > 1:
            self._last_shared = time.perf_counter()
        if self.metrics is not None:
            self.metrics.observe_batch(self.runner.name, len(sessions), timesteps, wait, compute)

    async def _apply(self, sessions: list[Session], x: np.ndarray, seqs: list | None, enqueued: float):
        """Run one batch and apply it atomically: states, counters, store. Returns (y, states', counts)."""
        slots = np.fromiter((s.slot for s in sessions), dtype=np.intp, count=len(sessions))
        t0 = time.perf_counter()
        if len(sessions) * x.shape[1] <= self.inline_max_batch:  # a thread hop costs more than the run
            y, new_states = self._run_model(x, self.slab.rows[slots])
        else:
            y, new_states = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._run_model, x, self.slab.rows[slots])
        t1 = time.perf_counter()
        counts, results = self._outcome(sessions, y, new_states, seqs)
        if self.store.durable:  # answer only after the batch is committed
            try:
                await self.store.put([
                    self.table.record(s, new_states[i], int(counts[i]), results[i] if results else None)
                    for i, s in enumerate(sessions) if not s.closed])
            except Exception as e:
                log.error("state store write failed: %r", e)
                raise Internal("the state store failed; nothing was applied")
        self._commit(sessions, slots, new_states, counts, results, x.shape[1], t0 - enqueued, t1 - t0)
        return y, new_states, counts

    def _direct(self, s: Session, x: np.ndarray, seq: int | None, fut: asyncio.Future) -> None:
        """Apply one step right now, in the caller: a batch of one without a trip through the queue."""
        s.busy = True
        t0 = time.perf_counter()
        try:
            y, new_states = self._run_model(x[None], self.slab.rows[s.slot:s.slot + 1])
            t1 = time.perf_counter()
            counts, results = self._outcome([s], y, new_states, None if seq is None else [seq])
            self._commit([s], [s.slot], new_states, counts, results, x.shape[0], 0.0, t1 - t0)
        except Exception as e:
            self._fail_session(s, self._internal(e), fut)
            return
        fut.set_result(StepResult(y[0], new_states[0], int(counts[0]), seq))
        self._release([s])

    def _internal(self, e: Exception) -> StatestreamError:
        if isinstance(e, StatestreamError):
            return e
        log.exception("model %r: unexpected error applying a batch", self.runner.name, exc_info=e)
        return Internal(f"model {self.runner.name!r}: internal error ({type(e).__name__}); nothing was applied")

    def _release(self, sessions: list[Session]) -> None:
        for s in sessions:
            s.busy = False
            self.table.release(s)
            if s.pending and not s.closed:
                self._ready.append(s)

    async def _run_items(self, batch: list[_Item]) -> None:
        sessions = [it.session for it in batch]
        seqs = [it.seq for it in batch]
        try:
            y, new_states, counts = await self._apply(sessions, np.stack([it.x for it in batch]),
                                                      seqs if any(q is not None for q in seqs) else None,
                                                      min(it.enqueued for it in batch))
        except Exception as e:  # nothing applied; later queued steps of these sessions neither
            err = self._internal(e)
            for it in batch:
                self._fail_session(it.session, err, it.future)
            return
        for i, it in enumerate(batch):
            if not it.future.done():
                it.future.set_result(StepResult(y[i], new_states[i], int(counts[i]), it.seq))
        self._release(sessions)

    async def _run_group(self, sessions: list[Session], x: np.ndarray, fut: asyncio.Future, enqueued: float) -> None:
        self.pending.count -= len(sessions)
        try:
            result = await self._apply(sessions, x, None, enqueued)
        except Exception as e:
            err = self._internal(e)
            if not fut.done():
                fut.set_exception(err)
            for s in sessions:
                self._fail_session(s, err)
            return
        if not fut.done():
            fut.set_result(result)
        self._release(sessions)

    def _fail_session(self, s: Session, err: StatestreamError, fut: asyncio.Future | None = None) -> None:
        if fut is not None and not fut.done():
            fut.set_exception(err)
        self.fail_pending(s, err)
        s.accepted_seq = s.last_seq
        s.busy = False
        self.table.release(s)

    def hold(self, s: Session) -> None:
        """Keep the batcher off a session (its steps queue) while its state is changed elsewhere."""
        if s.busy or s.pending:
            raise FailedPrecondition(
                f"session {s.id!r} has {len(s.pending) + s.busy} step(s) in flight; change its state when they are done")
        s.busy = True

    def unhold(self, s: Session) -> None:
        self._release([s])
        if self._ready:
            self._wake.set()

    def fail_pending(self, s: Session, err: StatestreamError) -> None:
        """Fail the queued (not running) steps of a session that is going away."""
        while s.pending:
            it = s.pending.popleft()
            self.pending.count -= 1
            if not it.future.done():
                it.future.set_exception(err)
