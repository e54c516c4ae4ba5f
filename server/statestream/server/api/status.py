"""The one place domain errors (statestream.contract.errors) become gRPC status codes, for both services."""

from __future__ import annotations

import functools
import logging
import time

import grpc

from statestream.contract.errors import Internal, StatestreamError, Unavailable
from statestream.server.api.wire import check

log = logging.getLogger("statestream.api")

_CODES = {c.value[0]: c for c in grpc.StatusCode}


def code_number(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a grpc.StatusCode (as carried in-band)."""
    return code.value[0]


def status_of(number: int) -> grpc.StatusCode:
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def domain_error(exc: BaseException) -> StatestreamError:
    """Any exception as a StatestreamError. A domain error is the caller's answer as it is; anything else is a bug:
    logged here, once, with its traceback, and INTERNAL to the caller without details."""
    if isinstance(exc, StatestreamError):
        return exc
    log.error("unexpected error", exc_info=exc)
    return Internal(f"internal error ({type(exc).__name__}); nothing was applied")


def deadline_of(context) -> float | None:
    """When the caller gives up, on time.monotonic()'s clock (None: it set no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def unary(fn):
    """A unary handler of either service: a ready server, a decoded request; any error becomes its status code
    here and nowhere else. The service provides `check_ready()` and `count(method, code)`."""
    name = fn.__name__

    @functools.wraps(fn)
    async def handler(self, request, context):
        try:
            self.check_ready()
            reply = await fn(self, check(request), context)
        except Exception as e:
            err = domain_error(e)
            self.count(name, err.code)
            await context.abort(err.code, err.message)
        self.count(name, grpc.StatusCode.OK)
        return reply

    return handler


class Adapter:
    """What both protocol adapters share: the engine (attached once the models are loaded; until then every call is
    UNAVAILABLE), the bearer-token check, and request counts for the metrics."""

    def __init__(self, auth, metrics=None):
        self.engine = None
        self.auth = auth
        self.metrics = metrics

    def attach(self, engine) -> None:
        """Models are loaded: start answering."""
        self.engine = engine

    def check_ready(self) -> None:
        if self.engine is None:
            raise Unavailable("models are still loading; retry shortly (health is NOT_SERVING)")

    def count(self, method: str, code: grpc.StatusCode) -> None:
        if self.metrics is not None:
            self.metrics.count_request(method, code)


async def stream_owner(service, context):
    """The owner of a stream's caller, once, before it reads anything; a refusal ends the call with its code."""
    try:
        service.check_ready()
        return service.auth.owner(context)
    except StatestreamError as e:
        await context.abort(e.code, e.message)
