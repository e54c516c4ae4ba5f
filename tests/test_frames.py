"""Frames: one message steps many sessions; per-entry errors; equal to per-session stepping. Metrics."""

from __future__ import annotations

import math
import re
import urllib.request

import grpc
import numpy as np
import pytest
from reference import Reference
from serverproc import DEMO_MODEL, ServerProcess

from statestream.v1 import statestream_pb2 as pb

F = 3


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO_MODEL, "--metrics-port", "-1", "--max-sessions", "5000") as srv:
        yield srv



def frame(ids, xs, **kw) -> pb.StepFrameRequest:
    return pb.StepFrameRequest(model="demo", session_ids=ids, inputs=np.asarray(xs, np.float32).ravel(), **kw)


def test_frames_of_1024_sessions_equal_per_session_reference(stub):
    n, T = 1024, 5
    ids = [f"dev-{i}" for i in range(n)]
    xs = np.random.default_rng(5).normal(size=(T, n, F)).astype(np.float32)
    ref = Reference(n)
    for t in range(T):
        r = stub.StepFrame(frame(ids, xs[t], open_if_missing=True, return_state=(t == T - 1)))
        assert not r.errors and r.rows == 1
        np.testing.assert_allclose(np.array(r.outputs).reshape(n, 1), ref.step(xs[t]), atol=1e-5)
        assert set(r.step_counts) == {t + 1}
    layer = {l.layer: l for l in r.states}
    np.testing.assert_allclose(np.array(layer["lstm2"].c).reshape(n, 16), ref.states["state_in.lstm2.c"], atol=1e-5)
    # the same sessions are reachable one by one
    one = stub.Step(pb.StepRequest(session_id="dev-17", input=[0, 0, 0]))
    assert one.step_count == T + 1


def test_frame_with_timesteps_and_return_sequences(stub):
    n, T = 8, 4
    ids = [f"seq-{i}" for i in range(n)]
    xs = np.random.default_rng(6).normal(size=(n, T, F)).astype(np.float32)
    r = stub.StepFrame(frame(ids, xs, timesteps=T, return_sequences=True, open_if_missing=True))
    assert not r.errors and r.rows == T
    ref = Reference(n)
    expected = np.stack([ref.step(xs[:, t]) for t in range(T)], axis=1)  # (n, T, 1)
    np.testing.assert_allclose(np.array(r.outputs).reshape(n, T, 1), expected, atol=1e-5)


def test_per_entry_errors_leave_other_entries_applied(stub):
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="ok-a"))
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="ok-b"))
    xs = np.ones((4, F), np.float32)
    xs[2, 1] = math.nan
    r = stub.StepFrame(frame(["ok-a", "missing", "ok-b", "ok-a"], xs))
    errs = {e.index: (e.error.code, e.error.message) for e in r.errors}
    assert errs[1][0] == grpc.StatusCode.NOT_FOUND.value[0] and "'missing'" in errs[1][1]
    assert errs[2][0] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "NaN" in errs[2][1]
    assert errs[3][0] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "twice" in errs[3][1]
    assert 0 not in errs
    assert list(r.step_counts) == [1, 0, 0, 0]
    assert stub.GetState(pb.GetStateRequest(session_id="ok-b")).state.step_count == 0  # untouched


def test_frame_level_errors(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=["a", "b"], inputs=[1, 2, 3]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "N x T x F = 2 x 1 x 3 = 6" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.StepFrame(pb.StepFrameRequest(model="nope", session_ids=["a"], inputs=[1, 2, 3]))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_frames_in_order_with_in_band_errors(stub):
    ids = ["sf-0", "sf-1"]
    good = pb.StreamFramesRequest(frame=frame(ids, np.ones((2, F)), open_if_missing=True))
    bad = pb.StreamFramesRequest(frame=pb.StepFrameRequest(model="demo", session_ids=ids, inputs=[1.0]))
    replies = list(stub.StreamFrames(iter([good, bad, good, good])))
    assert [r.HasField("error") for r in replies] == [False, True, False, False]
    assert replies[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [list(r.frame.step_counts) for r in replies if r.HasField("frame")] == [[1, 1], [2, 2], [3, 3]]


def test_prometheus_metrics(server, stub):
    stub.Step(pb.StepRequest(session_id="m-1", model="demo", open_if_missing=True, input=[1, 2, 3]))
    with pytest.raises(grpc.RpcError):
        stub.Step(pb.StepRequest(session_id="m-1", input=[1, 2]))
    port = int(re.search(r"metrics on :(\d+)", server.output()).group(1))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(r'statestream_requests_total\{code="OK",method="Step"\} [1-9]', text)
    assert re.search(r'statestream_requests_total\{code="INVALID_ARGUMENT",method="Step"\} [1-9]', text)
    assert re.search(r'statestream_steps_total\{model="demo",version="1"\} [1-9]', text)
    assert re.search(r"statestream_active_sessions [1-9]", text)  # read from the table when scraped
    for name in ("statestream_batch_size_bucket", "statestream_queue_seconds_bucket",
                 "statestream_compute_seconds_bucket", "statestream_active_sessions", "statestream_evictions_total"):
        assert name in text
    assert "m-1" not in text  # no session ids in labels


def test_frame_with_sequence_numbers_is_exactly_once(stub):
    ids = ["fx-0", "fx-1", "fx-2"]
    xs = np.random.default_rng(9).normal(size=(3, F)).astype(np.float32)
    first = stub.StepFrame(frame(ids, xs, open_if_missing=True, sequence_numbers=[1, 1, 1]))
    retry = stub.StepFrame(frame(ids, xs, open_if_missing=True, sequence_numbers=[1, 1, 1]))
    assert not first.errors and not retry.errors
    assert list(retry.outputs) == list(first.outputs) and list(retry.step_counts) == [1, 1, 1]
    gap = stub.StepFrame(frame(ids, xs, sequence_numbers=[2, 5, 2]))
    assert [e.index for e in gap.errors] == [1]
    assert gap.errors[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "expected 2" in gap.errors[0].error.message
    assert list(gap.step_counts) == [2, 0, 2]
