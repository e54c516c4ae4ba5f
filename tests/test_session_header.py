"""Every client (Python, Go, Node) sends x-session-id on every call that names a session, as a proxy receives it."""

from __future__ import annotations

import numpy as np
import pytest
from mdproxy import RecordingProxy
from serverproc import DEMO_MODEL, ServerProcess
from test_interop import EXAMPLES, GO_DIR, NODE_DIR, client_env, run, tool

from statestream.client import Client

NAMING = {"Step", "StreamSteps", "GetState", "SetState", "CloseSession", "StepGroup", "CloseGroup"}
OPENING = {"OpenSession", "OpenGroup"}  # the header only when the caller chose the id


@pytest.fixture(scope="module")
def proxy():
    with ServerProcess(DEMO_MODEL) as srv, RecordingProxy(srv.target) as p:
        yield p


def calls_of(proxy: RecordingProxy, agent: str):
    return [c for c in proxy.calls if c.user_agent.startswith(agent)]


def check(calls) -> set[str]:
    """Every call naming a session carries x-session-id equal to it; OpenSession only when the id is given.
    Returns the methods seen."""
    assert calls, "no calls went through the proxy"
    for c in calls:
        header = c.metadata.get("x-session-id")
        if c.method in NAMING:
            assert c.sessions and set(c.sessions) == {header}, (c.method, header, c.sessions)
        elif c.method in OPENING:
            assert header == (c.sessions[0] or None), (header, c.sessions)
        else:
            assert header is None, c
    return {c.method for c in calls}


def test_python_client(proxy):
    xs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with Client(proxy.target, token=None) as c:
        with c.session("demo") as s:  # the server picks the id
            s.step(xs[0])
            list(s.stream(xs))
        with c.session("demo", "named-py", exactly_once=True) as s:
            s.step(xs[0])
            list(s.stream(xs))
            s.set_state(s.get_state())
        with c.group("demo", 3) as g:
            g.step(xs[:3])
        with c.group("demo", session_ids=["gm-1", "gm-2"], group_id="named-group") as g:
            g.step(xs[:2])
    seen = check(calls_of(proxy, "grpc-python"))
    assert NAMING | OPENING <= seen, seen


def test_go_client(proxy):
    run([tool("go"), "test", "-count=1", "./statestream"], cwd=GO_DIR, env=client_env(proxy.target), timeout=300)
    seen = check(calls_of(proxy, "grpc-go"))
    assert NAMING - {"StepGroup", "CloseGroup"} | {"OpenSession"} <= seen, seen
    named = [c for c in calls_of(proxy, "grpc-go") if c.method == "OpenSession" and c.sessions[0]]
    assert named, "the Go tests open no session with a chosen id"


def test_node_client(proxy):
    node = tool("node")
    run([node, "--test"], cwd=NODE_DIR, env=client_env(proxy.target), timeout=300)
    seen = check(calls_of(proxy, "grpc-node"))
    assert NAMING - {"StepGroup", "CloseGroup"} | {"OpenSession"} <= seen, seen


@pytest.mark.parametrize("script, prefix", [("ghz-unary.sh", "ghz-"), ("ghz-stream.sh", "ghz-stream-")])
def test_the_readme_ghz_recipes_send_the_header(proxy, script, prefix):
    tool("ghz")
    run(["bash", str(EXAMPLES / script), "-O", "json"], env=client_env(proxy.target), timeout=120)
    calls = calls_of(proxy, "grpc-go")  # ghz is grpc-go too: look at its sessions only
    mine = [c for c in calls if c.sessions and c.sessions[0].startswith(prefix) and "-g" in c.sessions[0]]
    assert len(mine) >= 8
    check(mine)
