"""Nothing lost: kill -9 with the sqlite store, retries after dropped connections, restarts, a soak."""

from __future__ import annotations

import asyncio
import queue
import re
import sqlite3
import urllib.request
from contextlib import closing

import grpc
import numpy as np
from inproc import InProcessServer, wait_until
from reference import Reference
from serverproc import DEMO_MODEL, ServerProcess

from statestream.client import Client
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

F = 3


def signal_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, F)).astype(np.float32)


def test_kill_9_mid_stream_then_resume_equals_uninterrupted(tmp_path):
    """The client keeps one unacknowledged step on the wire; kill -9 lands while it is there."""
    xs = signal_for(60)
    with ServerProcess(DEMO_MODEL) as ref_srv, Client(ref_srv.target) as c, c.session("demo") as s:
        reference = np.array([s.step(x) for x in xs])  # uninterrupted, one step per call

    db = f"sqlite:{tmp_path / 'state.db'}"
    srv = ServerProcess(DEMO_MODEL, "--state-store", db).start()
    got = []
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (seq := outbox.get()) is not None:
            yield pb.StreamStepsRequest(step=pb.StepRequest(session_id="sensor-7", input=xs[seq - 1],
                                                            sequence_number=seq))

    try:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.StateStreamServiceStub(ch)
            stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="sensor-7"))
            outbox.put(1)
            for reply in stub.StreamSteps(requests()):
                got.append(np.array(reply.step.output))
                outbox.put(len(got) + 1)
                if len(got) == 25:
                    srv.proc.kill()  # kill -9 with step 26 on the wire
                    srv.proc.wait(10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        outbox.put(None)
        srv.kill()
    assert len(got) == 25

    with ServerProcess(DEMO_MODEL, "--state-store", db) as srv2, grpc.insecure_channel(srv2.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        st = stub.GetState(pb.GetStateRequest(session_id="sensor-7")).state
        applied = st.last_sequence_number
        assert applied in (25, 26) and st.step_count == applied  # every acknowledged step survived
        if applied == 26:  # applied before the kill, never acknowledged: the recorded response is replayed
            r = stub.Step(pb.StepRequest(session_id="sensor-7", input=xs[25], sequence_number=26))
            assert r.replayed and r.step_count == 26
            got.append(np.array(r.output))
        for seq in range(applied + 1, len(xs) + 1):
            r = stub.Step(pb.StepRequest(session_id="sensor-7", input=xs[seq - 1], sequence_number=seq))
            got.append(np.array(r.output))
    np.testing.assert_array_equal(np.array(got), reference)


def test_retry_after_dropped_connection_same_response_no_double_step():
    xs = signal_for(4, seed=1)
    ref = Reference()
    expected = [ref.step(x[None])[0] for x in xs]
    # in-process: nothing here needs a process, and the test can see when step 3 is queued
    with InProcessServer.from_args(DEMO_MODEL, "--max-queue-delay", "0.3") as srv:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.StateStreamServiceStub(ch)
            stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="flaky"))
            for i in range(2):
                r = stub.Step(pb.StepRequest(session_id="flaky", input=xs[i], sequence_number=i + 1))
                np.testing.assert_allclose(r.output, expected[i], atol=1e-5)
        # step 3 is sent, then the connection drops before the answer (the batcher holds it 0.3 s)
        ch = grpc.insecure_channel(srv.target)
        call = pb_grpc.StateStreamServiceStub(ch).Step.future(
            pb.StepRequest(session_id="flaky", input=xs[2], sequence_number=3))
        srv.wait_until(lambda: srv.app.table.find("flaky").accepted_seq == 3)  # step 3 is in the server's queue
        ch.close()
        assert call.exception() is not None
        # no wait for the held step: a retry of a step still in flight waits for it and replays it
        with grpc.insecure_channel(srv.target) as ch2:
            stub = pb_grpc.StateStreamServiceStub(ch2)
            retry = stub.Step(pb.StepRequest(session_id="flaky", input=xs[2], sequence_number=3))
            again = stub.Step(pb.StepRequest(session_id="flaky", input=xs[2], sequence_number=3))
            assert retry.replayed and again.replayed and retry.step_count == 3
            assert list(retry.output) == list(again.output)
            np.testing.assert_allclose(retry.output, expected[2], atol=1e-5)
            st = stub.GetState(pb.GetStateRequest(session_id="flaky")).state
            assert st.step_count == 3 and st.last_sequence_number == 3
            r4 = stub.Step(pb.StepRequest(session_id="flaky", input=xs[3], sequence_number=4))
            np.testing.assert_allclose(r4.output, expected[3], atol=1e-5)


