"""Session: one owner of a session's life (explicit phases, sequence numbers, the recorded response).

The fields a step changes live in arrays of its model's `Cells`, one entry per slot, so the batcher moves the
sessions of a frame or a group through their phases in one pass (`enqueue_many`, `start_many`, `finish_many`);
a Session is the per-session view of its slot."""

from __future__ import annotations

import enum
import operator
from collections import deque

import numpy as np

from statestream.contract.errors import FailedPrecondition, InvalidArgument, NotFound
from statestream.server.engine.ledger import Ledger
from statestream.server.engine.types import StepResult

MAX_SESSION_ID_BYTES = 128
_KEYS: dict[tuple[str, int], tuple[str, int]] = {}  # interned (model, version) keys


class Phase(enum.Enum):
    """Where a session is in its life. Only the transitions of this module change it."""

    IDLE = "idle"        # nothing queued or running: a step may run at once
    QUEUED = "queued"    # its next unit of work is in its batcher's ready queue
    RUNNING = "running"  # a unit of it is in a model run or in that run's commit
    HELD = "held"        # its state is being changed (SetState, reload); steps queue behind
    CLOSED = "closed"    # gone; its slot is free once nothing of it runs


IDLE, QUEUED, RUNNING, HELD, CLOSED = Phase.IDLE, Phase.QUEUED, Phase.RUNNING, Phase.HELD, Phase.CLOSED
PHASES = (IDLE, QUEUED, RUNNING, HELD, CLOSED)  # by their code in Cells.phase
_IDLE, _QUEUED, _RUNNING, _HELD, _CLOSED = range(5)
READY, GONE = 1, 2  # what Session.finish says of a session's next unit
BULK = 8  # units of at least this many sessions move through their phases in one pass over the arrays
_NONE = np.empty(0, dtype=np.intp)  # finish_many: no session closed
# any() / all() of an array as one C call: ndarray.any / .all go through numpy's Python wrappers (_methods._any:
# ~17 bytecodes a call, several calls per group step)
_any, _all, _max = np.logical_or.reduce, np.logical_and.reduce, np.maximum.reduce


class Cells:
    """The fields steps change, of every session of one model: entry `slot` is that session's. `session` is the
    Session in each slot (None: free or closed), so a bulk transition can check that slots still hold the sessions
    it was given."""

    FIELDS = (("phase", np.int8), ("steps", np.int64), ("version", np.int64), ("waiting", np.int32),
              ("deadline", np.float64), ("timeout", np.float64), ("head", object), ("running", object),
              ("session", object))

    def __init__(self, capacity: int):
        for name, dtype in self.FIELDS:
            setattr(self, name, np.zeros(capacity, dtype) if dtype is not object else np.full(capacity, None))
        self.vacated = 0  # sessions that left a slot (closed, moved) so far: while it stays, every slot holds its own

    def grow(self, capacity: int) -> None:
        """More slots (new ones free); existing entries keep their values."""
        for name, dtype in self.FIELDS:
            old = getattr(self, name)
            new = np.zeros(capacity, dtype) if dtype is not object else np.full(capacity, None)
            new[:len(old)] = old
            setattr(self, name, new)

    def holds(self, slots, sessions: np.ndarray) -> bool:
        """Do these slots still hold these sessions (an object array), none of them closed?"""
        return bool(_all(self.session[slots] == sessions, axis=None))


def _field(name: str, doc: str, kind=None):
    """A Session attribute kept in its Cells (`kind` converts numbers out of numpy)."""
    values = operator.attrgetter(name)
    if kind is None:
        def get(self):
            return values(self.cells)[self.slot]
    else:
        def get(self):
            return kind(values(self.cells)[self.slot])

    def put(self, value):
        values(self.cells)[self.slot] = value

    return property(get, put, doc=doc)


