"""The transport ceiling: a bare grpc.aio StateStreamService that answers every step without a model.

Same service, same RPCs, same message shapes as statestream-server (a StepResponse of `output_size`
floats per row, frames of N x rows x output_size floats and N step counts), same grpc options, one
process; no sessions, no batching, no onnxruntime. What ghz gets from it is what the transport
allows on this machine; the real server's figures are reported as a ratio to it.

    python -m bench.echo_server --port 0 --features 3 --output-size 1
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from statestream.server.app import loops
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

from .cli import parser

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StateStreamService"].full_name
# The real server's channel options (server/statestream/server/main.py), so both pay the same transport.
OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
           ("grpc.max_send_message_length", 64 * 1024 * 1024),
           ("grpc.so_reuseport", 0)]


class EchoService(pb_grpc.StateStreamServiceServicer):
    """Answers Step/StreamSteps/StepFrame/StreamFrames with responses of the model's shape."""

    def __init__(self, features: int, output_size: int):
        self.features = features
        self.output_size = output_size
        self.counts: dict[str, int] = {}
        self._zeros: dict[int, list[float]] = {}

    def _floats(self, n: int) -> list[float]:
        z = self._zeros.get(n)
        if z is None:
            z = self._zeros[n] = [0.0] * n
        return z

    def _out(self, msg, name: str, n: int, raw: bool):
        """Fill the response's floats (zeros) as the request asked: raw bytes or repeated floats."""
        if raw:
            setattr(msg, f"{name}_raw", bytes(4 * n))
        else:
            getattr(msg, name).extend(self._floats(n))
        return msg

    def _step(self, req: pb.StepRequest) -> pb.StepResponse:
        T = max(1, (len(req.input) or len(req.input_raw) // 4) // self.features)
        rows = T if req.return_sequences else 1
        count = self.counts.get(req.session_id, 0) + T
        self.counts[req.session_id] = count
        return self._out(pb.StepResponse(session_id=req.session_id, rows=rows, step_count=count), "output",
                         rows * self.output_size, req.raw_output)

    def _frame(self, req: pb.StepFrameRequest) -> pb.StepFrameResponse:
        n = len(req.session_ids)
        T = req.timesteps or 1
        rows = T if req.return_sequences else 1
        count = self.counts.get("", 0) + T
        self.counts[""] = count
        return self._out(pb.StepFrameResponse(rows=rows, step_counts=[count] * n), "outputs",
                         n * rows * self.output_size, req.raw_output)

    def _group(self, req: pb.StepGroupRequest) -> pb.StepGroupResponse:
        T = req.timesteps or 1
        n = (len(req.inputs) or len(req.inputs_raw) // 4) // (T * self.features)
        rows = T if req.return_sequences else 1
        count = self.counts.get(req.group_id, 0) + 1
        self.counts[req.group_id] = count
        return self._out(pb.StepGroupResponse(group_id=req.group_id, rows=rows, step_count=count), "outputs",
                         n * rows * self.output_size, req.raw_output)

    async def Step(self, request, context):
        return self._step(request)

    async def StepGroup(self, request, context):
        return self._group(request)

    async def StreamSteps(self, request_iterator, context):
        async for req in request_iterator:
            yield pb.StreamStepsResponse(step=self._step(req.step), session_id=req.step.session_id)

    async def StepFrame(self, request, context):
        return self._frame(request)

    async def StreamFrames(self, request_iterator, context):
        async for req in request_iterator:
            yield pb.StreamFramesResponse(frame=self._frame(req.frame))


async def serve(host: str, port: int, register, name: str) -> None:
    """A grpc.aio server with the real server's options and health; `register(server)` adds the service;
    prints `NAME listening on HOST:PORT (event loop: KIND)` (what ServerProcess waits for), runs until killed."""
    server = grpc.aio.server(options=OPTIONS)
    register(server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    await hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    print(f"{name} listening on {host}:{bound} (event loop: {loops.running()})", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = parser("echo_server", __doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--features", type=int, required=True, help="values per timestep in a request")
    p.add_argument("--output-size", type=int, required=True, help="values per row in a response")
    a = p.parse_args(argv)
    return run(EchoService(a.features, a.output_size), a.host, a.port, "echo-server")


def run(service: pb_grpc.StateStreamServiceServicer, host: str, port: int, name: str, loop: str = "asyncio") -> int:
    """Serve `service` (serve()) until killed, on the event loop `loop` names (statestream-server's --loop)."""
    try:
        loops.run(serve(host, port, lambda s: pb_grpc.add_StateStreamServiceServicer_to_server(service, s), name),
                  loop)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
