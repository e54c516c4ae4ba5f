"""SqliteStore: an embedded durable store (WAL, one transaction per batch, compare-and-set per record)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from statestream.contract.errors import Unavailable
from statestream.server.store.base import CONFLICT, MISSING, OK, SessionRecord

_COLUMNS = ("id", "model", "owner", "state", "step_count", "last_seq", "timeout", "expires_at", "last_output",
            "last_rows", "last_state", "last_step_count", "version")
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
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM sessions"
_INSERT = f"INSERT OR IGNORE INTO sessions ({', '.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"
# CAS: the row of (owner, id) changes only if it is there, unexpired, at the version before this one.
_CAS = ("UPDATE sessions SET state=?, step_count=?, last_seq=?, timeout=?, expires_at=?, last_output=?, last_rows=?, "
        "last_state=?, last_step_count=?, version=? WHERE owner=? AND id=? AND version=? AND expires_at>?")


_PURGE_SECONDS = 60.0  # shared sqlite: how often a commit also deletes the expired rows


def _row(r: SessionRecord) -> tuple:
    out = r.last_output
    return (r.id, r.model, r.owner or "", r.state.astype(np.float32).tobytes(), r.step_count, r.last_seq, r.timeout,
            r.expires_at, None if out is None else out.astype(np.float32).tobytes(),
            None if out is None else out.shape[0],
            None if r.last_state is None else r.last_state.astype(np.float32).tobytes(), r.last_step_count, r.version)


def _record(row) -> SessionRecord:
    (sid, model, owner, state, steps, last_seq, timeout, expires_at, last_out, last_rows, last_state,
     last_steps, version) = row
    out = None
    if last_out is not None:
        out = np.frombuffer(last_out, dtype=np.float32).reshape(last_rows, -1).copy()
    return SessionRecord(sid, model, owner or None, np.frombuffer(state, dtype=np.float32).copy(), steps, last_seq,
                         timeout, expires_at, out,
                         None if last_state is None else np.frombuffer(last_state, dtype=np.float32).copy(),
                         last_steps or 0, version)


class SqliteStore:
    """Embedded durable store: stdlib sqlite3 in WAL mode, one transaction per batch.

    A step is answered only after its batch's transaction committed, so a `kill -9` of the server loses no
    acknowledged step (synchronous=NORMAL: durable against a process crash; an OS crash may lose the last
    commits). Writes run on one dedicated thread, in submission order. `shared=True` (--workers N): several
    processes of one machine use the file; each commit is a compare-and-set on `version` inside one
    BEGIN IMMEDIATE transaction (writers queue on the file lock for up to `busy_timeout` seconds).
    """

    durable = True

    def __init__(self, path: str, shared: bool = False, busy_timeout: float = 5.0):
        self.path = Path(path)
        self.shared = shared
        mode = "shared by worker processes, compare-and-set per record" if shared else "one process"
        self.description = f"sqlite:{self.path} (WAL, one transaction per batch, {mode}; survives kill -9)"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=busy_timeout)
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._tx():
            self._db.execute(_SCHEMA)
            if "version" not in [c[1] for c in self._db.execute("PRAGMA table_info(sessions)")]:
                self._db.execute("ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._purged = time.monotonic()

    @contextmanager
    def _tx(self):
        """One BEGIN IMMEDIATE transaction: takes the write lock at once (no read-to-write upgrade deadlock)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def load(self) -> list[SessionRecord]:
        """Every unexpired session (one process); nothing for shared workers, which read through on a miss."""
        with self._tx():
            self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (time.time(),))
        if self.shared:
            return []
        return [_record(row) for row in self._db.execute(_SELECT)]

    def _fetch(self, owner: str | None, sid: str) -> SessionRecord | None:
        row = self._db.execute(f"{_SELECT} WHERE owner=? AND id=? AND expires_at>?",
                               (owner or "", sid, time.time())).fetchone()
        return None if row is None else _record(row)

    def _fetch_many(self, keys: list[tuple[str | None, str]]) -> list[SessionRecord | None]:
        return [self._fetch(owner, sid) for owner, sid in keys]

    def _create(self, row: tuple) -> bool:
        with self._tx():
            self._db.execute("DELETE FROM sessions WHERE owner=? AND id=? AND expires_at<=?",
                             (row[2], row[0], time.time()))
            return self._db.execute(_INSERT, row).rowcount == 1

    def _commit(self, rows: list[tuple]) -> list[str]:
        now = time.time()
        out = []
        with self._tx():
            for r in rows:
                (sid, _model, owner, state, steps, seq, timeout, expires, lout, lrows, lstate, lsteps, version) = r
                if self._db.execute(_CAS, (state, steps, seq, timeout, expires, lout, lrows, lstate, lsteps, version,
                                           owner, sid, version - 1, now)).rowcount == 1:
                    out.append(OK)
                    continue
                found = self._db.execute("SELECT 1 FROM sessions WHERE owner=? AND id=? AND expires_at>?",
                                         (owner, sid, now)).fetchone()
                out.append(CONFLICT if found else MISSING)
            if self.shared and time.monotonic() - self._purged > _PURGE_SECONDS:
                # shared: no process deletes what expires in its cache (another may still be stepping it)
                self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
                self._purged = time.monotonic()
        return out

    def _delete(self, keys: list[tuple[str | None, str]]) -> None:
        with self._tx():
            self._db.executemany("DELETE FROM sessions WHERE owner = ? AND id = ?", [(o or "", i) for o, i in keys])

    async def _run(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.OperationalError as e:  # locked past busy_timeout, disk full, I/O error: rolled back
            raise Unavailable(f"state store sqlite:{self.path} failed: {e}; nothing was applied") from e

    async def fetch(self, owner: str | None, sid: str) -> SessionRecord | None:
        """The stored session, or None (never stored, closed, or expired)."""
        return (await self.fetch_many([(owner, sid)]))[0]

    async def fetch_many(self, keys: list[tuple[str | None, str]]) -> list[SessionRecord | None]:
        """fetch for many sessions in one call on the store's thread."""
        return await self._run(self._fetch_many, list(keys)) if keys else []

    async def create(self, rec: SessionRecord) -> bool:
        """Insert `rec` if no unexpired session has its (owner, id); False if one has."""
        return await self._run(self._create, _row(rec))

    async def commit(self, records: list[SessionRecord]) -> list[str]:
        """Compare-and-set every record in one transaction: "ok" | "conflict" | "missing" per record."""
        if not records:
            return []
        return await self._run(self._commit, [_row(r) for r in records])

    async def delete(self, keys: list[tuple[str | None, str]]) -> None:
        if keys:
            await self._run(self._delete, list(keys))

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._db.close()
