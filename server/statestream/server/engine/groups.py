"""Session groups: N sessions with contiguous state rows, stepped together by one message (a gateway's devices)."""

from __future__ import annotations

import asyncio
import secrets
from operator import attrgetter

import numpy as np

from statestream.v1 import statestream_pb2 as pb

from statestream.server.api import codec
from statestream.contract.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, show
from statestream.server.engine.sessions import MAX_SESSION_ID_BYTES, Phase, Session

MAX_GROUP_SIZE = 65_536
TOUCH_EVERY = 1.0  # seconds: members' idle deadlines move with group steps at most this often (not per step)
_phase = attrgetter("phase")


class Group:
    """A group's members (ordinary sessions, slots start..start+N-1) and its own exactly-once record."""

    __slots__ = ("id", "model", "owner", "members", "start", "lock", "step_count", "last_seq", "last", "touched")

    def __init__(self, gid: str, model: str, owner, members: list[Session]):
        self.id = gid
        self.model = model
        self.owner = owner
        self.members = members
        self.start = members[0].slot
        self.lock = asyncio.Lock()  # group steps run one at a time, in arrival order
        self.step_count = 0
        self.last_seq = 0           # last applied group sequence number
        self.last = None            # (outputs [N, rows, O], rows) of the step with last_seq
        self.touched = float("-inf")  # when the members' idle deadlines were last moved

    def check_idle(self, members: list[Session]) -> None:
        """These members all idle (one C-level pass over their phases), else why not: NotFound for a member
        that was closed or expired, FailedPrecondition for one with steps in flight."""
        if list(map(_phase, members)).count(Phase.IDLE) == len(members):  # identity compares, in C
            return
        for s in members:
            i = s.slot - self.start
            if s.phase is Phase.CLOSED:
                raise NotFound(f"group {show(self.id)}: member {i} (session {show(s.id)}) was closed or expired; "
                               "close the group and open a new one")
            if s.phase is not Phase.IDLE:
                raise FailedPrecondition(f"group {show(self.id)}: member {i} (session {show(s.id)}) has steps in "
                                         "flight; a group step needs every member idle")


