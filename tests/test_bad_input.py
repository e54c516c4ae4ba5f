"""Malformed requests of every kind against one live server: the DESIGN.md status code, the server stays up,
and bystander sessions (never the target of a valid request) keep their exact states and counters."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from malformed import (
    BYSTANDERS,
    CANARY,
    EXISTS,
    INVALID,
    KNOWN,
    LAYERS,
    MAX_T,
    NOT_FOUND,
    OK,
    PRECOND,
    UNITS,
    C,
    F,
    frame_cases,
    garbage,
    lookup_cases,
    open_cases,
    parses,
    set_state_cases,
    step_cases,
)
from serverproc import DEMO_MODEL, ServerProcess

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

# Bytes that are not a protobuf of the method's request type: the server's tolerant deserializers (wire.py) turn
# them into INVALID_ARGUMENT "the request is not a valid statestream.v1.<Type>: ..." (grpc alone would fail the
# call with UNKNOWN and the exception's class in the details); on a stream the error is in-band.
GARBAGE = C.INVALID_ARGUMENT
MAX_MESSAGE = 256 * 1024
SERVICE = "/statestream.v1.StateStreamService/"
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


# -- the live server and its bystanders -----------------------------------------------------------------------

class World:
    """One server, its bystander sessions and a canary session that proves the server still steps."""

    def __init__(self, srv: ServerProcess):
        self.srv = srv
        self.channel = grpc.insecure_channel(srv.target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = pb_grpc.StateStreamServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        rng = np.random.default_rng(5)
        model = self.stub.GetModel(pb.GetModelRequest(name="demo")).model
        assert (model.features, [l.name for l in model.layers], {l.units for l in model.layers}) == (F, list(LAYERS),
                                                                                                      {UNITS})
        for sid, (steps, K) in BYSTANDERS.items():
            init = [pb.LayerState(layer=l, h=rng.normal(size=UNITS), c=rng.normal(size=UNITS)) for l in LAYERS]
            self.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid,
                                                        initial_states=init if steps == 0 else []))
            if steps is None:
                self.stub.SetState(pb.SetStateRequest(session_id=sid, layers=init, step_count=10**12,
                                                      last_sequence_number=K))
                continue
            for i in range(steps):
                req = pb.StepRequest(session_id=sid, input=rng.normal(size=F))
                if K:
                    req.sequence_number = i + 1
                self.stub.Step(req)
        self.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=CANARY))
        self.canary_steps = 0
        self.snapshot = {sid: self.state_bytes(sid) for sid in BYSTANDERS}
        for sid, (steps, K) in BYSTANDERS.items():
            st_ = self.stub.GetState(pb.GetStateRequest(session_id=sid)).state
            assert (st_.step_count, st_.last_sequence_number) == (10**12 if steps is None else steps, K)

    def state_bytes(self, sid: str) -> bytes:
        return self.stub.GetState(pb.GetStateRequest(session_id=sid), timeout=10).SerializeToString(deterministic=True)

    def call(self, method: str, req) -> tuple[C, str, object]:
        try:
            return OK, "", getattr(self.stub, method)(req, timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details() or "", None

    def assert_gone(self, sid: str) -> None:
        """A refused request opened nothing under `sid`."""
        if sid and sid not in KNOWN:
            code, msg, _ = self.call("GetState", pb.GetStateRequest(session_id=sid))
            assert code == NOT_FOUND, f"a refused request left session {sid!r} open"

    def check(self) -> None:
        """The server is up and stepping, and no bystander changed by a single bit."""
        assert self.srv.proc.poll() is None, self.srv.output()[-3000:]
        assert self.health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        reply = self.stub.Step(pb.StepRequest(session_id=CANARY, input=[0.1, 0.2, 0.3]), timeout=10)
        self.canary_steps += 1
        assert reply.step_count == self.canary_steps
        for sid, before in self.snapshot.items():
            after = self.state_bytes(sid)
            assert after == before, f"bystander {sid!r} changed: {pb.GetStateResponse.FromString(after)}"


@pytest.fixture(scope="module")
def world():
    with ServerProcess(DEMO_MODEL, "--max-sessions", "200", "--max-timesteps", str(MAX_T), "--max-message-bytes",
                       str(MAX_MESSAGE), "--sweep-interval", "0.05") as srv:
        w = World(srv)
        yield w
        w.channel.close()


def code_of(number: int) -> C:
    return next(c for c in C if c.value[0] == number)


def assert_code(code: C, msg: str, allowed: set, what) -> None:
    assert code in allowed, f"{what}\n-> {code.name}: {msg!r}; expected one of {sorted(c.name for c in allowed)}"
    assert msg and "Traceback" not in msg, msg


def assert_frame(world: World, reply: pb.StepFrameResponse, req, entry: list) -> None:
    """Per-entry errors exactly where expected, nothing applied there; the canary entry applied."""
    errors = {e.index: e.error for e in reply.errors}
    assert sorted(errors) == [i for i, c in enumerate(entry) if c is not None], (req, reply)
    T = req.timesteps or 1
    out = np.array(reply.outputs).reshape(len(entry), reply.rows, 1)
    for i, allowed in enumerate(entry):
        if allowed is None:
            world.canary_steps += T
            assert reply.step_counts[i] == world.canary_steps
            continue
        assert_code(code_of(errors[i].code), errors[i].message, allowed, (req, i))
        assert reply.step_counts[i] == 0 and not out[i].any()
        world.assert_gone(req.session_ids[i])


# -- properties -----------------------------------------------------------------------------------------------

@SETTINGS
@given(case=step_cases())
def test_step(world, case):
    req, allowed = case
    code, msg, _ = world.call("Step", req)
    assert_code(code, msg, allowed, req)
    world.assert_gone(req.session_id)
    world.check()


@SETTINGS
@given(case=set_state_cases())
def test_set_state(world, case):
    req, allowed = case
    code, msg, _ = world.call("SetState", req)
    assert_code(code, msg, allowed, req)
    world.check()


@SETTINGS
@given(case=open_cases())
def test_open_session(world, case):
    req, allowed = case
    code, msg, _ = world.call("OpenSession", req)
    assert_code(code, msg, allowed, req)
    world.assert_gone(req.session_id)
    world.check()


@SETTINGS
@given(case=lookup_cases())
def test_lookups(world, case):
    method, req, allowed = case
    code, msg, _ = world.call(method, req)
    assert_code(code, msg, allowed, req)
    world.check()


@SETTINGS
@given(case=frame_cases())
def test_step_frame(world, case):
    req, frame, entry = case
    code, msg, reply = world.call("StepFrame", req)
    if frame is not None:
        assert_code(code, msg, frame, req)
    else:
        assert code == OK, (req, code, msg)
        assert_frame(world, reply, req, entry)
    world.check()


@SETTINGS
@given(items=st.lists(step_cases() | st.just(None), min_size=1, max_size=6))
def test_stream_steps_in_band(world, items):
    """Bad messages get in-band errors (session id and sequence number echoed); the stream stays open."""
    steps = [pb.StepRequest(session_id=CANARY, input=[0.3, 0.2, 0.1]) if it is None else it[0] for it in items]
    replies = list(world.stub.StreamSteps((pb.StreamStepsRequest(step=s) for s in steps), timeout=20))
    assert len(replies) == len(items)
    for it, step, reply in zip(items, steps, replies):
        assert reply.session_id == step.session_id
        assert reply.HasField("sequence_number") == step.HasField("sequence_number")
        assert reply.sequence_number == step.sequence_number
        if it is None:
            world.canary_steps += 1
            assert not reply.HasField("error") and reply.step.step_count == world.canary_steps, reply
        else:
            assert not reply.HasField("step")
            assert_code(code_of(reply.error.code), reply.error.message, it[1], step)
    world.check()


@SETTINGS
@given(items=st.lists(frame_cases(), min_size=1, max_size=4))
def test_stream_frames_in_band(world, items):
    replies = list(world.stub.StreamFrames((pb.StreamFramesRequest(frame=f) for f, _, _ in items), timeout=20))
    assert len(replies) == len(items)
    for (req, frame, entry), reply in zip(items, replies):
        if frame is not None:
            assert not reply.HasField("frame")
            assert_code(code_of(reply.error.code), reply.error.message, frame, req)
        else:
            assert not reply.HasField("error"), reply
            assert_frame(world, reply.frame, req, entry)
    world.check()


@SETTINGS
@given(case=garbage())
def test_garbage_bytes(world, case):
    """Undecodable bytes: exactly GARBAGE. Bytes that happen to decode: a client-error code, never a crash."""
    method, data = case
    call = world.channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    try:
        reply, code, msg = call(data, timeout=10), OK, "ok"
    except grpc.RpcError as e:
        reply, code, msg = None, e.code(), e.details() or ""
    if not parses(method, data):
        assert code == GARBAGE and "is not a valid statestream.v1." in msg, (method, data, code, msg)
        assert "Traceback" not in msg and "<class" not in msg
    else:
        assert code in {OK, INVALID, NOT_FOUND, EXISTS, PRECOND}, (method, data, code, msg)
        if code == OK and method == "OpenSession":
            world.stub.CloseSession(pb.CloseSessionRequest(session_id=pb.OpenSessionResponse.FromString(reply)
                                                           .session_id))
    world.check()


@pytest.mark.parametrize("method", ["StreamSteps", "StreamFrames"])
def test_garbage_on_a_stream_is_an_in_band_error_and_the_stream_goes_on(world, method):
    """A message that does not decode gets an in-band INVALID_ARGUMENT; the messages around it are applied."""
    good = (pb.StreamStepsRequest(step=pb.StepRequest(session_id=CANARY, input=[0.1, 0.2, 0.3])) if method ==
            "StreamSteps" else pb.StreamFramesRequest(frame=pb.StepFrameRequest(model="demo", session_ids=[CANARY],
                                                                                 inputs=[0.1, 0.2, 0.3])))
    call = world.channel.stream_stream(SERVICE + method, request_serializer=None, response_deserializer=None)
    replies = [(pb.StreamStepsResponse if method == "StreamSteps" else pb.StreamFramesResponse).FromString(r)
               for r in call(iter([good.SerializeToString(), b"\x0a\x02\xff\xfe\x07", good.SerializeToString()]),
                             timeout=10)]
    assert [r.HasField("error") for r in replies] == [False, True, False]
    assert replies[1].error.code == GARBAGE.value[0] and "is not a valid statestream.v1." in replies[1].error.message
    world.canary_steps += 2
    world.check()


def test_oversized_message_is_resource_exhausted(world):
    """Over --max-message-bytes grpc refuses the message before the service sees it."""
    n = MAX_MESSAGE // 4 + 10
    code, msg, _ = world.call("Step", pb.StepRequest(session_id=sorted(BYSTANDERS)[0], input=[0.5] * (n - n % F)))
    assert code == C.RESOURCE_EXHAUSTED and f"vs. {MAX_MESSAGE}" in msg, (code, msg)
    call = world.channel.unary_unary(SERVICE + "Step", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x07" * (MAX_MESSAGE + 1), timeout=10)
    assert info.value.code() == C.RESOURCE_EXHAUSTED
    world.check()


def test_bystanders_still_step_exactly_like_their_twins(world):
    """Hidden state (the next accepted sequence number) survived too: each bystander steps like a copy of it."""
    world.check()
    x = [0.25, -0.5, 0.75]
    for i, sid in enumerate(sorted(BYSTANDERS)):
        st_ = pb.GetStateResponse.FromString(world.snapshot[sid]).state
        twin = f"twin-{i}"
        world.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=twin, initial_states=st_.layers))
        world.stub.SetState(pb.SetStateRequest(session_id=twin, layers=st_.layers, step_count=st_.step_count,
                                               last_sequence_number=st_.last_sequence_number))
        a, b = (world.stub.Step(pb.StepRequest(session_id=s, input=x, return_state=True,
                                               sequence_number=st_.last_sequence_number + 1)) for s in (sid, twin))
        assert (a.step_count, a.sequence_number) == (st_.step_count + 1, st_.last_sequence_number + 1)
        b.session_id = sid
        assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
        world.stub.CloseSession(pb.CloseSessionRequest(session_id=twin))
