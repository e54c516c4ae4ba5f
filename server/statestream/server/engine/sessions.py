"""Session: one owner of a session's life (explicit phases, sequence numbers, the recorded response)."""

from __future__ import annotations

import enum
from collections import deque

from statestream.contract.errors import FailedPrecondition, InvalidArgument, NotFound
from statestream.server.engine.ledger import Ledger
from statestream.server.engine.types import StepResult

MAX_SESSION_ID_BYTES = 128
_KEYS: dict[tuple[str, int], tuple[str, int]] = {}  # interned (model, version) keys



class Phase(enum.Enum):
    """Where a session is in its life. Only the transition methods of Session change it."""

    IDLE = "idle"        # nothing queued or running: a step may run at once
    QUEUED = "queued"    # its next unit of work is in its batcher's ready queue
    RUNNING = "running"  # a unit of it is in a model run or in that run's commit
    HELD = "held"        # its state is being changed (SetState, reload); steps queue behind
    CLOSED = "closed"    # gone; its slot is free once nothing of it runs


IDLE, QUEUED, RUNNING, HELD, CLOSED = Phase.IDLE, Phase.QUEUED, Phase.RUNNING, Phase.HELD, Phase.CLOSED
READY, GONE = 1, 2  # what Session.finish says of a session's next unit


class Session(Ledger):
    """One stream's bookkeeping; its states are a row (slot) of its model's slab.

    Steps arrive as units (units.Unit); `head` is the unit this session runs next and `queue` the units behind
    it. While QUEUED its head waits for the batcher (or, for a unit of several sessions, for the others too).
    Exactly-once is its Ledger: `accept` decides on a sequence number, `finish` records the step it applied.
    """

    __slots__ = ("id", "model", "key", "slot", "owner", "timeout", "deadline", "phase", "queue", "step_count", "version",
                 "running", "head")

    def __init__(self, sid: str, model: str, slot: int, owner: str | None, timeout: float, now: float,
                 model_version: int = 1):
        Ledger.__init__(self)
        self.id = sid
        self.model = model
        key = (model, model_version)  # the loaded version whose weights made its state: its runner and slab
        self.key = _KEYS.setdefault(key, key)  # one tuple shared by every session of a version (1M sessions)
        self.slot = slot
        self.owner = owner
        self.timeout = timeout
        self.deadline = now + timeout
        self.phase = IDLE
        self.head = None           # the unit this session runs next
        self.queue: deque | tuple = ()  # units behind head; a deque only while there are some (1M idle sessions stay small)
        self.step_count = 0
        self.version = 0           # bumped by every committed change; the compare-and-set key of a shared store
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

    def finish(self, step_count: int, result: StepResult | None, fp: int = 0, restart: bool = False) -> int:
        """RUNNING -> QUEUED/IDLE after its unit was applied; `result` is recorded for a sequenced step, `restart`
        (a sequence start) begins the numbering again.

        Returns READY when its next unit is ready to run, GONE when it was closed meanwhile, else 0."""
        self.step_count = step_count
        self.version += 1
        if restart:
            self.restarted()
        if result is not None:
            self.record(result.sequence_number, result, fp)
        self.running = None
        if self.phase is CLOSED:
            return GONE
        if self.head is None:
            self.phase = IDLE
            return 0
        self.phase = QUEUED
        return READY

    def undo(self) -> bool:
        """RUNNING -> QUEUED/IDLE after its unit was NOT applied; True when it is now ready for its head."""
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

    def drain(self) -> tuple[list, bool]:
        """Take every queued unit out (they will fail); a QUEUED session becomes IDLE. Returns (the units, whether
        this session was ready for the first of them: QUEUED, not running or held)."""
        units = [] if self.head is None else [self.head, *self.queue]
        was_ready = self.phase is QUEUED
        self.head = None
        self.queue = ()
        if self.phase is QUEUED:
            self.phase = IDLE
        return units, was_ready

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

    def close(self) -> bool:
        """Any phase -> CLOSED; True when its slot can be freed now (no unit of it is running)."""
        self.phase = CLOSED
        return self.running is None

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


def check_session_id(sid: str) -> None:
    """Client-chosen ids: 1..128 UTF-8 bytes, printable."""
    if len(sid.encode("utf-8", "surrogatepass")) > MAX_SESSION_ID_BYTES:
        size = len(sid.encode("utf-8", "surrogatepass"))
        raise InvalidArgument(f"session_id is {size} bytes; at most {MAX_SESSION_ID_BYTES}")
    if not sid.isprintable():
        raise InvalidArgument("session_id has non-printable characters")
