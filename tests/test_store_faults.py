"""Storage faults under a real server: the sqlite file removed, its -shm damaged, a corrupt file or row, a stopped
Redis. Nothing is acknowledged that is not stored; health says NOT_SERVING while the store cannot write."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serverproc import DEMO_MODEL, ROOT, ServerProcess

from statestream.contract.errors import Unavailable
from statestream.server.app.server import SERVICE_NAME
from statestream.server.store.base import SessionRecord, StoreUnreadable
from statestream.server.store.redis import RedisStore
from statestream.server.store.sqlite import SqliteStore
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

X = np.array([0.1, -0.2, 0.3], np.float32)
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def health(target: str) -> dict[str, int]:
    """The health status of the server and of the StateStreamService."""
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return {name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                for name in ("", SERVICE_NAME)}


def wait_health(target: str, status: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while (now := health(target)) != {"": status, SERVICE_NAME: status}:
        assert time.monotonic() < end, f"health is {now}, expected {status} for both"
        time.sleep(0.05)


def step(stub, sid: str, seq: int, timeout: float = 10) -> pb.StepResponse:
    return stub.Step(pb.StepRequest(session_id=sid, input=X, sequence_number=seq), timeout=timeout)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


# -- sqlite: the database's folder removed while the server runs ----------------------------------------------

def test_sqlite_folder_removed_while_serving_acknowledges_nothing_and_health_goes_not_serving(tmp_path):
    folder = tmp_path / "data"
    db = folder / "s.db"
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}", timeout=60) as srv, \
            grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"), timeout=10)
        for seq in (1, 2, 3):
            assert step(stub, "a", seq).step_count == seq
        shutil.rmtree(folder)
        for _ in range(5):   # a client retrying step 4: the first write notices, later ones are refused at once
            e = refused(lambda: step(stub, "a", 4))
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            assert f"sqlite:{db}: the database file was removed" in e.details()
            assert "nothing was applied" in e.details()
        e = refused(lambda: stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="b"), timeout=10))
        assert e.code() == grpc.StatusCode.UNAVAILABLE and "removed" in e.details()
        wait_health(srv.target, NOT_SERVING)
        assert stub.GetState(pb.GetStateRequest(session_id="a"), timeout=10).state.step_count == 3  # nothing applied
        srv.kill()                 # kill -9: what was acknowledged was in the file the operator removed
        assert "the database file was removed while the server ran" in srv.output()
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}") as srv, grpc.insecure_channel(srv.target) as ch:
        assert "restored 0 of 0 stored sessions" in srv.output()   # no step after the removal was acknowledged
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"), timeout=10)
        assert step(stub, "a", 1).step_count == 1 and health(srv.target)[""] == SERVING


def _record(sid: str) -> SessionRecord:
    return SessionRecord(sid, "demo", None, np.zeros(4, np.float32), 0, 0, 60.0, time.time() + 60)


def test_sqlite_file_replaced_is_unavailable_and_check_says_why(tmp_path):
    """A file copied over the database (a restore while it runs): its writes would go to the old file."""
    db = tmp_path / "s.db"
    store = SqliteStore(str(db), timeout=5)

    async def go():
        assert await store.create(_record("a")) and await store.check() is None
        (tmp_path / "copy.db").write_bytes(b"")
        os.replace(tmp_path / "copy.db", db)
        with pytest.raises(Unavailable, match="the database file was replaced by another file while the server"):
            await store.create(_record("b"))
        assert "replaced" in await store.check()
        with pytest.raises(Unavailable, match="nothing was applied"):
            await store.fetch(None, "a")
    asyncio.run(go())
    store.close()


# -- sqlite: a damaged -shm file ------------------------------------------------------------------------------

def test_sqlite_damaged_shm_file_does_not_kill_the_server(tmp_path):
    """SQLite memory-maps `-shm`: truncated (or made immutable) under a running server, its next transaction got
    SIGBUS. One process holds the file with locking_mode=EXCLUSIVE: the WAL index is in its own memory."""
    db = tmp_path / "s.db"
    shm = tmp_path / "s.db-shm"
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}") as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="a"), timeout=10)
        assert step(stub, "a", 1).step_count == 1
        if shm.exists():
            os.truncate(shm, 0)
        else:
            shm.write_bytes(b"")   # a stray empty -shm is not used either
        for seq in range(2, 40):
            assert step(stub, "a", seq).step_count == seq
        assert srv.proc.poll() is None and health(srv.target)[""] == SERVING
        assert "Bus error" not in srv.output()
        srv.kill()
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}") as srv, grpc.insecure_channel(srv.target) as ch:
        assert pb_grpc.StateStreamServiceStub(ch).GetState(pb.GetStateRequest(session_id="a"),
                                                           timeout=10).state.step_count == 39


# -- sqlite: a corrupt file, a bad row ------------------------------------------------------------------------

def test_corrupt_sqlite_file_stops_startup_with_one_line_and_exit_2(tmp_path):
    db = tmp_path / "s.db"
    db.write_bytes(b"this is not an sqlite database; " * 200)
    r = subprocess.run([sys.executable, "-m", "statestream.server.app.main", "--models", str(DEMO_MODEL), "--port", "0",
                        "--state-store", f"sqlite:{db}"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert f"sqlite:{db}" in line and "not a database" in line


def test_a_database_with_damaged_pages_is_named_at_load(tmp_path):
    db = tmp_path / "s.db"
    store = SqliteStore(str(db))
    for i in range(300):
        asyncio.run(store.create(_record(f"s{i}")))
    store.close()
    with open(db, "r+b") as f:   # the schema page is intact, the table's pages are not
        f.seek(3 * 4096)
        f.write(b"\xa5" * 3 * 4096)
    with pytest.raises(StoreUnreadable, match=f"state store sqlite:{db}: the database cannot be read .*malformed"):
        SqliteStore(str(db)).load()


def test_a_bad_row_is_skipped_with_one_line_naming_file_and_row_and_the_others_load(tmp_path, caplog):
    db = tmp_path / "s.db"
    store = SqliteStore(str(db))
    for sid in ("a", "b", "c"):
        asyncio.run(store.create(_record(sid)))
    store.close()
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE sessions SET state = ? WHERE id = 'b'", (b"\x00" * 5,))   # not whole float32s
    con.close()
    store = SqliteStore(str(db))
    assert sorted(r.id for r in store.load()) == ["a", "c"]
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"sqlite:{db}" in line and "(owner '', id 'b')" in line and "skipped" in line
    with pytest.raises(Unavailable, match="id 'b'"):
        asyncio.run(store.fetch(None, "b"))
    store.close()


# -- Redis stopped (SIGSTOP) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("store_timeout, deadline", [("1", 3.0), ("30", 2.0)])
def test_stopped_redis_is_unavailable_within_the_store_timeout_not_the_clients_deadline(redis_proc, store_timeout,
                                                                                       deadline):
    """A stopped Redis: the step's write is bounded by --store-timeout, and by the caller's own deadline when that
    comes first, so the caller learns UNAVAILABLE ("nothing was applied": retry) rather than DEADLINE_EXCEEDED."""
    with ServerProcess(DEMO_MODEL, "--state-store", redis_proc.url, "--store-timeout", store_timeout) as srv, \
            grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="r"), timeout=10)
        assert step(stub, "r", 1).step_count == 1
        os.kill(redis_proc.proc.pid, signal.SIGSTOP)
        try:
            e = refused(lambda: step(stub, "r", 2, timeout=deadline))
            # UNAVAILABLE, not DEADLINE_EXCEEDED: the answer reached the client before its deadline (a wall-clock
            # check here measured the client's own overhead too, and flaked by milliseconds at load 10)
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            assert "no answer within" in e.details() and "retry with the same sequence number" in e.details()
            wait_health(srv.target, NOT_SERVING)
        finally:
            os.kill(redis_proc.proc.pid, signal.SIGCONT)
        wait_health(srv.target, SERVING)
        assert step(stub, "r", 2).step_count == 2    # the retry: applied once (or answered from its record)
        assert step(stub, "r", 3).step_count == 3


def test_a_store_call_is_bounded_by_its_timeout(redis_proc, tmp_path):
    async def go():
        store = RedisStore(redis_proc.url, timeout=30)
        rec = _record("t")
        assert await store.create(rec)
        os.kill(redis_proc.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="no answer within 0.3 s"):
                await store.fetch(None, "t", timeout=0.3)
            assert time.monotonic() - started < 2
        finally:
            os.kill(redis_proc.proc.pid, signal.SIGCONT)
        assert (await store.fetch(None, "t")).id == "t"
        await store.aclose()
    asyncio.run(go())

    shared = SqliteStore(str(tmp_path / "w.db"), shared=True, busy_timeout=30)
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")   # another worker holds the write lock

    async def both():
        return await asyncio.gather(shared.create(_record("w"), timeout=0.3), shared.create(_record("q"), timeout=0.3),
                                    return_exceptions=True)
    try:
        waiting, queued = asyncio.run(both())
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert isinstance(waiting, Unavailable) and "did not answer within 0.3 s; this server applied nothing, but the " \
        "write may still reach the file" in waiting.message
    assert isinstance(queued, Unavailable) and queued.message.endswith("did not answer within 0.3 s; nothing was applied")
    # as the messages say: the write waiting for the lock went through once it was free; the queued one never ran
    assert asyncio.run(shared.fetch(None, "w")).id == "w" and asyncio.run(shared.fetch(None, "q")) is None
    shared.close()
