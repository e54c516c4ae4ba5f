"""Regressions found by the bad-input and tenant tests: refused steps open nothing, huge strings and counts, tenants in
sqlite."""

from __future__ import annotations

import grpc
import pytest
from inproc import InProcessServer
from serverproc import DEMO_MODEL, ServerProcess

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

C = grpc.StatusCode
X = [0.1, 0.2, 0.3]
ALICE, BOB = "tok-alice", "tok-bob"


def md(token):
    return (("authorization", f"Bearer {token}"),) if token else ()


def call(stub, method, req, token=None):
    try:
        return C.OK, "", getattr(stub, method)(req, metadata=md(token), timeout=5)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


@pytest.fixture(scope="module")
def stub():
    with InProcessServer.from_args(DEMO_MODEL, "--max-timesteps", "32") as srv, grpc.insecure_channel(srv.target) as ch:
        yield pb_grpc.StateStreamServiceStub(ch)


# -- B1: a refused open_if_missing step leaves the session it opened ---------------------------------------

@pytest.mark.parametrize("bad", ["size", "nan", "too_long", "seq<=0", "seq gap"])
def test_refused_open_if_missing_step_opens_nothing(stub, bad):
    sid = f"b1-step-{bad}"
    req = pb.StepRequest(session_id=sid, model="demo", open_if_missing=True, input=X)
    if bad == "size":
        req.input[:] = [1.0, 2.0]
    elif bad == "nan":
        req.input[1] = float("nan")
    elif bad == "too_long":
        req.input[:] = X * 33
    elif bad == "seq<=0":
        req.sequence_number = -1
    else:
        req.sequence_number = 7
    code, msg, _ = call(stub, "Step", req)
    assert code in (C.INVALID_ARGUMENT, C.FAILED_PRECONDITION), (code, msg)
    code, msg, _ = call(stub, "GetState", pb.GetStateRequest(session_id=sid))
    assert code == C.NOT_FOUND, f"the refused step left session {sid!r} open"


@pytest.mark.parametrize("seq", [-1, 7])
def test_refused_open_if_missing_frame_entry_opens_nothing(stub, seq):
    sid = f"b1-frame-{seq}"
    code, msg, reply = call(stub, "StepFrame", pb.StepFrameRequest(model="demo", session_ids=[sid], inputs=X,
                                                                   open_if_missing=True, sequence_numbers=[seq]))
    assert code == C.OK and len(reply.errors) == 1
    code, msg, _ = call(stub, "GetState", pb.GetStateRequest(session_id=sid))
    assert code == C.NOT_FOUND, f"the refused frame entry left session {sid!r} open"


# -- B2: client strings echoed whole into status messages overflow grpc's metadata limit --------------------

@pytest.mark.parametrize("n", [9_000, 20_000, 200_000])
@pytest.mark.parametrize("method", ["GetState", "Step", "CloseSession", "SetState", "GetModel", "OpenSession.model",
                                    "Step.model"])
def test_huge_ids_and_names_are_not_found_not_resource_exhausted(stub, method, n):
    big = "x" * n
    req = {"GetState": pb.GetStateRequest(session_id=big), "Step": pb.StepRequest(session_id=big, input=X),
           "CloseSession": pb.CloseSessionRequest(session_id=big), "SetState": pb.SetStateRequest(session_id=big),
           "GetModel": pb.GetModelRequest(name=big), "OpenSession.model": pb.OpenSessionRequest(model=big),
           "Step.model": pb.StepRequest(session_id="b2", model=big, open_if_missing=True, input=X)}[method]
    code, msg, _ = call(stub, method.split(".")[0], req)
    assert code == C.NOT_FOUND, (code, msg[:200])
    assert len(msg) < 1000


# -- B3: step_count past 2^64 (memory) / 2^63 (sqlite) applies a step that answers "nothing was applied" ------

@pytest.mark.parametrize("big", [2**63 - 1, 2**63, 2**64 - 1])
def test_huge_step_count_never_wedges_or_half_applies(stub, big):
    """SetState takes any uint64 step_count; the next step must not lie, hang, or wedge the session."""
    sid = f"b3-{big}"
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
    layers = stub.GetState(pb.GetStateRequest(session_id=sid)).state.layers
    code, msg, _ = call(stub, "SetState", pb.SetStateRequest(session_id=sid, layers=layers, step_count=big))
    if code == C.OK:
        before = stub.GetState(pb.GetStateRequest(session_id=sid)).SerializeToString(deterministic=True)
        code, msg, _ = call(stub, "Step", pb.StepRequest(session_id=sid, input=X))
        assert code != C.DEADLINE_EXCEEDED, "the step hung"
        got, gmsg, after = call(stub, "GetState", pb.GetStateRequest(session_id=sid))
        assert got == C.OK, f"GetState is {got.name} ({gmsg}) after the step answered {code.name}: {msg}"
        if code != C.OK:
            assert after.SerializeToString(deterministic=True) == before, f"{code.name} ({msg}) but applied"
    else:
        assert code == C.INVALID_ARGUMENT, (code, msg)
    # the session is not wedged: it can be reset and stepped
    code, msg, _ = call(stub, "SetState", pb.SetStateRequest(session_id=sid, layers=layers, step_count=0))
    assert code == C.OK, (code, msg)
    code, msg, reply = call(stub, "Step", pb.StepRequest(session_id=sid, input=X))
    assert code == C.OK and reply.step_count == 1, (code, msg)


def test_sqlite_set_state_step_count_over_int64(tmp_path):
    with InProcessServer.from_args(DEMO_MODEL, "--state-store", f"sqlite:{tmp_path}/s.db") as srv, \
            grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="b3s"))
        layers = stub.GetState(pb.GetStateRequest(session_id="b3s")).state.layers
        code, msg, _ = call(stub, "SetState", pb.SetStateRequest(session_id="b3s", layers=layers, step_count=2**63))
        count = stub.GetState(pb.GetStateRequest(session_id="b3s")).state.step_count
        assert code == C.INVALID_ARGUMENT, (code, msg)
        assert count == 0, f"SetState answered {code.name} ({msg}) but the in-memory step_count is {count}"


# -- B4: per-owner session keys (96ae044) stop at the SessionTable: the sqlite store still keys rows by id alone

def test_same_id_in_two_tenants_survives_a_sqlite_restart(tmp_path):
    """With per-tenant ids, the durable store must key rows by (owner, id) too."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ALICE}\n{BOB}\n")
    flags = ("--auth-token-file", str(tokens), "--state-store", f"sqlite:{tmp_path}/s.db")
    states = {}
    with ServerProcess(DEMO_MODEL, *flags) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        for token, steps in ((ALICE, 1), (BOB, 3)):
            code, msg, _ = call(stub, "OpenSession", pb.OpenSessionRequest(model="demo", session_id="shared"), token)
            assert code == C.OK, (token, code, msg)
            for _ in range(steps):
                stub.Step(pb.StepRequest(session_id="shared", input=X), metadata=md(token))
            states[token] = stub.GetState(pb.GetStateRequest(session_id="shared"), metadata=md(token))
        assert srv.terminate() == 0
    with ServerProcess(DEMO_MODEL, *flags) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        for token in (ALICE, BOB):
            assert stub.GetState(pb.GetStateRequest(session_id="shared"), metadata=md(token)) == states[token]
        stub.CloseSession(pb.CloseSessionRequest(session_id="shared"), metadata=md(ALICE))
        assert stub.GetState(pb.GetStateRequest(session_id="shared"), metadata=md(BOB)) == states[BOB]
