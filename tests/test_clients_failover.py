"""Issue 20: the same 40-step exactly-once scenario through a replica killed with -9 behind HAProxy, run by the sync
Python, asyncio Python, Go and Node clients at once; every session ends bit-identical across the four languages
and equal to the reference, none lost, none doubled, and every client went through the kill."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import threading
import time
from typing import Callable

import numpy as np
from reference import stepped
from serverproc import DEMO_MODEL, ServerProcess
from test_failover import cluster  # noqa: F401 - 3 replicas on one Redis behind HAProxy
from test_interop import GO_DIR, NODE_DIR, bits, client_env, run, sensor_signal, tool

from statestream import aio
from statestream.client import Client
from statestream.v1 import statestream_pb2 as pb

STEPS, PACE = 40, 0.05
LANGUAGES = ("sync", "aio", "go", "node")


class Runner:
    """One client's run: outputs as they are acknowledged, the client's retries, its error if it failed."""

    def __init__(self, name: str):
        self.name = name
        self.outputs: list[list[float]] = []
        self.retries = 0
        self.step_count = 0
        self.error: BaseException | str | None = None
        self.thread: threading.Thread | None = None

    def start(self, fn: Callable[[], None]) -> "Runner":
        def body():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.error = e
        self.thread = threading.Thread(target=body, name=f"failover-{self.name}", daemon=True)
        self.thread.start()
        return self


def paced(xs):
    for x in xs:
        time.sleep(PACE)  # a sensor: the kill lands while steps are on the wire
        yield x


async def apaced(xs):
    for x in xs:
        await asyncio.sleep(PACE)
        yield x


def python_sync(r: Runner, target: str, sid: str, xs: np.ndarray) -> None:
    with Client(target, timeout=30) as c:
        s = c.open_or_attach("demo", sid, exactly_once=True)
        for y in s.stream(paced(xs)):
            r.outputs.append(y.tolist())
        r.retries, r.step_count = c.retries, s.get_state().step_count


def python_aio(r: Runner, target: str, sid: str, xs: np.ndarray) -> None:
    async def main():
        async with aio.Client(target, timeout=30) as c:
            s = await c.open_or_attach("demo", sid, exactly_once=True)
            async for y in s.stream(apaced(xs)):
                r.outputs.append(y.tolist())
            r.retries, r.step_count = c.retries, (await s.get_state()).step_count
    asyncio.run(main())


def program(r: Runner, cmd: list[str], cwd, env: dict) -> None:
    """A Go or Node failover program: one JSON line per acknowledged step, then a summary."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for text in p.stdout:
        line = json.loads(text)
        r.retries = line["retries"]
        if line.get("done"):
            r.step_count = line["step_count"]
        else:
            r.outputs.append(line["output"])
    if p.wait(60) != 0:
        r.error = f"{cmd[0]} exited {p.returncode}: {p.stderr.read()}"


def routed_to(proxy, sid: str) -> str:
    """The replica HAProxy sends the session's calls to: the backend whose request count one call moved."""
    def totals() -> dict[str, int]:
        rows = csv.DictReader(proxy.command("show stat").lstrip("# ").splitlines())
        return {row["svname"]: int(row["stot"]) for row in rows
                if row["pxname"] == "statestream" and row["svname"] != "BACKEND"}
    before = totals()
    with Client(proxy.target) as c:
        c.call("GetModel", pb.GetModelRequest(name="demo"), session_id=sid)
    moved = [name for name, n in totals().items() if n != before.get(name)]
    assert len(moved) == 1, (sid, before, moved)
    return moved[0]


def same_replica_ids(proxy, n: int) -> tuple[str, list[str]]:
    """n session ids that all hash to one replica (probed through HAProxy), and that replica's name."""
    by_replica: dict[str, list[str]] = {}
    for i in range(200):
        sid = f"fo4-{i}"
        ids = by_replica.setdefault(routed_to(proxy, sid), [])
        ids.append(sid)
        if len(ids) == n:
            return next(k for k, v in by_replica.items() if v is ids), ids
    raise AssertionError(f"no replica got {n} of 200 ids: {by_replica}")


