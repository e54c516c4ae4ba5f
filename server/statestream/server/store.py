"""StateStore: where session state survives the process (memory, sqlite; redis is next)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


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
    version: int = 0                        # bumped by every write: the compare-and-set key


class StateStore(Protocol):
    """What persistence.Persistence (its one caller) needs from a backend.

    `commit` is awaited before any step of a batch is answered and is called once per batch with every
    session the batch changed: one transaction / round trip, compare-and-set per record on `version`
    (written only if the stored version is rec.version - 1), so a stale process never overwrites a newer
    state. A shared store (other processes write it too) makes the local table a cache.
    """

    durable: bool
    shared: bool
    description: str

    def load(self) -> list[SessionRecord]: ...

    async def fetch(self, owner: str | None, sid: str) -> SessionRecord | None: ...

    async def create(self, rec: SessionRecord) -> bool: ...

    async def commit(self, records: list[SessionRecord]) -> list[str]: ...  # "ok" | "conflict" | "missing"

    async def delete(self, keys: list[tuple[str | None, str]]) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """The default: sessions live in the process only; a restart starts empty."""

    durable = False
    shared = False
    description = "memory: sessions live in this process only; a restart or crash loses them"

    def load(self) -> list[SessionRecord]:
        return []

    async def fetch(self, owner: str | None, sid: str) -> SessionRecord | None:
        return None

    async def create(self, rec: SessionRecord) -> bool:
        return True

    async def commit(self, records: list[SessionRecord]) -> list[str]:
        return ["ok"] * len(records)

    async def delete(self, keys: list[tuple[str | None, str]]) -> None:
        return None

    def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    owner TEXT NOT NULL,  -- '' when auth is off: NULLs would never conflict in the key
    state BLOB NOT NULL,
    step_count INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    timeout REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_output BLOB,
    last_rows INTEGER,
    last_state BLOB,
    last_step_count INTEGER,
    version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
)"""

_INSERT = "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
_UPSERT = "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"


def _row(r: SessionRecord) -> tuple:
    out = r.last_output
    return (r.id, r.model, r.owner or "", r.state.astype(np.float32).tobytes(), r.step_count, r.last_seq, r.timeout,
            r.expires_at, None if out is None else out.astype(np.float32).tobytes(),
            None if out is None else out.shape[0],
            None if r.last_state is None else r.last_state.astype(np.float32).tobytes(), r.last_step_count,
            r.version)


def _record(row) -> SessionRecord:
    (sid, model, owner, state, steps, last_seq, timeout, expires_at, last_out, last_rows, last_state,
     last_steps, version) = row
    out = None
    if last_out is not None:
        out = np.frombuffer(last_out, dtype=np.float32).reshape(last_rows, -1).copy()
    return SessionRecord(sid, model, owner or None, np.frombuffer(state, dtype=np.float32).copy(), steps, last_seq, timeout,
                         expires_at, out,
                         None if last_state is None else np.frombuffer(last_state, dtype=np.float32).copy(),
                         last_steps or 0, version)


class SqliteStore:
    """Embedded durable store: stdlib sqlite3 in WAL mode, one transaction per batch.

    A step is answered only after its batch's transaction committed, so a
    `kill -9` of the server loses no acknowledged step (synchronous=NORMAL:
    durable against a process crash; an OS crash may lose the last commits).
    Writes run on one dedicated thread, in submission order.
    """

    durable = True
    shared = False

    def __init__(self, path: str):
        self.path = Path(path)
        self.description = f"sqlite:{self.path} (WAL, one transaction per batch, survives kill -9)"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if "version" not in columns:  # a file written before compare-and-set existed
            self._db.execute("ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    def load(self) -> list[SessionRecord]:
        now = time.time()
        self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        return [_record(row) for row in self._db.execute("SELECT * FROM sessions")]

    def _commit(self, rows: list[tuple]) -> list[str]:
        out = []
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for row in rows:
                found = self._db.execute("SELECT version FROM sessions WHERE owner = ? AND id = ?",
                                         (row[2], row[0])).fetchone()
                if found is None:
                    out.append("missing")
                elif found[0] != row[-1] - 1:
                    out.append("conflict")
                else:
                    self._db.execute(_UPSERT, row)
                    out.append("ok")
        return out

    def _create(self, row: tuple) -> bool:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(_INSERT, row)
            except sqlite3.IntegrityError:
                return False
        return True

    def _fetch(self, owner: str | None, sid: str) -> SessionRecord | None:
        row = self._db.execute("SELECT * FROM sessions WHERE owner = ? AND id = ?", (owner or "", sid)).fetchone()
        return None if row is None else _record(row)

    def _delete(self, keys: list[tuple[str | None, str]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM sessions WHERE owner = ? AND id = ?", [(o or "", i) for o, i in keys])

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def commit(self, records: list[SessionRecord]) -> list[str]:
        return await self._run(self._commit, [_row(r) for r in records])

    async def create(self, rec: SessionRecord) -> bool:
        return await self._run(self._create, _row(rec))

    async def fetch(self, owner: str | None, sid: str) -> SessionRecord | None:
        return await self._run(self._fetch, owner, sid)

    async def delete(self, keys: list[tuple[str | None, str]]) -> None:
        if keys:
            await self._run(self._delete, list(keys))

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._db.close()


def check_spec(spec: str) -> tuple[str, str]:
    """(`memory`, "") or (`sqlite`, PATH); anything else is refused with the choices."""
    if spec == "memory":
        return "memory", ""
    if spec.startswith("sqlite:") and len(spec) > len("sqlite:"):
        return "sqlite", spec[len("sqlite:"):]
    if spec.startswith("redis"):
        raise ValueError(f"--state-store {spec}: the Redis backend is the next milestone; use memory or sqlite:PATH")
    raise ValueError(f"--state-store {spec!r}: expected memory or sqlite:PATH")


def open_store(spec: str) -> StateStore:
    """The StateStore named by --state-store."""
    kind, path = check_spec(spec)
    return SqliteStore(path) if kind == "sqlite" else MemoryStore()
