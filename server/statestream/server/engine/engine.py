"""Engine: the one protocol-neutral API every adapter calls (open, step, get, set, close; groups)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from statestream.contract.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StatestreamError,
    Unavailable,
    show,
)
from statestream.server.engine.batcher import Batcher
from statestream.server.engine.directory import Directory
from statestream.server.engine.frames import frame_key
from statestream.server.engine.groups import TOUCH_EVERY, Group, Groups
from statestream.server.engine.ledger import MAX_SEQUENCE_NUMBER, fingerprint
from statestream.server.engine.model import ModelRunner, finite
from statestream.server.engine.sessions import BULK, Session, contiguous, first_slots
from statestream.server.engine.table import SessionTable
from statestream.server.engine.types import APPLIED, REPLAYED, StepReply, StepRequest, StepResult
from statestream.server.engine.units import APPLIED as ENTRY_APPLIED
from statestream.server.engine.units import Unit
from statestream.server.engine.versions import Versions

log = logging.getLogger("statestream.engine")

AGAIN = 2  # own attempts of a retry whose awaited step failed UNAVAILABLE while its deadline left time (_again)
AGAIN_MARGIN = 0.05  # seconds of its deadline a retry must have left to make another attempt
RESOLVE_CHUNK = 256  # entries resolved (read through, opened) per loop turn: a big frame never starves others
LAY_OUT_FREE_MAX = 65_536  # free slots of a slab beyond which a frame's new sessions are not laid out on a block


def layout(runner: ModelRunner) -> list[tuple[str, str, int]]:
    """A version's state layout: its recurrent layers, in order, as (name, cell type, units)."""
    return [(ly.name, ly.cell, ly.units) for ly in runner.manifest.layers]


def check_finite(x: np.ndarray, what: str = "input") -> None:
    """NaN and Inf are refused, naming the first bad value."""
    if not finite(x):
        flat = x.reshape(-1)
        bad = int(np.flatnonzero(~np.isfinite(flat))[0])
        raise InvalidArgument(f"{what} value {bad} is {flat[bad]}; NaN and Inf are refused")