class Session(Ledger):
    """One stream's bookkeeping; its states are a row (slot) of its model's slab.

    Steps arrive as units (units.Unit); `head` is the unit this session runs next and `queue` the units behind
    it. While QUEUED its head waits for the batcher (or, for a unit of several sessions, for the others too).
    Exactly-once is its Ledger: `accept` decides on a sequence number, `finish` records the step it applied.
    """

    __slots__ = ("id", "model", "key", "slot", "owner", "queue", "cells")

    step_count = _field("steps", "steps applied so far", int)
    version = _field("version", "bumped by every committed change; the compare-and-set key of a shared store", int)
    timeout = _field("timeout", "seconds idle before it expires", float)
    deadline = _field("deadline", "when it expires unless touched (the table's clock)", float)
    waiting = _field("waiting", "units not yet run (its head and the queue behind it)", int)
    head = _field("head", "the unit this session runs next")
    running = _field("running", "the unit of this session in a model run now")

    def __init__(self, sid: str, model: str, slot: int, owner: str | None, timeout: float, now: float, cells: Cells,
                 model_version: int = 1):
        Ledger.__init__(self)
        self.id = sid
        self.model = model
        key = (model, model_version)  # the loaded version whose weights made its state: its runner and slab
        self.key = _KEYS.setdefault(key, key)  # one tuple shared by every session of a version (1M sessions)
        self.slot = slot
        self.owner = owner
        self.queue: deque | tuple = ()  # units behind head; a deque only while there are some (1M idle sessions stay small)
        self.cells = cells
        for name, _ in Cells.FIELDS:
            getattr(cells, name)[slot] = None if name in ("head", "running") else 0
        cells.session[slot] = self
        self.timeout = timeout
        self.deadline = now + timeout

    @property
    def phase(self) -> Phase:
        return PHASES[self.cells.phase[self.slot]]

    def _to(self, code: int) -> None:
        self.cells.phase[self.slot] = code

    def _wait(self, more: int) -> None:
        self.cells.waiting[self.slot] += more

    def __repr__(self) -> str:
        return f"Session({self.id!r}, {self.phase.value}, step {self.step_count})"

    @property
    def closed(self) -> bool:
        return self.cells.phase[self.slot] == _CLOSED

    @property
    def idle(self) -> bool:
        """Nothing queued, running or held: a new step could run right now."""
        return self.cells.phase[self.slot] == _IDLE


    # -- exactly-once (Ledger) -------------------------------------------------------

    def in_flight(self):
        for unit in (self.running, self.head, *self.queue):
            if unit is not None:
                q = unit.seq_of(self)
                if q is not None:
                    yield q, unit.fp_of(self), unit

    # -- transitions (called by the batcher, the service and the table only) ----------

    def enqueue(self, unit, seq: int | None) -> bool:
        """Add a unit (carrying step `seq` of this session) behind this session's others; True when this session
        is ready for it (it was idle). A unit of several sessions runs once every one of them is ready."""
        phase = self.cells.phase[self.slot]
        if phase == _CLOSED:
            raise NotFound(f"session {self.id!r} was closed")
        if seq is not None:
            self.accepted_seq = seq
        self._wait(1)
        if self.head is None:
            self.head = unit
            if phase == _IDLE:
                self._to(_QUEUED)
                return True
            return False
        if not self.queue:
            self.queue = deque()
        self.queue.append(unit)
        return False

    def claim(self, unit, seq: int | None) -> None:
        """IDLE -> RUNNING with `unit` (carrying step `seq`), which runs now: nothing is queued before it."""
        if seq is not None:
            self.accepted_seq = seq
        cells, slot = self.cells, self.slot
        cells.phase[slot] = _RUNNING
        cells.running[slot] = unit

    def start(self, unit) -> None:
        """QUEUED -> RUNNING with `unit`, which must be its head."""
        if self.head is not unit or self.phase is not QUEUED:
            raise RuntimeError(f"{self}: started a unit that is not its next one")
        self.head = self.queue.popleft() if self.queue else None
        self._wait(-1)
        self._to(_RUNNING)
        self.running = unit

    def finish(self, step_count: int, result: StepResult | None, fp: int = 0, restart: bool = False) -> int:
        """RUNNING -> QUEUED/IDLE after its unit was applied; `result` is recorded for a sequenced step, `restart`
        (a sequence start) begins the numbering again.

        Returns READY when its next unit is ready to run, GONE when it was closed meanwhile, else 0."""
        cells, slot = self.cells, self.slot
        cells.steps[slot] = step_count
        cells.version[slot] += 1
        if restart:
            self.restarted()
        if result is not None:
            self.record(result.sequence_number, result, fp)
        cells.running[slot] = None
        if cells.phase[slot] == _CLOSED:
            return GONE
        if cells.head[slot] is None:
            cells.phase[slot] = _IDLE
            return 0
        cells.phase[slot] = _QUEUED
        return READY

    def undo(self) -> bool:
        """RUNNING -> QUEUED/IDLE after its unit was NOT applied; True when it is now ready for its head."""
        self.running = None
        if self.phase is CLOSED:
            return False
        self._to(_IDLE if self.head is None else _QUEUED)
        return self.head is not None

    def retry(self, unit) -> None:
        """RUNNING -> QUEUED with `unit` at the head: its commit lost a compare-and-set, it runs again."""
        self.running = None
        if self.head is not None:
            if not self.queue:
                self.queue = deque()
            self.queue.appendleft(self.head)
        self.head = unit
        self._wait(1)
        self._to(_QUEUED)

    def drain(self) -> tuple[list, bool]:
        """Take every queued unit out (they will fail); a QUEUED session becomes IDLE. Returns (the units, whether
        this session was ready for the first of them: QUEUED, not running or held)."""
        units = [] if self.head is None else [self.head, *self.queue]
        was_ready = self.phase is QUEUED
        self.head = None
        self.queue = ()
        self.cells.waiting[self.slot] = 0
        if was_ready:
            self._to(_IDLE)
        return units, was_ready

    def hold(self) -> None:
        """IDLE -> HELD: keep the batcher off while the state is changed elsewhere."""
        if self.phase is not IDLE:
            raise FailedPrecondition(
                f"session {self.id!r} has {self.waiting + (self.running is not None)} step(s) in flight; "
                "change its state when they are done")
        self._to(_HELD)

    def release(self) -> bool:
        """HELD -> IDLE/QUEUED; True when steps queued meanwhile are ready (the head)."""
        if self.phase is CLOSED:
            return False
        self._to(_IDLE if self.head is None else _QUEUED)
        return self.head is not None

    def close(self) -> bool:
        """Any phase -> CLOSED; True when its slot can be freed now (no unit of it is running)."""
        self._to(_CLOSED)
        self.cells.session[self.slot] = None
        self.cells.vacated += 1
        return self.running is None

    def detach(self) -> None:
        """A closed session leaves its slot (to be reused): its fields move to cells of its own."""
        own = Cells(1)
        for name, _ in Cells.FIELDS:
            getattr(own, name)[0] = getattr(self.cells, name)[self.slot]
        self.cells, self.slot = own, 0

    def move(self, slot: int, into: Cells | None = None) -> None:
        """An idle or held session moves to another slot, of its own cells or of `into` (another version's slab):
        its fields go with it; the caller moves its state row."""
        cells = self.cells
        to = cells if into is None else into
        for name, _ in Cells.FIELDS:
            getattr(to, name)[slot] = getattr(cells, name)[self.slot]
        cells.session[self.slot] = None
        cells.vacated += 1
        self.cells, self.slot = to, slot

    def touch(self, now: float) -> None:
        """Activity: the idle deadline moves to now + timeout."""
        self.deadline = now + self.timeout

    def stored(self, version: int) -> None:
        """The store now holds this session at `version` (a create or a compare-and-set that won)."""
        self.version = version

    def set_counters(self, step_count: int | None, last_seq: int | None) -> None:
        """SetState of the counters (HELD): the next sequence number is last_seq + 1, nothing recorded."""
        if step_count is not None:
            self.step_count = step_count
        if last_seq is not None:
            self.last_seq = self.accepted_seq = last_seq
            self.last_result, self.last_fp = None, 0

    def counters(self) -> tuple:
        return self.step_count, self.last_seq, self.accepted_seq, self.last_result, self.last_fp, self.version

    def restore_counters(self, saved: tuple) -> None:
        """Undo set_counters (the change could not be made durable)."""
        self.step_count, self.last_seq, self.accepted_seq, self.last_result, self.last_fp, self.version = saved

    def forget_accepted(self) -> None:
        """A failed step was not applied: the numbers it and the steps behind it took are free again."""
        self.accepted_seq = self.last_seq

    def load(self, rec) -> None:
        """Take counters and the recorded response from a store record (the state row is the table's)."""
        self.step_count = rec.step_count
        self.version = rec.version
        self.last_seq = rec.last_seq
        # steps of this session queued or running here were accepted already: the next one follows them
        in_flight = [q for u in (self.running, self.head, *self.queue)
                     if u is not None and (q := u.seq_of(self)) is not None]
        self.accepted_seq = max([rec.last_seq, *in_flight])
        self.last_result, self.last_fp = None, rec.last_fp
        if rec.last_output is not None:
            self.last_result = StepResult(rec.last_output, rec.last_state, rec.last_step_count, rec.last_seq)


