"""Exactly-once sessions of the Python client: a server killed with SIGKILL and restarted on the same port, replies lost."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from mdproxy import RecordingProxy
from reference import stepped
from serverproc import DEMO_MODEL, ServerProcess
from test_faults import signal_for

from statestream.client import AlreadyExists, Client, FailedPrecondition, Unavailable
from statestream.client.cli import synthetic_input


class Restarter:
    """kill -9 a sqlite-backed server, then start it again on the same port and file. The kill has landed when
    kill_and_restart returns; the server stays down until the new process is serving (its start-up, model load
    included): the outage the clients retry through, with no sleep added."""

    def __init__(self, db: str, srv: ServerProcess):
        self.db, self.srv = db, srv
        self.port = srv.port
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def kill_and_restart(self) -> None:
        self.srv.kill()
        self.thread = threading.Thread(target=self._restart, daemon=True)
        self.thread.start()

    def _restart(self) -> None:
        try:
            self.srv = ServerProcess(DEMO_MODEL, "--state-store", self.db, "--port", str(self.port)).start()
        except BaseException as e:  # noqa: BLE001 - reported by join()
            self.error = e

    def join(self) -> ServerProcess:
        self.thread.join(60)
        if self.error:
            raise self.error
        return self.srv


@pytest.fixture
def durable(tmp_path):
    db = f"sqlite:{tmp_path / 'state.db'}"
    srv = ServerProcess(DEMO_MODEL, "--state-store", db).start()
    r = Restarter(db, srv)
    yield r
    r.srv.stop()


def test_stream_resumes_after_kill_9_and_equals_the_uninterrupted_reference(durable):
    xs = signal_for(80, seed=3)
    with Client(f"127.0.0.1:{durable.port}", timeout=30) as c:
        s = c.session("demo", "eo-stream", exactly_once=True)
        got = []
        for y in s.stream(xs):
            got.append(y)
            if len(got) == 30:
                durable.kill_and_restart()  # the next step is on the wire or about to be
        srv = durable.join()
        assert "restored 1 of 1" in srv.output()
        st = s.get_state()
        assert c.retries >= 1
    np.testing.assert_allclose(np.array(got), stepped(xs), atol=1e-6)
    assert len(got) == 80 and st.step_count == 80 and st.last_sequence_number == 80  # none lost, none doubled


def test_unary_steps_retry_through_a_restart_and_attach_resumes_the_numbering(durable):
    xs = signal_for(40, seed=4)
    with Client(f"127.0.0.1:{durable.port}", timeout=30) as c:
        s = c.session("demo", "eo-unary", exactly_once=True)
        got = [s.step(x) for x in xs[:15]]
        durable.kill_and_restart()
        got += [s.step(x) for x in xs[15:25]]  # the first of these waits for the restarted server
        durable.join()
        assert c.retries >= 1
    with Client(f"127.0.0.1:{durable.port}", timeout=30) as c2:  # a new process of the caller, say
        s2 = c2.attach("eo-unary", "demo", exactly_once=True)
        assert s2.last_sequence_number == 25
        got += [s2.step(x) for x in xs[25:]]
        assert s2.get_state().step_count == 40
        with pytest.raises(ValueError, match="numbers its steps itself"):
            s2.step(xs[0], sequence_number=41)
    np.testing.assert_allclose(np.array(got), stepped(xs), atol=1e-6)


def test_the_cli_streams_through_a_kill_9_and_restart_with_exactly_once(durable):
    n = 1500
    p = subprocess.Popen([sys.executable, "-m", "statestream.client.cli", "--target", f"127.0.0.1:{durable.port}",
                          "--timeout", "30", "stream", "--model", "demo", "--synthetic", str(n), "--exactly-once"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [p.stdout.readline() for _ in range(50)]
    durable.kill_and_restart()
    out, err = p.communicate(timeout=120)
    durable.join()
    assert p.returncode == 0, err
    lines += out.splitlines(keepends=True)
    rows = np.array([[float(v) for v in line.split()] for line in lines])
    assert rows.shape == (n, 2) and (rows[:, 0] == np.arange(n)).all()
    np.testing.assert_allclose(rows[:, 1:], stepped(synthetic_input("demo", n, 3)[0]), atol=1e-5)


def test_a_stale_numbering_is_refused_not_applied(durable):
    """Two exactly-once writers of one session: the second's number is already taken, so it is told, not applied."""
    xs = signal_for(3, seed=5)
    with Client(f"127.0.0.1:{durable.port}") as c:
        a = c.session("demo", "eo-two", exactly_once=True)
        b = c.attach("eo-two", "demo", exactly_once=True)
        a.step(xs[0])
        a.step(xs[1])
        with pytest.raises(FailedPrecondition):
            b.step(xs[2])  # b believes the next number is 1
        assert a.get_state().step_count == 2


@pytest.fixture(scope="module")
def lossy():
    """A memory-store server behind a pass-through proxy that loses chosen replies after the server applied them."""
    with ServerProcess(DEMO_MODEL) as srv, RecordingProxy(srv.target) as proxy:
        yield proxy


def test_a_lost_step_reply_is_retried_and_replayed_not_applied_twice(lossy):
    xs = signal_for(3, seed=6)
    with Client(lossy.target) as c:
        s = c.session("demo", "lost-step", exactly_once=True)
        y0 = s.step(xs[0])
        lossy.drop_replies["Step"] = 1
        y1 = s.step(xs[1])  # applied, answer lost, resent with sequence number 2: the recorded answer comes back
        y2 = s.step(xs[2])
        assert c.retries == 1 and s.get_state().step_count == 3
    np.testing.assert_allclose(np.array([y0, y1, y2]), stepped(xs), atol=1e-6)


def test_a_lost_open_reply_of_a_named_session_is_taken_as_its_own(lossy):
    with Client(lossy.target) as c:
        lossy.drop_replies["OpenSession"] = 1
        s = c.session("demo", "lost-open", exactly_once=True)  # retried: ALREADY_EXISTS, untouched -> ours
        assert s.step([0.1, 0.2, 0.3]).shape == (1,) and s.last_sequence_number == 1
        with pytest.raises(AlreadyExists):
            c.session("demo", "lost-open", exactly_once=True)  # no retry happened: someone else's session


def test_a_stream_broken_after_the_server_applied_a_step_resumes_without_doubling_it(lossy):
    xs = signal_for(30, seed=7)
    with Client(lossy.target) as c:
        s = c.session("demo", "broken-stream", exactly_once=True)
        lossy.break_streams.append(10)  # reply 11 is lost after step 11 was applied
        got = list(s.stream(xs))
        assert c.retries == 1 and s.get_state().step_count == 30
        streams = [k for k in lossy.calls if k.method == "StreamSteps" and k.sessions[:1] == ["broken-stream"]]
        assert len(streams) == 2 and streams[1].sessions.count("broken-stream") == 20  # resumed at step 11
    np.testing.assert_allclose(np.array(got), stepped(xs), atol=1e-6)


def test_without_exactly_once_a_broken_stream_is_an_error(lossy):
    with Client(lossy.target) as c:
        s = c.session("demo")
        lossy.break_streams.append(3)
        with pytest.raises(Unavailable, match="the stream broke"):
            list(s.stream(signal_for(10)))
