"""Session groups: N sessions with contiguous state rows, stepped together as one unit (a gateway's devices)."""

from __future__ import annotations

import secrets

import numpy as np

from statestream.contract.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted, show
from statestream.server.engine.ledger import Ledger
from statestream.server.engine.sessions import MAX_SESSION_ID_BYTES, Phase, Session

TOUCH_EVERY = 1.0  # seconds: members' idle deadlines move with group steps at most this often (not per step)


class Group(Ledger):
    """A group's members (ordinary sessions, slots start..start+N-1), its step count and its own exactly-once
    Ledger (the group's sequence numbers; the recorded answer is the outputs of every member)."""

    __slots__ = ("id", "model", "owner", "members", "ids", "objects", "cells", "start", "step_count", "touched", "units",
                 "verified", "rows", "slots", "no_states", "no_counts")

    def __init__(self, gid: str, model: str, owner, members: list[Session]):
        Ledger.__init__(self)
        self.id = gid
        self.model = model
        self.owner = owner
        self.members = members
        self.ids = [s.id for s in members]
        self.objects = np.empty(len(members), dtype=object)  # the members as an array: Cells.holds checks them at once
        self.objects[:] = members
        self.cells = members[0].cells  # the model's (opened sessions are in its slab)
        self.verified = -1  # the slab's `vacated` count when every member was last found in its slot
        self.start = members[0].slot
        n = len(members)
        # made once, read-only: a step of every member's entry rows and slots, and the per-entry states and counts
        # a group step's answer carries none of
        self.rows, self.slots = _frozen(np.arange(n)), slice(self.start, self.start + n)
        self.no_states, self.no_counts = _frozen(np.zeros((n, 0), np.float32)), _frozen(np.zeros(n, np.int64))
        self.step_count = 0
        self.touched = float("-inf")  # when the members' idle deadlines were last moved
        self.units: list = []         # group steps queued or running, in order

    def describe(self) -> str:
        return f"group {show(self.id)}"

    def in_flight(self):
        for unit in self.units:
            yield unit.group_seq, unit.group_fp, unit

    @property
    def closed(self) -> bool:
        """Every member was closed or expired: the group is gone."""
        return all(s.phase is Phase.CLOSED for s in self.members)

    def members_of(self, keep: np.ndarray | None) -> list[Session]:
        """The members a step with this mask steps; NotFound for one that was closed or expired."""
        if keep is None and self.verified == self.cells.vacated:  # no session left a slot of the slab since
            return self.members
        if keep is None:
            members, slots, objects = self.members, self.slots, self.objects
        else:
            members, slots, objects = self.objects[keep].tolist(), self.start + np.flatnonzero(keep), self.objects[keep]
        if not self.cells.holds(slots, objects):  # a member closed (or left its slot)
            for i, s in enumerate(self.members):
                if s.phase is Phase.CLOSED and (keep is None or keep[i]):
                    raise NotFound(f"group {show(self.id)}: member {i} (session {show(s.id)}) was closed or "
                                   "expired; close the group and open a new one")
        elif keep is None:
            self.verified = self.cells.vacated
        return members

    def applied(self, unit) -> None:
        """The batcher applied this group step: count it and record its answer (every member's outputs)."""
        self.units.remove(unit)
        self.step_count += 1
        if unit.group_seq is not None:
            out = np.zeros((len(self.members), *unit.y.shape[1:]), dtype=np.float32)
            out[unit.rows] = unit.y
            self.record(unit.group_seq, (out, self.step_count), unit.group_fp)

    def dropped(self, unit) -> None:
        """A group step that was not applied: its number is free again."""
        if unit in self.units:
            self.units.remove(unit)
            self.accepted_seq = self.last_seq


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class Groups:
    """The open groups of this process, per owner; bounded by --max-groups."""

    def __init__(self, max_groups: int, max_members: int):
        self.max_groups = max_groups
        self.max_members = max_members
        self._groups: dict[tuple, Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def check_new(self, gid: str, n: int, owner) -> str:
        """The id of a group that may be opened with n members (a random one for ""); refusals say why."""
        if not 1 <= n <= self.max_members:
            raise ResourceExhausted(f"a group has 1 to {self.max_members} members (--max-entries); got {n}") \
                if n > self.max_members else InvalidArgument(f"a group has 1 to {self.max_members} members; got {n}")
        gid = gid or secrets.token_hex(16)
        if len(gid.encode("utf-8", "surrogatepass")) > MAX_SESSION_ID_BYTES or not gid.isprintable():
            raise InvalidArgument(f"group_id must be 1 to {MAX_SESSION_ID_BYTES} printable UTF-8 bytes; got "
                                  f"{len(gid.encode('utf-8', 'surrogatepass'))} bytes")
        if (owner, gid) in self._groups:
            raise AlreadyExists(f"group {gid!r} is already open")
        self.prune()
        if len(self._groups) >= self.max_groups:
            raise ResourceExhausted(f"group limit reached: {self.max_groups} groups open (--max-groups)")
        return gid

    def add(self, g: Group) -> Group:
        self._groups[(g.owner, g.id)] = g
        return g

    def get(self, gid: str, owner) -> Group:
        g = self._groups.get((owner, gid))
        if g is None or (g.verified != g.cells.vacated and g.closed):  # no session left its slot since: none closed
            if g is not None:
                del self._groups[(owner, gid)]
            raise InvalidArgument("group_id is empty") if not gid else NotFound(f"unknown group {show(gid)}")
        return g

    def holds(self, s: Session) -> bool:
        """Is this session a member of an open group?"""
        return self.any_member([s])

    def any_member(self, sessions: list[Session]) -> bool:
        """Is any of these sessions a member of an open group? (one pass over the groups, not one per session)"""
        if not self._groups:
            return False
        members = {id(m) for g in self._groups.values() for m in g.members}
        return any(id(s) in members for s in sessions)

    def remove(self, g: Group) -> None:
        self._groups.pop((g.owner, g.id), None)

    def prune(self) -> int:
        """Forget groups every member of which was closed or expired; how many."""
        gone = [key for key, g in self._groups.items() if g.closed]
        for key in gone:
            del self._groups[key]
        return len(gone)
