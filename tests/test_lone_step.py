"""A lone step run at once in its caller (Batcher.step): no unit, the same semantics as a unit's run. Its answer and
counters, its metrics, one policy decision per step, a sequence start, and failures at each stage (nothing
applied, the numbers it took free, the session idle). In-process servers; failures injected on purpose."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest
from reference import stepped

from statestream.server.engine import batcher as batcher_module
from statestream.server.engine.sessions import Phase
from statestream.server.engine.types import APPLIED, StepRequest
from statestream.v1 import statestream_pb2 as pb

X = np.array([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6], [0.7, 0.8, -0.9]], dtype=np.float32)
KEY = ("demo", 1)


def step(srv, sid: str, x, seq: int | None = None) -> pb.StepResponse:
    req = pb.StepRequest(session_id=sid, input=np.asarray(x, np.float32).ravel(), return_state=True)
    if seq is not None:
        req.sequence_number = seq
    return srv.stub.Step(req)


def stats(srv):
    m = srv.run(lambda: srv.app.metrics.models[KEY])
    srv.run(m.fold)
    return m


def counters(srv, sid: str) -> tuple:
    s = srv.session(sid)
    return s.phase, s.step_count, s.last_seq, s.accepted_seq


@pytest.fixture
def units(monkeypatch):
    """Every Unit the batcher makes (a lone step that runs at once makes none)."""
    made = []

    class Counted(batcher_module.Unit):
        __slots__ = ()

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self)
    monkeypatch.setattr(batcher_module, "Unit", Counted)
    return made


def test_a_lone_step_runs_at_once_without_a_unit_and_counts_as_a_run_of_one(inproc, units):
    srv = inproc()
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    before = srv.run(lambda: srv.app.metrics.stats(KEY).executions)
    ref = stepped(X)
    for k in range(3):
        r = step(srv, "a", X[k], seq=k + 1)
        assert (r.step_count, r.sequence_number, r.replayed) == (k + 1, k + 1, False)
        np.testing.assert_allclose(r.output, ref[k], atol=1e-5)
    assert units == []
    assert counters(srv, "a") == (Phase.IDLE, 3, 3, 3)
    again = step(srv, "a", X[2], seq=3)  # a retry of the last step replays its recorded answer
    assert again.replayed and again.step_count == 3
    np.testing.assert_allclose(again.output, ref[2], atol=1e-5)
    assert list(again.states) == list(r.states)
    m = stats(srv)
    assert m.executions - before == 3 and m.success == 3 and m.failure == 0
    assert m.batch_size.counts[0] == 3  # three runs of one session (the bucket le=1)
    assert m.queue_seconds.counts[0] == 3  # none of them waited in the queue


def test_a_lone_step_decides_where_it_runs_once(inproc, monkeypatch):
    """The caller asks BatchPolicy.where once per step whether it runs at once, whether it does or is queued (a
    stream's probe counter moves once per step); a queued run's consumer then asks where the run goes."""
    srv = inproc()
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    policy = srv.app.batchers[KEY].policy
    asked = []
    real = policy.where

    def where(work, **kw):
        asked.append(("caller" if "durable" in kw else "consumer", real(work, **kw)))
        return asked[-1][1]
    monkeypatch.setattr(policy, "where", where)
    step(srv, "a", X[0])
    assert asked == [("caller", "caller")]
    monkeypatch.setattr(policy, "max_queue_delay", 0.001)  # the operator asked for batching: queued
    r = step(srv, "a", X[1])
    assert asked == [("caller", "caller"), ("caller", "loop"), ("consumer", "loop")] and r.step_count == 2
    np.testing.assert_allclose(r.output, stepped(X[:2])[1], atol=1e-5)


def test_a_sequence_start_run_at_once_starts_from_zero_states(inproc, units):
    """KServe's sequence start (StepRequest.reset) on a session that has stepped: zero states and step 0, its
    number 1 again, as part of this very step."""
    srv = inproc()
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    for k in range(2):
        step(srv, "a", X[k], seq=k + 1)
    reply = srv.call(srv.app.engine.step(StepRequest(None, X[:1][None], model="demo", ids=["a"], seqs=[1],
                                                     reset=True)))
    assert reply.errors == {} and reply.outcome == [APPLIED] and int(reply.step_count[0]) == 1
    np.testing.assert_allclose(reply.output[0], stepped(X[:1]), atol=1e-5)
    r = step(srv, "a", X[1], seq=2)
    np.testing.assert_allclose(r.output, stepped(X[:2])[1], atol=1e-5)
    assert r.step_count == 2 and units == []


def _broken_run(x, states):
    raise RuntimeError("injected: the model run failed")


def _nan_run(x, states):
    return np.full((len(x), x.shape[1], 1), np.nan, np.float32), states.copy()


@pytest.mark.parametrize("run", [_broken_run, _nan_run], ids=["raises", "nan"])
def test_a_lone_step_whose_run_fails_applies_nothing_and_frees_its_number(inproc, monkeypatch, run):
    srv = inproc()
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    first = step(srv, "a", X[0], seq=1)
    runner = srv.app.batchers[KEY].runner
    monkeypatch.setattr(runner, "run", run)
    with pytest.raises(grpc.RpcError) as e:
        step(srv, "a", X[1], seq=2)
    assert e.value.code() == grpc.StatusCode.INTERNAL and "nothing was applied" in e.value.details()
    assert counters(srv, "a") == (Phase.IDLE, 1, 1, 1)  # number 2 is free again
    m = stats(srv)
    assert (m.executions, m.success, m.failure) == (1, 1, 1)
    monkeypatch.undo()
    r = step(srv, "a", X[1], seq=2)
    assert r.step_count == 2 and not r.replayed
    np.testing.assert_allclose(r.output, stepped(X[:2])[1], atol=1e-5)
    np.testing.assert_allclose(first.output, stepped(X[:1])[0], atol=1e-5)


def test_a_bug_after_the_run_is_logged_once_and_wedges_nothing(inproc, monkeypatch, caplog):
    srv = inproc()
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    s = srv.session("a")
    row = srv.run(lambda: srv.app.table.state(s).copy())

    def finish(self, *args, **kw):
        raise RuntimeError("injected: finish failed")
    monkeypatch.setattr(type(s), "finish", finish)
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as e:
        step(srv, "a", X[0], seq=1)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert sum("injected: finish failed" in rec.exc_text for rec in caplog.records if rec.exc_text) == 1
    monkeypatch.undo()
    assert counters(srv, "a") == (Phase.IDLE, 0, 0, 0)
    np.testing.assert_array_equal(srv.run(lambda: srv.app.table.state(s)), row)  # the row was not written
    m = stats(srv)
    assert (m.executions, m.success, m.failure) == (1, 0, 1)  # the model ran; the entry failed
    r = step(srv, "a", X[0], seq=1)
    assert r.step_count == 1
    np.testing.assert_allclose(r.output, stepped(X[:1])[0], atol=1e-5)


def test_a_stream_reply_carries_its_steps_whole_answer(inproc):
    """Each StreamSteps reply holds the step's answer (filled into the reply's own `step` field): its session,
    count, number, replay flag, output and, when asked, states; the stream's own head fields beside it."""
    srv = inproc()
    for sid in ("a", "b"):
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))

    def msg(sid, x, seq=None, **kw):
        step = pb.StepRequest(session_id=sid, input=np.asarray(x, np.float32).ravel(), **kw)
        if seq is not None:
            step.sequence_number = seq
        return pb.StreamStepsRequest(step=step)
    reqs = [msg("a", X[0], 1), msg("a", X[1], 2), msg("a", X[1], 2), msg("b", X[0], return_state=True)]
    replies = list(srv.stub.StreamSteps(iter(reqs)))
    assert [(r.HasField("step"), r.HasField("error")) for r in replies] == [(True, False)] * 4, replies
    assert [(r.session_id, r.step.session_id) for r in replies] == [("a", "a")] * 3 + [("b", "b")]
    assert [r.step.step_count for r in replies] == [1, 2, 2, 1]
    assert [r.step.sequence_number for r in replies] == [1, 2, 2, 0]
    assert [r.step.replayed for r in replies] == [False, False, True, False]
    ref = stepped(X[:2])
    for r, want in zip(replies, [ref[0], ref[1], ref[1], ref[0]]):
        np.testing.assert_allclose(r.step.output, want, atol=1e-5)
    assert [len(r.step.states) for r in replies] == [0, 0, 0, 2]
    unary = srv.stub.GetState(pb.GetStateRequest(session_id="b")).state
    assert [list(s.h) for s in replies[3].step.states] == [list(s.h) for s in unary.layers]
