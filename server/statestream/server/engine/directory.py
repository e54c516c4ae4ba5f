"""Directory: finds, opens, re-reads, changes and closes sessions (the local table, read through to a store)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from statestream.contract.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    show,
)
from statestream.server.engine.batcher import Batcher
from statestream.server.engine.sessions import Session
from statestream.server.engine.table import SessionTable, gone
from statestream.server.store.base import MISSING, OK
from statestream.server.store.persistence import Persistence

log = logging.getLogger("statestream.directory")

_CAS_TRIES = 5  # a SetState that keeps losing its compare-and-set gives up after this many tries


class Directory:
    """Every way a request names a session. With a shared store the table is a cache: a miss reads through, a
    refused sequence number or a GetState re-reads an idle cached session first (another process may have
    stepped it), and a full cache evicts its least recently used idle session."""

    def __init__(self, table: SessionTable, persistence: Persistence, batchers: dict[str, Batcher]):
        self.table = table
        self.persistence = persistence
        self.batchers = batchers
        self._rereads: dict[Session, asyncio.Task] = {}

    async def get(self, sid: str, owner) -> Session:
        """The session `sid`: cached here, or read from a shared store; NotFound otherwise."""
        s = self.table.find(sid, owner)
        if s is None:
            s = await self._lookup(sid, owner)
            if s is None:
                raise self.table.missing(sid, owner)
        return s

    async def _lookup(self, sid: str, owner) -> Session | None:
        if not sid:
            return None
        rec = await self.persistence.fetch((owner, sid))
        if rec is None:
            return None
        cached = self.table.find(sid, owner)  # another call may have read it meanwhile
        if cached is not None:
            return cached
        if self.persistence.shared:
            self.table.make_room()
        return self.table.adopt(rec)

    async def fresh(self, sid: str, owner) -> Session:
        """Like get, but an idle session cached from a shared store is re-read first: what GetState answers must
        not be stale, clients resume their numbering from it."""
        s = await self.get(sid, owner)
        if self.persistence.shared and s.idle:
            await self.reread(s)
        return s

    async def reread(self, s: Session) -> None:
        """Replace an idle cached session by the shared store's record (one re-read at a time per session: callers
        arriving meanwhile wait for it); NotFound, and dropped here, when the store has it no more."""
        task = self._rereads.get(s)
        if task is None:
            s.hold()
            task = self._rereads[s] = asyncio.get_running_loop().create_task(self._reread(s))
        if not await asyncio.shield(task):
            raise gone(s)

    async def _reread(self, s: Session) -> bool:
        try:
            rec = (await self.persistence.fetch_many([(s.owner, s.id)]))[0]
            if rec is not None:
                self.table.adopt(rec)
        finally:
            del self._rereads[s]
            self.batchers[s.key].release(s)
        if rec is None:
            self.table.close(s)
        return rec is not None

    def rereading(self, s: Session) -> bool:
        return s in self._rereads

    async def open(self, model: str, sid: str, owner, timeout: float = 0.0, row=None, version: int = 0) -> Session:
        """Open a session (zero states, or `row`) on `version` of the model (0: the default)."""
        if sid and self.persistence.shared and await self._lookup(sid, owner) is not None:
            raise AlreadyExists(f"session {sid!r} is already open")
        if self.persistence.shared:
            self.table.make_room()
        s = self.table.open(model, sid, timeout, owner, version)
        if row is not None:
            self.table.set_state(s, row)
        await self._created(s)
        return s

    async def _created(self, s: Session) -> None:
        """A session was opened here: create its record (another process may have it already)."""
        rec = self.table.record(s)
        try:
            created = await self.persistence.create(rec)
        except Exception:
            self.table.close(s)  # not durable, so not opened
            raise
        if not created:
            self.table.close(s)
            raise AlreadyExists(f"session {s.id!r} is already open")
        s.stored(rec.version)

    async def open_block(self, model: str, sids: list[str], owner, timeout: float, version: int = 0) -> list[Session]:
        """N sessions with contiguous state rows (a group), all or none."""
        members = self.table.open_block(model, sids, timeout, owner, version)
        created = []
        try:
            for s in members:
                await self._created(s)
                created.append(s)
        except Exception:
            for s in members:
                self.table.close(s)
            await self.persistence.delete([(s.owner, s.id) for s in created])
            raise
        return members

    async def resolve(self, sid: str, model: str, open_if_missing: bool, owner,
                      version: int = 0) -> tuple[Session, bool]:
        """(the session a step names, opened now?); with open_if_missing, opened on `model` (`version`, 0: the
        default) when absent.

        A caller that then refuses the step must `abandon` a session it opened."""
        if open_if_missing:
            if not sid:
                raise InvalidArgument("open_if_missing needs a session_id")
            if not model:
                raise InvalidArgument("open_if_missing needs the model name")
            try:
                s = await self.get(sid, owner)
            except NotFound:
                self.table.runner(model, version)
                return await self.open(model, sid, owner, version=version), True
        else:
            s = await self.get(sid, owner)
        if model and s.model != model:
            raise InvalidArgument(f"session {show(sid)} is on model {s.model!r}, not {show(model)}")
        return s, False

    async def abandon(self, s: Session, opened: bool) -> None:
        """A refused step leaves no trace, not even the session open_if_missing opened for it."""
        if opened and s.idle:
            self.table.close(s)
            await self.persistence.delete([(s.owner, s.id)])

    async def set_state(self, s: Session, row, step_count: int | None, last_seq: int | None) -> None:
        """Overwrite a session's states and (optionally) counters; all or nothing."""
        batcher = self.batchers[s.key]
        s.hold()  # steps that arrive meanwhile queue behind this change
        old_row = self.table.state(s).copy()
        before = s.counters()
        try:
            self.table.set_state(s, row)
            s.set_counters(step_count, last_seq)
            self.table.touch(s)
            await self._changed(s)
        except Exception:  # not durable: as if it never happened
            self.table.set_state(s, old_row)
            s.restore_counters(before)
            raise
        finally:
            batcher.release(s)

    async def migrate(self, s: Session, runner) -> None:
        """Move an idle session onto another loaded version of its model (the caller compared the state layouts):
        written first, then moved; all or nothing. Steps that arrive meanwhile run on the new version (or fail,
        when its input size differs from the version they were sent for)."""
        old = s.key
        s.hold()
        try:
            await self._changed(s, runner)
            self.table.move(s, runner.key)
        finally:
            if s.key != old and s.head is not None:
                queued = [s.head, *s.queue]
                if runner.features != self.table.runners[old].features:
                    self.batchers[old].fail_queued(s, FailedPrecondition(
                        f"session {s.id!r} moved to version {runner.version}, whose input has {runner.features} "
                        "values per timestep; steps sent meanwhile were not applied"))
                elif any(len(unit.sessions) > 1 for unit in queued):  # their other sessions stay on the old slab
                    self.batchers[old].fail_queued(s, FailedPrecondition(
                        f"session {s.id!r} moved to version {runner.version}; steps sent meanwhile in a frame with "
                        "other sessions were not applied"))
                else:  # its own steps run on the new version: their slot is the one in the new slab
                    for unit in queued:
                        unit.slots = np.array([s.slot], np.intp)
            self.batchers[s.key].release(s)

    async def _changed(self, s: Session, to=None) -> None:
        """A held session's state or counters were set (or it moves `to` another model version): write them,
        winning over a stale copy."""
        if not self.persistence.durable:
            s.stored(s.version + 1)
            return
        for _ in range(_CAS_TRIES):
            records = self.table.records([s], [s.slot], to=to)
            status = (await self.persistence.commit(records))[0]
            if status == OK:
                s.stored(int(records.version[0]))
                return
            if status == MISSING:
                raise gone(s)
            fresh = (await self.persistence.fetch_many([(s.owner, s.id)]))[0]
            if fresh is None:
                raise gone(s)
            s.stored(fresh.version)  # ours overwrites it: SetState is a deliberate write
        raise Unavailable(f"session {s.id!r} is being changed elsewhere; SetState lost {_CAS_TRIES} times")

    async def close(self, s: Session) -> int:
        """Close a session: its queued steps fail NOT_FOUND, a running one finishes unapplied."""
        self.batchers[s.key].close(s)
        await self.persistence.delete([(s.owner, s.id)])
        return s.step_count

    async def expired(self, sessions: list[Session]) -> None:
        """Idle sessions left this process. A shared store keeps them (its own TTL expires them there)."""
        if not self.persistence.shared:
            await self.persistence.delete([(s.owner, s.id) for s in sessions])
