"""KServe v2 / Triton gRPC service (`inference.GRPCInferenceService`): Triton sequences on statestream sessions."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from importlib import metadata

import grpc

from statestream.contract.errors import FailedPrecondition, InvalidArgument, NotFound
from statestream.contract.triton_config import model_config, model_metadata
from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.server.api import kserve_codec as tc
from statestream.server.api.auth import Auth
from statestream.server.api.status import Adapter, deadline_of, domain_error, stream_owner, unary
from statestream.server.api.wire import Undecodable, check
from statestream.server.engine.repository import READY
from statestream.server.engine.types import REPLAYED, StepRequest

log = logging.getLogger("statestream.triton")

SERVICE = ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
EXTENSIONS = ["sequence", "model_configuration", "parameters"]
ENDED_MEMORY = 10_000      # ended sequences whose last response a retried end can replay
STREAM_WINDOW = 1024       # requests of one ModelStreamInfer stream running or answered but not yet sent


@functools.cache
def _version() -> str:
    try:
        return metadata.version("statestream")
    except metadata.PackageNotFoundError:
        return "0"


class TritonService(Adapter, ipb_grpc.GRPCInferenceServiceServicer):
    """Triton's inference service over the Engine: a sequence id is a session id.

    `sequence_start` opens the session, or restarts an open one from zero states as part of the step itself (so a
    refused start changes nothing); `sequence_end` closes it after the step."""

    def __init__(self, auth: Auth, metrics=None, *, max_batch_size: int, idle_seconds: float):
        super().__init__(auth, metrics)
        self.max_batch_size = max_batch_size
        self.idle_seconds = idle_seconds
        self._ended: OrderedDict[tuple, tuple[int, ipb.ModelInferResponse]] = OrderedDict()

    def _runner(self, name: str, version: str):
        """The runner of `version` of model `name` ("": the default, latest), for a new sequence."""
        return self.engine.runner(name, _number(version))

    def _loaded(self, name: str, version: str):
        """The runner of a loaded version, also one being unloaded ("": the default), for metadata."""
        r = self.engine.table.runners.get((name, _number(version))) if version else None
        return r or self._runner(name, version)

    # -- health and metadata -----------------------------------------------------------

    async def ServerLive(self, request, context):
        return ipb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return ipb.ServerReadyResponse(ready=self.engine is not None and not self.engine.draining)

    async def ModelReady(self, request, context):
        if self.engine is None:  # still loading: not ready (like ServerReady), rather than UNAVAILABLE
            return ipb.ModelReadyResponse(ready=False)
        return await self._model_ready(request, context)

    @unary
    async def _model_ready(self, request, context):
        self.auth.owner(context)
        try:
            self._runner(request.name, request.version)
        except (NotFound, FailedPrecondition):  # unknown, or being unloaded: no new sequences
            return ipb.ModelReadyResponse(ready=False)
        return ipb.ModelReadyResponse(ready=not self.engine.draining)

    @unary
    async def ServerMetadata(self, request, context):
        self.auth.owner(context)
        return ipb.ServerMetadataResponse(name="statestream", version=_version(), extensions=EXTENSIONS)

    @unary
    async def ModelMetadata(self, request, context):
        self.auth.owner(context)
        runner = self._loaded(request.name, request.version)
        return model_metadata(runner.manifest, runner.name, [str(v) for v in self.engine.versions.of(runner.name)])

    @unary
    async def ModelConfig(self, request, context):
        self.auth.owner(context)
        runner = self._loaded(request.name, request.version)
        return ipb.ModelConfigResponse(config=model_config(
            runner.manifest, runner.name, max_batch_size=self.max_batch_size, idle_seconds=self.idle_seconds))

    @unary
    async def ModelStatistics(self, request, context):
        """Per loaded version: steps (inferences), model runs (executions), steps that succeeded or failed in a run
        with their time from queued to answered, queue and compute time of the runs."""
        self.auth.owner(context)
        version = _number(request.version)
        if request.name and not self.engine.versions.of(request.name):
            raise self.engine.versions.unknown(request.name)
        keys = [k for k in sorted(self.engine.table.runners) if (not request.name or k[0] == request.name)
                and (not version or k[1] == version)]
        if version and not keys:
            raise NotFound(f"model {request.name!r} has no version {version} loaded")
        return ipb.ModelStatisticsResponse(model_stats=[self._stats(k) for k in keys])

    def _stats(self, key) -> ipb.ModelStatistics:
        m = self.metrics.stats(key)
        d = ipb.StatisticDuration
        return ipb.ModelStatistics(
            name=key[0], version=str(key[1]), last_inference=int(m.last_inference * 1000), inference_count=m.steps,
            execution_count=m.executions, inference_stats=ipb.InferStatistics(
                success=d(count=m.success, ns=int(m.success_seconds * 1e9)),
                fail=d(count=m.failure, ns=int(m.failure_seconds * 1e9)),
                queue=d(count=m.executions, ns=int(m.queue_seconds.total * 1e9)),
                compute_infer=d(count=m.executions, ns=int(m.compute_seconds.total * 1e9))))

    # -- model repository (hot reload) ----------------------------------------------------

    @unary
    async def RepositoryIndex(self, request, context):
        self.auth.owner(context)
        index = ipb.RepositoryIndexResponse.ModelIndex
        return ipb.RepositoryIndexResponse(models=[
            index(name=e.name, version=str(e.version), state=e.state, reason=e.reason)
            for e in self.engine.repository.index() if not request.ready or e.state == READY])

    @unary
    async def RepositoryModelLoad(self, request, context):
        """Load the versions of the model that the repository holds and that are not loaded (on a thread: steps go
        on); a version whose file fails to load changes nothing served, and the error names the file."""
        self.auth.owner(context)
        if not request.model_name:
            raise InvalidArgument("model_name is empty")
        errors = await self.engine.repository.sync(only=request.model_name, explicit=True)
        if errors:
            raise InvalidArgument("; ".join(errors.values()))
        if not self.engine.versions.of(request.model_name):
            raise NotFound(f"model {request.model_name!r} is not in the model repository (--models)")
        return ipb.RepositoryModelLoadResponse()

    @unary
    async def RepositoryModelUnload(self, request, context):
        """Unload the model's versions (parameter "version": one of them): no new sessions; open ones run until
        they close or expire, or (parameter "force": true) are closed now. A scan of the repository does not
        load them again; RepositoryModelLoad does."""
        self.auth.owner(context)
        params = request.parameters
        version = 0
        if "version" in params:
            p = params["version"]
            version = p.int64_param if p.WhichOneof("parameter_choice") == "int64_param" else _number(p.string_param)
        force = "force" in params and params["force"].bool_param
        await self.engine.repository.unload(request.model_name, version, force=force, hold=True)
        return ipb.RepositoryModelUnloadResponse()

    # -- inference ---------------------------------------------------------------------

    @unary
    async def ModelInfer(self, request, context):
        return await self.infer(request, self.auth.owner(context), deadline_of(context))

    async def infer(self, req: ipb.ModelInferRequest, owner, deadline: float | None = None,
                    stream: bool = False) -> ipb.ModelInferResponse:
        """One step of a sequence: a start (re)opens it as part of the step, an end closes it after the step.
        Everything is validated before anything changes (`stream`: from ModelStreamInfer)."""
        seq = tc.sequence(req)
        version = _number(req.model_version)
        try:  # an open sequence runs on its own version; a new one on the version named, or the default
            runner = await self.engine.runner_for(seq.sid, owner, req.model_name, seq.start, version)
        except NotFound:
            runner = self._runner(req.model_name, req.model_version)
        x = tc.input_values(req, runner)
        outputs = tc.requested_outputs(req, runner)
        key = (owner, seq.sid)
        step = StepRequest(owner, x[None], model=runner.name, ids=[seq.sid],
                           seqs=None if seq.number is None else [seq.number], open_if_missing=seq.start,
                           reset=seq.start, stream=stream, deadline=deadline, version=version)
        try:
            reply = await self.engine.step(step)
            reply.raise_first()
        except NotFound as e:
            ended = self._ended.get(key)
            if not seq.start and ended is not None and seq.number is not None and ended[0] == seq.number:
                return self._replay(ended[1], req)  # a retried end: its sequence is closed already
            if seq.start:
                raise
            raise NotFound(f"inference request for sequence {seq.sid} to model {runner.name!r} must specify the "
                           f"START flag ({tc.SEQUENCE_START}=true) on the first request of the sequence "
                           f"({e.message})") from None
        if seq.start:
            self._ended.pop(key, None)
        resp = tc.infer_response(req, runner, reply.output[0], reply.state[0], int(reply.step_count[0]),
                                 reply.outcome[0] is REPLAYED, outputs)
        if seq.end:
            try:
                await self.engine.close(seq.sid, owner)
            except NotFound:
                pass  # a retried end whose first attempt closed it meanwhile
            if seq.number is not None:
                self._remember_end(key, seq.number, resp)
        return resp

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
        when it is ready (matched by the request id, as Triton's stream does); errors go in `error_message`.
        At most STREAM_WINDOW requests are running or answered-but-unsent: a client that writes without reading
        stops being read (back-pressure), it never grows the server."""
        owner = await stream_owner(self, context)
        answers: asyncio.Queue = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_WINDOW)
        tails: dict[str, asyncio.Task] = {}

        async def answer(req, before: asyncio.Task | None) -> None:
            try:
                if before is not None:
                    await asyncio.wait([before])
                resp = await self.infer(check(req), owner, deadline_of(context), stream=True)
                msg = ipb.ModelStreamInferResponse(infer_response=resp)
                self.count("ModelStreamInfer", grpc.StatusCode.OK)
            except Exception as e:
                err = domain_error(e)
                self.count("ModelStreamInfer", err.code)
                echo = ipb.ModelInferResponse() if isinstance(req, Undecodable) else \
                    ipb.ModelInferResponse(id=req.id, model_name=req.model_name, model_version=req.model_version)
                msg = ipb.ModelStreamInferResponse(error_message=str(err), infer_response=echo)
            answers.put_nowait(msg)  # its slot of the window is freed once it was sent

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
                room.release()
        finally:
            reader.cancel()


def _number(version: str) -> int:
    """A KServe model_version string as a number ("": 0, the default)."""
    if not version:
        return 0
    if not version.isdigit() or int(version) < 1:
        raise InvalidArgument(f"model_version must be a positive integer or empty, got {version!r}")
    return int(version)