# -- the transitions of every session of a unit at once (the batcher's side) --------------------------------

def all_idle(cells: Cells, sessions: list, slots) -> bool:
    """Is every one of these sessions idle?"""
    if len(sessions) == 1:
        return sessions[0].idle
    if len(sessions) < BULK:
        return all(s.idle for s in sessions)
    return not _any(cells.phase[slots], axis=None)


def contiguous(slots: np.ndarray):
    """`slots` as a slice when they are consecutive and ascending (sessions opened together, stepped in that order):
    the cells and state rows of such a frame are views of one block, like a group's, with no gather or scatter."""
    n = len(slots)
    if n > 1 and slots[-1] - slots[0] == n - 1 and _all(slots[1:] > slots[:-1], axis=None):
        return slice(int(slots[0]), int(slots[0]) + n)
    return slots


def first_slots(slots, k: int):
    """The first k of a unit's slots (an index array, or a slice of a block)."""
    return slice(slots.start, slots.start + k) if isinstance(slots, slice) else slots[:k]


def indexes(slots) -> np.ndarray:
    """A unit's slots as an index array (a slice of a block as the indexes it covers)."""
    return np.arange(slots.start, slots.stop) if isinstance(slots, slice) else slots


def closed_among(cells: Cells, slots) -> list[int]:
    """The entries (indexes into `slots`) whose sessions are closed."""
    return np.flatnonzero(cells.phase[slots] == _CLOSED).tolist()


