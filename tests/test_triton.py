"""Triton's protocol on the demo model, driven by the real tritonclient (.venv-triton) and perf_analyzer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from docblocks import docs_text
from inproc import FakeClock, InProcessServer
from reference import Reference, stepped
from serverproc import DEMO_MODEL, ROOT, ServerProcess
from triton_client.descriptors import describe
from tritonvenv import TRITON_PY, answer, drive, need, spawn

from statestream.inference import grpc_service_pb2, model_config_pb2
from statestream.server.engine.model import ModelRunner

if str(ROOT) not in sys.path:  # bench/ is a package at the repo root, not an installed one
    sys.path.insert(0, str(ROOT))
from bench import perf_analyzer  # noqa: E402

PERF_ANALYZER = perf_analyzer.PERF_ANALYZER

TOL = 1e-5


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO_MODEL) as srv:
        yield srv


@pytest.fixture(scope="module")
def manifest():
    return ModelRunner(DEMO_MODEL).manifest


def test_our_protos_are_a_field_exact_subset_of_tritonclients():
    """Every message, field, enum value and RPC we declare has Triton's number and type (tritonclient's stubs)."""
    theirs = drive("descriptors")
    ours = describe([grpc_service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR])
    assert "inference.GRPCInferenceService" in ours and "inference.ModelConfig" in ours
    for name, entries in ours.items():
        assert name in theirs, f"{name} is not in Triton's protos"
        for entry, value in entries.items():
            assert theirs[name].get(entry) == value, f"{name}.{entry}: ours {value}, Triton's {theirs[name].get(entry)}"


def test_metadata_and_config_describe_the_model(server, manifest):
    got = drive("metadata", server.target, "demo")
    assert got["live"] and got["ready"] and got["model_ready"] and not got["unknown_model_ready"]
    assert got["server"]["name"] == "statestream" and "sequence" in got["server"]["extensions"]
    n_in, n_out = manifest.features, manifest.output_size
    assert got["model"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "-1", str(n_in)]}]
    assert got["model"]["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "-1", str(n_out)]}]
    cfg = got["config"]
    assert cfg["name"] == "demo" and cfg["platform"] == "onnxruntime_onnx" and int(cfg["max_batch_size"]) == 256
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["-1", str(n_in)]}]
    assert cfg["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": ["-1", str(n_out)]}]
    seq = cfg["sequence_batching"]
    assert int(seq["max_sequence_idle_microseconds"]) == 3600 * 10**6  # the server's --idle-timeout
    states = {s["input_name"]: s for s in seq["state"]}
    assert len(states) == len(manifest.state_pairs()) == 4
    for _, _, state_in, state_out, units in manifest.state_pairs():
        s = states[state_in]
        assert s["output_name"] == state_out and s["dims"] == [str(units)] and s["data_type"] == "TYPE_FP32"
        assert s["initial_state"][0]["zero_data"] is True and s["initial_state"][0]["dims"] == [str(units)]


def test_sequence_over_modelinfer_equals_reference(server):
    xs = np.random.default_rng(1).uniform(-1, 1, (6, 3)).astype(np.float32)
    got = drive("sequence", server.target, "demo", json.dumps(xs.tolist()), "--sequence-id", "seq-a",
                "--outputs", "output,state_out.lstm2.h")
    steps = got["steps"]
    assert [s["id"] for s in steps] == [f"req-{t}" for t in range(6)]
    assert [s["parameters"]["step_count"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[0]["shapes"] == {"output": [1, 1, 1], "state_out.lstm2.h": [1, 16]}
    np.testing.assert_allclose([s["outputs"]["output"][0][0] for s in steps], stepped(xs), atol=TOL)
    ref = Reference()
    for x in xs:
        ref.step(x[None])
    np.testing.assert_allclose(steps[-1]["outputs"]["state_out.lstm2.h"][0], ref.states["state_in.lstm2.h"][0], atol=TOL)


def test_a_sequence_survives_a_restart_with_sqlite(tmp_path):
    """Sequences are sessions: with a durable store, a restarted server goes on where the sequence was."""
    xs = np.random.default_rng(4).uniform(-1, 1, (5, 3)).astype(np.float32)
    store = ["--state-store", f"sqlite:{tmp_path / 'state.db'}"]
    with ServerProcess(DEMO_MODEL, *store) as srv:
        first = drive("sequence", srv.target, "demo", json.dumps(xs[:3].tolist()), "--sequence-id", 808, "--no-end")
    with ServerProcess(DEMO_MODEL, *store) as srv:
        rest = drive("sequence", srv.target, "demo", json.dumps(xs[3:].tolist()), "--sequence-id", 808, "--no-start")
    steps = first["steps"] + rest["steps"]
    assert [s["parameters"]["step_count"] for s in steps] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([s["outputs"]["output"][0][0] for s in steps], stepped(xs), atol=TOL)


def test_50_interleaved_sequences_over_one_stream_each_equal_their_reference(server, tmp_path):
    n, T = 50, 8
    xs = np.random.default_rng(2).uniform(-1, 1, (n, T, 3)).astype(np.float32)
    np.save(tmp_path / "xs.npy", xs)
    got = drive("stream", server.target, "demo", tmp_path / "xs.npy", "--first-id", 5000)
    assert got["errors"] == []
    ref = Reference(n)
    expected = np.stack([ref.step(xs[:, t]) for t in range(T)], axis=1)  # (n, T, 1)
    np.testing.assert_allclose(np.array(got["outputs"]), expected, atol=TOL)


def test_bad_requests_get_the_right_codes_and_the_stream_stays_open(server):
    got = drive("errors", server.target, "demo")
    codes = {name: case["code"] for name, case in got.items() if name != "stream"}
    assert codes == {
        "wrong_shape": "INVALID_ARGUMENT", "shape_data_mismatch": "INVALID_ARGUMENT", "batch_of_two": "INVALID_ARGUMENT",
        "wrong_dtype": "INVALID_ARGUMENT", "nan": "INVALID_ARGUMENT", "unknown_model": "NOT_FOUND",
        "unknown_version": "NOT_FOUND", "unknown_output": "INVALID_ARGUMENT", "no_sequence_id": "INVALID_ARGUMENT",
        "no_start_unknown_id": "NOT_FOUND", "unknown_model_metadata": "NOT_FOUND", "unknown_model_config": "NOT_FOUND",
        "refused_start_opened_nothing": "NOT_FOUND",  # the refused starts above opened no session
    }
    assert "[1, T, 3]" in got["wrong_shape"]["message"] and "[1, 1, 4]" in got["wrong_shape"]["message"]
    assert "FP32" in got["wrong_dtype"]["message"] and "FP64" in got["wrong_dtype"]["message"]
    assert "sequence_start=true" in got["no_start_unknown_id"]["message"]
    assert "START flag" in got["no_start_unknown_id"]["message"]
    bad, ok = got["stream"]
    assert bad["error"].startswith("NOT_FOUND") and "sequence_start=true" in bad["error"]
    assert ok == {"error": None, "id": "ok"}


def test_retried_requests_with_a_sequence_number_replay_and_never_step_twice(server):
    xs = np.random.default_rng(3).uniform(-1, 1, (3, 3)).astype(np.float32)
    got = drive("retry", server.target, "demo", json.dumps(xs.tolist()), "--sequence-id", 424242)
    expected = stepped(xs)[:, 0]
    for t, name in enumerate(("start", "middle", "end")):
        first, retry = got[name], got[f"{name}_retry"]
        assert first["parameters"] == {"step_count": t + 1}, name
        assert retry["parameters"] == {"step_count": t + 1, "replayed": True}, name
        assert first["outputs"] == retry["outputs"]
        np.testing.assert_allclose(first["outputs"]["output"][0][0][0], expected[t], atol=TOL)


@pytest.mark.parametrize("mode", ["unary", "streaming"])
def test_perf_analyzer_completes_a_sequence_run(server, mode, tmp_path):
    """The bench's perf_analyzer command (sequences of 20) runs clean against a live server and its CSV parses."""
    need(PERF_ANALYZER)
    cmd = perf_analyzer.command(server.target, "demo", 3, mode, concurrency=4, requests=300)
    r = subprocess.run(cmd + ["-f", str(tmp_path / "pa.csv")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Sequence count:" in r.stdout and "error" not in r.stdout.lower(), r.stdout[-2000:]
    got = perf_analyzer.parse(tmp_path / "pa.csv")
    assert got["infer_per_s"] > 0 and 0 < got["p50_ms"] <= got["p99_ms"]


def test_an_idle_sequence_expires_with_an_explicit_message():
    with InProcessServer.from_args(DEMO_MODEL, "--idle-timeout", "1", clock=FakeClock()) as srv:
        p = spawn("expire", srv.target, "demo", "--sequence-id", 31)
        try:
            assert p.stdout.readline().strip() == "started"  # the sequence is open, the driver idle
            assert srv.expire(1.6) == 1  # the fake clock: 1.6 s idle, past the 1 s timeout
            got = answer(p)  # ... then its next request
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert got["code"] == "NOT_FOUND"
    assert "expired after 1 s idle" in got["message"] and "sequence_start=true" in got["message"], got


def test_sequence_ids_belong_to_their_bearer_token(tmp_path):
    (tmp_path / "tokens").write_text("token-a\ntoken-b\n")
    with ServerProcess(DEMO_MODEL, "--auth-token-file", str(tmp_path / "tokens")) as srv:
        got = drive("tenants", srv.target, "demo", "--tokens", "token-a,token-b")
    assert got["no_token"]["code"] == "UNAUTHENTICATED"
    assert got["start_a"] == {"code": "OK", "step_count": 1}
    assert got["step_b"]["code"] == "NOT_FOUND"  # token b's sequence 9 is not token a's
    assert got["end_a"] == {"code": "OK", "step_count": 2}
    assert got["stream_b"] == {"error": None}


def test_the_readme_examples_run(server):
    """examples/triton_client.py (tritonclient) and examples/perf-analyzer.sh, as docs/triton.md shows them."""
    need(PERF_ANALYZER)
    example = (ROOT / "examples" / "triton_client.py").read_text()
    assert example.split('"""\n\n', 1)[1].strip() in docs_text(), "the docs' tritonclient snippet differs from the file"
    r = subprocess.run([str(TRITON_PY), "examples/triton_client.py", server.target], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    xs = np.array([[0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0.3, 0.4, 0.5]], np.float32)
    np.testing.assert_allclose([float(v.strip("[]")) for v in r.stdout.split()], stepped(xs)[:, 0], atol=TOL)
    env = {**os.environ, "TARGET": server.target, "PATH": f"{PERF_ANALYZER.parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "examples/perf-analyzer.sh", "--streaming"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0 and "Sequence count:" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
