"""SessionTable: session ids, per-model state slabs, counters, idle expiry."""

from __future__ import annotations

import heapq
import itertools
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from .errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted, show
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

    def free(self, slot: int) -> None:
        self._free.append(slot)


class Session:
    """One stream's bookkeeping; its states are a row of its model's slab."""

    __slots__ = ("id", "model", "slot", "owner", "timeout", "deadline", "step_count", "last_seq",
                 "accepted_seq", "last_result", "pending", "busy", "closed")

    def __init__(self, sid: str, model: str, slot: int, owner: str | None, timeout: float, now: float):
        self.id = sid
        self.model = model
        self.slot = slot
        self.owner = owner
        self.timeout = timeout
        self.deadline = now + timeout
        self.step_count = 0
        self.last_seq = 0          # last applied sequence number
        self.accepted_seq = 0      # last accepted (applied or queued) sequence number
        self.last_result = None    # recorded result of the step with last_seq
        self.pending: deque | tuple = ()  # a deque only while steps are queued: 1M idle sessions stay small
        self.busy = False          # a step of it is in the model run now
        self.closed = False


class SessionTable:
    """Every open session of the server; all calls happen on the event loop thread."""

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

    def open(self, model: str, sid: str = "", timeout: float = 0.0, owner: str | None = None) -> Session:
        """Open a session with zero states; `sid` empty picks a random 128-bit id."""
        self.runner(model)
        if timeout < 0 or timeout != timeout:
            raise InvalidArgument(f"idle_timeout_seconds must be >= 0, got {timeout}")
        if timeout > self.max_timeout:
            raise InvalidArgument(f"idle_timeout_seconds {timeout} is over the server's limit {self.max_timeout}")
        if sid:
            check_session_id(sid)
            if _key(sid, owner) in self._sessions:
                raise AlreadyExists(f"session {sid!r} is already open")
        else:
            sid = secrets.token_hex(16)
        if len(self._sessions) >= self.max_sessions:
            raise ResourceExhausted(f"session limit reached: {self.max_sessions} sessions open (--max-sessions)")
        now = self.clock()
        s = Session(sid, model, self.slabs[model].alloc(), owner, timeout or self.default_timeout, now)
        self._sessions[_key(sid, owner)] = s
        self._expired.pop(_key(sid, owner), None)
        heapq.heappush(self._expiry, (s.deadline, next(self._tie), s))
        return s

    def get(self, sid: str, owner: str | None = None) -> Session:
        """The open session `sid`, or NotFound saying whether it expired."""
        key = _key(sid, owner)
        s = self._sessions.get(key)
        if s is None:
            if not sid:
                raise InvalidArgument("session_id is empty")
            if key in self._expired:
                raise NotFound(f"session {show(sid)} expired after {self._expired[key]:g} s idle")
            raise NotFound(f"unknown session {show(sid)}")
        return s

    def touch(self, s: Session) -> None:
        s.deadline = self.clock() + s.timeout

    def close(self, s: Session) -> None:
        """Remove a session; its slot is freed now, or after its in-flight step."""
        if s.closed:
            return
        s.closed = True
        del self._sessions[_key(s.id, s.owner)]
        if not s.busy:
            self.slabs[s.model].free(s.slot)

    def release(self, s: Session) -> None:
        """Called by the batcher after a run: free the slot of a session closed meanwhile."""
        if s.closed:
            self.slabs[s.model].free(s.slot)

    def state(self, s: Session) -> np.ndarray:
        return self.slabs[s.model].rows[s.slot]

    def set_state(self, s: Session, row: np.ndarray) -> None:
        """Overwrite a session's states (the caller keeps the batcher off it: Batcher.hold)."""
        self.slabs[s.model].rows[s.slot] = row

    def expire(self) -> list[Session]:
        """Close every session idle past its deadline; returns them."""
        now = self.clock()
        gone = []
        while self._expiry and self._expiry[0][0] <= now:
            _, _, s = heapq.heappop(self._expiry)
            if s.closed:
                continue
            if s.deadline > now or s.busy or s.pending:
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
               last=None) -> SessionRecord:
        """A session as the store keeps it; `state`/`step_count`/`last` give values about to be applied."""
        last = last if last is not None else s.last_result
        return SessionRecord(
            s.id, s.model, s.owner, self.state(s) if state is None else state,
            s.step_count if step_count is None else step_count,
            s.last_seq if last is None else (last.sequence_number or 0), s.timeout,
            time.time() + (s.deadline - self.clock()),
            None if last is None else last.output, None if last is None else last.state,
            0 if last is None else last.step_count)

    def restore(self, rec: SessionRecord) -> Session | None:
        """Re-open a stored session (after a restart); None when its model is no longer served."""
        if rec.model not in self.runners or _key(rec.id, rec.owner) in self._sessions:
            return None
        if rec.state.shape != (self.slabs[rec.model].width,):
            return None
        now = self.clock()
        s = Session(rec.id, rec.model, self.slabs[rec.model].alloc(), rec.owner, rec.timeout, now)
        s.deadline = now + max(0.0, rec.expires_at - time.time())
        self.slabs[rec.model].rows[s.slot] = rec.state
        s.step_count = rec.step_count
        s.last_seq = s.accepted_seq = rec.last_seq
        if rec.last_output is not None:
            s.last_result = StepResult(rec.last_output, rec.last_state, rec.last_step_count, rec.last_seq)
        self._sessions[_key(s.id, s.owner)] = s
        heapq.heappush(self._expiry, (s.deadline, next(self._tie), s))
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