def claim_many(cells: Cells, sessions: list, slots, unit, seqs: list | None) -> None:
    """Session.claim of a unit's sessions, all idle (all_idle): the unit runs now."""
    if len(sessions) < BULK:
        for i, s in enumerate(sessions):
            s.claim(unit, None if seqs is None else seqs[i])
        return
    cells.phase[slots] = _RUNNING
    cells.running[slots] = unit
    if seqs is not None:
        for s, q in zip(sessions, seqs):
            if q is not None:
                s.accepted_seq = q


def enqueue_many(cells: Cells, sessions: list, slots, unit, seqs: list | None) -> int:
    """Session.enqueue of each of a unit's sessions (`slots` theirs, `seqs` their step numbers); how many are not
    ready for it. One pass over the arrays when every session is idle, the common case; else session by session."""
    # all IDLE: nothing queued, running or held, none closed
    if len(sessions) >= BULK and not _any(cells.phase[slots], axis=None):
        cells.phase[slots] = _QUEUED
        cells.head[slots] = unit
        cells.waiting[slots] = 1
        if seqs is not None:
            for s, q in zip(sessions, seqs):
                if q is not None:
                    s.accepted_seq = q
        return 0
    blocked = 0
    for i, s in enumerate(sessions):
        if not s.enqueue(unit, None if seqs is None else seqs[i]):
            blocked += 1
    return blocked


def start_many(cells: Cells, sessions: list, slots, unit, pending: list[bool] | None) -> None:
    """Session.start of a unit's sessions (`pending`: which entries; None: all). One pass when every one has
    nothing queued behind this unit."""
    if pending is None and len(sessions) >= BULK and start_block(cells, slots, unit):
        return
    for i, s in enumerate(sessions):
        if pending is None or pending[i]:
            s.start(unit)


def start_block(cells: Cells, slots, owner) -> bool:
    """Session.start of the sessions in `slots` in one pass over the arrays, when each is QUEUED with just its unit
    (`owner`: that unit, or an array of one per slot: a run of streams' steps) and nothing behind it; False, with
    nothing changed, otherwise (start them one by one)."""
    if not (_all(cells.waiting[slots] == 1, axis=None) and _all(cells.phase[slots] == _QUEUED, axis=None)
            and _all(cells.head[slots] == owner, axis=None)):  # (each its session's head, as Session.start checks)
        return False
    cells.phase[slots] = _RUNNING
    cells.running[slots] = owner
    cells.head[slots] = None
    cells.waiting[slots] = 0
    return True


def finish_many(cells: Cells, slots, unit, counts: np.ndarray) -> tuple[list, np.ndarray] | None:
    """Session.finish (no recorded result, no restart) of a unit's sessions in one pass; None for a unit of fewer
    than BULK (finish them one by one). The caller checked that no entry of the unit was settled or failed: then
    every one of its sessions is still running it (only a failed or settled entry's session stops running its unit:
    Batcher._fail_entry, _reconcile), so no per-slot compare of the running units is needed. Returns (the next
    units of the sessions now ready for them, the indices of sessions closed meanwhile)."""
    if len(counts) < BULK:
        return None
    cells.steps[slots] = counts
    cells.version[slots] += 1
    cells.running[slots] = None
    phase, waiting = cells.phase[slots], cells.waiting[slots]
    if _max(phase, axis=None) < _CLOSED and not _any(waiting, axis=None):  # the common case: two reductions
        cells.phase[slots] = _IDLE
        return [], _NONE
    closed, waiting = phase == _CLOSED, waiting > 0
    cells.phase[slots] = np.where(closed, _CLOSED, np.where(waiting, _QUEUED, _IDLE))
    return cells.head[slots][waiting & ~closed].tolist(), np.flatnonzero(closed)


def check_session_id(sid: str) -> None:
    """Client-chosen ids: 1..128 UTF-8 bytes, printable."""
    if len(sid.encode("utf-8", "surrogatepass")) > MAX_SESSION_ID_BYTES:
        size = len(sid.encode("utf-8", "surrogatepass"))
        raise InvalidArgument(f"session_id is {size} bytes; at most {MAX_SESSION_ID_BYTES}")
    if not sid.isprintable():
        raise InvalidArgument("session_id has non-printable characters")
