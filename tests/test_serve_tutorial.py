"""The tutorial's models served one timestep per call equal Keras on the whole sequence (1e-5)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from inproc import InProcessServer
from tutorial import NAMES, STACK, TUTORIAL_INPUT, export_all, keras_outputs, tutorial_models

from statestream.client import Client
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

TOL = 1e-5
X = TUTORIAL_INPUT[0]  # (3, 1)


@pytest.fixture(scope="module")
def models():
    return tutorial_models()


@pytest.fixture(scope="module")
def reference(models):
    return keras_outputs(models)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    paths = export_all(tmp_path_factory.mktemp("tutorial"))
    with InProcessServer.from_args(list(paths.values())) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with Client(server.target) as c:
        yield c


def keras_last_h_and_c(name: str, ref: list[np.ndarray]):
    """(every-step output (3, units) or None, last output, state_h, state_c) as Keras gives them."""
    if name == "lstm_default":
        return None, ref[0][0], None, None
    if name == "lstm_sequences":
        return ref[0][0], ref[0][0][-1], None, None
    if name == "lstm_state":
        out, h, c = ref
        np.testing.assert_array_equal(out, h)  # the tutorial's point: [h, h, c]
        return None, out[0], h[0], c[0]
    if name == "lstm_both":
        seq, h, c = ref
        np.testing.assert_allclose(seq[0, -1], h[0], atol=1e-7)  # last of the sequence is state_h
        return seq[0], seq[0, -1], h[0], c[0]
    return None, ref[0][0], None, None


@pytest.mark.parametrize("name", NAMES)
def test_one_timestep_per_call_equals_keras(client, reference, name):
    every, last, h, c = keras_last_h_and_c(name, reference[name])
    with client.session(name) as s:
        outs, states = [], None
        for t in range(3):
            y, states = s.step(X[t], return_state=True)
            outs.append(y)
    np.testing.assert_allclose(outs[-1], last, atol=TOL)
    if every is not None:
        np.testing.assert_allclose(np.stack(outs), every, atol=TOL)
    if h is not None:
        np.testing.assert_allclose(states["lstm"]["h"], h, atol=TOL)
        np.testing.assert_allclose(states["lstm"]["c"], c, atol=TOL)
        np.testing.assert_allclose(states["lstm"]["h"], outs[-1], atol=1e-7)
    if name == STACK:
        assert set(states) == {"lstm1", "lstm2"}
        np.testing.assert_allclose(states["lstm2"]["h"], last, atol=TOL)
        assert states["lstm1"]["c"].shape == (2,)


@pytest.mark.parametrize("name", NAMES)
def test_multi_timestep_request_with_return_sequences(client, reference, name):
    every, last, h, c = keras_last_h_and_c(name, reference[name])
    with client.session(name) as s:
        seq, states = s.step(X, return_sequences=True, return_state=True)
        assert seq.shape == (3, 2 if name == STACK else 1)
        np.testing.assert_allclose(seq[-1], last, atol=TOL)
        if every is not None:
            np.testing.assert_allclose(seq, every, atol=TOL)
        if h is not None:
            np.testing.assert_allclose(states["lstm"]["h"], h, atol=TOL)
            np.testing.assert_allclose(states["lstm"]["c"], c, atol=TOL)
        assert s.get_state().step_count == 3
    with client.session(name) as s:  # default: only the last timestep, like Keras
        np.testing.assert_allclose(s.step(X), last, atol=TOL)


def test_stream_equals_keras(client, reference):
    every, _, h, c = keras_last_h_and_c("lstm_both", reference["lstm_both"])
    with client.session("lstm_both") as s:
        results = list(s.stream(list(X), return_state=True))
    np.testing.assert_allclose(np.stack([y for y, _ in results]), every, atol=TOL)
    np.testing.assert_allclose(results[-1][1]["lstm"]["c"], c, atol=TOL)


def test_open_with_initial_state_equals_keras_initial_state(client, models):
    """Warm start: OpenSession(initial_states) == Keras LSTM(initial_state=...)."""
    import keras

    layer = models["lstm_both"].get_layer("lstm")
    h0, c0 = np.array([[0.5]], np.float32), np.array([[-0.25]], np.float32)
    seq, h, c = layer(TUTORIAL_INPUT, initial_state=[h0, c0])
    with client.session("lstm_both", initial_states={"lstm": {"h": h0[0], "c": c0[0]}}) as s:
        y, st = s.step(X, return_sequences=True, return_state=True)
    np.testing.assert_allclose(y, keras.ops.convert_to_numpy(seq)[0], atol=TOL)
    np.testing.assert_allclose(st["lstm"]["c"], keras.ops.convert_to_numpy(c)[0], atol=TOL)


def test_1000_sessions_interleaved_each_equals_its_keras_reference(server, models):
    """1000 sessions stepped concurrently over one channel; no state leaks between them."""
    n, T = 1000, 4
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, size=(n, T, 1)).astype(np.float32)
    l1, l2 = models[STACK].get_layer("lstm1"), models[STACK].get_layer("lstm2")  # the model's T is fixed at 3
    expected = np.stack([np.asarray(l2(l1(xs[:, : t + 1]))) for t in range(T)], axis=1)  # (n, T, 2)

    async def run() -> np.ndarray:
        got = np.zeros((n, T, 2), np.float32)
        async with grpc.aio.insecure_channel(server.target) as ch:
            stub = pb_grpc.StateStreamServiceStub(ch)

            async def one(i: int):
                sid = f"s{i}"
                await stub.OpenSession(pb.OpenSessionRequest(model=STACK, session_id=sid), timeout=30)
                for t in range(T):
                    r = await stub.Step(pb.StepRequest(session_id=sid, input=xs[i, t]), timeout=30)
                    got[i, t] = r.output
                    await asyncio.sleep(0)  # let other sessions interleave

            await asyncio.gather(*(one(i) for i in range(n)))
        return got

    got = asyncio.run(run())
    np.testing.assert_allclose(got, expected, atol=TOL)
