"""Exactly-once under races: retries of steps in flight, cancelled callers, close/SetState/frames/SIGTERM
racing a running step. In-process servers; a gate holds a step at a chosen point so each race is exact."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from inproc import Gate, GatedSqliteStore
from reference import stepped

from statestream.contract.errors import Unavailable
from statestream.v1 import statestream_pb2 as pb

X = np.array([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6], [0.7, 0.8, -0.9]], dtype=np.float32)


def step_req(sid: str, x, seq: int | None = None, **kw) -> pb.StepRequest:
    req = pb.StepRequest(session_id=sid, input=np.asarray(x, np.float32).ravel(), **kw)
    if seq is not None:
        req.sequence_number = seq
    return req


def start(srv, req: pb.StepRequest):
    """Schedule the service's step on the server's loop (what a gRPC handler does); a concurrent future."""
    return asyncio.run_coroutine_threadsafe(srv.app.service.step(req, None), srv.loop)


def settle(srv, turns: int = 3) -> None:
    """Let the server's loop run every callback scheduled so far (tasks reach their next await)."""
    for _ in range(turns):
        srv.call(asyncio.sleep(0))


def wait_until(pred, timeout: float = 10.0) -> None:
    import time
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


class GatedExecutor(ThreadPoolExecutor):
    """A real thread pool whose jobs wait at a threading gate: holds a model run 'on the executor'."""

    def __init__(self):
        super().__init__(max_workers=1)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)

    def submit(self, fn, *args, **kwargs):
        def gated():
            self.entered.release()
            self.gate.wait(10)
            return fn(*args, **kwargs)
        return super().submit(gated)


def held_in_commit(srv, store):
    """Open session "a" and start its step 1, held inside its sqlite commit; the step's future."""
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    store.gate.close()
    first = start(srv, step_req("a", X[0], 1))
    wait_until(lambda: store.gate.waiting == 1)
    return first


@pytest.fixture
def executor_srv(inproc):
    """A server whose every model run goes to a gated executor: (server, executor)."""
    srv = inproc(inline_max_batch=0)
    gated = GatedExecutor()
    srv.run(setattr, srv.app.batchers["demo", 1], "executor", gated)
    yield srv, gated
    gated.gate.set()


@pytest.fixture
def sqlite_srv(inproc, tmp_path):
    store = GatedSqliteStore(str(tmp_path / "state.db"))
    srv = inproc(store=store, state_store=f"sqlite:{tmp_path / 'state.db'}")
    store.gate = Gate(srv)
    return srv, store


def test_retry_waits_for_a_step_inside_its_sqlite_commit(sqlite_srv):
    srv, store = sqlite_srv
    first = held_in_commit(srv, store)
    retry = start(srv, step_req("a", X[0], 1))
    settle(srv)
    assert not retry.done(), "the retry must wait for the step in flight, not answer early"
    store.gate.open()
    a, b = first.result(10), retry.result(10)
    assert not a.replayed and b.replayed
    assert a.output == b.output and a.step_count == b.step_count == 1
    np.testing.assert_allclose(a.output, stepped(X[:1])[-1], atol=1e-6)
    assert store._fetch(None, "a").step_count == 1


def test_retry_waits_for_a_step_running_on_the_executor(executor_srv):
    srv, gated = executor_srv
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    gated.gate.clear()
    first = start(srv, step_req("a", X[0], 1))
    assert gated.entered.acquire(timeout=10)  # the run is on the executor
    retry = start(srv, step_req("a", X[0], 1))
    settle(srv)
    assert not retry.done()
    gated.gate.set()
    a, b = first.result(10), retry.result(10)
    assert b.replayed and a.output == b.output and b.step_count == 1


def test_a_cancelled_caller_never_cancels_its_step(sqlite_srv):
    srv, store = sqlite_srv
    first = held_in_commit(srv, store)
    retry = start(srv, step_req("a", X[0], 1))
    settle(srv)
    first.cancel()  # the original caller goes away (deadline, disconnect): its handler task is cancelled
    settle(srv)
    store.gate.open()
    b = retry.result(10)
    assert b.replayed and b.step_count == 1
    np.testing.assert_allclose(b.output, stepped(X[:1])[-1], atol=1e-6)
    # and the step applied exactly once: the next number continues from it
    c = srv.stub.Step(step_req("a", X[1], 2))
    np.testing.assert_allclose(c.output, stepped(X[:2])[-1], atol=1e-6)
    assert c.step_count == 2 and store._fetch(None, "a").step_count == 2


