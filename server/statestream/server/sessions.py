"""Sessions: one owner of a session's life (explicit phases, sequence numbers, the recorded response)."""

from __future__ import annotations

import enum
import heapq
import itertools
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, show
from .model import ModelRunner
from .store import SessionRecord

MAX_SESSION_ID_BYTES = 128
_EXPIRED_MEMORY = 100_000  # how many expired ids we remember, to say "expired" not "unknown"


@dataclass(slots=True)
class StepResult:
    """What one applied step produced: every timestep's output and the states after it."""

    output: np.ndarray      # [T, O]
    state: np.ndarray       # [W], states after the last timestep
    step_count: int
    sequence_number: int | None


class Phase(enum.Enum):
    """Where a session is in its life. Only the transition methods of Session change it."""

    IDLE = "idle"        # nothing queued or running: a step may run at once
    QUEUED = "queued"    # its next unit of work is in its batcher's ready queue
    RUNNING = "running"  # a unit of it is in a model run or in that run's commit
    HELD = "held"        # its state is being changed (SetState, reload); steps queue behind
    CLOSED = "closed"    # gone; its slot is free once nothing of it runs


IDLE, QUEUED, RUNNING, HELD, CLOSED = Phase.IDLE, Phase.QUEUED, Phase.RUNNING, Phase.HELD, Phase.CLOSED
READY, GONE = 1, 2  # what Session.finish says of a session's next unit


