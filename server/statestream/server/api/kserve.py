"""KServe v2 / Triton gRPC service (`inference.GRPCInferenceService`): Triton sequences on statestream sessions."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from importlib import metadata

import grpc

from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.v1 import statestream_pb2 as pb

from statestream.server.api import kserve_codec as tc
from statestream.contract.errors import NotFound, StatestreamError
from statestream.server.api.v1 import StateStreamService, unary
from statestream.contract.triton_config import VERSION, model_config, model_metadata
from statestream.server.api.wire import Undecodable, check

log = logging.getLogger("statestream.triton")

SERVICE = ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
EXTENSIONS = ["sequence", "model_configuration", "parameters"]
ENDED_MEMORY = 10_000      # ended sequences whose last response a retried end can replay
STREAM_IN_FLIGHT = 1024    # requests one ModelStreamInfer stream runs at once (then it stops reading)


@functools.cache
def _version() -> str:
    try:
        return metadata.version("statestream")
    except metadata.PackageNotFoundError:
        return "0"


class TritonService(ipb_grpc.GRPCInferenceServiceServicer):
    """Triton's inference service over the statestream service: a sequence id is a session id.

    `sequence_start` opens the session (or resets an open one to zero states), `sequence_end` closes it after
    the step. Only the service's entry points are used (open_session, start_step, close_session).
    """

    def __init__(self, svc: StateStreamService, *, max_batch_size: int, idle_seconds: float):
        self.svc = svc
        self.max_batch_size = max_batch_size
        self.idle_seconds = idle_seconds
        self._ended: OrderedDict[tuple, tuple[int, ipb.ModelInferResponse]] = OrderedDict()

    # what the `unary` decorator calls: readiness, the error family, request counts
    def check_ready(self) -> None:
        self.svc.check_ready()

    def domain_error(self, e: BaseException) -> StatestreamError:
        return self.svc.domain_error(e)

    def count(self, method: str, code: grpc.StatusCode) -> None:
        self.svc.count(method, code)

    def _runner(self, name: str, version: str):
        runner = self.svc.table.runner(name)
        if version not in ("", VERSION):
            raise NotFound(f"model {name!r} has no version {version!r}; statestream serves version {VERSION} only")
        return runner

    # -- health and metadata -----------------------------------------------------------

    async def ServerLive(self, request, context):
        return ipb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return ipb.ServerReadyResponse(ready=self.svc.table is not None and not self.svc.draining)

    async def ModelReady(self, request, context):
        if self.svc.table is None:  # still loading: not ready (like ServerReady), rather than UNAVAILABLE
            return ipb.ModelReadyResponse(ready=False)
        return await self._model_ready(request, context)

    @unary
    async def _model_ready(self, request, context):
        self.svc.auth.owner(context)
        try:
            self._runner(request.name, request.version)
        except NotFound:
            return ipb.ModelReadyResponse(ready=False)
        return ipb.ModelReadyResponse(ready=not self.svc.draining)

    @unary
    async def ServerMetadata(self, request, context):
        self.svc.auth.owner(context)
        return ipb.ServerMetadataResponse(name="statestream", version=_version(), extensions=EXTENSIONS)

    @unary
    async def ModelMetadata(self, request, context):
        self.svc.auth.owner(context)
        runner = self._runner(request.name, request.version)
        return model_metadata(runner.manifest, runner.name)

    @unary
    async def ModelConfig(self, request, context):
        self.svc.auth.owner(context)
        runner = self._runner(request.name, request.version)
        return ipb.ModelConfigResponse(config=model_config(
            runner.manifest, runner.name, max_batch_size=self.max_batch_size, idle_seconds=self.idle_seconds))

    # -- inference ---------------------------------------------------------------------

    @unary
    async def ModelInfer(self, request, context):
        return await self.infer(request, self.svc.auth.owner(context))

    async def infer(self, req: ipb.ModelInferRequest, owner, stream: bool = False) -> ipb.ModelInferResponse:
        """One step of a sequence: open/reset on start, step, close on end (`stream`: from ModelStreamInfer)."""
        runner = self._runner(req.model_name, req.model_version)
        seq = tc.sequence(req)
        x = tc.input_values(req, runner, self.svc.max_timesteps)
        outputs = tc.requested_outputs(req, runner)
        key = (owner, seq.sid)
        if seq.start and not await self._is_retry(seq, owner):
            self.svc.check_open()
            self._ended.pop(key, None)
            await self.svc.open_session(runner.name, seq.sid, owner, reset=True)
        step = pb.StepRequest(session_id=seq.sid, model=runner.name, input=x.ravel().tolist(),
                              return_sequences=True, return_state=tc.wants_states(outputs))
        if seq.number is not None:
            step.sequence_number = seq.number
        try:
            answer = await self.svc.start_step(step, owner, stream)
        except NotFound as e:
            ended = self._ended.get(key)
            if not seq.start and ended is not None and seq.number is not None and ended[0] == seq.number:
                return self._replay(ended[1], req)  # a retried end: its sequence is closed already
            if seq.start:
                raise
            raise NotFound(f"inference request for sequence {seq.sid} to model {runner.name!r} must specify the "
                           f"START flag ({tc.SEQUENCE_START}=true) on the first request of the sequence "
                           f"({e.message})") from None
        resp = tc.infer_response(req, runner, answer, outputs)
        if seq.end:
            try:
                await self.svc.close_session(seq.sid, owner)
            except NotFound:
                pass  # a retried end whose first attempt closed it meanwhile
            if seq.number is not None:
                self._remember_end(key, seq.number, resp)
        return resp

    async def _is_retry(self, seq: tc.Sequence, owner) -> bool:
        """A start whose sequence number the open session has already accepted: a retry, replayed, not reset."""
        if seq.number is None:
            return False
        try:
            return (await self.svc.directory.get(seq.sid, owner)).accepted_seq == seq.number
        except StatestreamError:
            return False

    def _remember_end(self, key: tuple, number: int, resp: ipb.ModelInferResponse) -> None:
        self._ended[key] = (number, resp)
        self._ended.move_to_end(key)
        if len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    @staticmethod
    def _replay(recorded: ipb.ModelInferResponse, req: ipb.ModelInferRequest) -> ipb.ModelInferResponse:
        resp = ipb.ModelInferResponse()
        resp.CopyFrom(recorded)
        resp.id = req.id
        resp.parameters["replayed"].bool_param = True
        return resp

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests of different sequences run concurrently, those of one sequence in order; each answer is sent
        when it is ready (matched by the request id, as Triton's stream does); errors go in `error_message`."""
        try:
            self.svc.check_ready()
            owner = self.svc.auth.owner(context)
        except StatestreamError as e:
            await context.abort(e.code, e.message)
        answers: asyncio.Queue = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)
        tails: dict[str, asyncio.Task] = {}

        async def answer(req, before: asyncio.Task | None) -> None:
            try:
                if before is not None:
                    await asyncio.wait([before])
                msg = ipb.ModelStreamInferResponse(infer_response=await self.infer(check(req), owner, stream=True))
                self.count("ModelStreamInfer", grpc.StatusCode.OK)
            except Exception as e:
                err = self.domain_error(e)
                self.count("ModelStreamInfer", err.code)
                echo = ipb.ModelInferResponse() if isinstance(req, Undecodable) else \
                    ipb.ModelInferResponse(id=req.id, model_name=req.model_name, model_version=req.model_version)
                msg = ipb.ModelStreamInferResponse(error_message=str(err), infer_response=echo)
            finally:
                room.release()
            answers.put_nowait(msg)

        async def read() -> None:
            running: set[asyncio.Task] = set()
            try:
                async for req in request_iterator:
                    await room.acquire()
                    key = None if isinstance(req, Undecodable) else tc.ordering_key(req)
                    task = asyncio.ensure_future(answer(req, tails.get(key)))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    if key is not None:
                        tails[key] = task
                        task.add_done_callback(lambda t, k=key: tails.pop(k) if tails.get(k) is t else None)
                if running:
                    await asyncio.wait(running)
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (msg := await answers.get()) is not None:
                yield msg
        finally:
            reader.cancel()
