"""The client when the server goes away or hangs: errors of the statestream family, deadlines, a CLI without tracebacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from serverproc import DEMO_MODEL, ServerProcess

from statestream.client import Client, DeadlineExceeded, StatestreamError, Unavailable


@pytest.fixture
def server():
    srv = ServerProcess(DEMO_MODEL).start()
    yield srv
    if srv.proc.poll() is None:
        os.kill(srv.pid, signal.SIGCONT)  # a test may have stopped it
    srv.stop()


def endless(features: int = 3):
    rng = np.random.default_rng(0)
    while True:
        yield rng.normal(size=features).astype(np.float32)


def test_server_killed_mid_stream_raises_unavailable_from_the_iteration(server):
    with Client(server.target) as c:
        s = c.session("demo")
        got = 0
        with pytest.raises(Unavailable) as err:
            for _ in s.stream(endless()):
                got += 1
                if got == 20:
                    server.kill()  # SIGKILL with steps on the wire
        assert got >= 20 and isinstance(err.value, StatestreamError)
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no grpc.RpcError chained


def test_a_hung_server_gives_deadline_exceeded_within_the_clients_timeout(server):
    with Client(server.target, timeout=1.0) as c:
        s = c.session("demo")
        stream = s.stream(endless())
        for _ in range(5):
            next(stream)  # a live stream longer than nothing: replies keep the deadline moving
        os.kill(server.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no reply within 1 s"):
            for _ in range(100_000):  # replies sent before the server froze may still be buffered: read past them
                next(stream)
        assert time.monotonic() - t0 < 5
        os.kill(server.pid, signal.SIGCONT)


def test_a_stream_may_last_longer_than_the_clients_timeout(server):
    """The default deadline bounds each reply, not the whole stream."""
    with Client(server.target, timeout=0.5) as c:
        s = c.session("demo")

        def slow():
            for x in endless():
                time.sleep(0.05)  # stays: the subject is a stream outlasting the client's real-time deadline
                yield x

        t0, n = time.monotonic(), 0
        for _ in s.stream(slow()):
            n += 1
            if time.monotonic() - t0 > 1.2:
                break
        assert n > 10 and s.get_state().step_count >= n


def test_a_caller_slow_with_each_result_is_not_a_hung_server(server):
    """Replies waiting for the caller do not count against the server's deadline."""
    with Client(server.target, timeout=0.3) as c:
        s = c.session("demo")
        got = 0
        for _ in s.stream(np.zeros((4, 3), np.float32)):  # all four are sent at once, answered at once
            time.sleep(0.5)  # stays (the subject): longer than the real-time timeout, with results in hand
            got += 1
        assert got == 4


def cli(target: str, *args: str, timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "statestream.client.cli", "--target", target, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_prints_one_line_and_exits_nonzero_when_the_server_dies_mid_stream(server):
    p = cli(server.target, "stream", "--model", "demo", "--synthetic", "10000000")
    for _ in range(30):
        assert p.stdout.readline()  # the stream is under way
    server.kill()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"statestream: the server at {server.target} went away") and "UNAVAILABLE" in err, err


def test_cli_against_no_server_at_all(server):
    target = server.target
    server.kill()
    p = cli(target, "--timeout", "2", "models")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and not out
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err, err


def test_an_error_raised_by_the_callers_input_reaches_the_caller_after_the_steps_before_it(server):
    def inputs():
        yield from np.zeros((3, 3), np.float32)
        raise KeyError("sensor unplugged")

    with Client(server.target) as c:
        s = c.session("demo")
        got = []
        with pytest.raises(KeyError, match="sensor unplugged"):
            for y in s.stream(inputs()):
                got.append(y)
        assert len(got) == 3 and s.get_state().step_count == 3
