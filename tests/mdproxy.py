"""A recording gRPC pass-through proxy on loopback: forwards every call to a real server and notes its metadata."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from statestream.v1 import statestream_pb2 as pb

SERVICE = "/statestream.v1.StateStreamService/"
STREAMING = {"StreamSteps", "StreamFrames"}
_FORWARDED = lambda k: not (k.startswith(":") or k.startswith("grpc-") or k == "user-agent")  # noqa: E731


def session_ids(method: str, raw: bytes) -> list[str]:
    """The session ids a request of `method` names (empty for calls that name none, or many, like frames)."""
    if method == "StreamSteps":
        return [pb.StreamStepsRequest.FromString(raw).step.session_id]
    request = {"Step": pb.StepRequest, "GetState": pb.GetStateRequest, "SetState": pb.SetStateRequest,
               "CloseSession": pb.CloseSessionRequest, "OpenSession": pb.OpenSessionRequest}.get(method)
    return [request.FromString(raw).session_id] if request else []


@dataclass
class Call:
    """One call as the proxy saw it: method, the client's user-agent, its metadata, the session ids it named."""

    method: str
    user_agent: str
    metadata: dict[str, str]
    sessions: list[str] = field(default_factory=list)


class RecordingProxy:
    """with RecordingProxy(server.target) as proxy: Client(proxy.target) ...; proxy.calls"""

    def __init__(self, upstream: str):
        self.upstream = grpc.insecure_channel(upstream)
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers([_Handler(self)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self, details: grpc.HandlerCallDetails) -> Call:
        md = {k: v for k, v in details.invocation_metadata}
        call = Call(details.method.removeprefix(SERVICE), md.get("user-agent", ""),
                    {k: v for k, v in md.items() if _FORWARDED(k)})
        with self._lock:
            self.calls.append(call)
        return call

    def __enter__(self) -> "RecordingProxy":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(None)
        self.upstream.close()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: RecordingProxy):
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails):
        if not details.method.startswith(SERVICE):
            return None
        call = self.proxy.record(details)
        upstream = self.proxy.upstream
        metadata = tuple(call.metadata.items())

        def remaining(context: grpc.ServicerContext) -> float | None:
            left = context.time_remaining()
            return None if left > 1e9 else left  # no deadline reads as ~9e18 s

        def unary(raw: bytes, context: grpc.ServicerContext) -> bytes:
            call.sessions += session_ids(call.method, raw)
            try:
                return upstream.unary_unary(details.method)(raw, metadata=metadata, timeout=remaining(context))
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())

        def streaming(requests, context: grpc.ServicerContext):
            def forwarded():
                for raw in requests:
                    call.sessions += session_ids(call.method, raw)
                    yield raw

            replies = upstream.stream_stream(details.method)(forwarded(), metadata=metadata,
                                                             timeout=remaining(context))
            context.add_callback(replies.cancel)
            try:
                yield from replies
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())

        if call.method in STREAMING:
            return grpc.stream_stream_rpc_method_handler(streaming)
        return grpc.unary_unary_rpc_method_handler(unary)
