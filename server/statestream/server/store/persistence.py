"""Persistence: the one place where session changes reach the state store."""

from __future__ import annotations

import logging

import numpy as np
from statestream.contract.errors import (
    AlreadyExists,
    NotFound,
    StatestreamError,
    Unavailable,
)
from statestream.server.engine.sessions import Session, StepResult
from statestream.server.engine.table import SessionTable

log = logging.getLogger("statestream.persistence")

_CAS_TRIES = 5  # a SetState that keeps losing its compare-and-set gives up after this many tries


def gone(s: Session) -> NotFound:
    """The error for a session the store no longer has: closed or expired by another process."""
    return NotFound(f"session {s.id!r} was closed or expired on another replica")


class Persistence:
    """Writes through to a StateStore (or nothing, for the memory store) and reads through on a miss.

    Every write is a compare-and-set on the session's version, so a process whose cached copy is stale
    never overwrites a newer state: it learns "conflict", reloads, and the batcher re-runs the step.
    """

    def __init__(self, store, table: SessionTable):
        self.store = store
        self.table = table
        self.durable = store.durable
        self.shared = getattr(store, "shared", False)

    async def _call(self, what: str, coro):
        try:
            return await coro
        except StatestreamError:
            raise
        except Exception as e:
            log.error("state store %s failed: %r", what, e)
            raise Unavailable(f"the state store failed ({type(e).__name__}: {str(e)[:200]}); nothing was applied")

    async def opened(self, s: Session) -> None:
        """A session was opened here: create its record (another process may have it already)."""
        if not self.durable:
            return
        rec = self.table.record(s)
        try:
            created = await self._call("create", self.store.create(rec))
        except Exception:
            self.table.close(s)  # not durable, so not opened
            raise
        if not created:
            self.table.close(s)
            raise AlreadyExists(f"session {s.id!r} is already open")
        s.stored(rec.version)

    async def changed(self, s: Session) -> None:
        """A held session's state or counters were set (SetState): write them, winning over a stale copy."""
        if not self.durable:
            s.stored(s.version + 1)
            return
        for _ in range(_CAS_TRIES):
            rec = self.table.record(s)
            status = (await self._call("commit", self.store.commit([rec])))[0]
            if status == "ok":
                s.stored(rec.version)
                return
            if status == "missing":
                raise gone(s)
            fresh = await self._call("fetch", self.store.fetch(s.owner, s.id))
            if fresh is None:
                raise gone(s)
            s.stored(fresh.version)  # ours overwrites it: SetState is a deliberate write
        raise Unavailable(f"session {s.id!r} is being changed elsewhere; SetState lost {_CAS_TRIES} times")

    async def batch(self, sessions: list[Session], states: np.ndarray, counts: list[int],
                    results: list[StepResult | None] | None) -> list[str] | None:
        """One write for a model run's sessions; per session "ok" | "conflict" | "missing" | "closed".

        None when nothing is stored (memory store): every session is "ok"."""
        if not self.durable:
            return None
        idx = [i for i, s in enumerate(sessions) if not s.closed]
        records = [self.table.record(sessions[i], states[i], counts[i], results[i] if results else None)
                   for i in idx]
        out = ["closed"] * len(sessions)
        if records:
            for i, status in zip(idx, await self._call("commit", self.store.commit(records))):
                out[i] = status
        return out

    async def lookup(self, sid: str, owner: str | None) -> Session | None:
        """Read-through: a session not cached here, from a shared store; None when it is not there either."""
        if not self.shared or not sid:
            return None
        rec = await self._call("fetch", self.store.fetch(owner, sid))
        if rec is None:
            return None
        cached = self.table.find(sid, owner)  # another call may have read it meanwhile
        return cached if cached is not None else self.table.adopt(rec)

    async def reload(self, s: Session) -> bool:
        """Replace a cached session's state and counters by the store's (after a lost compare-and-set).

        False when the store no longer has it (closed or expired elsewhere)."""
        return (await self.reload_many([s]))[0]

    async def reload_many(self, sessions: list[Session]) -> list[bool]:
        """reload for many sessions with one read of the store (one round trip)."""
        recs = await self._call("fetch", self.store.fetch_many([(s.owner, s.id) for s in sessions]))
        for rec in recs:
            if rec is not None:
                self.table.adopt(rec)
        return [rec is not None for rec in recs]

    async def closed(self, s: Session) -> None:
        if self.durable:
            await self._call("delete", self.store.delete([(s.owner, s.id)]))

    async def expired(self, sessions: list[Session]) -> None:
        """Idle sessions left this process. A shared store keeps them (its own TTL expires them there)."""
        if self.durable and not self.shared and sessions:
            await self._call("delete", self.store.delete([(s.owner, s.id) for s in sessions]))

    def forget(self, s: Session) -> None:
        """Drop a session from the local table only (the store said it is gone)."""
        self.table.close(s)
