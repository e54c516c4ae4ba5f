"""Silero VAD (silero-vad 6.2.3's silero_vad.onnx) adopted and served: 50 interleaved microphones, 512-sample chunks at
16 kHz, every chunk's speech probability equal to silero_vad's OnnxWrapper loop on the same audio within 1e-5, through
unary steps, streams, frames, groups and KServe, across GetState/SetState migration and a kill -9 on sqlite."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import silero
from serverproc import ROOT, ServerProcess

from statestream.client import Client
from statestream.contract.manifest import read_manifest
from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

TOL = 1e-5
N, T = silero.STREAMS, silero.CHUNKS
EXPORT = [sys.executable, "-m", "statestream.export.cli"]


@pytest.fixture(scope="module")
def audio():
    return silero.microphones()


@pytest.fixture(scope="module")
def expected(audio):
    """[50, 48]: silero_vad's OnnxWrapper loop (numpy mirror) on each microphone."""
    return silero.reference(audio)


@pytest.fixture(scope="module")
def vad_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "vad.onnx"
    r = subprocess.run([*EXPORT, "adopt", str(silero.model_file()), "--out", str(out), "--features", "512",
                        "--context", "64"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


@pytest.fixture(scope="module")
def server(vad_model):
    with ServerProcess(vad_model[0], "--metrics-port", "-1") as srv:
        yield srv


def test_the_numpy_mirror_equals_what_the_real_onnxwrapper_recorded(audio, expected):
    """tests/silero.py's OnnxWrapperLoop against silero_vad.utils_vad.OnnxWrapper run with torch on the same audio
    (scripts/silero_onnxwrapper_reference.py); the audio has speech in it (the VAD fires) and silence."""
    rec = np.load(silero.RECORDED)
    assert str(rec["audio_sha256"]) == silero.audio_sha256(audio)
    np.testing.assert_allclose(expected, rec["probs"], atol=TOL, rtol=0)
    assert 0.1 < (expected > 0.5).mean() < 0.5 and expected.min() < 0.1


def test_adopt_guesses_what_it_can_says_so_and_writes_the_manifest(vad_model):
    out, report = vad_model
    for guess in ["guessed: constant sr=16000 (int64)", "guessed: states state->stateN, paired by name",
                  "guessed: state 'state' [2, None, 128]: batch axis 1", "guessed: step input 'input'",
                  "guessed: step output 'output'", "guessed: layout BF"]:
        assert guess in report, report
    import onnx

    m = read_manifest(onnx.load(str(out)))
    assert (m.input, m.output, m.layout, m.features, m.output_size, m.context) == ("input", "output", "BF", 512, 1, 64)
    (s,) = m.states
    assert (s.input, s.output, s.shape, s.batch_axis) == ("state", "stateN", (2, 128), 1)
    (c,) = m.constants
    assert (c.name, c.dtype, c.shape, c.values) == ("sr", "int64", (), (16000,))
    assert m.state_width == 2 * 128 + 64 and m.parity_max_abs_error <= TOL
    assert [(l.name, l.cell, l.units) for l in m.layers] == [("state", "Tensor", 256), ("context", "Context", 64)]


@pytest.mark.parametrize("variant", ["silero_vad_op18_ifless.onnx", "silero_vad_16k_op15.onnx"])
def test_the_wheels_other_variants_adopt_and_prove(variant, tmp_path):
    from statestream.export.adopt import AdoptSpec, adopt_model

    report = adopt_model(silero.model_file(variant), tmp_path / "v.onnx", spec=AdoptSpec(features=512, context=64))
    assert report.max_abs_error <= TOL and report.manifest.states[0].batch_axis == 1


def test_adopt_refuses_what_it_cannot_tell_or_prove(tmp_path):
    out = tmp_path / "x.onnx"
    seq = subprocess.run([*EXPORT, "adopt", str(silero.model_file("silero_vad_16k_sequence.onnx")), "--out", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert seq.returncode == 3 and "cannot tell its batch axis; give --state h:hn:AXIS" in seq.stderr, seq.stderr
    axis = subprocess.run([*EXPORT, "adopt", str(silero.model_file()), "--out", str(out), "--features", "512",
                           "--state", "state:stateN:0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert axis.returncode == 3 and "only its batch axis (0) may be dynamic" in axis.stderr, axis.stderr
    width = subprocess.run([*EXPORT, "adopt", str(silero.model_file()), "--out", str(out), "--features", "100",
                            "--context", "64"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert width.returncode == 3 and "onnxruntime cannot run the graph" in width.stderr, width.stderr
    assert not out.exists()


def test_unary_steps_of_50_interleaved_microphones(server, audio, expected):
    got = np.zeros((N, T), np.float32)
    with Client(server.target) as c:
        sessions = [c.session("vad", f"unary-{i}") for i in range(N)]
        for t in range(T):
            for i, s in enumerate(sessions):
                got[i, t] = s.step(audio[i, t])[0]
        for s in sessions:
            s.close()
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_streams_of_50_interleaved_microphones(server, audio, expected):
    """One bidirectional stream per microphone, all open at once, read in turn."""
    got = np.zeros((N, T), np.float32)
    with Client(server.target) as c:
        sessions = [c.session("vad", f"stream-{i}") for i in range(N)]
        streams = [s.stream(iter(audio[i])) for i, s in enumerate(sessions)]
        for t in range(T):
            for i, st in enumerate(streams):
                got[i, t] = next(st)[0]
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_frames_of_50_microphones(server, audio, expected):
    """One StepFrame per 32 ms tick carries a chunk of every microphone."""
    ids = [f"frame-{i}" for i in range(N)]
    got = np.zeros((N, T), np.float32)
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        for t in range(T):
            r = stub.StepFrame(pb.StepFrameRequest(model="vad", session_ids=ids, inputs_raw=audio[:, t].tobytes(),
                                                   open_if_missing=True, raw_output=True))
            assert not r.errors
            got[:, t] = np.frombuffer(r.outputs_raw, "<f4")
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_a_group_of_50_microphones(server, audio, expected):
    got = np.zeros((N, T), np.float32)
    with Client(server.target) as c, c.group("vad", N) as g:
        for t in range(T):
            got[:, t] = g.step(audio[:, t])[:, 0]
        st = g.sessions[7].get_state()
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    np.testing.assert_array_equal(st.states["context"]["h"], audio[7, -1, -64:])


def test_kserve_sequences_of_50_interleaved_microphones(server, audio, expected):
    """Triton's ModelInfer: sequence_id per microphone, start on the first chunk, end on the last."""
    got = np.zeros((N, T), np.float32)
    with grpc.insecure_channel(server.target) as ch:
        stub = ipb_grpc.GRPCInferenceServiceStub(ch)
        for t in range(T):
            for i in range(N):
                req = ipb.ModelInferRequest(model_name="vad", raw_input_contents=[audio[i, t].tobytes()])
                req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 512])
                req.parameters["sequence_id"].int64_param = 1000 + i
                req.parameters["sequence_start"].bool_param = t == 0
                req.parameters["sequence_end"].bool_param = t == T - 1
                r = stub.ModelInfer(req)
                assert r.outputs[0].name == "output" and list(r.outputs[0].shape) == [1, 1, 1]
                got[i, t] = np.frombuffer(r.raw_output_contents[0], "<f4")[0]
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_get_state_returns_state_and_context_and_migrates_to_a_second_server(server, vad_model, audio, expected):
    half = T // 2
    got = np.zeros((N, T), np.float32)
    with Client(server.target) as a, ServerProcess(vad_model[0], "--metrics-port", "-1") as other, \
            Client(other.target) as b:
        moved = []
        for i in range(N):
            s = a.session("vad", f"move-{i}")
            got[i, :half] = [s.step(x)[0] for x in audio[i, :half]]
            st = s.get_state()
            assert st.step_count == half and set(st.states) == {"state", "context"}
            assert st.states["state"]["h"].shape == (256,) and np.abs(st.states["state"]["h"]).max() > 0
            np.testing.assert_array_equal(st.states["context"]["h"], audio[i, half - 1, -64:])
            s.close()
            moved.append(b.session("vad", f"move-{i}", initial_states=st.states))
        for t in range(half, T):
            for i, s in enumerate(moved):
                got[i, t] = s.step(audio[i, t])[0]
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_50_microphones_through_a_kill_9_and_restart_on_sqlite(vad_model, audio, expected, tmp_path):
    """Exactly-once sessions; the server is killed with SIGKILL mid-run and restarted on the same port and file:
    the states, context windows included, come back from sqlite, no chunk is lost or applied twice."""
    model = vad_model[0]
    store = ["--state-store", f"sqlite:{tmp_path / 'state.db'}", "--metrics-port", "-1"]
    srv = ServerProcess(model, *store).start()
    port, restarted = srv.port, {}

    def restart():
        time.sleep(0.5)
        restarted["srv"] = ServerProcess(model, *store, "--port", str(port)).start()

    got = np.zeros((N, T), np.float32)
    thread = None
    try:
        with Client(f"127.0.0.1:{port}", timeout=30) as c:
            sessions = [c.session("vad", f"mic-{i}", exactly_once=True) for i in range(N)]
            for t in range(T):
                if t == T // 2:
                    srv.kill()
                    thread = threading.Thread(target=restart, daemon=True)
                    thread.start()
                for i, s in enumerate(sessions):
                    got[i, t] = s.step(audio[i, t])[0]
            thread.join(60)
            assert c.retries >= 1
            states = [c.attach(f"mic-{i}", "vad", exactly_once=True).get_state() for i in range(N)]
        assert "restored 50 of 50" in restarted["srv"].output()
    finally:
        srv.kill()
        if "srv" in restarted:
            restarted["srv"].stop()
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert {(st.step_count, st.last_sequence_number) for st in states} == {(T, T)}


def test_model_info_describes_the_adopted_states(server):
    with Client(server.target) as c:
        info = c.model("vad")
    assert (info.features, info.output_size) == (512, 1)
    assert [(l.name, l.units, list(l.state_names)) for l in info.layers] == [("state", 256, ["h"]),
                                                                                 ("context", 64, ["h"])]
    assert json.loads(json.dumps(dict(info.exported_with)))["onnxruntime"]


def test_the_example_finds_speech_on_every_microphone(server):
    r = subprocess.run([sys.executable, "examples/vad_many_microphones.py", server.target, "--mics", "50"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 50 and all(line.startswith(f"mic {i:3d}: speech ") for i, line in enumerate(lines))
    assert sum("none" not in line for line in lines) >= 45, r.stdout


def test_a_spec_file_that_says_everything_leaves_nothing_to_guess(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"input": "input", "layout": "BF", "features": 512, "context": 64, "output": "output",
                                "states": [{"input": "state", "output": "stateN", "batch_axis": 1}],
                                "constants": {"sr": 16000}}))
    out = tmp_path / "vad.onnx"
    r = subprocess.run([*EXPORT, "adopt", str(silero.model_file()), "--out", str(out), "--spec", str(spec), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["guesses"] == [] and report["parity_max_abs_error"] <= TOL
    assert report["manifest"]["states"] == [{"layer": "state", "kind": "h", "input": "state", "output": "stateN",
                                             "shape": [2, 128], "batch_axis": 1}]


def test_the_cli_lists_the_adopted_model(server):
    r = subprocess.run([sys.executable, "-m", "statestream.client.cli", "--target", server.target, "models"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("vad\tfeatures=512\toutputs=1\tlayers=[state(256), context(64)]\tversion=1")
