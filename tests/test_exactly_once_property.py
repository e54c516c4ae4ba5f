"""Property: random waves of concurrent steps, retries, cancellations, SetState and closes over a few
sessions of a live server; every session ends equal to a reference that applied each sequence number once."""

from __future__ import annotations

import itertools

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import Reference

from statestream.v1 import statestream_pb2 as pb

pytestmark = pytest.mark.slow

N_SESSIONS = 3
_ids = itertools.count()


def x_of(sid: str, seq: int) -> np.ndarray:
    """The input of step `seq` of a session: fixed, so a retry sends the same bytes."""
    return np.random.default_rng([hash(sid) & 0xFFFF, seq]).uniform(-1, 1, 3).astype(np.float32)


class Model:
    """The client's view of one session plus the reference it must match."""

    def __init__(self, sid: str):
        self.sid = sid
        self.reset()

    def reset(self):
        self.acked = 0            # last sequence number whose response we hold
        self.unknown = False      # step acked+1 was sent and its outcome is unknown (cancelled)
        self.replayable = True    # the server still records the response of `acked`
        self.ref = Reference()
        self.outputs = {}         # seq -> reference output
        self.states = {0: {k: v.copy() for k, v in self.ref.states.items()}}

    def expected(self, seq: int) -> np.ndarray:
        while len(self.outputs) < seq:
            k = len(self.outputs) + 1
            self.outputs[k] = self.ref.step(x_of(self.sid, k)[None])[0]
            self.states[k] = {n: v.copy() for n, v in self.ref.states.items()}
        return self.outputs[seq]

    def step_request(self, seq: int) -> pb.StepRequest:
        return pb.StepRequest(session_id=self.sid, input=x_of(self.sid, seq), sequence_number=seq)


OPS = st.sampled_from(["step", "step", "step", "retry", "cancel", "set_state", "close"])
WAVE = st.lists(st.tuples(OPS, st.integers(0, N_SESSIONS - 1)), min_size=1, max_size=6)


@pytest.fixture(scope="module", params=["sqlite", "memory-batched"])
def server(request, tmp_path_factory):
    from inproc import InProcessServer
    if request.param == "sqlite":
        srv = InProcessServer(state_store=f"sqlite:{tmp_path_factory.mktemp('prop') / 'state.db'}")
    else:
        srv = InProcessServer(max_queue_delay=0.002)
    yield srv
    srv.stop()


def _code(fut):
    try:
        return fut.result(), None
    except grpc.RpcError as e:
        return None, e.code()


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(waves=st.lists(WAVE, min_size=1, max_size=8), cancel_after=st.floats(0.0005, 0.01))
def test_every_sequence_number_applies_exactly_once(server, waves, cancel_after):
    stub = server.stub
    run = next(_ids)
    models = [Model(f"prop-{run}-{i}") for i in range(N_SESSIONS)]
    for m in models:
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=m.sid))
    for wave in waves:
        busy = {i for op, i in wave if op in ("step", "retry", "cancel")}
        calls = []
        for op, i in wave:
            m = models[i]
            if op == "step":
                calls.append((op, m, m.acked + 1, stub.Step.future(m.step_request(m.acked + 1), timeout=10)))
            elif op == "cancel":
                calls.append((op, m, m.acked + 1, stub.Step.future(m.step_request(m.acked + 1), timeout=cancel_after)))
            elif op == "retry" and m.acked:
                calls.append((op, m, m.acked, stub.Step.future(m.step_request(m.acked), timeout=10)))
            elif op == "set_state" and i not in busy and not m.unknown:
                state = {n: v[0] for n, v in m.states[m.acked].items()}
                layers = {}
                for name, v in state.items():  # state_in.<layer>.<h|c>
                    _, layer, kind = name.split(".")
                    layers.setdefault(layer, pb.LayerState(layer=layer))
                    getattr(layers[layer], kind).extend(v.tolist())
                req = pb.SetStateRequest(session_id=m.sid, layers=list(layers.values()), step_count=m.acked,
                                         last_sequence_number=m.acked)
                calls.append((op, m, m.acked, stub.SetState.future(req, timeout=10)))
                busy.add(i)  # nothing else on this session in this wave
            elif op == "close" and i not in busy and not m.unknown:
                calls.append((op, m, 0, stub.CloseSession.future(pb.CloseSessionRequest(session_id=m.sid), timeout=10)))
                busy.add(i)
        acked_now = {}
        for op, m, seq, fut in calls:
            reply, code = _code(fut)
            if op in ("step", "cancel"):
                if reply is not None:
                    np.testing.assert_allclose(reply.output, m.expected(seq), atol=1e-5)
                    assert reply.sequence_number == seq and reply.step_count == seq
                    acked_now[m.sid] = seq
                elif op == "cancel" and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                                                 grpc.StatusCode.UNAVAILABLE):  # its write bounded by its deadline
                    m.unknown = True
                else:
                    raise AssertionError(f"{op} {m.sid} seq {seq}: {code}")
            elif op == "retry":
                if reply is not None:
                    assert reply.replayed, "a retry of an acknowledged step must not step again"
                    np.testing.assert_allclose(reply.output, m.expected(seq), atol=1e-5)
                else:  # a later step applied meanwhile (a concurrent or cancelled one), or SetState forgot it
                    assert code == grpc.StatusCode.FAILED_PRECONDITION, code
                    assert m.unknown or m.sid in acked_now or not m.replayable or any(
                        o == "step" and mm is m for o, mm, _, _ in calls), code
            elif op == "set_state":
                if reply is not None:
                    m.replayable = False
                else:  # a cancelled step of an earlier wave may still be in flight on the server
                    assert code == grpc.StatusCode.FAILED_PRECONDITION, code
            elif op == "close":
                assert reply is not None, code
                stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=m.sid))
                m.reset()
        for m in models:
            if m.sid in acked_now:
                m.acked, m.unknown, m.replayable = acked_now[m.sid], False, True
    for m in models:
        if m.unknown:  # resume: the same number again; applied once either way
            reply = stub.Step(m.step_request(m.acked + 1), timeout=10)
            np.testing.assert_allclose(reply.output, m.expected(m.acked + 1), atol=1e-5)
            m.acked += 1
        state = stub.GetState(pb.GetStateRequest(session_id=m.sid)).state
        assert state.step_count == m.acked and state.last_sequence_number == m.acked
        m.expected(m.acked) if m.acked else None
        for layer in state.layers:
            np.testing.assert_allclose(layer.h, m.states[m.acked][f"state_in.{layer.layer}.h"][0], atol=1e-5)
            if layer.c:
                np.testing.assert_allclose(layer.c, m.states[m.acked][f"state_in.{layer.layer}.c"][0], atol=1e-5)
        stub.CloseSession(pb.CloseSessionRequest(session_id=m.sid))
