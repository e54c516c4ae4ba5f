"""SqliteStore: an embedded durable store (WAL, one transaction per batch, compare-and-set per record)."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from statestream.contract.errors import Unavailable
from statestream.server.store.base import CONFLICT, MISSING, OK, Records, SessionRecord, StoreUnreadable

log = logging.getLogger("statestream.server.store")

_COLUMNS = ("id", "model", "owner", "state", "step_count", "last_seq", "timeout", "expires_at", "last_output",
            "last_rows", "last_state", "last_step_count", "version", "last_fp", "model_version", "model_hash")
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
    last_fp INTEGER NOT NULL DEFAULT 0,  -- unsigned 64-bit, stored as its two's complement (SQLite is signed)
    model_version INTEGER NOT NULL DEFAULT 1,
    model_hash TEXT NOT NULL DEFAULT '',  -- '' in files written before versions: whatever version 1 is
    PRIMARY KEY (owner, id)
)"""
# Columns added after the first release: files written before them get them with these definitions.
_ADDED = {"version": "INTEGER NOT NULL DEFAULT 0", "last_fp": "INTEGER NOT NULL DEFAULT 0",
          "model_version": "INTEGER NOT NULL DEFAULT 1", "model_hash": "TEXT NOT NULL DEFAULT ''"}
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM sessions"
_INSERT = f"INSERT OR IGNORE INTO sessions ({', '.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"
# CAS: the row of (owner, id) changes only if it is there, unexpired, at the version before this one.
_CAS = ("UPDATE sessions SET state=?, step_count=?, last_seq=?, timeout=?, expires_at=?, last_output=?, last_rows=?, "
        "last_state=?, last_step_count=?, version=?, last_fp=?, model_version=?, model_hash=? "
        "WHERE owner=? AND id=? AND version=? AND expires_at>?")


_PURGE_SECONDS = 60.0  # shared sqlite: how often a commit also deletes the expired rows
_U64 = 1 << 64


def _row(r: SessionRecord) -> tuple:
    out = r.last_output
    fp = r.last_fp - _U64 if r.last_fp >= _U64 >> 1 else r.last_fp
    return (r.id, r.model, r.owner or "", r.state.astype(np.float32).tobytes(), r.step_count, r.last_seq, r.timeout,
            r.expires_at, None if out is None else out.astype(np.float32).tobytes(),
            None if out is None else out.shape[0],
            None if r.last_state is None else r.last_state.astype(np.float32).tobytes(), r.last_step_count, r.version,
            fp, r.model_version, r.model_hash)


def _record(row) -> SessionRecord:
    """The SessionRecord of a row; ValueError when its blobs are not whole float32 arrays of its shape."""
    (sid, model, owner, state, steps, last_seq, timeout, expires_at, last_out, last_rows, last_state,
     last_steps, version, fp, model_version, model_hash) = row
    out = None
    if last_out is not None:
        out = np.frombuffer(last_out, dtype=np.float32).reshape(last_rows, -1).copy()
    return SessionRecord(sid, model, owner or None, np.frombuffer(state, dtype=np.float32).copy(), steps, last_seq,
                         timeout, expires_at, out,
                         None if last_state is None else np.frombuffer(last_state, dtype=np.float32).copy(),
                         last_steps or 0, version, fp % _U64, model_version, model_hash)