class Engine:
    """Sessions of every model of this process, stepped through one function, `step`.

    Numpy in, numpy out; exactly-once as data (a sequence number in, APPLIED or REPLAYED out, a refusal as
    FailedPrecondition); domain errors of one family (statestream.contract.errors)."""

    def __init__(self, table: SessionTable, directory: Directory, batchers: dict[str, Batcher], groups: Groups, *,
                 max_timesteps: int, max_entries: int, max_pending_per_session: int,
                 max_request_timesteps: int = 65_536):
        self.table = table
        self.directory = directory
        self.batchers = batchers
        self.groups = groups
        self.max_timesteps = max_timesteps
        self.max_entries = max_entries
        self.max_request_timesteps = max_request_timesteps
        self.max_pending_per_session = max_pending_per_session
        self.draining = False
        self.shared = directory.persistence.shared
        self.repository = None  # the app sets it: model versions loaded and unloaded while serving (repository.py)
        self.calls = 0  # engine steps so far (tests count them: every protocol goes through `step`)

    # -- models -----------------------------------------------------------------------

    @property
    def versions(self) -> Versions:
        return self.table.versions

    def runner(self, model: str, version: int = 0) -> ModelRunner:
        """The runner a new session of the model gets (`version` 0: the default, latest), or NotFound naming the
        models served."""
        return self.table.runner(model, version)

    async def runner_for(self, sid: str, owner, model: str = "", open_if_missing: bool = False,
                         version: int = 0) -> ModelRunner:
        """The runner a step of session `sid` runs on (so an adapter can parse its input): the open session's own
        version (read through a shared store), or `model`'s `version` for one that open_if_missing will open.
        NotFound, or InvalidArgument for a model or version that is not the session's."""
        if open_if_missing and not model:
            raise InvalidArgument("open_if_missing needs the model name")
        s = self.table.find(sid, owner)
        if s is None:
            try:
                s = await self.directory.get(sid, owner)
            except NotFound:
                if open_if_missing:
                    return self.runner(model, version)
                raise
        if model and s.model != model:
            raise InvalidArgument(f"session {show(sid)} is on model {s.model!r}, not {show(model)}")
        if version and s.key[1] != version:
            raise InvalidArgument(f"session {show(sid)} is on version {s.key[1]} of {s.model!r}, not {version}")
        return self.table.runner_of(s)

    def check_open(self) -> None:
        if self.draining:
            raise Unavailable("server is draining (shutting down); retry on another replica")

    # -- sessions ---------------------------------------------------------------------

    async def open(self, model: str, sid: str, owner, *, timeout: float = 0.0, row: np.ndarray | None = None,
                   version: int = 0) -> Session:
        """Open a session with zero states (or `row`) on `version` of the model (0: the default, latest); `sid` ""
        picks a random id."""
        self.check_open()
        self.runner(model, version)
        return await self.directory.open(model, sid, owner, timeout, row, version)

    async def get(self, sid: str, owner) -> tuple[Session, np.ndarray]:
        """A session and its states now (re-read first from a shared store)."""
        s = await self.directory.fresh(sid, owner)
        self.table.touch(s)
        return s, self.table.state(s)

    async def set(self, sid: str, owner, row: np.ndarray, step_count: int | None = None,
                  last_seq: int | None = None) -> tuple[Session, np.ndarray]:
        """Overwrite a session's states and optionally its counters (FailedPrecondition while steps are in flight)."""
        for name, value in (("step_count", step_count), ("last_sequence_number", last_seq)):
            if value is not None and not 0 <= value <= MAX_SEQUENCE_NUMBER:
                raise InvalidArgument(f"{name} must be 0 to 2^62, got {value}")
        s = await self.directory.get(sid, owner)
        await self.directory.set_state(s, row, step_count, last_seq)
        return s, self.table.state(s)

    async def migrate(self, sid: str, owner, version: int = 0) -> tuple[Session, int]:
        """Move a session to `version` of its model (0: the default), its states carried over, when the state
        layouts are the same (layers, cell types, units); else FailedPrecondition with both layouts. (the session,
        the version it was on)."""
        s = await self.directory.get(sid, owner)
        old = self.table.runner_of(s)
        new = self.runner(s.model, version)
        if new.key == s.key:
            return s, old.version
        if self.groups.holds(s):
            raise FailedPrecondition(f"session {show(sid)} is a member of a group; a group's members move together "
                                     "(close the group, keeping its sessions, first)")
        a, b = layout(old), layout(new)
        if a != b:
            raise FailedPrecondition(f"session {show(sid)} can not move from version {old.version} to "
                                     f"{new.version} of {s.model!r}: their states differ; version {old.version}: "
                                     f"{a}; version {new.version}: {b}")
        await self.directory.migrate(s, new)
        return s, old.version

    async def close(self, sid: str, owner) -> int:
        """Close a session; its step count. A stored session whose version is not loaded here can be closed too
        (its record is deleted)."""
        if self.table.find(sid, owner) is None:
            rec = self.table.unstrand(sid, owner)
            if rec is not None:
                await self.directory.persistence.delete([(owner, sid)])
                return rec.step_count
        return await self.directory.close(await self.directory.get(sid, owner))

    async def sweep(self) -> int:
        """Expire idle sessions (and forget groups left without members); how many sessions expired."""
        gone = self.table.expire()
        self.groups.prune()
        if gone:
            await self.directory.expired(gone)
        return len(gone)

    # -- the one step function ------------------------------------------------------------

    async def step(self, req: StepRequest) -> StepReply:
        """One step of each named session (or of a group): resolve, decide exactly-once, queue one unit of the new
        entries on each version's batcher, wait, answer entry by entry."""
        self.calls += 1
        self.check_open()
        n, T = req.x.shape[0], req.x.shape[1]
        if T > self.max_timesteps:
            raise InvalidArgument(f"input has T={T} timesteps; the limit is {self.max_timesteps} (--max-timesteps)")
        if n > self.max_entries:
            raise ResourceExhausted(f"{n} entries in one request; the limit is {self.max_entries} (--max-entries)")
        if n * T > self.max_request_timesteps:
            raise ResourceExhausted(f"{n} entries x T={T} = {n * T} session-timesteps in one request; the limit is "
                                    f"{self.max_request_timesteps} (--max-request-timesteps)")
        if req.group:
            return await self._group_step(req)
        if n != len(req.ids) or n == 0:
            raise InvalidArgument("no session_ids" if not req.ids else f"{len(req.ids)} session ids for {n} inputs")
        if req.seqs is not None and len(req.seqs) != n:
            raise InvalidArgument(f"sequence_numbers has {len(req.seqs)} entries; expected 0 or {n}")
        if n == 1:
            reply = await self._one(req)
            if reply is not None:
                return reply
        errors: dict[int, StatestreamError] = {}
        sessions, slots = self._cached(req)
        opened = None
        if sessions is None:
            sessions, opened = await self._resolve(req, errors)
            if not errors:
                self._lay_out(sessions)
        decided = self._decide(req, sessions, errors, slots)
        if isinstance(decided, list):  # refusals of sessions cached from a shared store: re-read them, decide again
            for s in decided:
                try:
                    await self.directory.reread(s)
                except StatestreamError as e:
                    errors[sessions.index(s)] = e
            decided = self._decide(req, sessions, errors, None, reread=False)
        new, fps, replays, waits, slots = decided
        first = next((s for s in sessions if s is not None), None)
        model = req.model or (first.model if first else "")
        runner = self.table.runner_of(first) if first else self.versions.default(model)  # the answer's layout
        units = await self._submit(req, runner, sessions, new, fps, slots, errors) if new else []
        reply = await self._answer(req, model, runner, sessions, units, replays, waits, errors)
        if opened:
            for i in reply.errors:
                if opened[i]:
                    await self.directory.abandon(sessions[i], True)
        return reply

    async def _one(self, req: StepRequest) -> StepReply | None:
        """A new step of one session cached here (most unary and stream steps): decided, then run at once or queued
        (Batcher.step) and answered, without a frame's per-entry bookkeeping. None: anything else (to be opened or
        read through, a retry, a refusal, a full session queue), which `step` goes on to decide entry by entry."""
        s = self.table.find(req.ids[0], req.owner)
        if s is None or (req.model and s.model != req.model) or not finite(req.x):
            return None
        seq = None if req.seqs is None else req.seqs[0]
        fp = 0 if seq is None else fingerprint(req.x[0])
        try:
            if s.accept(seq, fp, req.reset) is not None:
                return None
        except StatestreamError:
            return None
        if s.waiting >= self.max_pending_per_session:
            return None
        self.table.touch(s)
        try:
            done = self.batchers[s.key].step(s, req.x, seq, fp, reset=req.reset, stream=req.stream,
                                             deadline=req.deadline)
        except StatestreamError as e:  # not applied: the entry's error
            return await self._answer(req, s.model, self.table.runner_of(s), [s], [], {}, [], {0: e})
        if type(done) is tuple:  # it ran at once
            return StepReply(s.model, req.ids, *done, req.seqs, [APPLIED], {})
        return await self._answer(req, s.model, self.table.runner_of(s), [s], [([0], done)], {}, [], {})

    async def _unit(self, req: StepRequest, key, sessions: list, x: np.ndarray, seqs: list | None, fps: list | None,
                    slots) -> Unit:
        """One unit of these sessions' new steps, touched and submitted to their version's batcher (which may run it at
        once); ResourceExhausted when the server's queue is full."""
        unit = Unit(sessions, x, seqs, fps, reset=req.reset, slots=slots, deadline=req.deadline)
        self.table.touch_many(key, unit.slots)
        await self.batchers[key].submit(unit, stream=req.stream)
        return unit

    def _cached(self, req: StepRequest) -> tuple[list | tuple | None, np.ndarray | None]:
        """(the sessions of the entries, their slots when there are many) when every one is cached here, distinct,
        on the model, with a finite input: most requests; (None, None): _resolve them. A frame of ids seen before
        resolves in one lookup (FrameIndex); one resolved here is kept for the next time."""
        if not finite(req.x):
            return None, None
        frames = self.table.frames
        key = frame_key(req.owner, req.ids) if len(req.ids) >= BULK and frames.limit else None
        hit = None if key is None else frames.get(key)
        sessions, slots = self._found(req, key) if hit is None else hit
        if sessions is None or (req.model and sessions[0].model != req.model):
            return None, None
        return sessions, slots

    def _found(self, req: StepRequest, key: tuple | None) -> tuple[list | None, np.ndarray | None]:
        """_cached's lookup id by id: the sessions and their slots when all are cached, distinct and in one slab
        (kept in the FrameIndex under `key`, if any)."""
        ids = req.ids
        n = len(ids)
        sessions = self.table.find_many(ids, req.owner)
        first = sessions[0]
        if first is None or n == 1:
            return (None if first is None else sessions), None
        slab = self.table.slabs.get(first.key)
        if slab is None or len(set(ids)) != n:
            return None, None
        # every one found and in the model's slab (one pass: an open session's cells are its version's slab, and
        # its slot there holds it)
        slots = [s.slot for s in sessions if s is not None and s.cells is slab]
        if len(slots) != n:
            return None, None
        slots = contiguous(np.fromiter(slots, np.intp, n))
        if key is not None:
            self.table.frames.put(key, tuple(sessions), slots, slab)
        return sessions, slots

    def _lay_out(self, sessions: list[Session]) -> None:
        """The sessions of a frame that was resolved entry by entry (some were opened, read through from a shared
        store, or moved) move onto consecutive slots in its order (SessionTable.regroup, as a group re-opened over
        existing sessions), so its next frames run on their block (sessions.contiguous) as a group step does: a
        gateway's first frame, its first after a restart, its first with a new device. Only when every one is
        idle, on one version and in no group, the slab's free slots are few enough (LAY_OUT_FREE_MAX) for the
        block's search not to hold the loop up, and a run of them is free (the slab does not grow for it)."""
        n = len(sessions)
        key = sessions[0].key
        if n < BULK or self.table.slabs[key].free_slots > LAY_OUT_FREE_MAX or \
                any(s.key != key or not s.idle for s in sessions) or self.groups.any_member(sessions):
            return
        if not isinstance(contiguous(np.fromiter((s.slot for s in sessions), np.intp, n)), slice):
            self.table.regroup(sessions[0].model, sessions, grow=False)   # a frame's layout never grows the slab

    async def _resolve(self, req: StepRequest, errors: dict) -> tuple[list, list | None]:
        """The session of each entry (None where it failed: unknown, wrong model, duplicate, NaN/Inf input), read
        through or opened as the request says; and which ones were opened for it."""
        owner = req.owner
        sessions = self.table.find_many(req.ids, owner)
        n = len(sessions)
        finite = np.isfinite(req.x).all(axis=(1, 2))
        opened: list | None = None
        seen: set[str] = set()
        dupes = len(set(req.ids)) != n
        todo = 0
        for i, s in enumerate(sessions):
            if s is not None and s.model == (req.model or s.model) and not dupes and finite[i]:
                continue
            sessions[i] = None
            sid = req.ids[i]
            todo += 1
            if todo % RESOLVE_CHUNK == 0:
                await asyncio.sleep(0)
            try:
                if dupes and sid in seen:
                    raise InvalidArgument(f"session {sid!r} appears twice in the request")
                seen.add(sid)
                if not finite[i]:
                    check_finite(req.x[i], "input" if n == 1 else f"entry {i}")
                sessions[i], was_opened = await self.directory.resolve(sid, req.model, req.open_if_missing, owner,
                                                                       req.version)
            except StatestreamError as e:
                errors[i] = e
                continue
            if was_opened:
                if opened is None:
                    opened = [False] * n
                opened[i] = True
        return sessions, opened

    def _decide(self, req: StepRequest, sessions: list, errors: dict, slots, reread: bool = True):
        """The exactly-once decision of every entry: (new entries, their fingerprints, replays {i: result}, waits
        [(i, unit)], the new entries' slots or None). The sessions cached from a shared store that refused are
        returned instead, as a list, to be re-read first (then decide again: nothing was queued meanwhile).

        Unnumbered entries of many sessions found at once (`slots`, from _cached) decide at once, on the arrays."""
        seqs = req.seqs
        n = len(sessions)
        if seqs is None and n >= BULK and slots is not None:
            if (self.table.slabs[sessions[0].key].waiting[slots] < self.max_pending_per_session).all():
                return list(range(n)), None, {}, [], slots
        new: list[int] = []
        fps: list[int] | None = None if seqs is None else []
        replays: dict[int, StepResult] = {}
        waits: list[tuple[int, Unit]] = []
        stale: list[Session] = []
        limit = self.max_pending_per_session
        for i, s in enumerate(sessions):
            if s is None or i in errors:
                continue
            seq = None if seqs is None else seqs[i]
            fp = 0 if seq is None else fingerprint(req.x[i])
            try:
                found = s.accept(seq, fp, req.reset)
            except FailedPrecondition as e:
                if reread and self.shared and (s.idle or self.directory.rereading(s)):
                    stale.append(s)
                    continue
                errors[i] = e
                continue
            except StatestreamError as e:
                errors[i] = e
                continue
            if found is None:
                if s.waiting >= limit:
                    errors[i] = self._backlog(s)
                    continue
                new.append(i)
                if fps is not None:
                    fps.append(fp)
            elif isinstance(found, StepResult):
                replays[i] = found
            else:
                found.waited_by(req.deadline)
                waits.append((i, found))
        if stale:
            return stale
        return new, fps, replays, waits, None

    def _backlog(self, s: Session) -> ResourceExhausted:
        """The refusal of a step of a session whose queue is at --max-pending-per-session."""
        return ResourceExhausted(f"session {s.id!r} has {s.waiting} queued steps; the limit is "
                                 f"{self.max_pending_per_session} (--max-pending-per-session)")

    async def _submit(self, req: StepRequest, runner: ModelRunner, sessions: list, new: list[int], fps: list | None,
                      slots, errors: dict) -> list[tuple[list[int], Unit]]:
        """Queue the new entries, one unit on each version's batcher (touched).
        `slots`: theirs, when _decide has them (then all of one version)."""
        first_key = sessions[new[0]].key
        if slots is None and any(sessions[i].key != first_key for i in new):  # a frame over several versions
            units = []
            for key in dict.fromkeys(sessions[i].key for i in new):
                pick = [j for j, i in enumerate(new) if sessions[i].key == key]
                other = self.table.runners[key]
                if (other.features, other.output_size, other.state_width) != \
                        (runner.features, runner.output_size, runner.state_width):
                    err = InvalidArgument(f"session is on version {key[1]} of {key[0]!r}, whose input, output or "
                                          f"state size differs from version {runner.version}'s: step it in its own "
                                          "request")
                    errors.update((new[j], err) for j in pick)
                    continue
                units += await self._queue(req, key, sessions, [new[j] for j in pick],
                                           None if fps is None else [fps[j] for j in pick], None, errors)
            return units
        return await self._queue(req, first_key, sessions, new, fps, slots, errors)

    async def _queue(self, req: StepRequest, key, sessions: list, new: list[int], fps: list | None, slots,
                     errors: dict) -> list[tuple[list[int], Unit]]:
        """One version's new entries as one unit (touched): a frame runs whole, like a group step (--max-entries and
        --max-request-timesteps bound it; --max-batch-size bounds what the batcher combines of several requests).
        The entries the server's queue has no room for are refused, the others go on."""
        pending = self.batchers[key].pending
        room = pending.room()
        if len(new) > room:
            full = pending.full()
            errors.update((i, full) for i in new[room:])
            new = new[:room]
            fps = None if fps is None else fps[:room]
            slots = None if slots is None else first_slots(slots, room)
            if not new:
                return []
        every = len(new) == len(sessions)  # (then every entry is new, in order)
        x = req.x if every else req.x[np.asarray(new)]
        seqs = None if req.seqs is None else (req.seqs if every else [req.seqs[i] for i in new])
        try:
            unit = await self._unit(req, key, sessions if every else [sessions[i] for i in new], x, seqs, fps, slots)
        except StatestreamError as e:  # submit refused the unit (a session closed meanwhile): its entries fail
            errors.update((i, e) for i in new)
            return []
        return [(new, unit)]

    async def _answer(self, req: StepRequest, model: str, runner: ModelRunner | None, sessions: list, units: list,
                      replays: dict, waits: list, errors: dict) -> StepReply:
        n, T = req.x.shape[0], req.x.shape[1]
        for _, unit in units:
            if unit.left:
                await unit.waiter()
        if len(units) == 1 and len(units[0][0]) == n and not units[0][1].errors:  # one unit did it all: its arrays
            unit = units[0][1]
            return StepReply(model, req.ids, unit.y, unit.states, unit.counts, req.seqs, [APPLIED] * n, errors)
        O = runner.output_size if runner else 0
        W = runner.state_width if runner else 0
        output = np.zeros((n, T, O), dtype=np.float32)
        state = np.zeros((n, W), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        outcome = [APPLIED] * n
        for chunk, unit in units:
            if unit.y is not None:
                idx = np.asarray(chunk)
                output[idx], state[idx], counts[idx] = unit.y, unit.states, unit.counts
            for j, err in (unit.errors or {}).items():
                errors[chunk[j]] = err
        mine: set[int] = set()  # retries that applied their step themselves (_again)
        for i, unit in waits:
            if unit.left:
                await unit.waiter()
            try:
                replays[i] = unit.result(unit.index(sessions[i]))
            except Unavailable as e:  # its write was bounded by the shorter deadline of the step it retries
                try:
                    replays[i], applied = await self._again(req, sessions, i, e)
                except StatestreamError as e2:
                    errors[i] = e2
                    continue
                if applied:
                    mine.add(i)
            except StatestreamError as e:
                errors[i] = e
        for i, res in replays.items():
            if res.output.shape[0] != T:
                errors[i] = FailedPrecondition(f"sequence number {res.sequence_number} was applied with T="
                                               f"{res.output.shape[0]} timesteps; this retry has T={T}")
                continue
            output[i], state[i], counts[i] = res.output, res.state, res.step_count
            outcome[i] = APPLIED if i in mine else REPLAYED
        for i in errors:  # what was not applied is not answered
            output[i], state[i], counts[i] = 0.0, 0.0, 0
        ids = [req.ids[i] if s is None else s.id for i, s in enumerate(sessions)]
        return StepReply(model, ids, output, state, counts, req.seqs, outcome, errors)

    async def _again(self, req: StepRequest, sessions: list, i: int, err: Unavailable) -> tuple[StepResult, bool]:
        """Entry i is a retry that waited for the step it repeats, and that step failed UNAVAILABLE: its store write
        was bounded by its own caller's shorter deadline. While this retry's deadline leaves time, it decides again
        (the failed entry freed its number) and runs its own attempt, at most AGAIN times; if the first write landed
        after all, the compare-and-set conflicts and the entry is re-read and replayed. (its result, whether this
        retry's own attempt applied it), or the last error raised."""
        s = sessions[i]
        seq = req.seqs[i]
        fp = fingerprint(req.x[i])
        for _ in range(AGAIN):
            if req.deadline is not None and req.deadline - time.monotonic() <= AGAIN_MARGIN:
                break
            if s.closed:
                raise NotFound(f"session {s.id!r} was closed")
            found = s.accept(seq, fp, req.reset)
            if isinstance(found, StepResult):
                return found, False
            mine = found is None
            if mine:
                if s.waiting >= self.max_pending_per_session:
                    raise self._backlog(s)
                failed: dict[int, StatestreamError] = {}
                queued = await self._queue(req, s.key, sessions, [i], [fp], None, failed)
                if failed:
                    raise failed[i]
                unit = queued[0][1]
            else:
                unit = found
                unit.waited_by(req.deadline)
            if unit.left:
                await unit.waiter()
            try:
                res = unit.result(unit.index(s))
            except Unavailable as e:
                err = e
                continue
            return res, mine
        raise err

    # -- groups -----------------------------------------------------------------------------

    async def open_group(self, model: str, gid: str, ids: list[str], size: int, owner, timeout: float,
                         version: int = 0) -> Group:
        """Open a group of N new sessions with contiguous state rows; or, when every id names an existing idle
        session of this model (a restart on sqlite), re-open the group over them (their rows move together)."""
        self.check_open()
        if self.shared:
            raise FailedPrecondition("session groups live in one process; this server's state store is shared "
                                     "between processes (use frames, or a process-local store)")
        self.runner(model, version)
        n = len(ids) or size
        if size and ids and size != len(ids):
            raise InvalidArgument(f"size is {size} but {len(ids)} session_ids are given")
        gid = self.groups.check_new(gid, n, owner)
        existing = [self.table.find(sid, owner) for sid in ids] if ids else []
        if existing and all(s is not None for s in existing):
            if any(self.groups.holds(s) for s in existing):
                raise AlreadyExists(f"a session of group {gid!r} is already open in another group")
            members = self.table.regroup(model, existing)
        else:
            members = await self.directory.open_block(model, ids or [""] * n, owner, timeout, version)
        return self.groups.add(Group(gid, model, owner, members))

    async def close_group(self, gid: str, owner, keep_sessions: bool) -> tuple[int, int]:
        """Close a group (and its members unless `keep_sessions`); (its step count, sessions closed)."""
        g = self.groups.get(gid, owner)
        self.groups.remove(g)
        closed = 0
        if not keep_sessions:
            for s in g.members:
                if not s.closed:
                    await self.directory.close(s)
                    closed += 1
        return g.step_count, closed

    async def _group_step(self, req: StepRequest) -> StepReply:
        g = self.groups.get(req.group, req.owner)
        x = req.x
        n = len(g.members)
        if x.shape[0] != n:
            raise InvalidArgument(f"group {g.id!r} has {n} members; the input has {x.shape[0]} rows")
        keep = None
        if req.masked is not None and len(req.masked):
            masked = req.masked
            if masked.min() < 0 or masked.max() >= n:
                raise InvalidArgument(f"masked index {int(masked.max())} is out of range; the group has {n} members")
            keep = np.ones(n, dtype=bool)
            keep[masked] = False
            x = x.copy()
            x[~keep] = 0.0  # masked entries run on zeros (their results are dropped): no NaN from unused rows
        check_finite(x, "inputs")
        fp = 0 if req.seq is None else fingerprint(x)
        found = g.accept(req.seq, fp)
        if found is None:
            unit = await self._group_unit(g, x, keep, req.seq, fp, req.deadline)
            if not unit.fate.count(ENTRY_APPLIED):
                g.dropped(unit)
                raise unit.errors[min(unit.errors)]
            if req.seq is None:
                out = unit.y  # every member stepped: the run's outputs are the answer
                if keep is not None:
                    out = np.zeros((n, *unit.y.shape[1:]), dtype=np.float32)
                    out[unit.rows] = unit.y
                return self._group_reply(g, out, g.step_count, APPLIED, req)
            found = g.last_result
            outcome = APPLIED
        else:
            outcome = REPLAYED
            if isinstance(found, Unit):
                found.waited_by(req.deadline)
                if found.left:
                    await found.waiter()
                if g.last_seq != req.seq:
                    raise found.errors[min(found.errors)]
                found = g.last_result
        out, step_count = found
        if out.shape[1] != x.shape[1]:
            raise FailedPrecondition(f"sequence number {req.seq} was applied with T={out.shape[1]} timesteps; "
                                     f"this retry has T={x.shape[1]}")
        return self._group_reply(g, out, step_count, outcome, req)

    async def _group_unit(self, g: Group, x: np.ndarray, keep, seq, fp, deadline) -> Unit:
        """Queue a group step as one unit over its members' block of rows and wait for it."""
        members = g.members_of(keep)
        unit = Unit(members, x, None, None, block=g.start, keep=keep, group=g, rows=g.rows if keep is None else None,
                    slots=g.slots if keep is None else None)
        unit.group_seq, unit.group_fp, unit.deadline = seq, fp, deadline
        if seq is not None:
            g.accepted_seq = seq
        g.units.append(unit)
        try:
            await self.batchers[g.members[0].key].submit(unit)
        except StatestreamError:
            g.dropped(unit)
            raise
        now = self.table.clock()
        if now - g.touched > TOUCH_EVERY or keep is not None:
            g.touched = now
            self.table.touch_many(g.members[0].key, unit.slots)
        if unit.left:
            await unit.waiter()
        return unit

    @staticmethod
    def _group_reply(g: Group, out: np.ndarray, step_count: int, outcome: str, req: StepRequest) -> StepReply:
        return StepReply(g.model, g.ids, out, g.no_states, g.no_counts, None if req.seq is None else [req.seq],
                         [outcome], {}, group_step_count=step_count)