class Groups:
    """OpenGroup / StepGroup / CloseGroup over the session table, the model's batcher and persistence."""

    def __init__(self, table, batchers, directory, max_timesteps: int, check_open):
        self.table = table
        self.batchers = batchers
        self.directory = directory
        self.persistence = directory.persistence
        self.max_timesteps = max_timesteps
        self.check_open = check_open
        self._groups: dict[tuple, Group] = {}

    def _get(self, gid: str, owner) -> Group:
        g = self._groups.get((owner, gid))
        if g is None:
            raise InvalidArgument("group_id is empty") if not gid else NotFound(f"unknown group {show(gid)}")
        return g

    async def open(self, req: pb.OpenGroupRequest, owner) -> pb.OpenGroupResponse:
        self.check_open()
        if self.persistence.shared:
            raise FailedPrecondition("session groups live in one process; this server's state store is shared "
                                     "between processes (use frames, or a process-local store)")
        runner = self.table.runner(req.model)
        ids = list(req.session_ids)
        n = len(ids) or req.size
        if req.size and ids and req.size != len(ids):
            raise InvalidArgument(f"size is {req.size} but {len(ids)} session_ids are given")
        if not 1 <= n <= MAX_GROUP_SIZE:
            raise InvalidArgument(f"a group has 1 to {MAX_GROUP_SIZE} members; got {n}")
        gid = req.group_id or secrets.token_hex(16)
        if len(gid.encode("utf-8", "surrogatepass")) > MAX_SESSION_ID_BYTES or not gid.isprintable():
            raise InvalidArgument(f"group_id must be 1 to {MAX_SESSION_ID_BYTES} printable UTF-8 bytes; got "
                                  f"{len(gid.encode('utf-8', 'surrogatepass'))} bytes")
        if (owner, gid) in self._groups:
            raise AlreadyExists(f"group {gid!r} is already open")
        members = self.table.open_block(req.model, ids or [""] * n, req.idle_timeout_seconds, owner)
        opened = []
        try:
            for s in members:
                await self.persistence.opened(s)
                opened.append(s)
        except Exception:
            for s in members:
                self.table.close(s)
            for s in opened:
                await self.persistence.closed(s)
            raise
        g = self._groups[(owner, gid)] = Group(gid, req.model, owner, members)
        return pb.OpenGroupResponse(group_id=g.id, session_ids=[s.id for s in members],
                                    model=codec.model_info(runner, self.max_timesteps),
                                    idle_timeout_seconds=members[0].timeout)

    async def close(self, req: pb.CloseGroupRequest, owner) -> pb.CloseGroupResponse:
        g = self._get(req.group_id, owner)
        async with g.lock:
            del self._groups[(owner, g.id)]
            closed = 0
            if not req.keep_sessions:
                for s in g.members:
                    if not s.closed:
                        await self.directory.close(s)
                        closed += 1
        return pb.CloseGroupResponse(step_count=g.step_count, closed_sessions=closed)

    async def step(self, req: pb.StepGroupRequest, owner) -> pb.StepGroupResponse:
        self.check_open()
        g = self._get(req.group_id, owner)
        runner = self.table.runners[g.model]
        n = len(g.members)
        T = req.timesteps or 1
        if T > self.max_timesteps:
            raise InvalidArgument(f"group step has T={T} timesteps; the limit is {self.max_timesteps} (--max-timesteps)")
        x = codec.parse_block(runner, req.inputs, req.inputs_raw, n, T)
        keep = None
        if req.masked:
            masked = np.asarray(req.masked, dtype=np.int64)
            if masked.max() >= n:
                raise InvalidArgument(f"masked index {int(masked.max())} is out of range; the group has {n} members")
            keep = np.ones(n, dtype=bool)
            keep[masked] = False
            x = x.copy()
            x[~keep] = 0.0  # masked entries run on zeros (their results are dropped): no NaN from unused rows
        codec.check_finite(x.reshape(-1), "inputs")
        seq = req.sequence_number if req.HasField("sequence_number") else None
        # The step runs in its own task: a cancelled caller (deadline, disconnect) never cancels it halfway
        # (the store written, the slab not); a retry with the same sequence number waits for it and replays.
        task = asyncio.ensure_future(self._step(g, req, runner, x, keep, seq, T))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _step(self, g: Group, req, runner, x: np.ndarray, keep, seq, T: int) -> pb.StepGroupResponse:
        async with g.lock:
            if seq is not None:
                if seq <= 0:
                    raise InvalidArgument(f"sequence_number must be >= 1, got {seq}")
                if seq == g.last_seq and g.last is not None:
                    return self._response(g, req, *g.last, seq, replayed=True)
                if seq != g.last_seq + 1:
                    kind = "stale" if seq < g.last_seq else "out of order (gap)"
                    raise FailedPrecondition(
                        f"sequence number {seq} is {kind} for group {show(g.id)}; expected {g.last_seq + 1}")
            y = await self._run(g, runner, x, keep)
            rows = T if req.return_sequences else 1
            out = y[:, -rows:]
            if keep is not None:
                out = out.copy()
                out[~keep] = 0.0
            g.step_count += 1
            if seq is not None:
                g.last_seq, g.last = seq, (out.copy(), rows)
            return self._response(g, req, out, rows, seq)

    async def _run(self, g: Group, runner, x: np.ndarray, keep) -> np.ndarray:
        """One gather-free model run on the group's rows, written back in place (masked rows kept); the
        members' counters follow. Stepped members must be idle (masked ones may be busy or even closed: their
        rows are read, never written); they are held while the run awaits anything."""
        batcher = self.batchers[g.model]
        members = g.members if keep is None else [s for s, k in zip(g.members, keep.tolist()) if k]
        inline = not self.persistence.durable and x.shape[0] * x.shape[1] <= batcher.inline_max_batch
        g.check_idle(members)
        held = []
        if not inline:  # hold the members while awaiting (inline, nothing is awaited from the check to the write)
            for s in members:
                s.hold()
                held.append(s)
        try:
            y, new_states = await batcher.run_block(g.start, x)
            T = x.shape[1]
            if self.persistence.durable:
                idx = np.arange(len(g.members)) if keep is None else np.flatnonzero(keep)
                statuses = await self.persistence.batch(members, new_states[idx], [s.step_count + T for s in members],
                                                        None)
                if any(st != "ok" for st in statuses):  # members closed meanwhile: their rows are not written
                    gone = [i for i, st in zip(idx.tolist(), statuses) if st != "ok"]
                    keep = np.ones(len(g.members), dtype=bool) if keep is None else keep.copy()
                    keep[gone] = False
                    members = [s for s, st in zip(members, statuses) if st == "ok"]
            block = batcher.slab.rows[g.start:g.start + len(g.members)]  # the slab may have grown: look it up now
            if keep is None:
                block[...] = new_states
            else:
                np.copyto(block, new_states, where=keep[:, None])
            for s in members:
                s.advance(T)
            now = self.table.clock()
            if now - g.touched > TOUCH_EVERY or keep is not None:
                g.touched = now
                self.table.touch_many(members)
        finally:
            for s in held:
                batcher.release(s)
        return y

    @staticmethod
    def _response(g: Group, req, out: np.ndarray, rows: int, seq, replayed: bool = False) -> pb.StepGroupResponse:
        msg = pb.StepGroupResponse(group_id=g.id, rows=rows, step_count=g.step_count, replayed=replayed)
        codec.put_floats(msg, "outputs", out, req.raw_output)
        if seq is not None:
            msg.sequence_number = seq
        return msg


def _retrieve(task: asyncio.Task) -> None:
    """A group step whose caller went away: its outcome is recorded (or its error logged by the handler)."""
    if not task.cancelled():
        task.exception()
