"""The store seam: SessionRecord, the StateStore protocol and its commit statuses, and --state-store parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

OK, CONFLICT, MISSING = "ok", "conflict", "missing"  # a record's compare-and-set (StateStore.commit)
CLOSED = "closed"  # persistence: the session was closed before its commit, nothing was written for it
DEFAULT_TIMEOUT = 2.0  # seconds a store call may take before it is UNAVAILABLE (--store-timeout)


class StoreUnreadable(Exception):
    """The store's data can not be read at start (a corrupt or foreign file); the message names it, in one line."""


@dataclass
class SessionRecord:
    """Everything that must survive a restart for one session."""

    id: str
    model: str
    owner: str | None
    state: np.ndarray            # [W] float32
    step_count: int
    last_seq: int
    timeout: float
    expires_at: float            # wall clock (time.time())
    last_output: np.ndarray | None = None   # recorded result of step `last_seq`: [T, O]
    last_state: np.ndarray | None = None    # and the states after it
    last_step_count: int = 0
    version: int = 0             # bumped by every committed change; the compare-and-set key of a shared store
    last_fp: int = 0             # fingerprint of step `last_seq`'s input (unsigned 64-bit): a retry with other input
                                 # is refused
    model_version: int = 1       # the version of `model` whose weights made `state`
    model_hash: str = ""         # sha256 of that version's file; "" (records written before versions): whatever
                                 # version 1 is loaded now (the next write records its hash)


class StateStore(Protocol):
    """What persistence.py needs from a backend (store/persistence.py is its one caller).

    `commit` is awaited before a step is answered (for a durable store), is called once per batch with every
    session the batch changed and costs one round trip / one transaction. It is a compare-and-set per record:
    a record is written only if the stored version is `rec.version - 1`; the answer per record is "ok",
    "conflict" (the stored version differs: another process wrote it) or "missing" (closed or expired
    elsewhere). A store that cannot be reached raises `errors.Unavailable`, and nothing of that call was
    applied by this process.

    Every call takes an optional keyword `timeout` (seconds; None: the store's default, --store-timeout): when
    it passes, the call raises `errors.Unavailable` (the caller can pass a request's remaining deadline, so
    the client learns "nothing was applied" in time to retry). `check()` says whether the store can take
    writes now (None) or why not; the server's health follows it.
    """

    durable: bool       # a step is answered only after its write succeeded
    shared: bool        # other processes write it too: the local session table is a cache
    description: str

    def load(self) -> list[SessionRecord]: ...

    async def fetch(self, owner: str | None, sid: str, *, timeout: float | None = None) -> SessionRecord | None: ...

    async def fetch_many(self, keys: list[tuple[str | None, str]], *,
                         timeout: float | None = None) -> list[SessionRecord | None]: ...

    async def create(self, rec: SessionRecord, *, timeout: float | None = None) -> bool: ...

    async def commit(self, records: list[SessionRecord], *, timeout: float | None = None) -> list[str]: ...

    async def delete(self, keys: list[tuple[str | None, str]], *, timeout: float | None = None) -> None: ...

    async def check(self) -> str | None: ...

    def close(self) -> None: ...
