"""Registers the service with deserializers that never raise: undecodable bytes become INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from statestream.contract.errors import InvalidArgument
from statestream.v1 import statestream_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["StateStreamService"]


class Undecodable:
    """Stands in for a request whose bytes are not a valid message; handlers refuse it in-band."""

    __slots__ = ("error",)

    def __init__(self, type_name: str, reason: str):
        self.error = InvalidArgument(f"the request is not a valid {type_name}: {reason}")


def _parser(cls):
    return tolerant(cls.FromString, cls.DESCRIPTOR.full_name)


def tolerant(parse, name: str):
    """A request deserializer that returns `Undecodable` instead of raising on bytes that are not a `name`."""

    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as e:
            return Undecodable(name, str(e).split(": ", 1)[-1][:200])

    return deserialize


def add_service(servicer, server, service=SERVICE, messages=pb) -> None:
    """Like the generated add_<Service>Servicer_to_server, with tolerant deserializers.

    `service` is the service descriptor, `messages` the generated module holding its message classes."""
    handlers = {}
    for m in service.methods:
        req, resp = getattr(messages, m.input_type.name), getattr(messages, m.output_type.name)
        make = grpc.stream_stream_rpc_method_handler if m.client_streaming else grpc.unary_unary_rpc_method_handler
        handlers[m.name] = make(getattr(servicer, m.name), request_deserializer=_parser(req),
                                response_serializer=resp.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def check(request):
    """The request, or INVALID_ARGUMENT if its bytes did not decode."""
    if type(request) is Undecodable:
        raise request.error
    return request
