"""Raw float32 tensor bytes: bit-identical to repeated floats on Step, StepFrame, GetState/SetState; bad sizes refused."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from inproc import InProcessServer
from serverproc import DEMO_MODEL

from statestream.client import Client
from statestream.v1 import statestream_pb2 as pb

F = 3


def raw(x) -> bytes:
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def bits(values) -> list[int]:
    return np.asarray(values, dtype=np.float32).ravel().view(np.uint32).tolist()


def raw_bits(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<u4").tolist()


@pytest.fixture(scope="module")
def server():
    with InProcessServer.from_args(DEMO_MODEL, "--metrics-port", "-1", "--max-sessions", "5000") as srv:
        yield srv



def refused(call, request) -> str:
    with pytest.raises(grpc.RpcError) as e:
        call(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    return e.value.details()


def test_step_raw_and_repeated_are_bit_identical(stub):
    xs = np.random.default_rng(1).normal(size=(6, 2, F)).astype(np.float32)
    for name in ("rep", "raw"):
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=f"bits-{name}"))
    for x in xs:
        a = stub.Step(pb.StepRequest(session_id="bits-rep", input=x.ravel(), return_sequences=True, return_state=True))
        b = stub.Step(pb.StepRequest(session_id="bits-raw", input_raw=raw(x), raw_output=True, return_sequences=True,
                                     return_state=True))
        assert not b.output and not a.output_raw
        assert raw_bits(b.output_raw) == bits(a.output) and a.rows == b.rows == 2
        for la, lb in zip(a.states, b.states):
            assert (raw_bits(lb.h_raw), raw_bits(lb.c_raw)) == (bits(la.h), bits(la.c)) and not lb.h
    ga = stub.GetState(pb.GetStateRequest(session_id="bits-rep")).state
    gb = stub.GetState(pb.GetStateRequest(session_id="bits-raw", raw_output=True)).state
    assert [raw_bits(l.h_raw) + raw_bits(l.c_raw) for l in gb.layers] == [bits(l.h) + bits(l.c) for l in ga.layers]
    # raw input with float output, and the other way round
    c = stub.Step(pb.StepRequest(session_id="bits-rep", input_raw=raw(xs[0])))
    d = stub.Step(pb.StepRequest(session_id="bits-raw", input=xs[0].ravel(), raw_output=True))
    assert raw_bits(d.output_raw) == bits(c.output)


def test_set_state_accepts_raw_layers(stub):
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="set-raw"))
    h = np.arange(16, dtype=np.float32) / 7
    layers = [pb.LayerState(layer=n, h_raw=raw(h), c_raw=raw(-h)) for n in ("lstm1", "lstm2")]
    st = stub.SetState(pb.SetStateRequest(session_id="set-raw", layers=layers)).state
    assert all(bits(l.h) == bits(h) and bits(l.c) == bits(-h) for l in st.layers)
    bad = [pb.LayerState(layer="lstm1", h_raw=raw(h[:15]), c_raw=raw(h)), layers[1]]
    refusal = refused(stub.SetState, pb.SetStateRequest(session_id="set-raw", layers=bad))
    assert "15 values (60 bytes); expected 16" in refusal
    both = [pb.LayerState(layer="lstm1", h=h, h_raw=raw(h), c_raw=raw(h)), layers[1]]
    assert "exactly one" in refused(stub.SetState, pb.SetStateRequest(session_id="set-raw", layers=both))


def test_frame_raw_and_repeated_are_bit_identical(stub):
    n, T = 300, 2
    xs = np.random.default_rng(2).normal(size=(n, T, F)).astype(np.float32)
    common = dict(model="demo", timesteps=T, return_sequences=True, return_state=True, open_if_missing=True)
    a = stub.StepFrame(pb.StepFrameRequest(session_ids=[f"fr-{i}" for i in range(n)], inputs=xs.ravel(), **common))
    b = stub.StepFrame(pb.StepFrameRequest(session_ids=[f"fb-{i}" for i in range(n)], inputs_raw=raw(xs),
                                           raw_output=True, **common))
    assert not a.errors and not b.errors and not b.outputs and a.rows == b.rows == T
    assert raw_bits(b.outputs_raw) == bits(a.outputs)
    assert list(a.step_counts) == list(b.step_counts) == [T] * n
    for la, lb in zip(a.states, b.states):
        assert (raw_bits(lb.h_raw), raw_bits(lb.c_raw)) == (bits(la.h), bits(la.c))


def test_bad_raw_sizes_are_refused_with_expected_and_got(stub):
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="bad-raw"))
    msg = refused(stub.Step, pb.StepRequest(session_id="bad-raw", input_raw=b"\0" * 10))
    assert "10 bytes" in msg and "multiple of 12" in msg
    msg = refused(stub.Step, pb.StepRequest(session_id="bad-raw", input_raw=b"\0" * 8))
    assert "8 bytes" in msg
    assert "0 values" in refused(stub.Step, pb.StepRequest(session_id="bad-raw", input_raw=b""))
    msg = refused(stub.Step, pb.StepRequest(session_id="bad-raw", input=[1, 2, 3], input_raw=raw([1, 2, 3])))
    assert "exactly one" in msg and "3 floats" in msg and "12 bytes" in msg
    nan = refused(stub.Step, pb.StepRequest(session_id="bad-raw", input_raw=raw([0, np.nan, 0])))
    assert "NaN" in nan
    ids = ["bad-raw", "bad-raw-2"]
    msg = refused(stub.StepFrame, pb.StepFrameRequest(model="demo", session_ids=ids, inputs_raw=b"\0" * 20,
                                                      open_if_missing=True))
    assert "20 bytes" in msg and "2 x 1 x 3 x 4 = 24 bytes" in msg
    msg = refused(stub.StepFrame, pb.StepFrameRequest(model="demo", session_ids=ids, inputs_raw=raw(np.zeros(6)),
                                                      inputs=np.zeros(6), open_if_missing=True))
    assert "exactly one" in msg
    # nothing was applied by any refused request
    assert stub.GetState(pb.GetStateRequest(session_id="bad-raw")).state.step_count == 0


def test_python_client_uses_raw_and_matches_repeated(server, stub):
    xs = np.random.default_rng(3).normal(size=(5, F)).astype(np.float32)
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="cli-ref"))
    ref = [stub.Step(pb.StepRequest(session_id="cli-ref", input=x)).output for x in xs]
    with Client(server.target) as client, client.session("demo") as s:
        req = s.request(xs[0], False, False, None)
        assert req.input_raw and not req.input and req.raw_output
        got = [s.step(x) for x in xs]
        assert [bits(g) for g in got] == [bits(r) for r in ref]
        st = s.get_state()
        s.set_state(st)  # raw layers round-trip
        assert bits(np.concatenate([v for l in s.get_state().states.values() for v in l.values()])) == \
            bits(np.concatenate([v for l in st.states.values() for v in l.values()]))
