"""The gRPC service: maps RPCs onto the SessionTable and the per-model Batchers."""

from __future__ import annotations

import functools
import logging

import grpc

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

from statestream.server.api import codec
from statestream.server.api.auth import Auth
from statestream.server.engine.batcher import Batcher
from statestream.server.engine.directory import Directory
from statestream.contract.errors import InvalidArgument, StatestreamError, Unavailable
from statestream.server.api.status import as_domain_error, code_number
from statestream.server.engine.frames import FrameStepper
from statestream.server.engine.groups import Groups
from statestream.server.engine.sessions import Session
from statestream.server.engine.table import SessionTable
from statestream.server.api.wire import Undecodable, check

log = logging.getLogger("statestream.service")

MAX_STEP_COUNT = 2**62  # far beyond any real stream; keeps step arithmetic inside int64 (numpy, sqlite)


def unary(fn):
    """Run a unary handler; any error becomes its status code here, and nowhere else."""
    name = fn.__name__

    @functools.wraps(fn)
    async def handler(self, request, context):
        try:
            self.check_ready()
            reply = await fn(self, check(request), context)
        except Exception as e:
            err = self.domain_error(e)
            self.count(name, err.code)
            await context.abort(err.code, err.message)
        self.count(name, grpc.StatusCode.OK)
        return reply

    return handler


