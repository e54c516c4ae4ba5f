"""Every status code of DESIGN.md, triggered for real against a live server process."""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest
from inproc import InProcessServer
from onnx_fixtures import fragile_model
from serverproc import DEMO_MODEL, ServerProcess

from statestream.client import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

F = 3  # the demo model's features


@pytest.fixture(scope="module")
def server():
    with InProcessServer.from_args(DEMO_MODEL, "--max-sessions", "50", "--idle-timeout", "30", "--max-timesteps", "64",
                       "--sweep-interval", "0.05") as srv:
        yield srv


@pytest.fixture()
def client(server):
    with Client(server.target) as c:
        yield c


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(Exception) as info:
        fn()
    return info.value.code, info.value.message


def test_invalid_argument_wrong_size_names_expected_and_got(client):
    with client.session("demo") as s:
        with pytest.raises(ValueError, match=r"\(F,\) = \(3,\)"):
            s.step(np.ones(5))  # the client refuses it before sending; the server's own check, on the wire:
        req = pb.StepRequest(session_id=s.id, input_raw=np.ones(5, "<f4").tobytes())
        code, msg = code_of(lambda: client.call("Step", req, session_id=s.id))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "5 values" in msg and "T x 3" in msg and "'demo'" in msg
        assert s.get_state().step_count == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_invalid_argument_nan_inf(client, bad):
    with client.session("demo") as s:
        s.step(np.ones(F))
        before = s.get_state()
        with pytest.raises(InvalidArgument, match="NaN and Inf"):
            s.step([0.1, bad, 0.3])
        after = s.get_state()
        assert after.step_count == before.step_count == 1
        for layer, st in before.states.items():
            np.testing.assert_array_equal(st["h"], after.states[layer]["h"])


def test_invalid_argument_too_many_timesteps(client):
    with client.session("demo") as s:
        with pytest.raises(InvalidArgument, match="T=65.*limit is 64"):
            s.step(np.ones((65, F)))


def test_invalid_argument_bad_fields(client):
    with client.session("demo") as s:
        with pytest.raises(InvalidArgument, match="sequence_number must be >= 1"):
            s.step(np.ones(F), sequence_number=-3)
        state = s.get_state()
        layer = next(iter(state.states))
        state.states[layer]["h"] = state.states[layer]["h"][:-1]
        with pytest.raises(InvalidArgument, match=f"layer '{layer}' h(_raw)? has 15 values.*; expected 16"):
            s.set_state(state)
        with pytest.raises(InvalidArgument, match="must name every layer"):
            s.set_state({"nope": {"h": np.zeros(16)}})
    with pytest.raises(InvalidArgument, match="128"):
        client.session("demo", "x" * 200)
    with pytest.raises(InvalidArgument, match="idle_timeout"):
        client.session("demo", idle_timeout=-1)


