"""Model versions and hot reload: every session stays on the weights that made its state (issue 21)."""

from __future__ import annotations

import shutil
import sqlite3
import threading

import grpc
import numpy as np
import pytest
from inproc import InProcessServer
from onnx_fixtures import reweighted
from serverproc import DEMO_MODEL, ServerProcess

from statestream.contract.errors import FailedPrecondition, Unavailable
from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.server.app.config import Config
from statestream.server.engine.model import ModelRunner
from statestream.server.engine.table import SessionTable
from statestream.server.engine.types import StepRequest
from statestream.server.store.base import SessionRecord
from statestream.server.store.redis import _MODEL, pack, unpack
from statestream.server.store.sqlite import SqliteStore
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

RNG = np.random.default_rng(21)
WAIT = 60.0  # seconds a gate waits at most (never reached when things work)


class Ref:
    """One session stepped in-process on one model file, one timestep per call: what the server must answer."""

    def __init__(self, path):
        self.runner = ModelRunner(path)
        self.state = np.zeros((1, self.runner.state_width), np.float32)

    def step(self, x) -> np.ndarray:
        y, self.state = self.runner.run(np.asarray(x, np.float32).reshape(1, 1, -1), self.state)
        return y[0, 0]


def server(models, **kw) -> InProcessServer:
    return InProcessServer(cfg=Config(models=[str(m) for m in models], port=0, host="127.0.0.1", **kw))


def step(stub, sid, x, seq=None) -> pb.StepResponse:
    req = pb.StepRequest(session_id=sid, input=[float(v) for v in x])
    if seq is not None:
        req.sequence_number = seq
    return stub.Step(req)


@pytest.fixture
def repo(tmp_path):
    """A repository with demo.onnx (version 1, weights A); `b` is weights B of the same architecture."""
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(DEMO_MODEL, d / "demo.onnx")
    b = tmp_path / "b.onnx"
    reweighted(DEMO_MODEL, b, 0.5)
    return d, b


def test_versions_side_by_side_default_is_the_latest(repo):
    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    with server([d]) as srv:
        models = srv.stub.ListModels(pb.ListModelsRequest()).models
        assert [(m.name, m.version, m.is_default) for m in models] == [("demo", 1, False), ("demo", 2, True)]
        assert models[0].sha256 != models[1].sha256
        new = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo"))
        old = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", version=1))
        assert (new.model.version, old.model.version) == (2, 1)
        refs = {new.session_id: Ref(b), old.session_id: Ref(DEMO_MODEL)}
        for _ in range(4):
            x = RNG.uniform(-1, 1, 3)
            for sid, ref in refs.items():
                assert np.array_equal(np.float32(step(srv.stub, sid, x).output), ref.step(x))
        st = srv.stub.GetState(pb.GetStateRequest(session_id=old.session_id)).state
        assert (st.model_version, st.model_sha256) == (1, models[0].sha256)
        with pytest.raises(grpc.RpcError) as e:
            srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", version=3))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no version 3" in e.value.details()