class Session:
    """One stream's bookkeeping; its states are a row (slot) of its model's slab.

    Steps arrive as units (see batcher.Unit); `head` is the unit this session runs
    next (in its batcher's ready queue while QUEUED) and `queue` the units behind it. Exactly-once lives here: `accept` checks a
    sequence number, `finish` records the response of the step it applied.
    """

    __slots__ = ("id", "model", "slot", "owner", "timeout", "deadline", "phase", "queue", "step_count", "version",
                 "last_seq", "accepted_seq", "last_result", "running", "head")

    def __init__(self, sid: str, model: str, slot: int, owner: str | None, timeout: float, now: float):
        self.id = sid
        self.model = model
        self.slot = slot
        self.owner = owner
        self.timeout = timeout
        self.deadline = now + timeout
        self.phase = IDLE
        self.head = None           # the unit this session runs next
        self.queue: deque | tuple = ()  # units behind head; a deque only while there are some (1M idle sessions stay small)
        self.step_count = 0
        self.version = 0           # bumped by every committed change; the compare-and-set key of a shared store
        self.last_seq = 0          # last applied sequence number
        self.accepted_seq = 0      # last accepted (applied, queued or running) sequence number
        self.last_result: StepResult | None = None  # recorded result of the step with last_seq
        self.running = None        # the unit of this session in a model run now

    def __repr__(self) -> str:
        return f"Session({self.id!r}, {self.phase.value}, step {self.step_count})"

    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    @property
    def idle(self) -> bool:
        """Nothing queued, running or held: a new step could run right now."""
        return self.phase is IDLE

    @property
    def waiting(self) -> int:
        """Units not yet run."""
        return (self.head is not None) + len(self.queue)

    # -- exactly-once ---------------------------------------------------------------

    def accept(self, seq: int | None):
        """Check a step's sequence number. Returns None (a new step), a StepResult (a retry of
        the last applied step: replay it) or a unit (a retry of a step still queued or running: wait for it).
        """
        if seq is None:
            return None
        if seq <= 0:
            raise InvalidArgument(f"sequence_number must be >= 1, got {seq}")
        if seq == self.accepted_seq and seq > 0:
            if self.last_seq == seq and self.last_result is not None:
                return self.last_result
            unit = self.find(seq)
            if unit is not None:
                return unit
            raise FailedPrecondition(
                f"sequence number {seq} was applied but its response is no longer held; expected {seq + 1}")
        if seq != self.accepted_seq + 1:
            kind = "stale" if seq < self.accepted_seq else "out of order (gap)"
            raise FailedPrecondition(
                f"sequence number {seq} is {kind} for session {self.id!r}; expected {self.accepted_seq + 1}")
        return None

    def find(self, seq: int):
        """The queued or running unit that carries this session's step `seq`, or None."""
        for unit in (self.running, self.head, *self.queue):
            if unit is not None and unit.seq_of(self) == seq:
                return unit
        return None

    # -- transitions (called by the batcher, the service and the table only) ----------

    def enqueue(self, unit, seq: int | None) -> bool:
        """Add a unit (carrying step `seq` of this session) behind this session's others; True when it is
        ready to run (the session was idle)."""
        if self.phase is CLOSED:
            raise NotFound(f"session {self.id!r} was closed")
        if seq is not None:
            self.accepted_seq = seq
        if self.head is None:
            self.head = unit
            if self.phase is IDLE:
                self.phase = QUEUED
                return True
            return False
        if not self.queue:
            self.queue = deque()
        self.queue.append(unit)
        return False

    def start(self, unit) -> None:
        """QUEUED -> RUNNING with `unit`, which must be its head."""
        if self.head is not unit or self.phase is not QUEUED:
            raise RuntimeError(f"{self}: started a unit that is not its next one")
        self.head = self.queue.popleft() if self.queue else None
        self.phase = RUNNING
        self.running = unit

    def run_now(self, unit, seq: int | None) -> None:
        """IDLE -> RUNNING for a unit that skips the queue (run in the caller)."""
        if self.phase is not IDLE or self.head is not None:
            raise RuntimeError(f"{self}: run at once while not idle")
        if seq is not None:
            self.accepted_seq = seq
        self.phase = RUNNING
        self.running = unit

    def finish(self, step_count: int, result: StepResult | None) -> int:
        """RUNNING -> QUEUED/IDLE after its unit was applied; `result` is recorded for a sequenced step.

        Returns READY when its next unit is ready to run, GONE when it was closed meanwhile, else 0."""
        self.step_count = step_count
        self.version += 1
        if result is not None:
            self.last_seq = result.sequence_number
            self.last_result = result
        self.running = None
        if self.phase is CLOSED:
            return GONE
        if self.head is None:
            self.phase = IDLE
            return 0
        self.phase = QUEUED
        return READY

    def undo(self) -> bool:
        """RUNNING -> QUEUED/IDLE after its unit was NOT applied (failed or to be re-run)."""
        return self._after_run()

    def _after_run(self) -> bool:
        self.running = None
        if self.phase is CLOSED:
            return False
        self.phase = IDLE if self.head is None else QUEUED
        return self.head is not None

    def retry(self, unit) -> None:
        """RUNNING -> QUEUED with `unit` at the head: its commit lost a compare-and-set, it runs again."""
        self.running = None
        if self.head is not None:
            if not self.queue:
                self.queue = deque()
            self.queue.appendleft(self.head)
        self.head = unit
        self.phase = QUEUED

    def drain(self) -> list:
        """Take every queued unit out (they will fail); a QUEUED session becomes IDLE."""
        units = [] if self.head is None else [self.head, *self.queue]
        self.head = None
        self.queue = ()
        if self.phase is QUEUED:
            self.phase = IDLE
        return units

    def hold(self) -> None:
        """IDLE -> HELD: keep the batcher off while the state is changed elsewhere."""
        if self.phase is not IDLE:
            raise FailedPrecondition(
                f"session {self.id!r} has {self.waiting + (self.running is not None)} step(s) in flight; "
                "change its state when they are done")
        self.phase = HELD

    def release(self) -> bool:
        """HELD -> IDLE/QUEUED; True when steps queued meanwhile are ready (the head)."""
        if self.phase is CLOSED:
            return False
        self.phase = IDLE if self.head is None else QUEUED
        return self.head is not None

    def set_counters(self, step_count: int | None, last_seq: int | None) -> None:
        """SetState of the counters (HELD): the next sequence number is last_seq + 1, nothing recorded."""
        if step_count is not None:
            self.step_count = step_count
        if last_seq is not None:
            self.last_seq = self.accepted_seq = last_seq
            self.last_result = None

    def counters(self) -> tuple:
        return self.step_count, self.last_seq, self.accepted_seq, self.last_result, self.version

    def restore_counters(self, saved: tuple) -> None:
        """Undo set_counters (the change could not be made durable)."""
        self.step_count, self.last_seq, self.accepted_seq, self.last_result, self.version = saved

    def forget_accepted(self) -> None:
        """A failed step was not applied: the numbers it and the steps behind it took are free again."""
        self.accepted_seq = self.last_seq

    def load(self, rec: SessionRecord) -> None:
        """Take counters and the recorded response from a store record (the state row is the table's)."""
        self.step_count = rec.step_count
        self.version = rec.version
        self.last_seq = rec.last_seq
        # steps of this session queued or running here were accepted already: the next one follows them
        in_flight = [q for u in (self.running, self.head, *self.queue)
                     if u is not None and (q := u.seq_of(self)) is not None]
        self.accepted_seq = max([rec.last_seq, *in_flight])
        self.last_result = None
        if rec.last_output is not None:
            self.last_result = StepResult(rec.last_output, rec.last_state, rec.last_step_count, rec.last_seq)


