"""The engine's protocol-neutral request and answer: numpy in, numpy out, exactly-once as data."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from statestream.contract.errors import StatestreamError

APPLIED, REPLAYED = "applied", "replayed"  # what happened to a numbered step ("refused" is a FailedPrecondition)


@dataclass(slots=True)
class StepResult:
    """What one applied step produced: every timestep's output and the states after it."""

    output: np.ndarray      # [T, O]
    state: np.ndarray       # [W], states after the last timestep
    step_count: int
    sequence_number: int | None


@dataclass(slots=True)
class StepRequest:
    """One step of each of N sessions (N=1 for a unary step), or one step of a session group.

    `x` is float32 [N, T, F]. Sessions are named by `ids` (on `model`, which may be "" when they exist), or the
    request names a `group` (then `seq` is the group's sequence number and `masked` the members not stepped).
    `seqs`: a sequence number (or None) per entry, or None. `reset`: a sequence start (KServe): each session starts
    from zero states and step 0 as part of this very step, so a refused start changes nothing. `stream`: the step
    came from a stream (see BatchPolicy.inline)."""

    owner: str | None
    x: np.ndarray
    model: str = ""
    ids: list[str] = field(default_factory=list)
    seqs: list | None = None
    open_if_missing: bool = False
    reset: bool = False
    stream: bool = False
    group: str = ""
    seq: int | None = None
    masked: np.ndarray | None = None
    deadline: float | None = None  # time.monotonic() when the caller gives up: bounds the step's store write
    version: int = 0  # the model version open_if_missing opens a session on (0: the default, latest)


@dataclass(slots=True)
class StepReply:
    """The outcome of a StepRequest, entry by entry.

    `output` [N, T, O] and `state` [N, W] hold zeros where an entry failed; `errors` maps an entry to its domain
    error; `outcome[i]` is APPLIED or REPLAYED. A group step has one entry per member (masked ones zero) and its
    own counters in `group_step_count` and `seqs[0]`."""

    model: str
    ids: list[str]
    output: np.ndarray
    state: np.ndarray
    step_count: np.ndarray
    seqs: list | None
    outcome: list[str]
    errors: dict[int, StatestreamError]
    group_step_count: int = 0

    def raise_first(self) -> None:
        """A one-entry request: its error raised, if it has one."""
        if self.errors:
            raise self.errors[min(self.errors)]