def test_weights_swapped_under_one_version_are_refused_and_a_new_version_keeps_the_old_sessions(repo, tmp_path):
    """The issue's swap, replayed: a stored session is never stepped on weights that did not make its state."""
    d, b = repo
    db = f"sqlite:{tmp_path / 's.db'}"
    xs = RNG.uniform(-1, 1, (8, 3))
    ref = Ref(DEMO_MODEL)
    with server([d], state_store=db) as srv:
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="s1"))
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="s2"))
        step(srv.stub, "s2", xs[0])
        sha_a = srv.stub.GetModel(pb.GetModelRequest(name="demo")).model.sha256
        for t in range(5):
            assert np.array_equal(np.float32(step(srv.stub, "s1", xs[t]).output), ref.step(xs[t]))
    shutil.copy(b, d / "demo.onnx")  # other weights under the same name and version
    with server([d], state_store=db) as srv:
        with pytest.raises(grpc.RpcError) as e:
            step(srv.stub, "s1", xs[5])
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'demo' version 1" in e.value.details() and sha_a[:16] in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            srv.stub.GetState(pb.GetStateRequest(session_id="s1"))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert srv.stub.CloseSession(pb.CloseSessionRequest(session_id="s2")).step_count == 1  # it can be dropped
    shutil.copy(DEMO_MODEL, d / "demo.onnx")  # the weights as a new version: the old session keeps its own
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    with server([d], state_store=db) as srv:
        for t in range(5, 8):
            r = step(srv.stub, "s1", xs[t])
            assert np.array_equal(np.float32(r.output), ref.step(xs[t])) and r.step_count == t + 1
        new = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo"))
        assert new.model.version == 2
        with pytest.raises(grpc.RpcError) as e:
            srv.stub.GetState(pb.GetStateRequest(session_id="s2"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert np.array_equal(np.float32(step(srv.stub, new.session_id, xs[0]).output), Ref(b).step(xs[0]))


def test_hot_reload_under_100_streams_drops_no_step(repo):
    """100 streaming sessions while version 2 loads, the default moves to it and version 1 is unloaded: no step
    fails, the old sessions equal their reference on version 1, new sessions run version 2."""
    d, b = repo
    n, before, after = 100, 3, 3
    xs = RNG.uniform(-1, 1, (n, before + after, 3)).astype(np.float32)
    with server([d]) as srv:
        ids = [srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=f"old{i}")).session_id
               for i in range(n)]
        reloading = threading.Event()
        arrived = threading.Semaphore(0)
        outputs: dict[str, list] = {}
        failures: list = []

        def stream(i: int) -> None:
            def requests():
                for t in range(before + after):
                    if t == before:
                        arrived.release()
                        assert reloading.wait(WAIT)
                    yield pb.StreamStepsRequest(step=pb.StepRequest(
                        session_id=ids[i], input=xs[i, t].tolist(), sequence_number=t + 1))
            got = []
            with grpc.insecure_channel(srv.target) as ch:
                for r in pb_grpc.StateStreamServiceStub(ch).StreamSteps(requests()):
                    if r.HasField("error"):
                        failures.append((i, r.error.message))
                    got.append(np.float32(r.step.output))
            outputs[ids[i]] = got

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for _ in range(n):
            assert arrived.acquire(timeout=WAIT)
        (d / "demo" / "2").mkdir(parents=True)
        shutil.copy(b, d / "demo" / "2" / "model.onnx")
        reloading.set()  # the streams step on while version 2 loads and version 1 unloads
        assert srv.call(srv.app.reload()) == {}
        (d / "demo.onnx").unlink()
        assert srv.call(srv.app.reload()) == {}  # version 1 left the folder: unloading
        new_ids = [srv.stub.OpenSession(pb.OpenSessionRequest(model="demo")) for _ in range(10)]
        assert {r.model.version for r in new_ids} == {2}
        for t in threads:
            t.join(WAIT)
        assert not failures
        for i, sid in enumerate(ids):
            ref = Ref(DEMO_MODEL)
            assert np.array_equal(np.array(outputs[sid]), np.array([ref.step(x) for x in xs[i]])), sid
        for r in new_ids:
            ref = Ref(b)
            assert np.array_equal(np.float32(step(srv.stub, r.session_id, xs[0, 0]).output), ref.step(xs[0, 0]))
        index = ipb_grpc.GRPCInferenceServiceStub(srv.channel).RepositoryIndex(ipb.RepositoryIndexRequest())
        assert [(m.version, m.state) for m in index.models] == [("1", "UNLOADING"), ("2", "READY")]
        for sid in ids:
            srv.stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
        srv.call(srv.app.sweep())  # the last session of version 1 closed: it is freed
        index = ipb_grpc.GRPCInferenceServiceStub(srv.channel).RepositoryIndex(ipb.RepositoryIndexRequest())
        assert [(m.version, m.state) for m in index.models] == [("2", "READY")]
        assert ("demo", 1) not in srv.app.batchers and ("demo", 1) not in srv.app.table.slabs


def test_a_file_that_fails_to_load_changes_nothing_and_is_named(repo):
    d, _ = repo
    with server([d]) as srv:
        sid = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo")).session_id
        bad = d / "demo" / "2" / "model.onnx"
        bad.parent.mkdir(parents=True)
        bad.write_bytes(b"not an onnx file")
        errors = srv.call(srv.app.reload())
        assert list(errors) == [("demo", 2)] and str(bad) in errors["demo", 2]
        kserve = ipb_grpc.GRPCInferenceServiceStub(srv.channel)
        with pytest.raises(grpc.RpcError) as e:
            kserve.RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name="demo"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and str(bad) in e.value.details()
        index = kserve.RepositoryIndex(ipb.RepositoryIndexRequest()).models
        assert [(m.version, m.state) for m in index] == [("1", "READY"), ("2", "UNAVAILABLE")]
        assert str(bad) in index[1].reason
        assert srv.stub.OpenSession(pb.OpenSessionRequest(model="demo")).model.version == 1
        assert step(srv.stub, sid, [0.1, 0.2, 0.3]).step_count == 1


