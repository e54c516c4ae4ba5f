"""Directory: finds, opens, resets and closes sessions (the local table, read through to a shared store)."""

from __future__ import annotations

import numpy as np

from statestream.server.engine.batcher import Batcher
from statestream.contract.errors import AlreadyExists, InvalidArgument, NotFound, show
from statestream.server.store.persistence import Persistence
from statestream.server.engine.sessions import Session
from statestream.server.engine.table import SessionTable


class Directory:
    """Every way a request names a session, for every protocol (statestream.v1, frames, Triton)."""

    def __init__(self, table: SessionTable, persistence: Persistence, batchers: dict[str, Batcher]):
        self.table = table
        self.persistence = persistence
        self.batchers = batchers

    async def get(self, sid: str, owner) -> Session:
        """The session `sid`: cached here, or read from a shared store; NotFound otherwise."""
        s = self.table.find(sid, owner)
        if s is None:
            s = await self.persistence.lookup(sid, owner)
            if s is None:
                raise self.table.missing(sid, owner)
        return s

    async def fresh(self, sid: str, owner) -> Session:
        """Like get, but an idle session cached from a shared store is re-read (another replica may have
        stepped it): what GetState answers must not be stale, clients resume their numbering from it."""
        s = await self.get(sid, owner)
        if self.persistence.shared and s.idle:
            await self.batchers[s.model].reread(s)
        return s

    async def open(self, model: str, sid: str, owner, timeout: float = 0.0, row=None, reset: bool = False) -> Session:
        """Open a session (zero states, or `row`); `reset`: an open one goes back to zero states and step 0."""
        if reset and sid:
            try:
                s = await self.get(sid, owner)
            except NotFound:
                pass
            else:
                if s.model != model:
                    raise InvalidArgument(f"session {show(sid)} is on model {s.model!r}, not {show(model)}")
                await self.set_state(s, np.zeros(self.table.slabs[model].width, np.float32) if row is None else row, 0, 0)
                return s
        elif sid and self.persistence.shared and await self.persistence.lookup(sid, owner) is not None:
            raise AlreadyExists(f"session {sid!r} is already open")
        s = self.table.open(model, sid, timeout, owner)
        if row is not None:
            self.table.set_state(s, row)
        await self.persistence.opened(s)
        return s

    async def resolve(self, sid: str, model: str, open_if_missing: bool, owner) -> tuple[Session, bool]:
        """(the session a step names, opened now?); with open_if_missing, opened on `model` when absent.

        A caller that then refuses the step must `abandon` a session it opened."""
        if open_if_missing:
            if not sid:
                raise InvalidArgument("open_if_missing needs a session_id")
            if not model:
                raise InvalidArgument("open_if_missing needs the model name")
            try:
                s = await self.get(sid, owner)
            except NotFound:
                self.table.runner(model)
                return await self.open(model, sid, owner), True
        else:
            s = await self.get(sid, owner)
        if model and s.model != model:
            raise InvalidArgument(f"session {show(sid)} is on model {s.model!r}, not {show(model)}")
        return s, False

    async def abandon(self, s: Session, opened: bool) -> None:
        """A refused step leaves no trace, not even the session open_if_missing opened for it."""
        if opened and s.idle:
            self.table.close(s)
            await self.persistence.closed(s)

    async def set_state(self, s: Session, row, step_count: int | None, last_seq: int | None) -> None:
        """Overwrite a session's states and (optionally) counters; all or nothing."""
        batcher = self.batchers[s.model]
        batcher.hold(s)  # steps that arrive meanwhile queue behind this change
        old_row = self.table.state(s).copy()
        before = s.counters()
        try:
            self.table.set_state(s, row)
            s.set_counters(step_count, last_seq)
            self.table.touch(s)
            await self.persistence.changed(s)
        except Exception:  # not durable: as if it never happened
            self.table.set_state(s, old_row)
            s.restore_counters(before)
            raise
        finally:
            batcher.release(s)

    async def close(self, s: Session) -> int:
        """Close a session: its queued steps fail NOT_FOUND, a running one finishes unapplied."""
        self.batchers[s.model].close(s)
        await self.persistence.closed(s)
        return s.step_count