class Slab:
    """A model's states: float32 [capacity, W]; a session owns one row (slot)."""

    def __init__(self, width: int, capacity: int = 1024):
        self.width = width
        self.rows = np.zeros((capacity, width), dtype=np.float32)
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def alloc(self) -> int:
        if not self._free:
            old = self.rows.shape[0]
            grown = np.zeros((old * 2, self.width), dtype=np.float32)
            grown[:old] = self.rows
            self.rows = grown
            self._free = list(range(2 * old - 1, old - 1, -1))
        slot = self._free.pop()
        self.rows[slot] = 0.0
        return slot

    def alloc_block(self, n: int) -> int:
        """n contiguous rows (a session group): a run of free rows if there is one, else new rows at the end.
        Returns the first row."""
        free = np.sort(np.array(self._free, dtype=np.int64))
        start = None
        if len(free) >= n:  # a run of n consecutive free rows: free[i + n - 1] - free[i] == n - 1
            runs = np.flatnonzero(free[n - 1:] - free[:len(free) - n + 1] == n - 1)
            if len(runs):
                start = int(free[runs[0]])
        if start is None:
            old = self.rows.shape[0]
            cap = old + max(n, old)
            grown = np.zeros((cap, self.width), dtype=np.float32)
            grown[:old] = self.rows
            self.rows = grown
            self._free = list(range(cap - 1, old + n - 1, -1)) + self._free  # the rest, used after older free rows
            start = old
        else:
            taken = set(range(start, start + n))
            self._free = [f for f in self._free if f not in taken]
        self.rows[start:start + n] = 0.0
        return start

    def free(self, slot: int) -> None:
        self._free.append(slot)