class StateStreamService(pb_grpc.StateStreamServiceServicer):
    """StateStreamService over one SessionTable and one Batcher per model."""

    def __init__(self, max_timesteps: int, auth: Auth, metrics=None):
        self.table: SessionTable | None = None
        self.directory: Directory | None = None
        self.batchers: dict[str, Batcher] = {}
        self.max_timesteps = max_timesteps
        self.auth = auth
        self.metrics = metrics
        self.draining = False
        self.frames: FrameStepper | None = None
        self.groups: Groups | None = None
        self._infos: dict[str, pb.ModelInfo] = {}

    def attach(self, table: SessionTable, batchers: dict[str, Batcher], directory: Directory) -> None:
        """Models are loaded: start answering (until then every RPC is UNAVAILABLE)."""
        self._infos = {name: codec.model_info(r, self.max_timesteps) for name, r in table.runners.items()}
        self.batchers = batchers
        self.directory = directory
        self.frames = FrameStepper(table, batchers, directory, self.max_timesteps, self.check_open)
        self.groups = Groups(table, batchers, directory, self.max_timesteps, self.check_open)
        self.table = table

    # -- helpers shared by every RPC -------------------------------------------------

    def domain_error(self, e: BaseException) -> StatestreamError:
        err = as_domain_error(e)
        if err is not e:
            log.exception("unexpected error", exc_info=e)
        return err

    def count(self, method: str, code: grpc.StatusCode) -> None:
        if self.metrics is not None:
            self.metrics.count_request(method, code.name)

    def in_band(self, e: BaseException) -> pb.Error:
        err = self.domain_error(e)
        return pb.Error(code=code_number(err.code), message=err.message)

    async def _stream_owner(self, context):
        try:
            self.check_ready()
            return self.auth.owner(context)
        except StatestreamError as e:
            await context.abort(e.code, e.message)

    def check_ready(self) -> None:
        if self.table is None:
            raise Unavailable("models are still loading; retry shortly (health is NOT_SERVING)")

    def check_open(self) -> None:
        if self.draining:
            raise Unavailable("server is draining (shutting down); retry on another replica")

    def _info(self, model: str) -> pb.ModelInfo:
        self.table.runner(model)
        return self._infos[model]

    # -- entry points other protocols share (Triton) --------------------------------------

    async def open_session(self, model: str, sid: str, owner, *, timeout: float = 0.0, reset: bool = False,
                           row=None) -> Session:
        """Open a session (`reset`: an open one goes back to zero states and step 0)."""
        self.check_open()
        self._info(model)
        return await self.directory.open(model, sid, owner, timeout, row, reset)

    async def close_session(self, sid: str, owner) -> int:
        """Close a session; returns its step count."""
        return await self.directory.close(await self.directory.get(sid, owner))

    async def start_step(self, req: pb.StepRequest, owner, stream: bool = False) -> pb.StepResponse:
        """Validate and run one step (in order with the session's others); its StepResponse.

        `stream`: the step comes from a stream (see BatchPolicy.inline)."""
        self.check_open()
        s, opened = self.table.find(req.session_id, owner), False  # cached here: the common case, no awaits
        if s is None or (req.model and s.model != req.model):
            s, opened = await self.directory.resolve(req.session_id, req.model, req.open_if_missing, owner)
        runner = self.table.runners[s.model]
        try:
            x = codec.parse_input(runner, req.input, self.max_timesteps, raw=req.input_raw)
            seq = req.sequence_number if req.HasField("sequence_number") else None
            self.table.touch(s)
            res, replayed = await self.batchers[s.model].step(s, x, seq, stream)
        except StatestreamError:
            await self.directory.abandon(s, opened)
            raise
        return codec.step_response(runner, s.id, res, req.return_sequences, req.return_state, replayed, req.raw_output)

    # -- models ---------------------------------------------------------------------

    @unary
    async def ListModels(self, request, context):
        self.auth.owner(context)
        return pb.ListModelsResponse(models=[self._infos[n] for n in sorted(self._infos)])

    @unary
    async def GetModel(self, request, context):
        self.auth.owner(context)
        return pb.GetModelResponse(model=self._info(request.name))

    # -- sessions -------------------------------------------------------------------

    @unary
    async def OpenSession(self, request, context):
        owner = self.auth.owner(context)
        info = self._info(request.model)
        runner = self.table.runners[request.model]
        row = codec.parse_layer_states(runner, request.initial_states) if request.initial_states else None
        s = await self.open_session(request.model, request.session_id, owner, timeout=request.idle_timeout_seconds,
                                    row=row)
        return pb.OpenSessionResponse(session_id=s.id, model=info, idle_timeout_seconds=s.timeout)

    @unary
    async def CloseSession(self, request, context):
        return pb.CloseSessionResponse(step_count=await self.close_session(request.session_id, self.auth.owner(context)))

    @unary
    async def GetState(self, request, context):
        s = await self.directory.fresh(request.session_id, self.auth.owner(context))
        self.table.touch(s)
        runner = self.table.runners[s.model]
        return pb.GetStateResponse(state=codec.session_state(runner, s, self.table.state(s), request.raw_output))

    @unary
    async def SetState(self, request, context):
        s = await self.directory.get(request.session_id, self.auth.owner(context))
        runner = self.table.runners[s.model]
        row = codec.parse_layer_states(runner, request.layers)
        if request.HasField("last_sequence_number") and request.last_sequence_number < 0:
            raise InvalidArgument(f"last_sequence_number must be >= 0, got {request.last_sequence_number}")
        if request.HasField("step_count") and request.step_count > MAX_STEP_COUNT:
            raise InvalidArgument(f"step_count must be <= 2^62, got {request.step_count}")
        if request.HasField("last_sequence_number") and request.last_sequence_number > MAX_STEP_COUNT:
            raise InvalidArgument(f"last_sequence_number must be <= 2^62, got {request.last_sequence_number}")
        await self.directory.set_state(
            s, row, request.step_count if request.HasField("step_count") else None,
            request.last_sequence_number if request.HasField("last_sequence_number") else None)
        return pb.SetStateResponse(state=codec.session_state(runner, s, self.table.state(s)))

    # -- steps ----------------------------------------------------------------------

    @unary
    async def Step(self, request, context):
        return await self.start_step(request, self.auth.owner(context))

    async def StreamSteps(self, request_iterator, context):
        owner = await self._stream_owner(context)

        async def answer(req: pb.StreamStepsRequest) -> pb.StreamStepsResponse:
            if isinstance(req, Undecodable):
                return pb.StreamStepsResponse(error=self.in_band(req.error))
            head = {"session_id": req.step.session_id}
            if req.step.HasField("sequence_number"):
                head["sequence_number"] = req.step.sequence_number
            try:
                return pb.StreamStepsResponse(step=await self.start_step(req.step, owner, stream=True), **head)
            except Exception as e:
                return pb.StreamStepsResponse(error=self.in_band(e), **head)

        async for reply in self.in_order(request_iterator, answer, "StreamSteps"):
            yield reply

    async def in_order(self, request_iterator, answer, method: str):
        """One reply per request, in order, errors in-band; a transport fault ends the stream.

        Requests are answered one after the other: the steps of one session are
        sequential anyway, and many sessions in one message is what frames are for.
        """
        async for req in request_iterator:
            reply = await answer(req)
            self.count(method, grpc.StatusCode.OK if reply.error.code == 0 else _status(reply.error.code))
            yield reply

    # -- frames ---------------------------------------------------------------------

    @unary
    async def StepFrame(self, request, context):
        return await self.frames.start(request, self.auth.owner(context))

    async def StreamFrames(self, request_iterator, context):
        owner = await self._stream_owner(context)

        async def answer(req: pb.StreamFramesRequest) -> pb.StreamFramesResponse:
            try:
                return pb.StreamFramesResponse(frame=await self.frames.start(check(req).frame, owner))
            except Exception as e:
                return pb.StreamFramesResponse(error=self.in_band(e))

        async for reply in self.in_order(request_iterator, answer, "StreamFrames"):
            yield reply

    # -- session groups -------------------------------------------------------------

    @unary
    async def OpenGroup(self, request, context):
        return await self.groups.open(request, self.auth.owner(context))

    @unary
    async def StepGroup(self, request, context):
        return await self.groups.step(request, self.auth.owner(context))

    @unary
    async def CloseGroup(self, request, context):
        return await self.groups.close(request, self.auth.owner(context))


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _status(number: int) -> grpc.StatusCode:
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)
