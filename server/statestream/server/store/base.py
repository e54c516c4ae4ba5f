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


@dataclass
class Records:
    """The records of one commit by column, every one of the same model version: what a model run writes, without
    a SessionRecord per session. A sequence of SessionRecords too (`len`, `records[i]`, iteration), so a store
    that writes row by row takes it as it takes a list; `Records.of` makes one of SessionRecords."""

    ids: list[str]
    owners: list[str | None]
    model: str
    model_version: int
    model_hash: str
    state: np.ndarray                       # [n, W] float32
    step_count: np.ndarray                  # [n] int64
    timeout: np.ndarray                     # [n] float64
    expires_at: np.ndarray                  # [n] float64, wall clock
    version: np.ndarray                     # [n] int64
    last_seq: list[int]
    last_output: list[np.ndarray | None]    # each [T, O]
    last_state: list[np.ndarray | None]
    last_step_count: list[int]
    last_fp: list[int]

    @classmethod
    def of(cls, records) -> "Records":
        """SessionRecords (a list, or Records as they are), all of one model version."""
        if isinstance(records, Records):
            return records
        first = records[0]
        if any(r.model != first.model or r.model_version != first.model_version or r.model_hash != first.model_hash
               for r in records):
            raise ValueError("Records.of: records of several model versions")
        return cls([r.id for r in records], [r.owner for r in records], first.model, first.model_version,
                   first.model_hash, np.stack([r.state for r in records]),
                   np.array([r.step_count for r in records], np.int64), np.array([r.timeout for r in records]),
                   np.array([r.expires_at for r in records]), np.array([r.version for r in records], np.int64),
                   [r.last_seq for r in records], [r.last_output for r in records], [r.last_state for r in records],
                   [r.last_step_count for r in records], [r.last_fp for r in records])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> SessionRecord:
        return SessionRecord(self.ids[i], self.model, self.owners[i], self.state[i], int(self.step_count[i]),
                             self.last_seq[i], float(self.timeout[i]), float(self.expires_at[i]), self.last_output[i],
                             self.last_state[i], self.last_step_count[i], int(self.version[i]), self.last_fp[i],
                             self.model_version, self.model_hash)

    def __iter__(self):
        return (self[i] for i in range(len(self.ids)))

    def take(self, keep: list[int]) -> "Records":
        """The records at these indexes."""
        return Records([self.ids[i] for i in keep], [self.owners[i] for i in keep], self.model, self.model_version,
                       self.model_hash, self.state[keep], self.step_count[keep], self.timeout[keep],
                       self.expires_at[keep], self.version[keep], *([column[i] for i in keep] for column in (
                           self.last_seq, self.last_output, self.last_state, self.last_step_count, self.last_fp)))


class StateStore(Protocol):
    """What persistence.py needs from a backend (store/persistence.py is its one caller).

    `commit` is awaited before a step is answered (for a durable store), is called once per batch with every
    session the batch changed (a `Records`, or a list of SessionRecords: both are sequences of SessionRecords)
    and costs one round trip / one transaction. It is a compare-and-set per record:
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

    async def commit(self, records: Records | list[SessionRecord], *, timeout: float | None = None) -> list[str]: ...

    async def delete(self, keys: list[tuple[str | None, str]], *, timeout: float | None = None) -> None: ...

    async def check(self) -> str | None: ...

    def close(self) -> None: ...
