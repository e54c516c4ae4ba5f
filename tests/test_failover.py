"""Issue 10, test 2: 3 replicas on one Redis behind HAProxy; kill -9 one mid-stream; every session ends exact."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import pytest
from haproxyproc import HAProxy
from reference import Reference
from serverproc import DEMO_MODEL, ServerProcess

from statestream.client import Client

N_SESSIONS, STEPS, F = 12, 60, 3


@pytest.fixture
def cluster():
    """(redis, [3 replicas], haproxy), started in parallel where they can be."""
    from redisproc import RedisProcess  # the scale-out branch's fixture (skips locally, fails in CI without it)

    with ExitStack() as stack:
        redis = stack.enter_context(RedisProcess())
        replicas = [ServerProcess(DEMO_MODEL, "--state-store", redis.url) for _ in range(3)]
        for r in replicas:
            stack.callback(r.stop)
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(ServerProcess.start, replicas))
        proxy = stack.enter_context(HAProxy([r.target for r in replicas]))
        yield redis, replicas, proxy


def test_kill_9_a_replica_mid_stream_every_session_resumes_exact(cluster):
    redis, replicas, proxy = cluster
    xs = np.random.default_rng(10).normal(size=(N_SESSIONS, STEPS, F)).astype(np.float32)
    ref = Reference(N_SESSIONS)
    expected = np.stack([ref.step(xs[:, t]) for t in range(STEPS)], axis=1)  # (N, STEPS, O)

    progress = [0] * N_SESSIONS
    got: list[list[np.ndarray]] = [[] for _ in range(N_SESSIONS)]
    clients = [Client(proxy.target, timeout=30) for _ in range(N_SESSIONS)]  # one connection per sensor

    hold = STEPS // 3
    arrived = threading.Semaphore(0)
    go = threading.Event()

    def paced(i: int):
        for t, x in enumerate(xs[i]):
            if t == hold:  # every stream waits here, mid-stream; released together just before the kill
                arrived.release()
                assert go.wait(60), "never released"
            yield x

    def sensor(i: int) -> None:
        s = clients[i].session("demo", f"fo-{i}", exactly_once=True)
        for y in s.stream(paced(i)):
            got[i].append(y)
            progress[i] += 1

    threads = [threading.Thread(target=sensor, args=(i,)) for i in range(N_SESSIONS)]
    errors: list[BaseException] = []
    for t in threads:
        t.run = _capture(t.run, errors)
        t.start()
    for _ in range(N_SESSIONS):
        assert arrived.acquire(timeout=60), f"a stream never reached step {hold}: {errors}"
    victim = 1
    go.set()  # every stream sends its next step at once ...
    replicas[victim].kill()  # ... and the SIGKILL lands while those are on the wire, streams in the middle
    at_kill = list(progress)
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert max(at_kill) < STEPS, at_kill  # every stream was still going when the replica died

    retried = sum(c.retries for c in clients)
    assert retried >= 1, "no stream was on the killed replica: the test proved nothing"
    proxy.wait_state(f"r{victim}", "DOWN")
    with Client(proxy.target) as c:
        for i in range(N_SESSIONS):
            st = c.attach(f"fo-{i}", "demo").get_state()
            assert st.step_count == STEPS and st.last_sequence_number == STEPS, (i, st.step_count)  # none doubled
    for c in clients:
        c.close()
    for i in range(N_SESSIONS):
        assert len(got[i]) == STEPS, (i, len(got[i]))  # none lost
        np.testing.assert_allclose(np.array(got[i]), expected[i], atol=1e-5, err_msg=f"session fo-{i}")


def _capture(run, errors: list):
    def wrapped():
        try:
            run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    return wrapped
