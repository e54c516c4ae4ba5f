"""SessionTable: the open sessions of this process, their state slabs (one row per session) and idle expiry."""

from __future__ import annotations

import heapq
import itertools
import secrets
import time
from collections import OrderedDict

import numpy as np

from statestream.contract.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StatestreamError,
    show,
)
from statestream.server.engine.frames import FrameIndex
from statestream.server.engine.model import ModelRunner
from statestream.server.engine.sessions import CLOSED, IDLE, PHASES, Cells, Session, check_session_id
from statestream.server.engine.versions import Key, Versions
from statestream.server.store.base import Records, SessionRecord

_EXPIRED_MEMORY = 100_000  # how many expired ids we remember, to say "expired" not "unknown"


def gone(s: Session) -> NotFound:
    """The error for a session the store no longer has: closed or expired by another process."""
    return NotFound(f"session {s.id!r} was closed or expired on another replica")


class Slab(Cells):
    """A model's sessions: their states, float32 [capacity, W], and their Cells; a session owns one slot.

    Slot 0 is never a session's: it stays CLOSED, and a closed session that left its slot (Session.detach) names
    it, so a bulk transition given that session's slot sees it closed."""

    def __init__(self, width: int, capacity: int = 1024):
        super().__init__(capacity)
        self.width = width
        self.rows = np.zeros((capacity, width), dtype=np.float32)
        self._free: list[int] = list(range(capacity - 1, 0, -1))
        self.phase[0] = PHASES.index(CLOSED)

    def _grow(self, capacity: int) -> None:
        grown = np.zeros((capacity, self.width), dtype=np.float32)
        grown[:self.rows.shape[0]] = self.rows
        self.rows = grown
        self.grow(capacity)

    def alloc(self) -> int:
        if not self._free:
            old = self.rows.shape[0]
            self._grow(old * 2)
            self._free = list(range(2 * old - 1, old - 1, -1))
        slot = self._free.pop()
        self.rows[slot] = 0.0
        return slot

    def alloc_block(self, n: int, grow: bool = True) -> int | None:
        """n contiguous rows (a session group): a run of free rows if there is one, else new rows at the end (None
        instead when not `grow`). Returns the first row."""
        free = np.sort(np.array(self._free, dtype=np.int64))
        start = None
        if len(free) >= n:  # a run of n consecutive free rows: free[i + n - 1] - free[i] == n - 1
            runs = np.flatnonzero(free[n - 1:] - free[:len(free) - n + 1] == n - 1)
            if len(runs):
                start = int(free[runs[0]])
        if start is None and not grow:
            return None
        if start is None:
            old = self.rows.shape[0]
            cap = old + max(n, old)
            self._grow(cap)
            self._free = list(range(cap - 1, old + n - 1, -1)) + self._free  # the rest, used after older free rows
            start = old
        else:
            taken = set(range(start, start + n))
            self._free = [f for f in self._free if f not in taken]
        self.rows[start:start + n] = 0.0
        return start

    def free(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def free_slots(self) -> int:
        """How many slots are free (alloc_block's search sorts them all: ~6 ms at 64k, ~150 ms at 1M)."""
        return len(self._free)


class SessionTable:
    """Every open session of this process (a cache of the store when the store is shared).

    All calls happen on the event loop thread."""

    def __init__(self, runners: dict[Key, ModelRunner], max_sessions: int, default_timeout: float,
                 max_timeout: float, clock=time.monotonic, shared: bool = False, frame_index: int = 65_536):
        self.runners = {r.key: r for r in runners.values()}
        self.versions = Versions(self.runners)
        self.slabs = {key: Slab(r.state_width) for key, r in self.runners.items()}
        self.per_version: dict[Key, int] = dict.fromkeys(self.runners, 0)  # open sessions of each loaded version
        self.stranded: dict[str, tuple[SessionRecord, Exception]] = {}  # stored sessions this server can not step
        self.shared = shared
        self.max_sessions = max_sessions
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._expiry: list = []
        self._tie = itertools.count()
        self._expired: OrderedDict[str, float] = OrderedDict()
        self.evictions = 0
        self.frames = FrameIndex(frame_index)  # repeated frames' ids, resolved (engine.Engine._cached)

    def __len__(self) -> int:
        return len(self._sessions)

    def runner(self, model: str, version: int = 0) -> ModelRunner:
        """The runner a new session of `model` gets (version 0: the default policy, latest)."""
        return self.versions.pick(model, version)

    def runner_of(self, s: Session) -> ModelRunner:
        """The runner of an open session: its own version's."""
        return self.runners[s.key]

    def add_version(self, r: ModelRunner) -> list[Session]:
        """A newly loaded version: its runner and slab; the stranded sessions it can step now are adopted."""
        self.runners[r.key] = r
        self.slabs[r.key] = Slab(r.state_width)
        self.per_version[r.key] = 0
        back = []
        for key, (rec, _) in list(self.stranded.items()):
            if (rec.model, rec.model_version) == r.key and self.versions.refusal(
                    rec.model, rec.model_version, rec.model_hash, rec.state.shape[0], self.shared) is None:
                del self.stranded[key]
                back.append(self.adopt(rec))
        return back

    def unstrand(self, sid: str, owner: str | None = None) -> SessionRecord | None:
        """Forget a stored session that can not be stepped here (it is being closed); its record, if it was one."""
        found = self.stranded.pop(_key(sid, owner), None)
        return None if found is None else found[0]

    def drop_version(self, key: Key) -> None:
        """Forget an unloaded version that has no session left."""
        del self.runners[key], self.slabs[key], self.per_version[key]
        self.frames.clear()
        self.versions.unloading.discard(key)

    def sessions_of(self, key: Key, owner=False) -> list[Session]:
        """The open sessions of a model version (of one owner, unless `owner` is False)."""
        return [s for s in self._sessions.values() if s.key == key and (owner is False or s.owner == owner)]

    def move(self, s: Session, key: Key) -> None:
        """A held session onto another loaded version: its state row moves to that version's slab."""
        row = self.state(s).copy()
        slab, old = self.slabs[key], s.slot
        slot = slab.alloc()
        s.move(slot, slab)  # its cells with it
        self.slabs[s.key].free(old)
        self.per_version[s.key] -= 1
        slab.rows[slot] = row
        s.key = key
        self.per_version[key] += 1

    def check_timeout(self, timeout: float) -> float:
        if timeout < 0 or timeout != timeout:
            raise InvalidArgument(f"idle_timeout_seconds must be >= 0, got {timeout}")
        if timeout > self.max_timeout:
            raise InvalidArgument(f"idle_timeout_seconds {timeout} is over the server's limit {self.max_timeout}")
        return timeout or self.default_timeout

    def open(self, model: str, sid: str = "", timeout: float = 0.0, owner: str | None = None,
             version: int = 0) -> Session:
        """Open a session with zero states; `sid` empty picks a random 128-bit id; `version` 0: the default."""
        key = self.runner(model, version).key
        timeout = self.check_timeout(timeout)
        if sid:
            check_session_id(sid)
            if _key(sid, owner) in self._sessions:
                raise AlreadyExists(f"session {sid!r} is already open")
        else:
            sid = secrets.token_hex(16)
        self._check_room()
        slab = self.slabs[key]
        return self._insert(Session(sid, model, slab.alloc(), owner, timeout, self.clock(), slab, key[1]))

    def open_block(self, model: str, sids: list[str], timeout: float = 0.0, owner: str | None = None,
                   version: int = 0) -> list[Session]:
        """Open N sessions whose state rows are contiguous (a session group), in order; all or none.
        An empty id picks a random one."""
        key = self.runner(model, version).key
        timeout = self.check_timeout(timeout)
        sids = [sid or secrets.token_hex(16) for sid in sids]
        if len(set(sids)) != len(sids):
            raise InvalidArgument("session_ids has duplicates")
        for sid in sids:
            check_session_id(sid)
            if _key(sid, owner) in self._sessions:
                raise AlreadyExists(f"session {sid!r} is already open")
        self._check_room(len(sids))
        slab = self.slabs[key]
        start = slab.alloc_block(len(sids))
        now = self.clock()
        return [self._insert(Session(sid, model, start + i, owner, timeout, now, slab, key[1]))
                for i, sid in enumerate(sids)]

    def _check_room(self, n: int = 1) -> None:
        if len(self._sessions) + n > self.max_sessions:
            raise ResourceExhausted(f"session limit reached: {self.max_sessions} sessions open (--max-sessions)"
                                    + (f"; {n} more do not fit" if n > 1 else ""))

    def regroup(self, model: str, sessions: list[Session], grow: bool = True) -> list[Session]:
        """Existing idle sessions of `model` moved onto contiguous rows (re-opening a group after a restart, when
        its members came back one by one); their states move with them. Not `grow`: only onto free rows the slab
        has (else they stay where they are)."""
        for s in sessions:
            if s.model != model:
                raise InvalidArgument(f"session {show(s.id)} is on model {s.model!r}, not {show(model)}")
            if not s.idle:
                raise FailedPrecondition(f"session {show(s.id)} has steps in flight; re-open the group when they "
                                         "are done")
        if len({id(s) for s in sessions}) != len(sessions):
            raise InvalidArgument("session_ids has duplicates")
        if len({s.key for s in sessions}) > 1:
            raise FailedPrecondition(f"the sessions are on different versions of {show(model)}: "
                                     f"{sorted({s.key[1] for s in sessions})}; a group runs on one")
        slab = self.slabs[sessions[0].key]
        start = slab.alloc_block(len(sessions), grow)
        if start is None:
            return sessions
        for i, s in enumerate(sessions):
            old = s.slot
            slab.rows[start + i] = slab.rows[old]
            s.move(start + i)
            slab.free(old)
        return sessions

    def make_room(self) -> None:
        """A cache of a shared store that is full evicts its least recently used idle session (the store keeps it;
        a later request reads it through again). --max-sessions then bounds what this process holds."""
        if len(self._sessions) < self.max_sessions:
            return
        busy = []
        while self._expiry:
            deadline, _, s = heapq.heappop(self._expiry)
            if s.phase is CLOSED:
                continue
            if deadline < s.deadline:  # touched since: its place in the heap is later
                heapq.heappush(self._expiry, (s.deadline, next(self._tie), s))
                continue
            if s.phase is not IDLE:
                busy.append((deadline, next(self._tie), s))
                continue
            self.close(s)
            self.evictions += 1
            break
        for entry in busy:
            heapq.heappush(self._expiry, entry)

    def _insert(self, s: Session) -> Session:
        key = _key(s.id, s.owner)
        self._sessions[key] = s
        self._expired.pop(key, None)
        self.per_version[s.key] += 1
        heapq.heappush(self._expiry, (s.deadline, next(self._tie), s))
        return s

    def find(self, sid: str, owner: str | None = None) -> Session | None:
        return self._sessions.get(_key(sid, owner))

    def find_many(self, ids: list[str], owner: str | None = None) -> list[Session | None]:
        get = self._sessions.get
        if owner is None:
            return list(map(get, ids))
        return [get(_key(sid, owner)) for sid in ids]

    def get(self, sid: str, owner: str | None = None) -> Session:
        """The open session `sid`, or NotFound saying whether it expired."""
        key = _key(sid, owner)
        s = self._sessions.get(key)
        if s is None:
            raise self.missing(sid, owner)
        return s

    def missing(self, sid: str, owner: str | None = None) -> Exception:
        """The error for a session id that is not open."""
        if not sid:
            return InvalidArgument("session_id is empty")
        key = _key(sid, owner)
        if key in self._expired:
            why = self._expired[key]
            return NotFound(f"session {show(sid)} expired after {why:g} s idle" if isinstance(why, float) else why)
        if key in self.stranded:
            return self.stranded[key][1]
        return NotFound(f"unknown session {show(sid)}")

    def touch(self, s: Session) -> None:
        s.touch(self.clock())

    def touch_many(self, key: Key, slots) -> None:
        """Activity of the sessions in these slots of a model version's slab (a unit's): their idle deadlines move,
        at once."""
        slab = self.slabs[key]
        if not isinstance(slots, slice) and len(slots) == 1:  # one session: numpy's scalar indexing is cheaper
            slots = slots[0]
        slab.deadline[slots] = self.clock() + slab.timeout[slots]

    def close(self, s: Session) -> None:
        """Remove a session; its slot is freed now, or when its running unit is done (`release`)."""
        if s.phase is CLOSED:
            return
        del self._sessions[_key(s.id, s.owner)]
        self.per_version[s.key] -= 1
        if s.close():
            self._free(s)

    def closed_because(self, s: Session, why: str) -> None:
        """A closed session's later requests get NotFound with this reason (a forced unload)."""
        self._expired[_key(s.id, s.owner)] = why

    def release(self, s: Session) -> None:
        """After a run: free the slot of a session that was closed while it ran."""
        if s.phase is CLOSED and s.running is None:
            self._free(s)

    def _free(self, s: Session) -> None:
        """A closed session leaves its slot (once)."""
        slab = self.slabs[s.key]
        if s.cells is slab:
            slot = s.slot
            s.detach()
            slab.free(slot)

    def state(self, s: Session) -> np.ndarray:
        return self.slabs[s.key].rows[s.slot]

    def set_state(self, s: Session, row: np.ndarray) -> None:
        """Overwrite a session's states (the caller holds the session: Session.hold)."""
        self.slabs[s.key].rows[s.slot] = row

    def expire(self) -> list[Session]:
        """Close every idle session past its deadline; returns them."""
        now = self.clock()
        gone = []
        while self._expiry and self._expiry[0][0] <= now:
            _, _, s = heapq.heappop(self._expiry)
            if s.phase is CLOSED:
                continue
            if s.deadline > now or s.phase is not IDLE:
                heapq.heappush(self._expiry, (max(s.deadline, now + 1e-3), next(self._tie), s))
                continue
            self.close(s)
            self._expired[_key(s.id, s.owner)] = s.timeout
            if len(self._expired) > _EXPIRED_MEMORY:
                self._expired.popitem(last=False)
            self.evictions += 1
            gone.append(s)
        return gone

    def record(self, s: Session) -> SessionRecord:
        """The session as the store keeps it, at its next version (`records` of one)."""
        return self.records([s], [s.slot])[0]

    def records(self, sessions: list[Session], slots, states: np.ndarray | None = None, counts=None,
                results: list | None = None, fps: list | None = None, restarts: list | None = None,
                to: ModelRunner | None = None) -> Records:
        """The sessions (all of one model version, in these slots of its slab) as the store keeps them, at their
        next versions, by column: `states`, `counts`, `results` (None: an entry without; their inputs'
        fingerprints `fps`) give the values a run is about to apply; `restarts[j]`: entry j is a sequence start;
        `to`: the model version they move to. Per session only the ids and the recorded steps are read; the
        rest are columns of the slab."""
        slab = self.slabs[sessions[0].key]
        timeout = slab.timeout[slots]
        lasts = [s.last_result for s in sessions]
        seqs = [s.last_seq for s in sessions]
        last_fps = [s.last_fp for s in sessions]
        if results is not None or (restarts is not None and any(restarts)):
            for j in range(len(sessions)):
                if results is not None and results[j] is not None:
                    lasts[j], seqs[j], last_fps[j] = results[j], results[j].sequence_number, fps[j] if fps else 0
                elif restarts is not None and restarts[j]:
                    lasts[j], seqs[j], last_fps[j] = None, 0, 0
        runner = self.runners[sessions[0].key] if to is None else to
        return Records(
            [s.id for s in sessions], [s.owner for s in sessions], sessions[0].model, runner.version, runner.sha256,
            slab.rows[slots] if states is None else states,
            slab.steps[slots] if counts is None else np.asarray(counts, np.int64), timeout,
            time.time() + timeout, slab.version[slots] + 1, seqs,
            [None if r is None else r.output for r in lasts], [None if r is None else r.state for r in lasts],
            [0 if r is None else r.step_count for r in lasts], last_fps)

    def restore(self, records: list[SessionRecord]) -> int:
        """The stored sessions at start: adopted, or (a store of this process only) kept aside with the reason they
        can not be stepped here (a request for one gets that reason; loading its version adopts it). How many were
        adopted."""
        adopted = 0
        for rec in records:
            try:
                self.adopt(rec)
                adopted += 1
            except StatestreamError as e:
                if not self.shared:  # a shared store is read through on every miss: it keeps them
                    self.stranded[_key(rec.id, rec.owner)] = (rec, e)
        return adopted

    def adopt(self, rec: SessionRecord) -> Session:
        """A store record into this table: a new cached session, or the fresh truth of a cached one.

        Raises the domain error when the record can not be stepped here: its model version is not loaded, or
        from other weights (hash), or its state width differs (versions.Versions.refusal). A cached session
        must be RUNNING (a lost compare-and-set), HELD or IDLE: its queue is kept."""
        key = (rec.model, rec.model_version)
        refused = self.versions.refusal(rec.model, rec.model_version, rec.model_hash, rec.state.shape[0], self.shared)
        if refused is not None:
            raise refused
        s = self._sessions.get(_key(rec.id, rec.owner))
        now = self.clock()
        if s is None:
            self._check_room()
            slab = self.slabs[key]
            s = self._insert(Session(rec.id, rec.model, slab.alloc(), rec.owner, rec.timeout, now, slab, key[1]))
        elif s.key != key:
            raise FailedPrecondition(f"session {show(rec.id)} moved to version {key[1]} elsewhere; re-open it")
        self.slabs[key].rows[s.slot] = rec.state
        s.load(rec)
        s.touch(now - rec.timeout + max(0.0, min(rec.timeout, rec.expires_at - time.time())))
        return s


def _key(sid: str, owner: str | None) -> str:
    """Sessions are keyed per owner: tenants can neither collide nor probe each other's ids."""
    return sid if owner is None else f"{owner}\x00{sid}"
