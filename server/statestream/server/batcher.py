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
                 metrics=None):
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
        self._ready: deque[Session] = deque()
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
        while self._ready or not self._idle.is_set():
            await asyncio.sleep(0.005)

    def submit(self, s: Session, x: np.ndarray, seq: int | None) -> tuple[asyncio.Future, bool]:
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
        s.pending.append(_Item(s, x, seq, fut))
        self.pending.count += 1
        if seq is not None:
            s.accepted_seq = seq
        if not s.busy and len(s.pending) == 1:
            self._ready.append(s)
            self._wake.set()
        return fut, False

    def _take(self) -> list[_Item]:
        """Up to max_batch_size heads of ready sessions that share the first one's T."""
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
        loop = asyncio.get_running_loop()
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.max_queue_delay > 0 and len(self._ready) < self.max_batch_size:
                await asyncio.sleep(self.max_queue_delay)
            batch = self._take()
            if not batch:
                continue
            self._idle.clear()
            try:
                await self._run(loop, batch)
            finally:
                self._idle.set()

    async def _run(self, loop, batch: list[_Item]) -> None:
        sessions = [it.session for it in batch]
        slots = np.fromiter((s.slot for s in sessions), dtype=np.intp, count=len(batch))
        x = np.stack([it.x for it in batch])
        states = self.slab.rows[slots]
        t0 = time.perf_counter()
        try:
            y, new_states = await loop.run_in_executor(self.executor, self.runner.run, x, states)
            if not (np.isfinite(y).all() and np.isfinite(new_states).all()):
                raise Internal("the model produced NaN or Inf; nothing was applied")
        except Exception as e:  # the run failed: nothing is applied, later steps of these sessions neither
            err = e if isinstance(e, StatestreamError) else Internal(
                f"model {self.runner.name!r} failed to run ({type(e).__name__}); nothing was applied")
            log.error("batch of %d failed: %r", len(batch), e)
            for it in batch:
                self._fail_session(it, err)
            return
        t1 = time.perf_counter()
        T = x.shape[1]
        results = [StepResult(y[i], new_states[i], it.session.step_count + T, it.seq) for i, it in enumerate(batch)]
        if self.store.durable:  # answer only after the batch is committed
            try:
                await self.store.put([
                    self.table.record(it.session, new_states[i], results[i].step_count,
                                      results[i] if it.seq is not None else None)
                    for i, it in enumerate(batch) if not it.session.closed])
            except Exception as e:
                log.error("state store write failed: %r", e)
                for it in batch:
                    self._fail_session(it, Internal("the state store failed; nothing was applied"))
                return
        live = [not s.closed for s in sessions]
        self.slab.rows[slots[live]] = new_states[live]
        for it, res in zip(batch, results):
            s = it.session
            s.step_count = res.step_count
            if it.seq is not None:
                s.last_seq = it.seq
                s.last_result = StepResult(res.output.copy(), res.state.copy(), res.step_count, it.seq)
            if not it.future.done():
                it.future.set_result(res)
        for s in sessions:
            s.busy = False
            self.table.release(s)
            if s.pending and not s.closed:
                self._ready.append(s)
        if self.metrics is not None:
            self.metrics.observe_batch(self.runner.name, len(batch), T, [t0 - it.enqueued for it in batch], t1 - t0)

    def _fail_session(self, it: _Item, err: StatestreamError) -> None:
        s = it.session
        if not it.future.done():
            it.future.set_exception(err)
        while s.pending:
            rest = s.pending.popleft()
            self.pending.count -= 1
            if not rest.future.done():
                rest.future.set_exception(err)
        s.accepted_seq = s.last_seq
        s.busy = False
        self.table.release(s)

    def fail_pending(self, s: Session, err: StatestreamError) -> None:
        """Fail the queued (not running) steps of a session that is going away."""
        while s.pending:
            it = s.pending.popleft()
            self.pending.count -= 1
            if not it.future.done():
                it.future.set_exception(err)
