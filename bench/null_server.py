"""The tightest transport ceiling: a grpc.aio server that answers with pre-serialized response bytes, parsing nothing.

A generic handler with identity (de)serializers: a request stays bytes, only its length is read, and the
answer is the response of that call's shape, serialized once at start (`bench.payloads.null_responses`
writes them: per method, the typical request length and the response bytes of the model's shape). For
each call the response whose request length is nearest is sent, so frames of 16, 256 and 1,024 sessions
get their own sizes. No protobuf, no numpy, no sessions: what is left is gRPC and asyncio.

    python -m bench.null_server --port 0 --responses bench/results/raw/data/null_responses.json
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import grpc

from .cli import parser
from .echo_server import SERVICE_NAME, serve

STREAMING = {"StreamSteps", "StreamFrames"}


class Responses:
    """Per method, (request length, response bytes) pairs; `pick` returns the nearest one's bytes."""

    def __init__(self, table: dict[str, list[tuple[int, bytes]]]):
        self.table = {m: sorted(v) for m, v in table.items()}

    @classmethod
    def load(cls, path: Path) -> "Responses":
        raw = json.loads(path.read_text())
        return cls({m: [(int(n), base64.b64decode(b)) for n, b in v] for m, v in raw.items()})

    def pick(self, method: str, n: int) -> bytes:
        options = self.table[method]
        if len(options) == 1:
            return options[0][1]
        return min(options, key=lambda o: abs(o[0] - n))[1]


class NullHandler(grpc.GenericRpcHandler):
    """Every method of the service, bytes in, bytes out."""

    def __init__(self, responses: Responses):
        self.responses = responses
        self._handlers = {}
        for method in responses.table:
            path = f"/{SERVICE_NAME}/{method}"
            if method in STREAMING:
                self._handlers[path] = grpc.stream_stream_rpc_method_handler(self._stream(method))
            else:
                self._handlers[path] = grpc.unary_unary_rpc_method_handler(self._unary(method))

    def service(self, details):
        return self._handlers.get(details.method)

    def _unary(self, method: str):
        pick = self.responses.pick

        async def handle(request: bytes, context) -> bytes:
            return pick(method, len(request))

        return handle

    def _stream(self, method: str):
        pick = self.responses.pick

        async def handle(request_iterator, context):
            async for request in request_iterator:
                yield pick(method, len(request))

        return handle


def main(argv: list[str] | None = None) -> int:
    p = parser("null_server", __doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--responses", type=Path, required=True, help="JSON written by bench.payloads.null_responses")
    a = p.parse_args(argv)
    try:
        handler = NullHandler(Responses.load(a.responses))
        asyncio.run(serve(a.host, a.port, lambda s: s.add_generic_rpc_handlers((handler,)), "null-server"))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
