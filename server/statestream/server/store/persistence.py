"""Persistence: the one door from the engine to the state store (records in, records and statuses out)."""

from __future__ import annotations

import logging

from statestream.contract.errors import Internal, StatestreamError
from statestream.server.store.base import CLOSED, Records, SessionRecord

log = logging.getLogger("statestream.persistence")

Key = tuple  # (owner, session id)


class Persistence:
    """Every store call of the engine goes through here: nothing is written for the memory store (not durable), a
    shared store is read through on a miss, and errors keep their meaning. A store that cannot be reached raises
    Unavailable ("nothing was applied": retry); any other exception is a bug, logged once with its traceback and
    INTERNAL to the caller, so a client does not retry a deterministic failure until its deadline."""

    def __init__(self, store):
        self.store = store
        self.durable = store.durable
        self.shared = getattr(store, "shared", False)

    async def _call(self, what: str, coro):
        try:
            return await coro
        except StatestreamError:
            raise
        except Exception as e:
            log.error("state store %s: unexpected error", what, exc_info=e)
            raise Internal(f"the state store's {what} failed unexpectedly ({type(e).__name__}); "
                           "nothing was applied") from e

    async def create(self, rec: SessionRecord) -> bool:
        """Store a new session; False when another process has it already. True without a durable store."""
        if not self.durable:
            return True
        return await self._call("create", self.store.create(rec))

    async def commit(self, records: Records | list[SessionRecord] | None, timeout: float | None = None,
                     closed: list[int] = ()) -> list[str] | None:
        """One write for a model run: a compare-and-set per record, "ok" | "conflict" | "missing" each, CLOSED for
        the entries in `closed` (their sessions were closed meanwhile: not written). None when nothing is stored.
        `timeout`: seconds the write may take (None: the store's --store-timeout), then Unavailable."""
        if records is None or not self.durable:
            return None
        records = Records.of(records)
        n = len(records)
        if closed:
            gone = set(closed)
            records = records.take([i for i in range(n) if i not in gone])
        default = getattr(self.store, "timeout", None)
        if timeout is not None and default is not None:
            timeout = min(timeout, default)
        got = await self._call("commit", self.store.commit(records, timeout=timeout)) if len(records) else []
        if not closed:
            return got
        got = iter(got)
        return [CLOSED if i in gone else next(got) for i in range(n)]

    async def fetch(self, key: Key) -> SessionRecord | None:
        """A shared store's record of a session (None: not there, or the store is not shared)."""
        if not self.shared:
            return None
        return (await self.fetch_many([key]))[0]

    async def fetch_many(self, keys: list[Key]) -> list[SessionRecord | None]:
        return await self._call("fetch", self.store.fetch_many(keys))

    async def delete(self, keys: list[Key]) -> None:
        if self.durable and keys:
            await self._call("delete", self.store.delete(keys))
