"""One engine: every protocol steps through Engine.step, and a failure at any stage of a run is contained (no
session wedged, nothing half-applied, the next step works). In-process servers; failures injected on purpose."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest
from inproc import GatedSqliteStore, InProcessServer
from reference import stepped
from serverproc import DEMO_MODEL

from statestream.contract.errors import Unavailable
from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.server.engine import batcher as batcher_module
from statestream.server.engine.sessions import BULK, Phase
from statestream.v1 import statestream_pb2 as pb

X = np.array([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6], [0.7, 0.8, -0.9]], dtype=np.float32)


def calls(srv) -> int:
    return srv.run(lambda: srv.app.engine.calls)


def test_every_protocol_steps_through_the_one_engine_function(inproc):
    """v1 Step, a StreamSteps message, a StepFrame, a StepGroup and a KServe ModelInfer: one Engine.step each."""
    srv = inproc()
    stub = srv.stub
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="u"))
    seen = []

    def counted(fn):
        before = calls(srv)
        fn()
        seen.append(calls(srv) - before)

    counted(lambda: stub.Step(pb.StepRequest(session_id="u", input=X[0])))
    counted(lambda: list(stub.StreamSteps(iter([pb.StreamStepsRequest(step=pb.StepRequest(session_id="u",
                                                                                          input=X[1]))]))))
    counted(lambda: stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=["u", "f"], inputs=X[:2].ravel(),
                                                       open_if_missing=True)))
    g = stub.OpenGroup(pb.OpenGroupRequest(model="demo", size=4))
    counted(lambda: stub.StepGroup(pb.StepGroupRequest(group_id=g.group_id, inputs=np.ones(12, np.float32))))
    triton = ipb_grpc.GRPCInferenceServiceStub(srv.channel)
    req = ipb.ModelInferRequest(model_name="demo", raw_input_contents=[X[2].tobytes()])
    req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 3])
    req.parameters["sequence_id"].string_param = "k"
    req.parameters["sequence_start"].bool_param = True
    counted(lambda: triton.ModelInfer(req))
    assert seen == [1, 1, 1, 1, 1]


def test_a_frame_runs_whole_in_one_model_run_beyond_max_batch_size(inproc, monkeypatch):
    """--max-batch-size bounds what the batcher combines of several requests; a frame, like a group step, runs
    whole (--max-entries bounds it): one model run for its entries, each equal to its session stepped alone."""
    srv = inproc(max_batch_size=2, inline_max_batch=0)
    runner = srv.app.batchers["demo", 1].runner
    real, sizes = runner.run, []

    def counted(x, states):
        sizes.append(x.shape[0])
        return real(x, states)
    monkeypatch.setattr(runner, "run", counted)
    ids = [f"w{i}" for i in range(6)]
    r = srv.stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=ids, inputs=np.tile(X[0], 6),
                                               open_if_missing=True))
    assert not r.errors and list(r.step_counts) == [1] * 6
    np.testing.assert_allclose(np.array(r.outputs), np.repeat(stepped(X[:1])[-1], 6), atol=1e-5)
    assert sizes == [6]


# -- failure containment -----------------------------------------------------------------------------------------


def state_of(stub, sid):
    st = stub.GetState(pb.GetStateRequest(session_id=sid)).state
    return st.step_count, [v for layer in st.layers for v in (*layer.h, *layer.c)]


def expect_contained(srv, sids, code, stepped_rows):
    """Each session is idle (not wedged), holds exactly the steps that were applied, and steps on."""
    for sid in sids:
        s = srv.session(sid)
        assert s.phase is Phase.IDLE and s.running is None and s.head is None, s
        count, _ = state_of(srv.stub, sid)
        assert count == stepped_rows
        reply = srv.stub.Step(pb.StepRequest(session_id=sid, input=X[stepped_rows]))
        assert reply.step_count == stepped_rows + 1
        np.testing.assert_allclose(reply.output, stepped(X[:stepped_rows + 1])[-1], atol=1e-5)
    assert srv.run(lambda: srv.app.batchers["demo", 1].pending.count) == 0


@pytest.fixture
def two_sessions(inproc):
    srv = inproc(inline_max_batch=0)  # every run through the consumer and the executor
    for sid in ("a", "b"):
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
    return srv


def frame(srv, ids=("a", "b")):
    return srv.stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=list(ids),
                                                  inputs=np.tile(X[0], len(ids))))


def test_a_model_failure_fails_the_run_and_nothing_is_applied(two_sessions, monkeypatch, caplog):
    srv = two_sessions
    runner = srv.app.batchers["demo", 1].runner

    def broken(x, states):
        raise RuntimeError("injected: the model run failed")
    monkeypatch.setattr(runner, "run", broken)
    r = frame(srv)
    assert {e.index: e.error.code for e in r.errors} == {0: grpc.StatusCode.INTERNAL.value[0],
                                                         1: grpc.StatusCode.INTERNAL.value[0]}
    assert "nothing was applied" in r.errors[0].error.message
    monkeypatch.undo()
    expect_contained(srv, ["a", "b"], grpc.StatusCode.INTERNAL, 0)


def test_an_apply_failure_fails_exactly_the_entries_not_applied(two_sessions, monkeypatch, caplog):
    """Session.finish raises for the second entry: the first is applied and answered, the second fails INTERNAL,
    is logged once with its traceback, and its session goes back to idle with its state untouched. (Entry by
    entry: the path of a unit whose entries cannot all finish in one pass.)"""
    srv = two_sessions
    b = srv.session("b")
    real = type(b).finish
    monkeypatch.setattr(batcher_module, "finish_many", lambda *args: None)

    def finish(self, *args, **kw):
        if self is b:
            raise RuntimeError("injected: apply failed")
        return real(self, *args, **kw)
    monkeypatch.setattr(type(b), "finish", finish)
    with caplog.at_level(logging.ERROR):
        r = frame(srv)
    assert [e.index for e in r.errors] == [1] and r.errors[0].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert list(r.step_counts) == [1, 0]
    assert sum("injected: apply failed" in rec.exc_text for rec in caplog.records if rec.exc_text) == 1
    monkeypatch.undo()
    expect_contained(srv, ["a"], None, 1)
    expect_contained(srv, ["b"], None, 0)


def test_a_failure_applying_a_whole_run_at_once_fails_every_entry_and_wedges_none(inproc, monkeypatch, caplog):
    """The one-pass apply of a run of BULK sessions (sessions.finish_many) raises: no entry was applied, each
    fails INTERNAL, is logged once, and every session is idle with its state untouched."""
    srv = inproc(inline_max_batch=0)
    ids = [f"bulk{i}" for i in range(BULK)]
    for sid in ids:
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))

    def broken(*args):
        raise RuntimeError("injected: bulk apply failed")
    monkeypatch.setattr(batcher_module, "finish_many", broken)
    with caplog.at_level(logging.ERROR):
        r = frame(srv, ids)
    assert {e.index for e in r.errors} == set(range(BULK))
    assert {e.error.code for e in r.errors} == {grpc.StatusCode.INTERNAL.value[0]}
    assert sum("injected: bulk apply failed" in rec.exc_text for rec in caplog.records if rec.exc_text) == 1
    monkeypatch.undo()
    expect_contained(srv, ids[:2], None, 0)


@pytest.mark.parametrize("error, code", [(Unavailable("injected: store down; nothing was applied"), "UNAVAILABLE"),
                                         (RuntimeError("injected: a bug in the store"), "INTERNAL")])
def test_a_commit_failure_applies_nothing_store_errors_unavailable_bugs_internal(inproc, tmp_path, error, code,
                                                                                 caplog):
    store = GatedSqliteStore(str(tmp_path / "s.db"))
    srv = inproc(store=store, state_store=f"sqlite:{tmp_path / 's.db'}")
    for sid in ("a", "b"):
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
    real = store.commit

    async def failing(records, **kw):
        raise error
    store.commit = failing
    with caplog.at_level(logging.ERROR):
        r = frame(srv)
    assert {e.error.code for e in r.errors} == {getattr(grpc.StatusCode, code).value[0]} and len(r.errors) == 2
    assert "nothing was applied" in r.errors[0].error.message
    logged = [rec for rec in caplog.records if rec.exc_info]
    assert len(logged) == (1 if code == "INTERNAL" else 0)  # a bug is logged once with its traceback
    store.commit = real
    expect_contained(srv, ["a", "b"], None, 0)
    assert store._fetch(None, "a").step_count == 1


def test_a_failing_re_read_after_a_lost_compare_and_set_fails_those_entries_only(inproc, tmp_path, monkeypatch):
    """A commit says "conflict" for b, and the re-read that follows raises: b fails, a is applied; both step on."""
    store = GatedSqliteStore(str(tmp_path / "s.db"))
    srv = inproc(store=store, state_store=f"sqlite:{tmp_path / 's.db'}")
    for sid in ("a", "b"):
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
    real_commit, real_fetch = store.commit, store.fetch_many

    async def conflict_for_b(records, **kw):
        statuses = await real_commit([r for r in records if r.id != "b"], **kw)
        return [statuses.pop(0) if r.id != "b" else "conflict" for r in records]

    async def broken_fetch(keys, **kw):
        raise RuntimeError("injected: re-read failed")
    store.commit, store.fetch_many = conflict_for_b, broken_fetch
    r = frame(srv)
    assert [e.index for e in r.errors] == [1] and r.errors[0].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert list(r.step_counts) == [1, 0]
    store.commit, store.fetch_many = real_commit, real_fetch
    expect_contained(srv, ["a"], None, 1)
    expect_contained(srv, ["b"], None, 0)


def test_in_process_server_fixture_builds_from_flags():
    """The harness the failure tests rely on takes the CLI's flags (sanity: a failure test must not pass because
    the flags were ignored)."""
    with InProcessServer.from_args(DEMO_MODEL, "--inline-max-batch", "0") as srv:
        assert srv.app.batchers["demo", 1].policy.inline_max_batch == 0


def test_a_finished_step_leaves_nothing_for_the_cycle_collector(inproc):
    """A run's units and arrays are freed as soon as its callers have their answers, by reference counting: a unit
    once resolved its future to itself (a cycle), so every run's outputs lived until the cyclic collector ran,
    the next run's outputs went to cold memory, and collections came more often (5-9% of a group or frame step's
    CPU in-process, `python -m bench.hotpath`)."""
    import gc
    import weakref

    srv = inproc()
    runner = srv.run(lambda: next(iter(srv.app.table.runners.values())))
    outputs = []
    run = runner.run

    def recorded(x, states):
        y, new = run(x, states)
        outputs.append((weakref.ref(y), weakref.ref(new)))
        return y, new

    class Context:
        def invocation_metadata(self):
            return ()

        def time_remaining(self):
            return None

    svc, ctx = srv.app.service, Context()

    async def steps():
        await svc.Step(pb.StepRequest(session_id="gc-1", model="demo", open_if_missing=True, input=X[0]), ctx)
        await svc.StepFrame(pb.StepFrameRequest(model="demo", session_ids=[f"gc-f{i}" for i in range(BULK)],
                                                inputs=np.tile(X[0], BULK), open_if_missing=True), ctx)
        await svc.OpenGroup(pb.OpenGroupRequest(model="demo", size=BULK, group_id="gc-g"), ctx)
        await svc.StepGroup(pb.StepGroupRequest(group_id="gc-g", inputs=np.tile(X[1], BULK)), ctx)

    runner.run = recorded
    gc.disable()
    try:
        srv.call(steps())
        assert len(outputs) == 3
        assert [(y() is None, new() is None) for y, new in outputs] == [(True, True)] * 3
    finally:
        gc.enable()
        runner.run = run
