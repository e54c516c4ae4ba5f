"""Frames: one message carrying one step for each of many sessions, with per-entry errors."""

from __future__ import annotations

import asyncio

import numpy as np

from statestream.v1 import statestream_pb2 as pb

from statestream.server.api import codec
from statestream.contract.errors import FailedPrecondition, InvalidArgument, StatestreamError, show
from statestream.server.api.status import as_domain_error, code_number


class FrameStepper:
    """Validates a frame, runs its entries on the model's batcher, gathers one response.

    Entries of idle sessions run as one unit (a batch that arrives whole); an entry whose session is busy,
    or that retries a sequence number, takes the ordinary one-step path and waits its turn."""

    def __init__(self, table, batchers, directory, max_timesteps: int, check_open):
        self.table = table
        self.batchers = batchers
        self.directory = directory
        self.max_timesteps = max_timesteps
        self.check_open = check_open

    async def start(self, req: pb.StepFrameRequest, owner) -> pb.StepFrameResponse:
        self.check_open()
        runner = self.table.runner(req.model)
        n = len(req.session_ids)
        T = req.timesteps or 1
        if n == 0:
            raise InvalidArgument("frame has no session_ids")
        if T > self.max_timesteps:
            raise InvalidArgument(f"frame has T={T} timesteps; the limit is {self.max_timesteps} (--max-timesteps)")
        x = codec.parse_block(runner, req.inputs, req.inputs_raw, n, T)
        seqs = req.sequence_numbers
        if len(seqs) not in (0, n):
            raise InvalidArgument(f"sequence_numbers has {len(seqs)} entries; expected 0 or {n}")
        finite = np.isfinite(x).all(axis=(1, 2)).tolist()
        batcher = self.batchers[runner.name]
        errors: list[tuple[int, StatestreamError]] = []
        ids = list(req.session_ids)
        sessions = self.table.find_many(ids, owner)  # cached here: most frames need nothing more
        opened = [False] * n
        dupes = len(set(ids)) != n
        seen: set[str] = set()
        for i, s in enumerate(sessions):
            if s is not None and finite[i] and s.model == runner.name and not dupes:
                continue
            sessions[i] = None
            try:
                if dupes and ids[i] in seen:
                    raise InvalidArgument(f"session {show(ids[i])} appears twice in the frame")
                seen.add(ids[i])
                if not finite[i]:
                    raise InvalidArgument(f"entry {i} has NaN or Inf; refused")
                sessions[i], opened[i] = await self.directory.resolve(ids[i], req.model, req.open_if_missing, owner)
            except StatestreamError as e:
                errors.append((i, e))
        # no await from here to the submissions: phases cannot change in between
        self.table.touch_many(sessions)
        group: list[int] = []      # idle sessions with a new step: one unit
        single: list[int] = []     # the others: one step each, in their session's order
        for i, s in enumerate(sessions):
            if s is None:
                continue
            try:
                new = s.idle and (not seqs or s.accept(seqs[i] or None) is None)
            except FailedPrecondition as e:
                if batcher.persistence.shared:  # the cached copy may be stale: Batcher.step re-reads, checks again
                    single.append(i)
                else:
                    errors.append((i, e))
                continue
            except StatestreamError as e:
                errors.append((i, e))
                continue
            (group if new else single).append(i)
        units = []
        m = batcher.max_batch_size
        for chunk in (group[k:k + m] for k in range(0, len(group), m)):
            idx = np.array(chunk, dtype=np.intp)
            try:
                units.append((idx, batcher.submit_group(
                    [sessions[i] for i in chunk], x[idx], [seqs[i] or None for i in chunk] if seqs else None)))
            except StatestreamError as e:  # e.g. the queue is full: these entries fail, others go on
                errors.extend((i, e) for i in chunk)
        steps = [(i, asyncio.ensure_future(batcher.step(sessions[i], x[i], seqs[i] if seqs and seqs[i] else None)))
                 for i in single]
        for i, _ in errors:
            if sessions[i] is not None:
                await self.directory.abandon(sessions[i], opened[i])
        return await self._gather(runner, req, n, T, units, steps, errors, sessions, opened)

    async def _gather(self, runner, req, n, T, units, steps, errors, sessions, opened) -> pb.StepFrameResponse:
        rows = T if req.return_sequences else 1
        outputs = np.zeros((n, rows, runner.output_size), dtype=np.float32)
        counts = np.zeros(n, dtype=np.uint64)
        states = np.zeros((n, runner.state_width), dtype=np.float32) if req.return_state else None
        for idx, unit in units:
            await asyncio.shield(unit.future)
            outputs[idx] = unit.y[:, -rows:]
            counts[idx] = unit.counts
            if states is not None:
                states[idx] = unit.states
            for j, err in (unit.errors or {}).items():
                errors.append((int(idx[j]), err))
        results = await asyncio.gather(*(step for _, step in steps), return_exceptions=True)
        for (i, _), res in zip(steps, results):
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                await self.directory.abandon(sessions[i], opened[i])
                errors.append((i, as_domain_error(res)))
                continue
            res = res[0]
            outputs[i] = res.output[-rows:]
            counts[i] = res.step_count
            if states is not None:
                states[i] = res.state
        return self._response(runner, req, rows, outputs, counts, states, errors)

    def _response(self, runner, req, rows, outputs, counts, states, errors) -> pb.StepFrameResponse:
        errors.sort(key=lambda p: p[0])
        msg = pb.StepFrameResponse(
            rows=rows, step_counts=counts.tolist(),
            errors=[pb.FrameEntryError(index=i, error=pb.Error(code=code_number(e.code), message=e.message))
                    for i, e in errors])
        codec.put_floats(msg, "outputs", outputs, req.raw_output)
        if states is not None:
            msg.states.extend(codec.layer_states(runner, states, req.raw_output))
        return msg

