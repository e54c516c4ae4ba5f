"""Frames: one message carrying one step for each of many sessions, with per-entry errors."""

from __future__ import annotations

import numpy as np

from statestream.v1 import statestream_pb2 as pb

from . import codec
from .errors import InvalidArgument, StatestreamError, code_number, show


class FrameStepper:
    """Validates a frame, queues its entries on the model's batcher, gathers one response."""

    def __init__(self, service):
        self.service = service

    def start(self, req: pb.StepFrameRequest, owner):
        """Queue every valid entry now; returns an awaitable of the StepFrameResponse."""
        svc = self.service
        svc.check_open()
        runner = svc.table.runner(req.model)
        n = len(req.session_ids)
        T = req.timesteps or 1
        F = runner.features
        if n == 0:
            raise InvalidArgument("frame has no session_ids")
        if T > svc.max_timesteps:
            raise InvalidArgument(f"frame has T={T} timesteps; the limit is {svc.max_timesteps} (--max-timesteps)")
        x = np.asarray(req.inputs, dtype=np.float32)
        if x.size != n * T * F:
            raise InvalidArgument(
                f"inputs has {x.size} values; model {runner.name!r} expects N x T x F = {n} x {T} x {F} = {n * T * F}")
        seqs = req.sequence_numbers
        if len(seqs) not in (0, n):
            raise InvalidArgument(f"sequence_numbers has {len(seqs)} entries; expected 0 or {n}")
        x = x.reshape(n, T, F)
        finite = np.isfinite(x).all(axis=(1, 2))
        batcher = svc.batchers[runner.name]
        errors: list[tuple[int, StatestreamError]] = []
        sessions: list = [None] * n
        opened = [False] * n
        seen: set[str] = set()
        for i, sid in enumerate(req.session_ids):
            try:
                if sid in seen:
                    raise InvalidArgument(f"session {show(sid)} appears twice in the frame")
                seen.add(sid)
                if not finite[i]:
                    raise InvalidArgument(f"entry {i} has NaN or Inf; refused")
                sessions[i], opened[i] = svc.session_for_step(sid, req.model, req.open_if_missing, owner)
            except StatestreamError as e:
                errors.append((i, e))
        valid = [i for i in range(n) if sessions[i] is not None]
        for i in valid:
            svc.table.touch(sessions[i])
        if not seqs and valid and not any(sessions[i].busy or sessions[i].pending for i in valid):
            # Fast path: every session is idle, so the frame runs as one unit.
            idx = np.array(valid, dtype=np.intp)
            m = batcher.max_batch_size
            futs = []
            for chunk in (idx[k:k + m] for k in range(0, len(idx), m)):
                try:
                    futs.append((chunk, batcher.submit_group([sessions[i] for i in chunk], x[chunk])))
                except StatestreamError as e:  # e.g. the queue is full: these entries fail, others go on
                    for i in chunk.tolist():
                        svc.abandon(sessions[i], opened[i])
                        errors.append((i, e))
            return self._gather_groups(runner, req, n, futs, errors, T)
        futures: list = [None] * n
        for i in valid:
            try:
                futures[i], _ = batcher.submit(sessions[i], x[i], seqs[i] if seqs and seqs[i] else None, direct=False)
            except StatestreamError as e:
                svc.abandon(sessions[i], opened[i])
                errors.append((i, e))
        return self._gather(runner, req, futures, errors, T)

    def _response(self, runner, req, rows, outputs, counts, states, errors) -> pb.StepFrameResponse:
        errors.sort(key=lambda p: p[0])
        msg = pb.StepFrameResponse(
            outputs=outputs.ravel().tolist(), rows=rows, step_counts=counts.tolist(),
            errors=[pb.FrameEntryError(index=i, error=pb.Error(code=code_number(e.code), message=e.message))
                    for i, e in errors])
        if states is not None:
            msg.states.extend(codec.layer_states(runner, states))
        return msg

    def _buffers(self, runner, req, n, T):
        rows = T if req.return_sequences else 1
        outputs = np.zeros((n, rows, runner.output_size), dtype=np.float32)
        counts = np.zeros(n, dtype=np.uint64)
        states = np.zeros((n, runner.state_width), dtype=np.float32) if req.return_state else None
        return rows, outputs, counts, states

    async def _gather_groups(self, runner, req, n, futs, errors, T) -> pb.StepFrameResponse:
        rows, outputs, counts, states = self._buffers(runner, req, n, T)
        for idx, fut in futs:
            try:
                y, new_states, steps = await fut
            except Exception as e:
                err = self.service.domain_error(e)
                errors.extend((int(i), err) for i in idx)
                continue
            outputs[idx] = y[:, -rows:]
            counts[idx] = steps
            if states is not None:
                states[idx] = new_states
        return self._response(runner, req, rows, outputs, counts, states, errors)

    async def _gather(self, runner, req, futures, errors, T) -> pb.StepFrameResponse:
        rows, outputs, counts, states = self._buffers(runner, req, len(futures), T)
        for i, fut in enumerate(futures):
            if fut is None:
                continue
            try:
                res = await fut
            except Exception as e:
                errors.append((i, self.service.domain_error(e)))
                continue
            outputs[i] = res.output[-rows:]
            counts[i] = res.step_count
            if states is not None:
                states[i] = res.state
        return self._response(runner, req, rows, outputs, counts, states, errors)
