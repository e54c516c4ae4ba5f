"""Ledger: the one exactly-once decision, for a session's numbered steps and for a group's."""

from __future__ import annotations

import zlib

import numpy as np

from statestream.contract.errors import FailedPrecondition, InvalidArgument, show

MAX_SEQUENCE_NUMBER = 2**62  # far beyond any real stream; keeps the arithmetic inside int64 (numpy, sqlite)


def fingerprint(x: np.ndarray) -> int:
    """A stable fingerprint of a step's input (CRC-32 of its float32 bytes, plus its shape): a retry must carry
    the same input as the step it repeats."""
    return (zlib.crc32(np.ascontiguousarray(x).data) << 20) | (x.shape[0] & 0xFFFFF)


class Ledger:
    """Sequence numbers of one stream of steps and the recorded answer of the last applied one.

    Subclasses (Session, Group) say which units of theirs are in flight (`in_flight`)."""

    __slots__ = ("last_seq", "accepted_seq", "last_result", "last_fp")

    def __init__(self):
        self.last_seq = 0        # last applied sequence number
        self.accepted_seq = 0    # last accepted (applied, queued or running) sequence number
        self.last_result = None  # the recorded answer of step last_seq
        self.last_fp = 0         # the fingerprint of step last_seq's input (0: unknown)

    def in_flight(self):
        """(sequence number, fingerprint, unit) of each step of this ledger queued or running."""
        return ()

    def accept(self, seq: int | None, fp: int = 0, restart: bool = False):
        """Decide what a numbered step is. Returns None (new: run it), the recorded result (a retry of the last
        applied step: replay it) or a unit (a retry of a step queued or running: wait for it); raises
        FailedPrecondition (refused: stale, gap, or a retry with other input) or InvalidArgument.

        `restart`: a sequence start, which numbers from 1 again; a retried start replays."""
        if seq is None:
            return None
        if seq < 1:
            raise InvalidArgument(f"sequence_number must be >= 1, got {seq}")
        if seq > MAX_SEQUENCE_NUMBER:
            raise InvalidArgument(f"sequence_number must be <= 2^62, got {seq}")
        if seq == self.accepted_seq:
            if self.last_seq == seq and self.last_result is not None:
                if not restart or fp == self.last_fp:
                    self._same_input(seq, fp, self.last_fp)
                    return self.last_result
            else:
                for q, unit_fp, unit in self.in_flight():
                    if q == seq:
                        self._same_input(seq, fp, unit_fp)
                        return unit
                if not restart:
                    raise FailedPrecondition(f"sequence number {seq} was applied but its response is no longer "
                                             f"held; expected {seq + 1}")
        if restart:
            if seq != 1:
                raise FailedPrecondition(f"a sequence start must carry sequence number 1, got {seq}")
            return None
        if seq != self.accepted_seq + 1:
            kind = "stale" if seq < self.accepted_seq else "out of order (gap)"
            raise FailedPrecondition(f"sequence number {seq} is {kind} for {self.describe()}; "
                                     f"expected {self.accepted_seq + 1}")
        return None

    def _same_input(self, seq: int, fp: int, recorded: int) -> None:
        if fp and recorded and fp != recorded:
            raise FailedPrecondition(f"sequence number {seq} of {self.describe()} was taken by a step with other "
                                     "input; a retry must repeat the same input (use the next number for a new step)")

    def describe(self) -> str:
        return show(getattr(self, "id", "?"))

    def record(self, seq: int | None, result, fp: int) -> None:
        """Step `seq` was applied with this result (a step without a number records nothing)."""
        if seq is not None:
            self.last_seq, self.last_result, self.last_fp = seq, result, fp

    def restarted(self) -> None:
        """A sequence start was applied: numbering begins again (record() follows for its own number)."""
        self.last_seq, self.last_result, self.last_fp = 0, None, 0
