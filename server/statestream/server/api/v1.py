"""statestream.v1 adapter: unary steps, streams, frames, groups and state RPCs, each a thin call of the Engine."""

from __future__ import annotations

import logging

import grpc
import numpy as np

from statestream.contract.errors import InvalidArgument
from statestream.server.api import codec
from statestream.server.api.auth import Auth
from statestream.server.api.status import Adapter, code_number, deadline_of, domain_error, status_of, stream_owner, unary
from statestream.server.api.wire import Undecodable, check
from statestream.server.engine.types import REPLAYED, StepRequest
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

log = logging.getLogger("statestream.v1")


class StateStreamService(Adapter, pb_grpc.StateStreamServiceServicer):
    """StateStreamService over the Engine."""

    def __init__(self, max_timesteps: int, auth: Auth, metrics=None):
        super().__init__(auth, metrics)
        self.max_timesteps = max_timesteps
        self._infos: dict[tuple, pb.ModelInfo] = {}  # per loaded version (versions come and go: see `_info`)

    def _info(self, model: str, version: int = 0, runner=None) -> pb.ModelInfo:
        """The ModelInfo of a version (0: the default) or of `runner`."""
        runner = runner or self.engine.runner(model, version)
        key = (runner.key, runner.sha256)
        info = self._infos.get(key)
        if info is None:
            if len(self._infos) > 1024:  # versions unloaded long ago
                self._infos.clear()
            info = self._infos[key] = codec.model_info(runner, self.max_timesteps)
        default = self.engine.versions.default(runner.name)
        if info.is_default != (default is runner):
            info = pb.ModelInfo()
            info.CopyFrom(self._infos[key])
            info.is_default = not info.is_default
        return info

    @staticmethod
    def _in_band(e: BaseException) -> pb.Error:
        err = domain_error(e)
        return pb.Error(code=code_number(err.code), message=err.message)

    async def _stream(self, request_iterator, context, method: str, answer):
        """A bidirectional stream: the caller's token once, then one reply per request, in order, errors in-band
        (`answer(request, owner)` returns the reply; an exception becomes its in-band error); a transport fault ends
        the stream. The window of unsent replies is one: the next request is read after its reply was taken."""
        owner = await stream_owner(self, context)
        async for req in request_iterator:
            reply = await answer(req, owner)
            self.count(method, grpc.StatusCode.OK if reply.error.code == 0 else status_of(reply.error.code))
            yield reply

    # -- models -----------------------------------------------------------------------

    @unary
    async def ListModels(self, request, context):
        self.auth.owner(context)
        runners = self.engine.table.runners
        return pb.ListModelsResponse(models=[self._info(n, runner=runners[n, v]) for n, v in sorted(runners)])

    @unary
    async def GetModel(self, request, context):
        self.auth.owner(context)
        return pb.GetModelResponse(model=self._info(request.name))

    # -- sessions ---------------------------------------------------------------------

    @unary
    async def OpenSession(self, request, context):
        owner = self.auth.owner(context)
        runner = self.engine.runner(request.model, request.version)
        row = codec.parse_layer_states(runner, request.initial_states) if request.initial_states else None
        s = await self.engine.open(request.model, request.session_id, owner, timeout=request.idle_timeout_seconds,
                                   row=row, version=runner.version)
        return pb.OpenSessionResponse(session_id=s.id, model=self._info(s.model, runner=runner),
                                      idle_timeout_seconds=s.timeout)

    @unary
    async def CloseSession(self, request, context):
        return pb.CloseSessionResponse(step_count=await self.engine.close(request.session_id,
                                                                          self.auth.owner(context)))

    @unary
    async def GetState(self, request, context):
        s, row = await self.engine.get(request.session_id, self.auth.owner(context))
        return pb.GetStateResponse(state=codec.session_state(self.engine.table.runner_of(s), s, row,
                                                             request.raw_output))

    @unary
    async def SetState(self, request, context):
        owner = self.auth.owner(context)
        runner = await self.engine.runner_for(request.session_id, owner)
        row = codec.parse_layer_states(runner, request.layers)
        s, row = await self.engine.set(
            request.session_id, owner, row, request.step_count if request.HasField("step_count") else None,
            request.last_sequence_number if request.HasField("last_sequence_number") else None)
        return pb.SetStateResponse(state=codec.session_state(runner, s, row))

    @unary
    async def MigrateSession(self, request, context):
        s, before = await self.engine.migrate(request.session_id, self.auth.owner(context), request.version)
        return pb.MigrateSessionResponse(state=codec.session_state(self.engine.table.runner_of(s), s,
                                                                   self.engine.table.state(s)), from_version=before)

    @unary
    async def ListSessions(self, request, context):
        owner = self.auth.owner(context)
        versions = [request.version] if request.version else self.engine.versions.of(request.model)
        if not self.engine.versions.of(request.model):
            raise self.engine.versions.unknown(request.model)
        return pb.ListSessionsResponse(sessions=[
            pb.SessionSummary(session_id=s.id, model_version=s.key[1], step_count=s.step_count)
            for v in versions for s in self.engine.table.sessions_of((request.model, v), owner)])

    # -- steps ------------------------------------------------------------------------

    async def step(self, req: pb.StepRequest, owner, context=None, stream: bool = False,
                   into: pb.StepResponse | None = None) -> pb.StepResponse:
        """One StepRequest through the engine (Step, and each StreamSteps message, whose reply's `step` field the
        answer is filled `into`)."""
        engine = self.engine
        runner = await engine.runner_for(req.session_id, owner, req.model, req.open_if_missing)
        x = codec.parse_input(runner, req.input, raw=req.input_raw)
        seqs = [req.sequence_number] if req.HasField("sequence_number") else None
        reply = await engine.step(StepRequest(owner, x[None], model=req.model, ids=[req.session_id], seqs=seqs,
                                              open_if_missing=req.open_if_missing, stream=stream,
                                              deadline=context and deadline_of(context)))
        reply.raise_first()
        return codec.step_response(runner, reply.ids[0], reply.output[0], reply.state[0], int(reply.step_count[0]),
                                   seqs[0] if seqs else None, reply.outcome[0] is REPLAYED, req, into)

    @unary
    async def Step(self, request, context):
        return await self.step(request, self.auth.owner(context), context)

    async def StreamSteps(self, request_iterator, context):
        async def answer(req: pb.StreamStepsRequest, owner) -> pb.StreamStepsResponse:
            if isinstance(req, Undecodable):
                return pb.StreamStepsResponse(error=self._in_band(req.error))
            head = {"session_id": req.step.session_id}
            if req.step.HasField("sequence_number"):
                head["sequence_number"] = req.step.sequence_number
            reply = pb.StreamStepsResponse(**head)
            try:
                await self.step(req.step, owner, context, stream=True, into=reply.step)
                return reply
            except Exception as e:
                return pb.StreamStepsResponse(error=self._in_band(e), **head)

        async for reply in self._stream(request_iterator, context, "StreamSteps", answer):
            yield reply

    # -- frames -----------------------------------------------------------------------

    async def frame(self, req: pb.StepFrameRequest, owner, context=None) -> pb.StepFrameResponse:
        """One StepFrameRequest through the engine (StepFrame, and each StreamFrames message)."""
        ids = list(req.session_ids)  # once: each read of a repeated string field makes a new str (and its hash)
        n, T = len(ids), req.timesteps or 1
        if n == 0:
            raise InvalidArgument("frame has no session_ids")
        s = self.engine.table.find(ids[0], owner)  # the frame's layout: its first session's version
        runner = self.engine.table.runner_of(s) if s is not None and s.model == req.model \
            else self.engine.runner(req.model)
        x = codec.parse_block(runner, req.inputs, req.inputs_raw, n, T)
        seqs = [q or None for q in req.sequence_numbers] if len(req.sequence_numbers) else None  # 0: no number
        reply = await self.engine.step(StepRequest(owner, x, model=req.model, ids=ids, seqs=seqs,
                                                   open_if_missing=req.open_if_missing,
                                                   deadline=context and deadline_of(context)))
        rows = T if req.return_sequences else 1
        msg = pb.StepFrameResponse(
            rows=rows, step_counts=reply.step_count.tolist(),
            errors=[pb.FrameEntryError(index=i, error=pb.Error(code=code_number(e.code), message=e.message))
                    for i, e in sorted(reply.errors.items())])
        codec.put_floats(msg, "outputs", reply.output[:, -rows:], req.raw_output)
        if req.return_state:
            msg.states.extend(codec.layer_states(runner, reply.state, req.raw_output))
        return msg

    @unary
    async def StepFrame(self, request, context):
        return await self.frame(request, self.auth.owner(context), context)

    async def StreamFrames(self, request_iterator, context):
        async def answer(req: pb.StreamFramesRequest, owner) -> pb.StreamFramesResponse:
            try:
                return pb.StreamFramesResponse(frame=await self.frame(check(req).frame, owner, context))
            except Exception as e:
                return pb.StreamFramesResponse(error=self._in_band(e))

        async for reply in self._stream(request_iterator, context, "StreamFrames", answer):
            yield reply

    # -- session groups ---------------------------------------------------------------

    @unary
    async def OpenGroup(self, request, context):
        owner = self.auth.owner(context)
        self._info(request.model, request.version)
        g = await self.engine.open_group(request.model, request.group_id, list(request.session_ids), request.size,
                                         owner, request.idle_timeout_seconds, request.version)
        info = self._info(g.model, runner=self.engine.table.runner_of(g.members[0]))
        return pb.OpenGroupResponse(group_id=g.id, session_ids=g.ids, model=info,
                                    idle_timeout_seconds=g.members[0].timeout)

    @unary
    async def StepGroup(self, request, context):
        return await self.group_step(request, self.auth.owner(context), context)

    async def group_step(self, request: pb.StepGroupRequest, owner, context=None) -> pb.StepGroupResponse:
        """One StepGroupRequest through the engine."""
        g = self.engine.groups.get(request.group_id, owner)
        runner = self.engine.table.runner_of(g.members[0])
        T = request.timesteps or 1
        x = codec.parse_block(runner, request.inputs, request.inputs_raw, len(g.members), T)
        seq = request.sequence_number if request.HasField("sequence_number") else None
        reply = await self.engine.step(StepRequest(owner, x, group=g.id, seq=seq,
                                                   masked=np.asarray(request.masked, np.int64) if request.masked else None,
                                                   deadline=context and deadline_of(context)))
        rows = T if request.return_sequences else 1
        msg = pb.StepGroupResponse(group_id=g.id, rows=rows, step_count=reply.group_step_count,
                                   replayed=reply.outcome[0] is REPLAYED)
        codec.put_floats(msg, "outputs", reply.output[:, -rows:], request.raw_output)
        if seq is not None:
            msg.sequence_number = seq
        return msg

    @unary
    async def CloseGroup(self, request, context):
        step_count, closed = await self.engine.close_group(request.group_id, self.auth.owner(context),
                                                           request.keep_sessions)
        return pb.CloseGroupResponse(step_count=step_count, closed_sessions=closed)
