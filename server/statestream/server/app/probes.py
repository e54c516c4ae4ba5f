"""Health and reflection, registered with deserializers that never raise: garbage bytes are INVALID_ARGUMENT."""

from __future__ import annotations

import inspect

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from statestream.server.api.wire import Undecodable, tolerant


class _Captured:
    """Stands in for the server while a generated add_*_to_server registers its handlers."""

    def __init__(self):
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.services[service] = handlers


async def _refuse(request, context) -> None:
    if type(request) is Undecodable:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error.message)


def _guarded(h: grpc.RpcMethodHandler, type_name: str) -> grpc.RpcMethodHandler:
    """`h` with a tolerant deserializer, its behavior refusing what did not decode."""
    deserializer = tolerant(h.request_deserializer, type_name)
    if h.request_streaming:
        inner = h.stream_stream or h.stream_unary

        async def checked(requests, context):
            async for request in requests:
                await _refuse(request, context)
                yield request

        if inspect.isasyncgenfunction(inner):
            async def behavior(requests, context):
                async for reply in inner(checked(requests, context), context):
                    yield reply
        else:
            async def behavior(requests, context):
                return await inner(checked(requests, context), context)
        field = "stream_stream" if h.response_streaming else "stream_unary"
    else:
        inner = h.unary_stream or h.unary_unary

        if inspect.isasyncgenfunction(inner):
            async def behavior(request, context):
                await _refuse(request, context)
                async for reply in inner(request, context):
                    yield reply
        else:
            async def behavior(request, context):
                await _refuse(request, context)
                return await inner(request, context)
        field = "unary_stream" if h.response_streaming else "unary_unary"
    return h._replace(request_deserializer=deserializer, **{field: behavior})


def _add_tolerant(server, register) -> None:
    """Run a generated `register(server)`, then add its handlers to `server` with tolerant deserializers."""
    captured = _Captured()
    register(captured)
    pool = descriptor_pool.Default()
    for service, handlers in captured.services.items():
        methods = pool.FindServiceByName(service).methods_by_name
        guarded = {name: _guarded(h, methods[name].input_type.full_name) for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        server.add_registered_method_handlers(service, guarded)


def add_health(servicer, server: grpc.aio.Server) -> None:
    """grpc.health.v1.Health (`servicer`: a grpc_health aio HealthServicer) on `server`."""
    _add_tolerant(server, lambda s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s))


def add_reflection(service_names, server: grpc.aio.Server) -> None:
    """Server reflection (v1alpha) of `service_names` on `server`."""
    servicer = reflection.aio.ReflectionServicer(service_names)
    _add_tolerant(server, lambda s: reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, s))
