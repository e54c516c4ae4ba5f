"""A recording gRPC pass-through proxy on loopback: forwards every call to a real server, notes its metadata,
and on request loses a reply after the server applied the call (what a dying proxy or connection does)."""

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
    """The session ids a request of `method` names (a group's id for group calls; empty for calls that name
    none, or many, like frames)."""
    if method == "StreamSteps":
        return [pb.StreamStepsRequest.FromString(raw).step.session_id]
    request = {"Step": pb.StepRequest, "GetState": pb.GetStateRequest, "SetState": pb.SetStateRequest,
               "CloseSession": pb.CloseSessionRequest, "OpenSession": pb.OpenSessionRequest}.get(method)
    if request:
        return [request.FromString(raw).session_id]
    group = {"OpenGroup": pb.OpenGroupRequest, "StepGroup": pb.StepGroupRequest,
             "CloseGroup": pb.CloseGroupRequest}.get(method)
    return [group.FromString(raw).group_id] if group else []


@dataclass
class Call:
    """One call as the proxy saw it: method, the client's user-agent, its metadata, the session ids it named."""

    method: str
    user_agent: str
    metadata: dict[str, str]
    sessions: list[str] = field(default_factory=list)


class RecordingProxy:
    """with RecordingProxy(server.target) as proxy: Client(proxy.target) ...; proxy.calls

    proxy.drop_replies["Step"] = 1   # the next Step is applied upstream, its caller gets UNAVAILABLE instead
    proxy.break_streams.append(5)    # the next stream passes 5 replies, then loses the 6th and fails UNAVAILABLE
    """

    def __init__(self, upstream: str):
        self.upstream = grpc.insecure_channel(upstream)
        self.calls: list[Call] = []
        self.drop_replies: dict[str, int] = {}
        self.break_streams: list[int] = []
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

    def take_drop(self, method: str) -> bool:
        with self._lock:
            if self.drop_replies.get(method, 0) > 0:
                self.drop_replies[method] -= 1
                return True
            return False

    def take_break(self) -> int | None:
        with self._lock:
            return self.break_streams.pop(0) if self.break_streams else None

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
                reply = upstream.unary_unary(details.method)(raw, metadata=metadata, timeout=remaining(context))
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())
            if self.proxy.take_drop(call.method):
                context.abort(grpc.StatusCode.UNAVAILABLE, "test proxy: the reply was lost on the way back")
            return reply

        def streaming(requests, context: grpc.ServicerContext):
            def forwarded():
                for raw in requests:
                    call.sessions += session_ids(call.method, raw)
                    yield raw

            replies = upstream.stream_stream(details.method)(forwarded(), metadata=metadata,
                                                             timeout=remaining(context))
            context.add_callback(replies.cancel)
            passed, limit = 0, self.proxy.take_break()
            try:
                for reply in replies:
                    if passed == limit:
                        replies.cancel()
                        context.abort(grpc.StatusCode.UNAVAILABLE, "test proxy: the stream broke")
                    passed += 1
                    yield reply
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())

        if call.method in STREAMING:
            return grpc.stream_stream_rpc_method_handler(streaming)
        return grpc.unary_unary_rpc_method_handler(unary)