class SessionTable:
    """Every open session of this process (a cache of the store when the store is shared).

    All calls happen on the event loop thread."""

    def __init__(self, runners: dict[str, ModelRunner], max_sessions: int, default_timeout: float,
                 max_timeout: float, clock=time.monotonic):
        self.runners = runners
        self.slabs = {name: Slab(r.state_width) for name, r in runners.items()}
        self.max_sessions = max_sessions
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._expiry: list = []
        self._tie = itertools.count()
        self._expired: OrderedDict[str, float] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def runner(self, model: str) -> ModelRunner:
        try:
            return self.runners[model]
        except KeyError:
            raise NotFound(f"unknown model {show(model)}; this server serves {sorted(self.runners)}") from None

    def check_timeout(self, timeout: float) -> float:
        if timeout < 0 or timeout != timeout:
            raise InvalidArgument(f"idle_timeout_seconds must be >= 0, got {timeout}")
        if timeout > self.max_timeout:
            raise InvalidArgument(f"idle_timeout_seconds {timeout} is over the server's limit {self.max_timeout}")
        return timeout or self.default_timeout

    def open(self, model: str, sid: str = "", timeout: float = 0.0, owner: str | None = None) -> Session:
        """Open a session with zero states; `sid` empty picks a random 128-bit id."""
        self.runner(model)
        timeout = self.check_timeout(timeout)
        if sid:
            check_session_id(sid)
            if _key(sid, owner) in self._sessions:
                raise AlreadyExists(f"session {sid!r} is already open")
        else:
            sid = secrets.token_hex(16)
        self._check_room()
        return self._insert(Session(sid, model, self.slabs[model].alloc(), owner, timeout, self.clock()))

    def open_block(self, model: str, sids: list[str], timeout: float = 0.0, owner: str | None = None) -> list[Session]:
        """Open N sessions whose state rows are contiguous (a session group), in order; all or none.
        An empty id picks a random one."""
        self.runner(model)
        timeout = self.check_timeout(timeout)
        sids = [sid or secrets.token_hex(16) for sid in sids]
        if len(set(sids)) != len(sids):
            raise InvalidArgument("session_ids has duplicates")
        for sid in sids:
            check_session_id(sid)
            if _key(sid, owner) in self._sessions:
                raise AlreadyExists(f"session {sid!r} is already open")
        self._check_room(len(sids))
        start = self.slabs[model].alloc_block(len(sids))
        now = self.clock()
        return [self._insert(Session(sid, model, start + i, owner, timeout, now)) for i, sid in enumerate(sids)]

    def _check_room(self, n: int = 1) -> None:
        if len(self._sessions) + n > self.max_sessions:
            raise ResourceExhausted(f"session limit reached: {self.max_sessions} sessions open (--max-sessions)"
                                    + (f"; {n} more do not fit" if n > 1 else ""))

    def _insert(self, s: Session) -> Session:
        key = _key(s.id, s.owner)
        self._sessions[key] = s
        self._expired.pop(key, None)
        heapq.heappush(self._expiry, (s.deadline, next(self._tie), s))
        return s

    def find(self, sid: str, owner: str | None = None) -> Session | None:
        return self._sessions.get(_key(sid, owner))

    def find_many(self, ids: list[str], owner: str | None = None) -> list[Session | None]:
        get = self._sessions.get
        if owner is None:
            return [get(sid) for sid in ids]
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
            return NotFound(f"session {show(sid)} expired after {self._expired[key]:g} s idle")
        return NotFound(f"unknown session {show(sid)}")

    def touch(self, s: Session) -> None:
        s.deadline = self.clock() + s.timeout

    def touch_many(self, sessions: list[Session | None]) -> None:
        now = self.clock()
        for s in sessions:
            if s is not None:
                s.deadline = now + s.timeout

    def close(self, s: Session) -> None:
        """Remove a session; its slot is freed now, or when its running unit is done (`release`)."""
        if s.phase is CLOSED:
            return
        s.phase = CLOSED
        del self._sessions[_key(s.id, s.owner)]
        if s.running is None:
            self.slabs[s.model].free(s.slot)

    def release(self, s: Session) -> None:
        """After a run: free the slot of a session that was closed while it ran."""
        if s.phase is CLOSED and s.running is None:
            self.slabs[s.model].free(s.slot)

    def state(self, s: Session) -> np.ndarray:
        return self.slabs[s.model].rows[s.slot]

    def set_state(self, s: Session, row: np.ndarray) -> None:
        """Overwrite a session's states (the caller holds the session: Session.hold)."""
        self.slabs[s.model].rows[s.slot] = row

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

    def sessions(self):
        return self._sessions.values()

    def record(self, s: Session, state: np.ndarray | None = None, step_count: int | None = None,
               result: StepResult | None = None) -> SessionRecord:
        """The session as the store keeps it, at its next version; `state`, `step_count` and `result` give
        the values a run is about to apply."""
        last = result if result is not None else s.last_result
        return SessionRecord(
            s.id, s.model, s.owner, self.state(s) if state is None else state,
            s.step_count if step_count is None else step_count,
            s.last_seq if result is None else result.sequence_number, s.timeout,
            time.time() + s.timeout,
            None if last is None else last.output, None if last is None else last.state,
            0 if last is None else last.step_count, s.version + 1)

    def adopt(self, rec: SessionRecord) -> Session | None:
        """A store record into this table: a new cached session, or the fresh truth of a cached one.

        Returns None when the record cannot be served here (model not served, state width differs). A
        cached session must be RUNNING (a lost compare-and-set), HELD or IDLE: its queue is kept."""
        if rec.model not in self.runners or rec.state.shape != (self.slabs[rec.model].width,):
            return None
        s = self._sessions.get(_key(rec.id, rec.owner))
        now = self.clock()
        if s is None:
            self._check_room()
            s = self._insert(Session(rec.id, rec.model, self.slabs[rec.model].alloc(), rec.owner, rec.timeout, now))
        s.deadline = now + max(0.0, min(rec.timeout, rec.expires_at - time.time()))
        self.slabs[rec.model].rows[s.slot] = rec.state
        s.load(rec)
        return s


def _key(sid: str, owner: str | None) -> str:
    """Sessions are keyed per owner: tenants can neither collide nor probe each other's ids."""
    return sid if owner is None else f"{owner}\x00{sid}"


def check_session_id(sid: str) -> None:
    """Client-chosen ids: 1..128 UTF-8 bytes, printable."""
    if len(sid.encode("utf-8", "surrogatepass")) > MAX_SESSION_ID_BYTES:
        raise InvalidArgument(f"session_id is {len(sid.encode('utf-8', 'surrogatepass'))} bytes; at most {MAX_SESSION_ID_BYTES}")
    if not sid.isprintable():
        raise InvalidArgument("session_id has non-printable characters")