def test_not_found_unknown_model_and_session(client):
    code, msg = code_of(lambda: client.model("nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in msg and "demo" in msg
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        client.session("nope")
    ghost = client.attach("no-such-session", "demo")
    with pytest.raises(NotFound, match="unknown session 'no-such-session'"):
        ghost.step(np.ones(F))


def test_not_found_expired_says_expired(client):
    s = client.session("demo", "short-lived", idle_timeout=0.2)
    s.step(np.ones(F))
    time.sleep(0.6)
    with pytest.raises(NotFound, match="'short-lived' expired after 0.2 s idle"):
        s.step(np.ones(F))
    with pytest.raises(NotFound, match="expired"):
        s.get_state()


def test_already_exists(client):
    with client.session("demo", "twice"):
        with pytest.raises(AlreadyExists, match="'twice' is already open"):
            client.session("demo", "twice")


def test_failed_precondition_gap_and_stale_name_expected(client):
    with client.session("demo") as s:
        s.step(np.ones(F), sequence_number=1)
        s.step(np.ones(F), sequence_number=2)
        with pytest.raises(FailedPrecondition, match="sequence number 5 .*gap.*expected 3"):
            s.step(np.ones(F), sequence_number=5)
        with pytest.raises(FailedPrecondition, match="sequence number 1 is stale.*expected 3"):
            s.step(np.ones(F), sequence_number=1)
        assert s.get_state().step_count == 2


def test_resource_exhausted_session_limit(server):
    with Client(server.target) as c:
        opened = []
        try:
            with pytest.raises(ResourceExhausted, match="session limit reached: 50 .*--max-sessions"):
                for _ in range(51):
                    opened.append(c.session("demo"))
            assert len(opened) <= 50
        finally:
            for s in opened:
                s.close()
        with c.session("demo") as s:  # room again after closing
            s.step(np.ones(F))


def test_internal_runtime_failure_applies_nothing(tmp_path):
    path = tmp_path / "fragile.onnx"
    fragile_model(path)
    with InProcessServer.from_args(path) as srv, Client(srv.target) as c, c.session("fragile") as s:
        s.step(np.ones(F))
        with pytest.raises(Internal, match="failed to run.*nothing was applied") as info:
            s.step(np.ones((2, F)))  # this model's Reshape fails for T=2
        assert "Traceback" not in info.value.message
        assert s.get_state().step_count == 1
        s.step(np.ones(F))  # the session and the server carry on
        assert s.get_state().step_count == 2


def test_unavailable_while_draining_in_band_and_exit_zero():
    srv = ServerProcess(DEMO_MODEL, "--grace", "5").start()
    try:
        channel = grpc.insecure_channel(srv.target)
        stub = pb_grpc.StateStreamServiceStub(channel)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="d"))
        import queue
        q: queue.Queue = queue.Queue()

        def requests():
            while (item := q.get()) is not None:
                yield item

        replies = stub.StreamSteps(requests())
        step = pb.StreamStepsRequest(step=pb.StepRequest(session_id="d", input=[0.1, 0.2, 0.3]))
        q.put(step)
        assert next(replies).HasField("step")
        srv.proc.send_signal(15)
        deadline = time.monotonic() + 10
        while True:  # steps are answered until the signal is handled, then refused in-band
            q.put(step)
            reply = next(replies)
            if reply.HasField("error") or time.monotonic() > deadline:
                break
        assert reply.error.code == grpc.StatusCode.UNAVAILABLE.value[0], reply
        assert "draining" in reply.error.message
        q.put(None)
        assert list(replies) == []
        assert srv.proc.wait(20) == 0
        channel.close()
    finally:
        srv.kill()


def test_stream_survives_bad_messages_in_band(client):
    with client.session("demo") as s:
        stub = client.stub
        good = pb.StepRequest(session_id=s.id, input=[0.1, 0.2, 0.3])
        msgs = [good, pb.StepRequest(session_id=s.id, input=[1.0]), good,
                pb.StepRequest(session_id="ghost", input=[0.1, 0.2, 0.3]),
                pb.StepRequest(session_id=s.id, input=[0.1, math.nan, 0.3]), good]
        replies = list(stub.StreamSteps(pb.StreamStepsRequest(step=m) for m in msgs))
        assert len(replies) == len(msgs)
        codes = [r.error.code for r in replies]
        ok, inv, nf = 0, grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.NOT_FOUND.value[0]
        assert codes == [ok, inv, ok, nf, inv, ok]
        assert [r.step.step_count for r in replies if not r.error.code] == [1, 2, 3]
        assert replies[3].session_id == "ghost"


def test_exactly_once_retry_returns_recorded_response(client):
    with client.session("demo") as s:
        y1 = s.step([0.1, 0.2, 0.3], sequence_number=1)
        req = pb.StepRequest(session_id=s.id, input=[0.4, 0.5, 0.6], sequence_number=2, return_state=True)
        first = client.stub.Step(req)
        retry = client.stub.Step(req)
        assert retry.replayed and not first.replayed
        assert list(retry.output) == list(first.output)
        assert retry.step_count == first.step_count == 2
        assert [list(layer.h) for layer in retry.states] == [list(layer.h) for layer in first.states]
        assert s.get_state().step_count == 2
        assert s.get_state().last_sequence_number == 2
        y3 = s.step([0.7, 0.8, 0.9], sequence_number=3)
        assert y3.shape == y1.shape


def test_get_set_state_continues_bit_exactly_on_another_session(client):
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(8, F)).astype(np.float32)
    with client.session("demo") as a, client.session("demo") as b:
        for x in xs[:5]:
            a.step(x)
        saved = a.get_state()
        assert saved.step_count == 5
        restored = b.set_state(saved)
        assert restored.step_count == 5
        for x in xs[5:]:
            ya, yb = a.step(x, return_state=True), b.step(x, return_state=True)
            np.testing.assert_array_equal(ya[0], yb[0])
            for layer in ya[1]:
                np.testing.assert_array_equal(ya[1][layer]["h"], yb[1][layer]["h"])
                np.testing.assert_array_equal(ya[1][layer]["c"], yb[1][layer]["c"])