def test_four_clients_stream_through_a_replica_kill_bit_identically(cluster, tmp_path):  # noqa: F811
    redis, replicas, proxy = cluster
    victim, ids = same_replica_ids(proxy, len(LANGUAGES))  # every client's session is on the replica that dies
    xs = sensor_signal(STEPS, 3)
    go_bin = tmp_path / "failover"
    run([tool("go"), "build", "-o", str(go_bin), "./cmd/failover"], cwd=GO_DIR, env=client_env(proxy.target))
    env = client_env(proxy.target)
    sid = dict(zip(LANGUAGES, ids))
    pace_ms = str(int(PACE * 1000))
    runners = {name: Runner(name) for name in LANGUAGES}
    runners["go"].start(lambda: program(runners["go"], [str(go_bin), "-session", sid["go"], "-steps", str(STEPS),
                                                         "-pace", f"{pace_ms}ms"], GO_DIR, env))
    runners["node"].start(lambda: program(runners["node"], [tool("node"), "testing/failover.js", "--session", sid["node"],
                                                             "--steps", str(STEPS), "--pace-ms", pace_ms], NODE_DIR, env))
    runners["sync"].start(lambda: python_sync(runners["sync"], proxy.target, sid["sync"], xs))
    runners["aio"].start(lambda: python_aio(runners["aio"], proxy.target, sid["aio"], xs))

    deadline = time.monotonic() + 60
    while min(len(r.outputs) for r in runners.values()) < STEPS // 4:
        assert time.monotonic() < deadline and not any(r.error for r in runners.values()), \
            {n: (len(r.outputs), r.error) for n, r in runners.items()}
        time.sleep(0.005)
    replicas[int(victim.removeprefix("r"))].kill()  # SIGKILL, every client mid-stream on it
    at_kill = {n: len(r.outputs) for n, r in runners.items()}
    for r in runners.values():
        r.thread.join(120)
    assert all(n < STEPS for n in at_kill.values()), at_kill  # every stream was still going when the replica died
    assert {n: r.error for n, r in runners.items() if r.error} == {}

    expected = stepped(xs)
    for name, r in runners.items():
        assert len(r.outputs) == STEPS, (name, len(r.outputs))  # none lost
        assert r.step_count == STEPS, (name, r.step_count)  # none doubled
        assert r.retries >= 1, f"{name} never retried: it did not go through the kill"
        np.testing.assert_allclose(np.array(r.outputs), expected, atol=1e-5, err_msg=name)
        assert bits(r.outputs) == bits(runners["sync"].outputs), f"{name} differs from the sync Python client"
    with Client(proxy.target) as c:
        for name in LANGUAGES:
            st = c.attach(sid[name], "demo").get_state()
            assert st.step_count == STEPS and st.last_sequence_number == STEPS, (name, st.step_count)


def test_go_and_node_give_up_on_a_frozen_server_within_their_deadline(tmp_path):
    """SIGSTOP the server under Go and Node streams, exactly-once and plain: an exactly-once step's attempts time
    out and its retries stop at its deadline (2 s); a plain (pipelined) stream's overdue reply cancels it. Each
    program reports DEADLINE_EXCEEDED instead of hanging."""
    go_bin = tmp_path / "failover"
    run([tool("go"), "build", "-o", str(go_bin), "./cmd/failover"], cwd=GO_DIR, env=client_env("unused:0"))
    srv = ServerProcess(DEMO_MODEL).start()
    try:
        env = client_env(srv.target)
        procs = {}
        for mode in ("exactly-once", "plain"):
            extra = ["-plain"] if mode == "plain" else []
            procs["go", mode] = [str(go_bin), "-session", f"frozen-go-{mode}", "-steps", "100000", "-pace", "20ms",
                                 "-timeout", "2s", *extra], GO_DIR
            procs["node", mode] = [tool("node"), "testing/failover.js", "--session", f"frozen-node-{mode}", "--steps",
                                   "100000", "--pace-ms", "20", "--timeout-ms", "2000", *[f"-{e}" for e in extra]], NODE_DIR
        procs = {k: subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k, (cmd, cwd) in procs.items()}
        for p in procs.values():
            for _ in range(5):
                assert json.loads(p.stdout.readline())["step"] >= 1  # streaming
        os.kill(srv.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        for (lang, mode), p in procs.items():
            _, err = p.communicate(timeout=30)
            assert p.returncode == 1, (lang, mode, err)
            assert re.search(r"DeadlineExceeded|DEADLINE_EXCEEDED", err), (lang, mode, err)
            if mode == "plain":
                assert "no reply within 2" in err, (lang, err)  # the per-reply deadline; the call itself has none
        assert time.monotonic() - t0 < 10  # the 2 s deadlines, not a hang (and not 30 s of reconnects)
    finally:
        os.kill(srv.pid, signal.SIGCONT)
        srv.stop()