def test_a_cancelled_grpc_call_still_applies_once_and_its_retry_replays(sqlite_srv):
    srv, store = sqlite_srv
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    store.gate.close()
    with pytest.raises(grpc.RpcError) as e:
        srv.stub.Step(step_req("a", X[0], 1), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert store.gate.waiting == 1  # the step is still in its commit
    store.gate.open()
    retry = srv.stub.Step(step_req("a", X[0], 1), timeout=10)
    assert retry.replayed and retry.step_count == 1
    np.testing.assert_allclose(retry.output, stepped(X[:1])[-1], atol=1e-6)


def test_a_queued_step_whose_caller_is_cancelled_still_runs_once(inproc):
    srv = inproc(max_queue_delay=0.2)  # steps wait in the queue for a batch
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    first = start(srv, step_req("a", X[0], 1))
    settle(srv)
    assert srv.session("a").phase.value == "queued"
    first.cancel()
    retry = start(srv, step_req("a", X[0], 1))
    b = retry.result(10)
    assert b.replayed and b.step_count == 1
    np.testing.assert_allclose(b.output, stepped(X[:1])[-1], atol=1e-6)


def test_close_during_a_commit_applies_nothing(sqlite_srv):
    srv, store = sqlite_srv
    first = held_in_commit(srv, store)
    assert srv.stub.CloseSession(pb.CloseSessionRequest(session_id="a")).step_count == 0
    store.gate.open()
    from statestream.contract.errors import NotFound
    with pytest.raises(NotFound, match="closed"):
        first.result(10)
    assert store._fetch(None, "a") is None  # the commit did not bring the closed session back
    assert srv.run(lambda: len(srv.app.table)) == 0


def test_close_fails_queued_steps_and_frees_the_slot(inproc):
    srv = inproc(max_queue_delay=0.2)
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    slab = srv.app.table.slabs["demo", 1]
    free_before = srv.run(lambda: len(slab._free))
    queued = start(srv, step_req("a", X[0]))
    settle(srv)
    srv.stub.CloseSession(pb.CloseSessionRequest(session_id="a"))
    from statestream.contract.errors import NotFound
    with pytest.raises(NotFound):
        queued.result(10)
    assert srv.run(lambda: len(slab._free)) == free_before + 1
    assert srv.run(lambda: srv.app.batchers["demo", 1].pending.count) == 0


def test_set_state_while_a_step_runs_is_refused_and_changes_nothing(executor_srv):
    srv, gated = executor_srv
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    zero = srv.stub.GetState(pb.GetStateRequest(session_id="a")).state
    gated.gate.clear()
    first = start(srv, step_req("a", X[0], 1))
    assert gated.entered.acquire(timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        srv.stub.SetState(pb.SetStateRequest(session_id="a", layers=zero.layers, step_count=7))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    gated.gate.set()
    assert first.result(10).step_count == 1
    assert srv.stub.GetState(pb.GetStateRequest(session_id="a")).state.step_count == 1


def test_a_frame_entry_waits_behind_a_running_unary_step_of_its_session(executor_srv):
    srv, gated = executor_srv
    for sid in ("a", "b"):
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
    gated.gate.clear()
    unary = start(srv, step_req("a", X[0]))
    assert gated.entered.acquire(timeout=10)
    frame = asyncio.run_coroutine_threadsafe(srv.app.service.frame(
        pb.StepFrameRequest(model="demo", session_ids=["a", "b"], inputs=np.concatenate([X[1], X[0]])), None),
        srv.loop)
    settle(srv)
    assert not frame.done()
    gated.gate.set()
    assert unary.result(10).step_count == 1
    reply = frame.result(10)
    assert not reply.errors and list(reply.step_counts) == [2, 1]
    np.testing.assert_allclose(reply.outputs[0], stepped(X[:2])[-1][0], atol=1e-6)
    np.testing.assert_allclose(reply.outputs[1], stepped(X[:1])[-1][0], atol=1e-6)


def test_sigterm_drain_during_a_commit_answers_and_persists(sqlite_srv):
    srv, store = sqlite_srv
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    store.gate.close()
    first = srv.stub.Step.future(step_req("a", X[0], 1), timeout=10)
    wait_until(lambda: store.gate.waiting == 1)
    stopping = asyncio.run_coroutine_threadsafe(srv.app.stop(5.0), srv.loop)  # what SIGTERM runs
    settle(srv)
    assert srv.app.engine.draining
    store.gate.open()
    assert first.result().step_count == 1
    stopping.result(10)
    from statestream.server.store.sqlite import SqliteStore
    reopened = SqliteStore(store.path)
    assert reopened._fetch(None, "a").step_count == 1
    reopened.close()


def test_a_cancelled_group_step_still_applies_once_and_its_retry_replays(sqlite_srv):
    srv, store = sqlite_srv
    g = srv.stub.OpenGroup(pb.OpenGroupRequest(model="demo", size=3))
    x = np.concatenate([X[0], X[1], X[2]]).astype(np.float32)
    req = pb.StepGroupRequest(group_id=g.group_id, inputs=x, sequence_number=1)

    def group_step():
        return asyncio.run_coroutine_threadsafe(srv.app.service.group_step(req, None), srv.loop)

    store.gate.close()
    first = group_step()
    wait_until(lambda: store.gate.waiting == 1)  # the group's commit is in the store
    first.cancel()  # the caller goes away
    settle(srv)
    retry = group_step()
    settle(srv)
    assert not retry.done()
    store.gate.open()
    reply = retry.result(10)
    assert reply.replayed and reply.step_count == 1
    for i, sid in enumerate(g.session_ids):
        np.testing.assert_allclose(reply.outputs[i], stepped(X[i:i + 1])[-1][0], atol=1e-6)
        state = srv.stub.GetState(pb.GetStateRequest(session_id=sid)).state
        assert state.step_count == 1 and store._fetch(None, sid).step_count == 1


class _Deadline:
    """A handler context whose caller gives up in `seconds` (what deadline_of reads)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def time_remaining(self) -> float:
        return self.seconds


def _failing_commits(store, failures: list):
    """The store's commits wait at its gate, then the first len(failures) raise those errors (a write bounded by
    a caller's deadline); the others are real. The list of commits seen."""
    real, seen = store.commit, []

    async def commit(records, **kw):
        seen.append([r.id for r in records])
        await store.gate.wait()
        if failures:
            raise failures.pop(0)
        return await real(records, **kw)
    store.commit = commit
    return seen


def _bounded() -> Unavailable:
    return Unavailable("injected: the store write outlived its caller's 5 ms deadline; nothing was applied")


def test_a_retry_whose_awaited_step_failed_unavailable_runs_its_own_attempt(sqlite_srv):
    """Issue 16/18: a retry waits for the step in flight it repeats; that step's store write fails UNAVAILABLE
    (bounded by its own caller's short deadline). The retry's deadline leaves time: it decides again (the failed
    entry freed its number), applies the step once and answers it (was: UNAVAILABLE)."""
    srv, store = sqlite_srv
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    store.gate.close()
    seen = _failing_commits(store, [_bounded()])
    first = start(srv, step_req("a", X[0], 1))
    wait_until(lambda: store.gate.waiting == 1)
    retry = asyncio.run_coroutine_threadsafe(srv.app.service.step(step_req("a", X[0], 1), None, _Deadline(30.0)),
                                             srv.loop)
    settle(srv)
    assert not retry.done(), "the retry must wait for the step in flight"
    store.gate.open()
    with pytest.raises(Unavailable):
        first.result(10)
    b = retry.result(10)
    assert not b.replayed and b.step_count == 1  # its own attempt applied it
    np.testing.assert_allclose(b.output, stepped(X[:1])[-1], atol=1e-6)
    assert seen == [["a"], ["a"]] and store._fetch(None, "a").step_count == 1
    again = srv.stub.Step(step_req("a", X[0], 1))  # applied once: a further retry replays it
    assert again.replayed and again.output == b.output
    c = srv.stub.Step(step_req("a", X[1], 2))
    np.testing.assert_allclose(c.output, stepped(X[:2])[-1], atol=1e-6)
    assert c.step_count == 2 and store._fetch(None, "a").step_count == 2


@pytest.mark.parametrize("remaining, failures, commits", [(0.01, 1, 1), (30.0, 3, 3)])
def test_a_retry_after_an_unavailable_step_is_bounded(sqlite_srv, remaining, failures, commits):
    """The retry's own attempts are bounded: none when its deadline is (almost) due, at most two more otherwise;
    then it answers UNAVAILABLE and nothing was applied."""
    srv, store = sqlite_srv
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"))
    store.gate.close()
    seen = _failing_commits(store, [_bounded() for _ in range(failures)])
    first = start(srv, step_req("a", X[0], 1))
    wait_until(lambda: store.gate.waiting == 1)
    retry = asyncio.run_coroutine_threadsafe(
        srv.app.service.step(step_req("a", X[0], 1), None, _Deadline(remaining)), srv.loop)
    settle(srv)
    store.gate.open()
    for call in (first, retry):
        with pytest.raises(Unavailable):
            call.result(10)
    assert len(seen) == commits and store._fetch(None, "a").step_count == 0
    c = srv.stub.Step(step_req("a", X[0], 1))  # the number is free: the next attempt applies it
    assert not c.replayed and c.step_count == 1


def test_a_session_closed_while_its_frame_runs_is_not_written_back(inproc, tmp_path):
    """A frame of 10 sessions on sqlite, its model run held on the executor while one of them is closed: the run's
    commit writes the other nine (their versions move on) and leaves the closed one out, so the close stands."""
    store = GatedSqliteStore(str(tmp_path / "state.db"))
    srv = inproc(store=store, state_store=f"sqlite:{tmp_path / 'state.db'}", inline_max_batch=0)
    gated = GatedExecutor()
    srv.run(setattr, srv.app.batchers["demo", 1], "executor", gated)
    ids = [f"s{i}" for i in range(10)]
    for sid in ids:
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
    before = {sid: store._fetch(None, sid).version for sid in ids}
    gated.gate.clear()
    frame = asyncio.run_coroutine_threadsafe(srv.app.service.frame(
        pb.StepFrameRequest(model="demo", session_ids=ids, inputs=np.tile(X[0], 10)), None), srv.loop)
    assert gated.entered.acquire(timeout=10)
    srv.stub.CloseSession(pb.CloseSessionRequest(session_id="s3"))
    gated.gate.set()
    reply = frame.result(10)
    assert list(reply.step_counts) == [1] * 10 and not reply.errors   # the run was applied: every entry answered
    assert store._fetch(None, "s3") is None                          # closed: not brought back by the commit
    assert {sid: store._fetch(None, sid).version for sid in ids if sid != "s3"} == \
        {sid: v + 1 for sid, v in before.items() if sid != "s3"}


def test_steps_of_many_sessions_queued_together_start_in_one_pass_each_on_its_own_row(inproc, monkeypatch):
    """Streams' steps that share a run start in one pass over the cells (sessions.start_block) and the run reads and
    writes each one's own state row, whatever order the sessions were opened and stepped in."""
    from statestream.server.engine import batcher

    started = []
    real = batcher.start_block
    monkeypatch.setattr(batcher, "start_block", lambda *a: started.append(len(a[1])) or real(*a))
    srv = inproc(max_queue_delay=0.2)  # the steps wait in the queue for one run
    ids = [f"s{k}" for k in range(12)]
    for sid in ids:
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
    xs = {sid: np.roll(X, k, axis=0) * (1 + k / 10) for k, sid in enumerate(ids)}
    for t in range(2):
        calls = [start(srv, step_req(sid, xs[sid][t], t + 1)) for sid in reversed(ids)]  # not in slot order
        for sid, call in zip(reversed(ids), calls):
            np.testing.assert_allclose(call.result(10).output, stepped(xs[sid][:t + 1])[-1], atol=1e-5)
    assert started and max(started) == len(ids)  # each wave ran as one run, started in one pass
    # each session's own row (read by its slot, not through a run) holds its states: its two steps, run alone
    runner = srv.app.table.runners["demo", 1]
    for sid in ids:
        row = np.zeros((1, runner.state_width), np.float32)
        for t in range(2):
            _, row = runner.run(xs[sid][t][None, None].astype(np.float32), row)
        np.testing.assert_allclose(srv.run(lambda s=sid: srv.app.table.state(srv.app.table.find(s))), row[0], atol=1e-5)