def test_unload_refuses_new_sessions_keeps_open_ones_and_force_closes_them(repo):
    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    with server([d]) as srv:
        kserve = ipb_grpc.GRPCInferenceServiceStub(srv.channel)
        old = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", version=1)).session_id
        unload = ipb.RepositoryModelUnloadRequest(model_name="demo")
        unload.parameters["version"].int64_param = 1
        kserve.RepositoryModelUnload(unload)
        with pytest.raises(grpc.RpcError) as e:
            srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", version=1))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "being unloaded" in e.value.details()
        assert step(srv.stub, old, [0.1, 0.2, 0.3]).step_count == 1  # runs on until it closes
        assert srv.call(srv.app.reload()) == {}  # a scan does not load back what the API unloaded
        assert srv.app.table.versions.unloading == {("demo", 1)}
        v2 = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo")).session_id
        unload = ipb.RepositoryModelUnloadRequest(model_name="demo")
        unload.parameters["force"].bool_param = True
        kserve.RepositoryModelUnload(unload)  # every version, its sessions closed now
        for sid in (old, v2):
            with pytest.raises(grpc.RpcError) as e:
                step(srv.stub, sid, [0.1, 0.2, 0.3])
            assert e.value.code() == grpc.StatusCode.NOT_FOUND and "unloaded with force" in e.value.details()
        assert kserve.RepositoryIndex(ipb.RepositoryIndexRequest()).models == []
        kserve.RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name="demo"))
        assert srv.stub.OpenSession(pb.OpenSessionRequest(model="demo")).model.version == 2


def _record(model_version: int = 1, model_hash: str = "") -> SessionRecord:
    return SessionRecord("s", "demo", None, np.zeros(64, np.float32), 3, 0, 60.0, 1e12, None, None, 0, 1, 0,
                         model_version, model_hash)


def test_a_stored_session_of_a_version_not_loaded_here_is_handed_back_or_refused():
    runner = ModelRunner(DEMO_MODEL)
    for shared, kind in ((True, Unavailable), (False, FailedPrecondition)):
        table = SessionTable({runner.key: runner}, 10, 5.0, 60.0, shared=shared)
        with pytest.raises(kind) as e:
            table.adopt(_record(2, "ab" * 32))
        assert "'demo' version 2 (sha256 abababababababab)" in e.value.message
    with pytest.raises(FailedPrecondition) as e:
        table.adopt(_record(1, "cd" * 32))
    assert "other weights" in e.value.message and str(DEMO_MODEL) in e.value.message
    assert table.adopt(_record(1, "")).key == ("demo", 1)  # recorded before versions: whatever version 1 is
    assert table.record(table.find("s")).model_hash == runner.sha256  # its next write records the hash


def test_records_written_before_versions_read_as_version_1(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)  # the schema before model versions
    db.execute("CREATE TABLE sessions (id TEXT NOT NULL, model TEXT NOT NULL, owner TEXT NOT NULL, state BLOB NOT "
               "NULL, step_count INTEGER NOT NULL, last_seq INTEGER NOT NULL, timeout REAL NOT NULL, expires_at REAL "
               "NOT NULL, last_output BLOB, last_rows INTEGER, last_state BLOB, last_step_count INTEGER, version "
               "INTEGER NOT NULL DEFAULT 0, last_fp INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (owner, id))")
    db.execute("INSERT INTO sessions VALUES ('s', 'demo', '', ?, 3, 0, 60, 1e12, NULL, NULL, NULL, 0, 1, 0)",
               (np.zeros(64, np.float32).tobytes(),))
    db.commit()
    db.close()
    store = SqliteStore(str(path))
    try:
        [rec] = store.load()
        assert (rec.model_version, rec.model_hash, rec.step_count) == (1, "", 3)
    finally:
        store.close()
    new = _record(3, "ef" * 32)
    got = unpack(pack(new), 1, 1e12)
    assert (got.model_version, got.model_hash) == (3, "ef" * 32)
    old = unpack(pack(new)[:-(_MODEL.size + 64)], 1, 1e12)  # packed before versions: no tail
    assert (old.model_version, old.model_hash, old.step_count) == (1, "", 3)


