"""deploy/haproxy.cfg with a real HAProxy: session affinity by x-session-id, spread over replicas, gRPC health checks."""

from __future__ import annotations

import itertools
import subprocess
from contextlib import ExitStack

import numpy as np
import pytest
from haproxyproc import CONFIG, SERVING_REPLY, HAProxy, health_check_request, render, require_haproxy
from serverproc import DEMO_MODEL, ServerProcess

from statestream.client import Client, NotFound
from statestream.v1 import statestream_pb2 as pb


def test_the_config_routes_on_the_session_header_over_h2_and_checks_grpc_health(tmp_path):
    text = CONFIG.read_text()
    for needle in ("balance hdr(x-session-id)", "hash-type consistent", "default-server proto h2 check",
                   "bind :50051 proto h2", "timeout client 1h", "timeout server 1h", "option tcp-check",
                   f"tcp-check send-binary {health_check_request().hex()}\n",
                   f"tcp-check expect binary {SERVING_REPLY}\n"):
        assert needle in text, needle
    cfg = tmp_path / "h.cfg"
    cfg.write_text(render(["127.0.0.1:1", "127.0.0.1:2"], 50051))
    r = subprocess.run([require_haproxy(), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def replicas():
    """Three replicas with the memory store: a call routed to the wrong one fails NOT_FOUND."""
    with ExitStack() as stack:
        servers = [stack.enter_context(ServerProcess(DEMO_MODEL)) for _ in range(3)]
        proxy = stack.enter_context(HAProxy([s.target for s in servers]))
        yield servers, proxy


def holders(servers, sid: str) -> list[int]:
    """Indexes of the replicas that hold session `sid` (asked directly, not through the proxy)."""
    found = []
    for i, srv in enumerate(servers):
        with Client(srv.target) as c:
            try:
                c.call("GetState", pb.GetStateRequest(session_id=sid))
                found.append(i)
            except NotFound:
                pass
    return found


def test_one_sessions_calls_stay_on_one_replica_and_sessions_spread(replicas):
    servers, proxy = replicas
    xs = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    n = 30
    with Client(proxy.target) as c:
        sessions = [c.session("demo", f"aff-{i}") for i in range(n)]
        for s in sessions:  # unary steps, a stream, a read: every call must find the session where it lives
            for x in xs[:3]:
                s.step(x)
            list(s.stream(xs[3:]))
            assert s.get_state().step_count == 6
    where = {s.id: holders(servers, s.id) for s in sessions}
    assert all(len(h) == 1 for h in where.values()), where  # on exactly one replica each
    counts = np.bincount([h[0] for h in where.values()], minlength=3)
    assert (counts > 0).all(), counts  # and the sessions spread over all three
    with Client(proxy.target) as c:
        for s in sessions:
            assert c.attach(s.id, "demo").close() == 6


def test_a_killed_replica_is_marked_down_by_the_grpc_health_check():
    with ExitStack() as stack:
        servers = [stack.enter_context(ServerProcess(DEMO_MODEL)) for _ in range(2)]
        proxy = stack.enter_context(HAProxy([s.target for s in servers]))
        assert proxy.states() == {"r0": "UP", "r1": "UP"}
        servers[1].kill()
        proxy.wait_state("r1", "DOWN")
        with Client(proxy.target) as c:  # every session now hashes to the one left
            for i in range(10):
                c.session("demo", f"left-{i}").step([0.1, 0.2, 0.3])
        assert len(holders(servers[:1], "left-0")) == 1


def test_a_draining_replica_is_taken_out_while_it_finishes_its_streams():
    with ExitStack() as stack:
        servers = [stack.enter_context(ServerProcess(DEMO_MODEL, "--grace", "30")) for _ in range(2)]
        proxy = stack.enter_context(HAProxy([s.target for s in servers]))
        client = stack.enter_context(Client(servers[1].target))
        s = client.session("demo")
        stream = s.stream(itertools.repeat(np.zeros(3, np.float32)))  # endless: the drain waits for it
        next(stream)
        servers[1].proc.send_signal(15)  # SIGTERM
        proxy.wait_state("r1", "DOWN")
        assert servers[1].proc.poll() is None  # still draining, yet out of rotation
        stream.close()
