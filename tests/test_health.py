"""Health and reflection: garbage bytes are INVALID_ARGUMENT without a traceback; health follows the store."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inproc import InProcessServer

from statestream.server.app.server import SERVICE_NAME

GARBAGE = b"\xff\xff\xff\xff\x0f"   # a varint that never ends: no message decodes from it


def _identity(b: bytes) -> bytes:
    return b


@pytest.fixture(scope="module")
def srv():
    with InProcessServer() as s:
        yield s


@pytest.mark.parametrize("method,kind", [("/grpc.health.v1.Health/Check", "unary_unary"),
                                         ("/grpc.health.v1.Health/Watch", "unary_stream"),
                                         ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                          "stream_stream")])
def test_garbage_bytes_to_health_and_reflection_are_invalid_argument_without_a_traceback(srv, method, kind, caplog):
    call = getattr(srv.channel, kind)(method, request_serializer=_identity, response_deserializer=_identity)
    with caplog.at_level(logging.DEBUG), pytest.raises(grpc.RpcError) as e:
        if kind == "unary_unary":
            call(GARBAGE, timeout=10)
        elif kind == "unary_stream":
            list(call(GARBAGE, timeout=10))
        else:
            list(call(iter([GARBAGE]), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert "is not a valid grpc." in e.value.details()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def test_health_and_reflection_still_answer_good_requests(srv):
    health = health_pb2_grpc.HealthStub(srv.channel)
    for name in ("", SERVICE_NAME):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    info = reflection_pb2_grpc.ServerReflectionStub(srv.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for s in next(info).list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health", "inference.GRPCInferenceService"} <= names