def test_kill9_and_restart_on_sqlite_restores_every_session_to_its_own_version(repo, tmp_path):
    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    db = f"sqlite:{tmp_path / 'k.db'}"
    xs = RNG.uniform(-1, 1, (6, 3))
    refs = {"v1": (1, Ref(DEMO_MODEL)), "v2": (2, Ref(b)), "dflt": (0, Ref(b))}
    with ServerProcess([d], "--state-store", db) as srv:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.StateStreamServiceStub(ch)
            for sid, (v, _) in refs.items():
                stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid, version=v))
            for x in xs[:3]:
                for sid, (_, ref) in refs.items():
                    assert np.array_equal(np.float32(step(stub, sid, x).output), ref.step(x))
        srv.kill()
    with ServerProcess([d], "--state-store", db) as srv:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.StateStreamServiceStub(ch)
            assert {sid: stub.GetState(pb.GetStateRequest(session_id=sid)).state.model_version for sid in refs} == \
                {"v1": 1, "v2": 2, "dflt": 2}
            for x in xs[3:]:
                for sid, (_, ref) in refs.items():
                    assert np.array_equal(np.float32(step(stub, sid, x).output), ref.step(x))


def test_tritonclient_loads_unloads_indexes_and_reads_statistics(repo):
    from tritonvenv import drive

    d, b = repo
    with ServerProcess([d]) as srv:
        (d / "demo" / "2").mkdir(parents=True)
        shutil.copy(b, d / "demo" / "2" / "model.onnx")
        got = drive("repository", srv.target, "demo")
    assert got["before"] == [["demo", "1", "READY"]]
    assert got["loaded"] == [["demo", "1", "READY"], ["demo", "2", "READY"]]
    assert got["infer_version"] == "2"  # the default moved to the latest
    assert got["stats"]["2"] == {"inference_count": "2", "execution_count": "2", "success": "2"}
    assert got["stats"]["1"] == {"inference_count": "0", "execution_count": "0", "success": "0"}
    assert got["missing_version"]["code"] == "NOT_FOUND" and "no version 9" in got["missing_version"]["message"]
    assert got["unloaded"] == [] and got["ready_after_unload"] is False  # no session left: freed at once
    assert got["reloaded"] == got["loaded"]


def test_migrate_moves_sessions_with_the_same_state_layout_and_refuses_others(repo, tmp_path):
    """MigrateSession carries a session's states to another version; the client migrates a model with a report."""
    from onnx_fixtures import fragile_model

    from statestream.client import Client

    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    (d / "demo" / "3").mkdir(parents=True)
    fragile_model(d / "demo" / "3" / "model.onnx")  # another state layout (one SimpleRNN unit)
    xs = RNG.uniform(-1, 1, (4, 3))
    with server([d], state_store=f"sqlite:{tmp_path / 'm.db'}") as srv:
        ids = [srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=f"m{i}", version=1)).session_id
               for i in range(3)]
        ref_a = Ref(DEMO_MODEL)
        for x in xs[:2]:
            ys = [np.float32(step(srv.stub, sid, x).output) for sid in ids]
            y = ref_a.step(x)
            assert all(np.array_equal(v, y) for v in ys)
        with pytest.raises(grpc.RpcError) as e:
            srv.stub.MigrateSession(pb.MigrateSessionRequest(session_id=ids[0], version=3))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "('lstm1', 'LSTM', 16)" in e.value.details() and "('rnn', 'SimpleRNN', 1)" in e.value.details()
        with Client(srv.target) as client:
            report = client.migrate("demo", 2, from_version=1)
        assert report.moved == dict.fromkeys(ids, 1) and not report.refused and report.version == 2
        ref_b = Ref(b)
        ref_b.state = ref_a.state.copy()  # the states carried over, now stepped by weights B
        for x in xs[2:]:
            y = ref_b.step(x)
            for sid in ids:
                r = step(srv.stub, sid, x)
                assert np.array_equal(np.float32(r.output), y)
        st = srv.stub.GetState(pb.GetStateRequest(session_id=ids[0])).state
        assert (st.model_version, st.step_count) == (2, 4)
        listed = srv.stub.ListSessions(pb.ListSessionsRequest(model="demo", version=1)).sessions
        assert list(listed) == []
    with server([d], state_store=f"sqlite:{tmp_path / 'm.db'}") as srv:  # the store recorded the move
        st = srv.stub.GetState(pb.GetStateRequest(session_id=ids[0])).state
        assert (st.model_version, st.step_count) == (2, 4)


