"""FrameIndex: the id lists of recent frames, resolved to their sessions and slots.

A gateway of sensors sends a frame of the same devices every tick. Resolving a frame id by id costs a hash, a
dict probe, a string compare and a read of each Session, scattered over the heap (a fifth of a frame of 1024 in
process; the dict probe alone was the event loop's hottest function at the wire: docs/performance.md). Its next
frame of the same ids resolves here in one lookup of one key made of the whole id list (one string: one hash and
one memcmp, where a tuple of the ids cost a hash and a compare call per id).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from statestream.server.engine.sessions import Cells

SEPARATOR = "\x00"  # never in an open session's id (ids are printable: sessions.check_session_id)


def frame_key(owner: str | None, ids: list[str]) -> tuple:
    """The index key of a frame: its ids joined by SEPARATOR, with their count. Unambiguous for a frame of open
    sessions: with n ids and n - 1 separators, a list of n ids that joins to the same string has no SEPARATOR
    inside an id, so it is the same list."""
    return owner, len(ids), SEPARATOR.join(ids)


class FrameIndex:
    """frame_key -> (sessions, slots) of frames seen, all in one slab. An entry holds while no session of that
    slab has left its slot since (`Cells.vacated` unchanged: closing, moving or regrouping a session bumps it), so
    every session it names is still open and in its slot. Bounded: at most `limit` session references in all (about
    100 bytes each), the least recently used frame out first; 0 keeps none."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0  # session references kept
        self.hits = self.misses = 0  # lookups so far (the metrics read them)
        self._frames: OrderedDict[tuple, tuple[list, np.ndarray, Cells, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, key: tuple) -> tuple[list, np.ndarray] | None:
        """The sessions and slots of a frame resolved before (None: not kept, or no longer valid)."""
        found = self._frames.get(key)
        if found is None:
            self.misses += 1
            return None
        sessions, slots, cells, vacated = found
        if cells.vacated != vacated:
            self._drop(key)
            self.misses += 1
            return None
        self._frames.move_to_end(key)
        self.hits += 1
        return sessions, slots

    def put(self, key: tuple, sessions: list, slots, cells: Cells) -> None:
        """Keep a frame just resolved: distinct sessions, all open in `cells` at `slots` (an index array, or a slice
        of a block)."""
        n = len(sessions)
        if n > self.limit:
            return
        if key in self._frames:
            self._drop(key)
        if not isinstance(slots, slice):
            slots.setflags(write=False)  # shared by every request of this frame from now on
        while self.held + n > self.limit:
            self._drop(next(iter(self._frames)))
        self._frames[key] = (sessions, slots, cells, cells.vacated)
        self.held += n

    def clear(self) -> None:
        """Forget every frame (a model version was dropped: its slab must not stay referenced)."""
        self._frames.clear()
        self.held = 0

    def _drop(self, key: tuple) -> None:
        self.held -= len(self._frames.pop(key)[0])