def test_retry_while_the_original_is_still_queued_waits_for_it():
    with ServerProcess(DEMO_MODEL, "--max-queue-delay", "0.3") as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="dup"))
        req = pb.StepRequest(session_id="dup", input=[0.1, 0.2, 0.3], sequence_number=1)
        first, second = stub.Step.future(req), stub.Step.future(req)
        a, b = first.result(), second.result()
        assert list(a.output) == list(b.output) and a.step_count == b.step_count == 1
        assert sorted([a.replayed, b.replayed]) == [False, True]


def test_sigterm_persists_and_restart_restores(tmp_path):
    db = tmp_path / "state.db"
    xs = signal_for(6, seed=2)
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}") as srv, Client(srv.target) as c:
        s = c.session("demo", "keep")
        c.session("demo", "brief", idle_timeout=5.0)
        for x in xs[:3]:
            s.step(x)
        saved = s.get_state()
        assert srv.terminate() == 0
        assert "persisted 2 sessions" in srv.output()
    with closing(sqlite3.connect(db)) as con:  # 10 s pass while the server is down: "brief" (5 s idle) expires
        con.execute("UPDATE sessions SET expires_at = expires_at - 10")  # ("keep" not); closed before the restart:
        con.commit()                                                      # the server holds its file exclusively
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}") as srv, Client(srv.target) as c:
        assert "restored 1 of 1 stored sessions" in srv.output()
        s = c.attach("keep", "demo")
        st = s.get_state()
        assert st.step_count == 3
        for layer in saved.states:
            np.testing.assert_array_equal(st.states[layer]["h"], saved.states[layer]["h"])
            np.testing.assert_array_equal(st.states[layer]["c"], saved.states[layer]["c"])
        s.close()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0  # closed: its row is gone


def open_sessions(srv) -> int:
    """The server's statestream_active_sessions, scraped from its Prometheus port (what it holds, untouched)."""
    port = int(re.search(r"metrics on :(\d+)", srv.output()).group(1))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return int(float(re.search(r"^statestream_active_sessions (\S+)$", text, re.M).group(1)))


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_soak_sessions_stream_open_close_expire_states_exact_memory_flat(tmp_path):
    """Bounded soak: 3 rounds of 200 sessions x 20 steps over concurrent streams, some closed, some expired."""
    db = tmp_path / "soak.db"
    n, T = 200, 20
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}", "--sweep-interval", "0.1",
                       "--max-queue-delay", "0.001", "--metrics-port", "-1") as srv:

        async def round_(r: int) -> None:
            xs = np.random.default_rng(r).normal(size=(n, T, F)).astype(np.float32)
            ref = Reference(n)
            expected = np.stack([ref.step(xs[:, t]) for t in range(T)], axis=1)
            async with grpc.aio.insecure_channel(srv.target) as ch:
                stub = pb_grpc.StateStreamServiceStub(ch)

                async def one(i: int):
                    sid = f"r{r}-{i}"
                    await stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid,
                                                                 idle_timeout_seconds=3.0 if i % 3 == 0 else 60))
                    reqs = [pb.StreamStepsRequest(step=pb.StepRequest(session_id=sid, input=x)) for x in xs[i]]
                    outs = [reply.step.output[0] async for reply in stub.StreamSteps(iter(reqs))]
                    np.testing.assert_allclose(outs, expected[i, :, 0], atol=1e-5)
                    st = (await stub.GetState(pb.GetStateRequest(session_id=sid))).state
                    np.testing.assert_allclose(st.layers[1].h, ref.states["state_in.lstm2.h"][i], atol=1e-5)
                    assert st.step_count == T
                    if i % 3 == 1:
                        await stub.CloseSession(pb.CloseSessionRequest(session_id=sid))

                await asyncio.gather(*(one(i) for i in range(n)))
                for i in range(n):
                    if i % 3 == 2:
                        await stub.CloseSession(pb.CloseSessionRequest(session_id=f"r{r}-{i}"))
            # the i % 3 == 0 sessions expire (in real time: the server is a process, its RSS is measured), the
            # others were closed: poll the server's own count (a GetState would keep them alive) until it is 0
            wait_until(lambda: open_sessions(srv) == 0, timeout=30, interval=0.05)

        rss = []
        for r in range(3):
            asyncio.run(round_(r))
            rss.append(rss_kb(srv.proc.pid))
        with grpc.insecure_channel(srv.target) as ch:
            gone = pb_grpc.StateStreamServiceStub(ch)
            try:
                gone.GetState(pb.GetStateRequest(session_id="r2-0"))
                raise AssertionError("r2-0 should have expired")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND and "expired" in e.details()
        assert rss[2] - rss[1] < 8 * 1024, f"RSS grew {rss} kB across identical rounds"
    with sqlite3.connect(db) as con:   # after the server: one server holds its file exclusively
        assert con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