def test_a_stored_session_waits_for_its_version_and_loading_it_restores_the_session(repo, tmp_path):
    d, b = repo
    db = f"sqlite:{tmp_path / 'w.db'}"
    xs = RNG.uniform(-1, 1, (4, 3))
    ref = Ref(DEMO_MODEL)
    with server([d], state_store=db) as srv:
        srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="w"))
        for x in xs[:2]:
            step(srv.stub, "w", x)
            ref.step(x)
    (d / "demo.onnx").unlink()  # only version 2 at the next start
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    with server([d], state_store=db) as srv:
        with pytest.raises(grpc.RpcError) as e:
            step(srv.stub, "w", xs[2])
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not loaded" in e.value.details()
        shutil.copy(DEMO_MODEL, d / "demo.onnx")
        ipb_grpc.GRPCInferenceServiceStub(srv.channel).RepositoryModelLoad(
            ipb.RepositoryModelLoadRequest(model_name="demo"))
        for t, x in enumerate(xs[2:], start=3):
            r = step(srv.stub, "w", x)
            assert np.array_equal(np.float32(r.output), ref.step(x)) and r.step_count == t


def test_sighup_and_the_poll_load_new_versions_of_a_running_server(repo):
    import os
    import signal
    import time

    d, b = repo

    def versions(stub):
        return [m.version for m in stub.ListModels(pb.ListModelsRequest()).models]

    def until(stub, want):
        deadline = time.monotonic() + WAIT
        while (got := versions(stub)) != want and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    with ServerProcess([d]) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        (d / "demo" / "2").mkdir(parents=True)
        shutil.copy(b, d / "demo" / "2" / "model.onnx")
        assert versions(stub) == [1]  # no poll: nothing changes until asked
        os.kill(srv.pid, signal.SIGHUP)
        assert until(stub, [1, 2]) == [1, 2]
    with ServerProcess([d], "--repository-poll", "0.1") as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        (d / "demo" / "3").mkdir(parents=True)
        shutil.copy(b, d / "demo" / "3" / "model.onnx")
        assert until(stub, [1, 2, 3]) == [1, 2, 3]
        shutil.rmtree(d / "demo" / "2")
        assert until(stub, [1, 3]) == [1, 3]  # no session on it: unloaded and freed


def test_a_replica_without_a_sessions_version_hands_it_back_unavailable(repo, redis_proc, tmp_path):
    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    only_v1 = tmp_path / "v1"
    only_v1.mkdir()
    shutil.copy(DEMO_MODEL, only_v1 / "demo.onnx")
    with server([d], state_store=redis_proc.url) as a, server([only_v1], state_store=redis_proc.url) as b_:
        sid = a.stub.OpenSession(pb.OpenSessionRequest(model="demo")).session_id  # on version 2
        step(a.stub, sid, [0.1, 0.2, 0.3], seq=1)
        with pytest.raises(grpc.RpcError) as e:
            step(b_.stub, sid, [0.1, 0.2, 0.3], seq=2)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "'demo' version 2" in e.value.details() and "retry on a replica" in e.value.details()
        assert step(a.stub, sid, [0.1, 0.2, 0.3], seq=2).step_count == 2  # the retry elsewhere applies it once


