"""Scale-out with real processes on loopback: workers and replicas sharing one real redis-server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request

import grpc
import numpy as np
import pytest
from redisproc import RedisProcess
from reference import Reference
from serverproc import DEMO_MODEL, ServerProcess
from test_workers import worker_metrics_ports

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

# Each channel its own TCP connection (grpc shares subchannels between identical channels by default), so the
# kernel's SO_REUSEPORT hashing spreads them over the workers.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def inputs(n_sessions: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, n_sessions, 3)).astype(np.float32)


def reference(xs: np.ndarray) -> np.ndarray:
    """Outputs (steps, sessions) of every session stepped from zero states."""
    ref = Reference(xs.shape[1])
    return np.array([ref.step(x)[:, 0] for x in xs])


def steps_applied(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        m = re.search(r'^statestream_steps_total\{model="demo",version="1"\} (\S+)$', r.read().decode(), re.M)
    return float(m.group(1)) if m else 0.0


async def step_all(stubs, xs: np.ndarray, t: int, shift: int = 0) -> np.ndarray:
    """Step t (sequence number t + 1) of every session s{k}, session k over channel k + t + shift."""
    replies = await asyncio.gather(*(stubs[(k + t + shift) % len(stubs)].Step(
        pb.StepRequest(session_id=f"s{k}", input=xs[t, k], sequence_number=t + 1), wait_for_ready=True, timeout=60)
        for k in range(xs.shape[1])))
    for r in replies:
        assert r.step_count == t + 1 and not r.replayed
    return np.array([r.output[0] for r in replies])


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_two_workers_200_sessions_from_many_connections_equal_the_reference(redis_proc, tmp_path, kind):
    """Every step of a session may land on the other worker; then worker 0 is killed -9, restarted by the
    parent, and every session goes on exactly where it was."""
    n, steps, n_channels = 200, 8, 16
    xs = inputs(n, steps)
    expected = reference(xs)
    store = redis_proc.url if kind == "redis" else f"sqlite:{tmp_path / 'w.db'}"
    with ServerProcess(DEMO_MODEL, "--workers", "2", "--state-store", store, "--metrics-port", "-1") as srv:
        async def go(first: int, last: int):
            channels = [grpc.aio.insecure_channel(srv.target, options=OWN_CONNECTION) for _ in range(n_channels)]
            stubs = [pb_grpc.StateStreamServiceStub(c) for c in channels]
            if first == 0:
                await asyncio.gather(*(stubs[k % n_channels].OpenSession(
                    pb.OpenSessionRequest(model="demo", session_id=f"s{k}")) for k in range(n)))
            got = np.array([await step_all(stubs, xs, t) for t in range(first, last)])
            for c in channels:
                await c.close()
            return got
        got = asyncio.run(go(0, steps - 2))
        np.testing.assert_allclose(got, expected[:steps - 2], atol=1e-5)
        served = {i: steps_applied(port) for i, port in worker_metrics_ports(srv).items()}
        assert len(served) == 2 and all(v > 0 for v in served.values()), served
        assert sum(served.values()) >= n * (steps - 2)   # conflicts re-run a step; nothing is skipped

        victim = int(re.search(r"worker 0 \(pid (\d+)\) serving", srv.output()).group(1))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(re.findall(r"worker 0 \(pid \d+\) serving", srv.output())) == 2)
        assert "worker 0 exited with -9; starting it again" in srv.output()
        got = asyncio.run(go(steps - 2, steps))
        np.testing.assert_allclose(got, expected[steps - 2:], atol=1e-5)
        assert srv.terminate(60) == 0


@pytest.mark.slow
def test_stale_replica_loses_its_cas_reloads_and_stays_exact(redis_proc):
    xs = inputs(2, 11, seed=3)
    expected = reference(xs)
    with ServerProcess(DEMO_MODEL, "--state-store", redis_proc.url) as a, \
            ServerProcess(DEMO_MODEL, "--state-store", redis_proc.url) as b, \
            grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
        on = {"A": pb_grpc.StateStreamServiceStub(ca), "B": pb_grpc.StateStreamServiceStub(cb)}
        on["A"].OpenSession(pb.OpenSessionRequest(model="demo", session_id="numbered"))
        on["A"].OpenSession(pb.OpenSessionRequest(model="demo", session_id="plain"))
        plan = "AAABBBBAA"   # A caches the session, B steps it 4 times, A comes back with stale states
        for t, where in enumerate(plan):
            r1 = on[where].Step(pb.StepRequest(session_id="numbered", input=xs[t, 0], sequence_number=t + 1))
            r2 = on[where].Step(pb.StepRequest(session_id="plain", input=xs[t, 1]))
            assert (r1.step_count, r2.step_count) == (t + 1, t + 1), (t, where)   # no double step, none lost
            assert not r1.replayed
            np.testing.assert_allclose([r1.output[0], r2.output[0]], expected[t], atol=1e-5, err_msg=f"{t}{where}")
        # a retry of A's last numbered step on B is the recorded answer, not a new step
        again = on["B"].Step(pb.StepRequest(session_id="numbered", input=xs[8, 0], sequence_number=9))
        assert again.replayed and again.step_count == 9
        assert list(again.output) == pytest.approx([expected[8, 0]], abs=1e-5)
        r1 = on["B"].Step(pb.StepRequest(session_id="numbered", input=xs[9, 0], sequence_number=10))
        r2 = on["B"].Step(pb.StepRequest(session_id="plain", input=xs[9, 1]))
        np.testing.assert_allclose([r1.output[0], r2.output[0]], expected[9], atol=1e-5)
        # A is stale again; a frame with sequence numbers re-reads it instead of refusing step 11 as a gap
        frame = on["A"].StepFrame(pb.StepFrameRequest(model="demo", session_ids=["numbered", "plain"],
                                                      inputs=np.concatenate([xs[10, 0], xs[10, 1]]),
                                                      sequence_numbers=[11, 0]))
        assert not frame.errors and list(frame.step_counts) == [11, 11]
        np.testing.assert_allclose(frame.outputs, expected[10], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fsync,kill", [("everysec", False), ("always", True)])
def test_redis_restart_loses_nothing_acknowledged_and_redis_down_is_unavailable(fsync, kill):
    """Redis restarted between steps (SIGTERM with AOF everysec, kill -9 with appendfsync always): every
    acknowledged step is there. Redis down: UNAVAILABLE, and the session is unchanged once it is back."""
    with RedisProcess(fsync=fsync) as redis_proc:
        check_restart_and_outage(redis_proc, kill)


def check_restart_and_outage(redis_proc: RedisProcess, kill: bool) -> None:
    xs = inputs(1, 12, seed=5)
    expected = reference(xs)[:, 0]
    with ServerProcess(DEMO_MODEL, "--state-store", redis_proc.url) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="aof"))

        def step(t: int):
            return stub.Step(pb.StepRequest(session_id="aof", input=xs[t, 0], sequence_number=t + 1), timeout=30)

        for t in range(5):
            assert step(t).output[0] == pytest.approx(expected[t], abs=1e-5)
        redis_proc.restart(kill=kill)
        for t in range(5, 10):
            r = step(t)
            assert r.step_count == t + 1 and r.output[0] == pytest.approx(expected[t], abs=1e-5)
        redis_proc.kill()
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as e:
                step(10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"state store redis://127.0.0.1:{redis_proc.port}/0 is unreachable" in e.value.details()
            assert "nothing was applied" in e.value.details()
        redis_proc.start()               # the failed attempts changed nothing: step 11 is still step 11
        for t in range(10, 12):
            r = step(t)
            assert r.step_count == t + 1 and not r.replayed
            assert r.output[0] == pytest.approx(expected[t], abs=1e-5)
        assert srv.terminate(60) == 0