class SqliteStore:
    """Embedded durable store: stdlib sqlite3 in WAL mode, one transaction per batch.

    A step is answered only after its batch's transaction committed, so a `kill -9` of the server loses no
    acknowledged step (synchronous=NORMAL: durable against a process crash; an OS crash may lose the last
    commits). Writes run on one dedicated thread, in submission order. `shared=True` (--workers N): several
    processes of one machine use the file; each commit is a compare-and-set on `version` inside one
    BEGIN IMMEDIATE transaction (writers queue on the file lock for up to `busy_timeout` seconds).

    One process (`shared=False`) holds the file with locking_mode=EXCLUSIVE: the WAL index lives in this
    process' memory, not in a memory-mapped `-shm` file (a damaged `-shm` can not kill it with SIGBUS), and a
    second server on the same file is refused at its start. Shared workers need the `-shm` (it is how they
    see each other's commits).

    After every call the store checks that the file it has open is still the file at its path (same device
    and inode, not unlinked). If it is not (the file or its folder was removed or replaced), that call and
    every later one fail with `errors.Unavailable` and `check()` reports it until the server is restarted:
    what went into the removed file is not acknowledged.
    """

    durable = True

    def __init__(self, path: str, shared: bool = False, busy_timeout: float = 5.0, timeout: float | None = None):
        self.path = Path(path)
        self.shared = shared
        self.timeout = timeout  # default bound of a call, seconds (None: none)
        mode = "shared by worker processes, compare-and-set per record" if shared else "one process"
        self.description = f"sqlite:{self.path} (WAL, one transaction per batch, {mode}; survives kill -9)"
        self._failure: str | None = None
        self._verifying = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        give_up = time.monotonic() + busy_timeout
        while True:
            try:
                self._db = self._open(shared, busy_timeout)
                break
            except sqlite3.Error as e:
                # --workers open one new file at once: switching it to WAL does not wait on the busy handler, so
                # a worker that finds it locked tries again (a single server's file held elsewhere is refused)
                if not (shared and "locked" in str(e) and time.monotonic() < give_up):
                    raise StoreUnreadable(self._unreadable(e)) from e
                time.sleep(0.05)
        self._fd = os.open(self.path, os.O_RDONLY)  # the file opened: compared with the path after every call
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._purged = time.monotonic()

    def _open(self, shared: bool, busy_timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        try:
            if not shared:  # before the first access: the WAL index then never goes to a -shm file
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            db.execute(_SCHEMA)
            have = {c[1] for c in db.execute("PRAGMA table_info(sessions)")}
            for name, definition in _ADDED.items():
                if name not in have:
                    db.execute(f"ALTER TABLE sessions ADD COLUMN {name} {definition}")
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _unreadable(self, e: sqlite3.Error) -> str:
        if "locked" in str(e):
            why = ("another server holds it (one server holds its file exclusively; processes share one file only "
                   "as --workers of one server)")
        elif "readonly" in str(e):
            why = "it, its -wal or its -shm file cannot be written (permissions, an immutable file, a read-only mount)"
        else:
            why = "not a usable sqlite database"
        return f"state store sqlite:{self.path}: cannot open the database file ({e}): {why}"

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

    def _lost(self) -> str | None:
        """Why the open file is no longer the database at the path (removed, replaced), or None."""
        held = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        except OSError as e:  # e.g. its folder is no longer searchable: what is written there can not be known
            return f"state store sqlite:{self.path}: the database file cannot be checked ({e}); nothing was applied"
        if now is not None and (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            what = "replaced by another file"
        elif now is None or held.st_nlink == 0:
            what = "removed"
        else:
            return None
        return (f"state store sqlite:{self.path}: the database file was {what} while the server ran; nothing was "
                "applied; this server acknowledges nothing more until it is restarted")

    def _verify(self) -> str | None:
        """The store's failure (sticky: from now on), checking the file once more; None while it is fine."""
        with self._verifying:
            if self._failure is None:
                self._failure = self._lost()
                if self._failure is not None:
                    log.error("%s (health is NOT_SERVING)", self._failure)
            return self._failure

    def _guarded(self, fn, *args):
        """`fn` on the store's thread, refused once the file is lost, and checked again after it ran: a write
        that went into a removed file is not acknowledged."""
        if self._failure is not None:
            raise Unavailable(self._failure)
        out = fn(*args)
        if self._verify() is not None:
            raise Unavailable(self._failure)
        return out

    def _records(self, rows) -> list[SessionRecord]:
        """The rows' records; a row that cannot be read is skipped with one log line naming file and row."""
        out = []
        for row in rows:
            try:
                out.append(_record(row))
            except (ValueError, TypeError) as e:
                log.error("state store sqlite:%s: session (owner %r, id %r) cannot be read (%s); skipped, the row "
                          "is left in the file", self.path, row[2], row[0], e)
        return out

    def load(self) -> list[SessionRecord]:
        """Every unexpired session (one process); nothing for shared workers, which read through on a miss.

        StoreUnreadable when the file is not a readable database (one line naming the file)."""
        try:
            with self._tx():
                self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (time.time(),))
            if self.shared:
                return []
            return self._records(self._db.execute(_SELECT))
        except sqlite3.DatabaseError as e:
            raise StoreUnreadable(f"state store sqlite:{self.path}: the database cannot be read ({e})") from e

    def _fetch(self, owner: str | None, sid: str) -> SessionRecord | None:
        row = self._db.execute(f"{_SELECT} WHERE owner=? AND id=? AND expires_at>?",
                               (owner or "", sid, time.time())).fetchone()
        if row is None:
            return None
        try:
            return _record(row)
        except (ValueError, TypeError) as e:
            raise Unavailable(f"state store sqlite:{self.path}: session (owner {row[2]!r}, id {row[0]!r}) cannot be "
                              f"read ({e}); nothing was applied") from e

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
                (sid, _model, owner, state, steps, seq, timeout, expires, lout, lrows, lstate, lsteps, version, fp, mv,
                 mh) = r
                if self._db.execute(_CAS, (state, steps, seq, timeout, expires, lout, lrows, lstate, lsteps, version,
                                           fp, mv, mh, owner, sid, version - 1, now)).rowcount == 1:
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

    async def _run(self, fn, *args, timeout: float | None = None):
        """`fn(*args)` on the store's thread, bounded by `timeout` (default: the store's)."""
        timeout = self.timeout if timeout is None else timeout
        job = self._thread.submit(self._guarded, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job), timeout)
        except TimeoutError:
            if job.cancel():  # still queued behind a slow call: it will never run
                raise Unavailable(f"state store sqlite:{self.path} did not answer within {timeout:g} s; nothing "
                                  "was applied") from None
            raise Unavailable(f"state store sqlite:{self.path} did not answer within {timeout:g} s; this server "
                              "applied nothing, but the write may still reach the file: retry with the same sequence "
                              "number (an applied step is then answered from its record, not run twice)") from None
        except sqlite3.Error as e:  # locked past busy_timeout, disk full, I/O error, corrupt: rolled back
            raise Unavailable(f"state store sqlite:{self.path} failed: {e}; nothing was applied") from e

    async def check(self) -> str | None:
        """None while the store can take writes; else why not (its database file was removed or replaced)."""
        return self._verify()

    async def fetch(self, owner: str | None, sid: str, *, timeout: float | None = None) -> SessionRecord | None:
        """The stored session, or None (never stored, closed, or expired)."""
        return (await self.fetch_many([(owner, sid)], timeout=timeout))[0]

    async def fetch_many(self, keys: list[tuple[str | None, str]], *,
                         timeout: float | None = None) -> list[SessionRecord | None]:
        """fetch for many sessions in one call on the store's thread."""
        return await self._run(self._fetch_many, list(keys), timeout=timeout) if keys else []

    async def create(self, rec: SessionRecord, *, timeout: float | None = None) -> bool:
        """Insert `rec` if no unexpired session has its (owner, id); False if one has."""
        return await self._run(self._create, _row(rec), timeout=timeout)

    async def commit(self, records: Records | list[SessionRecord], *, timeout: float | None = None) -> list[str]:
        """Compare-and-set every record in one transaction: "ok" | "conflict" | "missing" per record."""
        if not records:
            return []
        return await self._run(self._commit, [_row(r) for r in records], timeout=timeout)

    async def delete(self, keys: list[tuple[str | None, str]], *, timeout: float | None = None) -> None:
        if keys:
            await self._run(self._delete, list(keys), timeout=timeout)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._db.close()
        if self._fd >= 0:  # after the connection: closing a descriptor of the file drops its POSIX locks
            os.close(self._fd)
            self._fd = -1