def test_kserve_sequences_and_groups_name_a_version(repo):
    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    x = np.float32([0.1, 0.2, 0.3])
    with server([d]) as srv:
        kserve = ipb_grpc.GRPCInferenceServiceStub(srv.channel)

        def infer(seq, version, start):
            req = ipb.ModelInferRequest(model_name="demo", model_version=version)
            req.parameters["sequence_id"].string_param = seq
            req.parameters["sequence_start"].bool_param = start
            req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 3])
            req.raw_input_contents.append(x.tobytes())
            resp = kserve.ModelInfer(req)
            return resp.model_version, np.frombuffer(resp.raw_output_contents[0], np.float32)[-1]

        refs = {"": Ref(b), "1": Ref(DEMO_MODEL), "2": Ref(b)}
        for v, ref in refs.items():
            assert infer(f"seq{v}", v, True) == (v or "2", ref.step(x))
        for v, ref in refs.items():  # a sequence stays on its version when the request names none
            assert infer(f"seq{v}", "", False) == (v or "2", ref.step(x))
        with pytest.raises(grpc.RpcError) as e:
            infer("seq1", "2", False)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "on version 1" in e.value.details()
        meta = kserve.ModelMetadata(ipb.ModelMetadataRequest(name="demo"))
        assert list(meta.versions) == ["1", "2"]
        g = srv.stub.OpenGroup(pb.OpenGroupRequest(model="demo", size=2, version=1))
        assert g.model.version == 1
        r = srv.stub.StepGroup(pb.StepGroupRequest(group_id=g.group_id, inputs=np.tile(x, 2).tolist()))
        assert np.array_equal(np.float32(r.outputs), np.repeat(Ref(DEMO_MODEL).step(x), 2))


def test_prometheus_metrics_are_labelled_by_model_and_version(repo):
    import re
    import urllib.request

    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    with server([d], metrics_port=-1) as srv:
        for v, n in ((1, 2), (2, 3)):
            sid = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", version=v)).session_id
            for _ in range(n):
                step(srv.stub, sid, [0.1, 0.2, 0.3])
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.app.metrics_port}/metrics", timeout=5).read().decode()
    for v, n in ((1, 2), (2, 3)):
        assert re.search(rf'statestream_steps_total\{{model="demo",version="{v}"\}} {n}\.0', text), text
        assert re.search(rf'statestream_model_runs_total\{{model="demo",version="{v}"\}} {n}\.0', text)
        assert re.search(rf'statestream_step_outcomes_total\{{model="demo",outcome="success",version="{v}"\}} '
                         rf'{n}\.0', text)


def test_the_cli_loads_unloads_and_migrates(repo, capsys):
    from statestream.client import cli

    d, b = repo
    with server([d]) as srv:
        t = ["--target", srv.target]
        sid = srv.stub.OpenSession(pb.OpenSessionRequest(model="demo")).session_id
        step(srv.stub, sid, [0.1, 0.2, 0.3])
        (d / "demo" / "2").mkdir(parents=True)
        shutil.copy(b, d / "demo" / "2" / "model.onnx")
        assert cli.main([*t, "load", "demo"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split("\t", 1)[0] for line in lines] == ["demo", "demo"]
        assert lines[0].endswith("version=1\tREADY") and lines[1].endswith("version=2 (default)\tREADY")
        assert cli.main([*t, "migrate", "demo", "--to", "2"]) == 0
        out = capsys.readouterr()
        assert out.out == f"{sid}\tmoved from version 1 to 2\n" and "1 moved" in out.err
        assert cli.main([*t, "unload", "demo", "--version", "2", "--force"]) == 0
        assert capsys.readouterr().out.splitlines() == [lines[0].replace("version=1", "version=1 (default)")]
        with pytest.raises(grpc.RpcError) as e:
            step(srv.stub, sid, [0.1, 0.2, 0.3])
        assert "unloaded with force" in e.value.details()


def test_frames_of_many_sessions_over_two_versions_and_a_migrated_sessions_cells(repo):
    """Issue 21 merged with the per-slot arrays of issue 18: a frame of sessions of two versions (more than BULK of
    each) is one unit per version, each on its own weights and slab; a migrated session's fields move with it to the
    new version's slab, and a frame of it with that version's sessions is found at once (Engine._cached)."""
    from statestream.server.engine.sessions import BULK

    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    n = BULK + 2
    with server([d]) as srv:
        ids = {v: [srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=f"v{v}-{i}", version=v))
                   .session_id for i in range(n)] for v in (1, 2)}
        frame = [sid for pair in zip(ids[1], ids[2]) for sid in pair]  # interleaved
        refs = {sid: Ref(DEMO_MODEL if sid.startswith("v1") else b) for sid in frame}
        for k in range(3):
            xs = RNG.uniform(-1, 1, (len(frame), 3)).astype(np.float32)
            r = srv.stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=frame, inputs=xs.ravel()))
            assert not r.errors and list(r.step_counts) == [k + 1] * len(frame)
            out = np.float32(r.outputs).reshape(len(frame), -1)
            for j, sid in enumerate(frame):
                assert np.array_equal(out[j], refs[sid].step(xs[j]))
        moved = ids[1][0]
        srv.stub.MigrateSession(pb.MigrateSessionRequest(session_id=moved, version=2))
        s = srv.session(moved)
        slab = srv.run(lambda: srv.app.table.slabs["demo", 2])
        assert s.key == ("demo", 2) and s.cells is slab and slab.session[s.slot] is s and s.step_count == 3
        found = StepRequest(None, np.zeros((n + 1, 1, 3), np.float32), model="demo", ids=[moved, *ids[2]])
        assert srv.run(lambda: srv.app.engine._cached(found)[1]) is not None  # all proven in v2's slab at once
        ref = Ref(b)
        ref.state = refs[moved].state.copy()
        refs[moved] = ref
        group = [moved, *ids[2]]
        xs = RNG.uniform(-1, 1, (len(group), 3)).astype(np.float32)
        r = srv.stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=group, inputs=xs.ravel()))
        assert not r.errors and list(r.step_counts) == [4] * len(group)
        out = np.float32(r.outputs).reshape(len(group), -1)
        for j, sid in enumerate(group):
            assert np.array_equal(out[j], refs[sid].step(xs[j]))
        srv.stub.CloseSession(pb.CloseSessionRequest(session_id=moved))
        assert srv.run(lambda: slab.session[s.slot]) is None


def test_steps_queued_behind_a_migration_run_on_the_new_versions_slab(repo, tmp_path):
    """A step sent while MigrateSession writes (the session held) runs after the move, on the new version's weights
    and from the session's row in the new slab (its unit's slot follows it); a frame that also names a session
    staying on the old version fails the moved session's entry (FAILED_PRECONDITION) and steps the other."""
    import asyncio

    from inproc import Gate, GatedSqliteStore, wait_until

    d, b = repo
    (d / "demo" / "2").mkdir(parents=True)
    shutil.copy(b, d / "demo" / "2" / "model.onnx")
    store = GatedSqliteStore(str(tmp_path / "g.db"))
    cfg = Config(models=[str(d)], port=0, host="127.0.0.1", state_store=f"sqlite:{tmp_path / 'g.db'}")
    with InProcessServer(store, cfg) as srv:
        store.gate = Gate(srv)
        for sid in ("a", "c", "f"):
            srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid, version=1))
        for sid in ("p", "q"):  # the moved sessions' slots in version 2's slab are not their old ones
            srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid, version=2))
        x0, x1, x2 = RNG.uniform(-1, 1, (3, 3)).astype(np.float32)
        ref_a, ref_c = Ref(DEMO_MODEL), Ref(DEMO_MODEL)
        assert np.array_equal(np.float32(step(srv.stub, "a", x0).output), ref_a.step(x0))

        def migrating(sid):
            store.gate.close()
            moved = asyncio.run_coroutine_threadsafe(srv.app.engine.migrate(sid, None, 2), srv.loop)
            wait_until(lambda: store.gate.waiting == 1)
            return moved

        moved = migrating("a")
        queued = asyncio.run_coroutine_threadsafe(srv.app.service.step(pb.StepRequest(
            session_id="a", input=x1.tolist()), None), srv.loop)
        wait_until(lambda: srv.run(lambda: srv.app.table.find("a").waiting) == 1)
        store.gate.open()
        moved.result(WAIT)
        ref = Ref(b)
        ref.state = ref_a.state.copy()
        assert np.array_equal(np.float32(queued.result(WAIT).output), ref.step(x1))
        assert srv.stub.GetState(pb.GetStateRequest(session_id="p")).state.step_count == 0

        moved = migrating("f")
        frame = asyncio.run_coroutine_threadsafe(srv.app.service.StepFrame(pb.StepFrameRequest(
            model="demo", session_ids=["c", "f"], inputs=np.stack([x2, x2]).ravel()), None), srv.loop)
        wait_until(lambda: srv.run(lambda: srv.app.table.find("f").waiting) == 1)
        store.gate.open()
        moved.result(WAIT)
        r = frame.result(WAIT)
        assert [e.index for e in r.errors] == [1] and "moved to version 2" in r.errors[0].error.message
        assert list(r.step_counts) == [1, 0]
        assert np.array_equal(np.float32(r.outputs).reshape(2, -1)[0], ref_c.step(x2))
