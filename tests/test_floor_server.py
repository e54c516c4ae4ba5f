"""The floor server (bench.floor_server) runs the model for real: the same answers as statestream-server, and issue
18's targets in the bench report carry its bound.

The floor is what bench.run reports every target's ratio against (floor / null bounds server / null), so it must
do the real work: each session's states carried from step to step, groups and frames on their rows."""

from __future__ import annotations

import queue
import sys
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a package at the repo root, not an installed one
    sys.path.insert(0, str(ROOT))

from bench.procs import floor_server, statestream_server  # noqa: E402
from bench.targets import targets_18  # noqa: E402
from statestream.v1 import statestream_pb2 as pb  # noqa: E402
from statestream.v1 import statestream_pb2_grpc as pb_grpc  # noqa: E402

DEMO = ROOT / "models" / "demo.onnx"
TOL = 1e-6  # the same model and onnxruntime: the answers agree to float32 rounding


def _answers(target: str, open_group: bool) -> dict[str, list[np.ndarray]]:
    """Three unary steps of one session (raw and floats), three frames of 3 sessions and three group steps of 4."""
    rng = np.random.default_rng(7)
    xs = rng.uniform(-1, 1, (3, 1, 3)).astype(np.float32)
    frames = rng.uniform(-1, 1, (3, 3, 2, 3)).astype(np.float32)  # 3 frames of 3 sessions, T = 2
    groups = rng.uniform(-1, 1, (3, 4, 3)).astype(np.float32)
    streamed = rng.uniform(-1, 1, (3, 2, 1, 3)).astype(np.float32)  # 3 steps of 2 streams at once
    out: dict[str, list[np.ndarray]] = {"step": [], "frame": [], "group": [], "counts": [], "stream": []}
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        for i, x in enumerate(xs):
            req = pb.StepRequest(session_id="floor-a", model="demo", open_if_missing=True)
            if i % 2:
                req.input.extend(x.ravel().tolist())
            else:
                req.input_raw, req.raw_output = x.tobytes(), True
            r = stub.Step(req)
            out["step"].append(np.frombuffer(r.output_raw, np.float32) if i % 2 == 0 else np.array(r.output, np.float32))
            out["counts"].append(r.step_count)
        for x in frames:
            r = stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=["f1", "f2", "f3"], inputs_raw=x.tobytes(),
                                                   timesteps=2, return_sequences=True, raw_output=True,
                                                   open_if_missing=True))
            out["frame"].append(np.frombuffer(r.outputs_raw, np.float32))
            out["counts"].extend(r.step_counts)
        feeds = [queue.Queue(), queue.Queue()]
        calls = [stub.StreamSteps(iter(q.get, None)) for q in feeds]
        for x in streamed:  # both streams' steps sent before either answer is read: they may share a run
            for k, q in enumerate(feeds):
                q.put(pb.StreamStepsRequest(step=pb.StepRequest(session_id=f"s{k}", model="demo", open_if_missing=True,
                                                                input_raw=x[k].tobytes(), raw_output=True)))
            for call in calls:
                r = next(call).step
                out["stream"].append(np.frombuffer(r.output_raw, np.float32))
                out["counts"].append(r.step_count)
        for q in feeds:
            q.put(None)
        if open_group:
            stub.OpenGroup(pb.OpenGroupRequest(model="demo", group_id="g4", size=4))
        for x in groups:
            r = stub.StepGroup(pb.StepGroupRequest(group_id="g4", inputs_raw=x.tobytes(), raw_output=True))
            out["group"].append(np.frombuffer(r.outputs_raw, np.float32))
            out["counts"].append(r.step_count)
    return out


def test_the_floor_answers_as_the_server_does():
    with statestream_server(DEMO) as srv:
        want = _answers(srv.target, open_group=True)
    with floor_server(DEMO) as floor:
        got = _answers(floor.target, open_group=False)
        # on the server's own event loop (--loop auto: uvloop, which the dev extra installs, as the server extra)
        assert "floor-server listening on" in floor.output() and "(event loop: uvloop)" in floor.output()
    assert got["counts"] == want["counts"]
    for key in ("step", "frame", "group", "stream"):
        for a, b in zip(got[key], want[key], strict=True):
            assert a.shape == b.shape and a.size > 0
            np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    # The states are carried: a session's later steps differ from a fresh session's on the same input.
    assert not np.allclose(want["step"][0], want["step"][2])


def _row(ratio_null: float, floor_ratio: float, **extra) -> dict:
    null = {"msgs_per_s": 1000.0, "session_steps_per_s": 1000.0, "p50_ms": 1.0, "p99_ms": 3.0}
    floor = {k: (v * floor_ratio if k.endswith("_s") else v) for k, v in null.items()}
    server = {k: (v * ratio_null if k.endswith("_s") else v) for k, v in null.items()}
    return {"server": server, "null": null, "floor": floor, "ratio_null": ratio_null, **extra}


def test_issue_18_targets_carry_the_floor_as_their_bound():
    res = {
        "transport": [_row(0.85, 0.9, scenario="unary", concurrency=1), _row(0.6, 0.7, scenario="unary", concurrency=4),
                      _row(0.5, 0.65, scenario="stream", concurrency=1)],
        "groups": [_row(0.5, 0.55, size=256, concurrency=4),
                   {**_row(0.3, 0.8, size=1024, concurrency=4),
                    "server": {"session_steps_per_s": 1_200_000.0, "p50_ms": 1.0, "p99_ms": 2.0}}],
        "frames": [{**_row(0.4, 0.5, size=1024, concurrency=4),
                    "server": {"session_steps_per_s": 900_000.0, "p50_ms": 1.0, "p99_ms": 2.0}}],
        "half_load": {"server": {"p50_ms": 1.0, "p99_ms": 1.5}, "null": {"p50_ms": 1.0, "p99_ms": 4.0},
                      "stream": {"server": {"p50_ms": 10.0, "p99_ms": 30.0}}},
    }
    got = {t["target"]: t for t in targets_18(res)}
    unary1, unary4 = got["18.3 unary Step at c=1 >= 0.8 x null"], got["18.3 unary Step at c=4 >= 0.8 x null"]
    assert unary1["result"] == "PASS" and "out of reach" not in unary1["note"]
    assert unary4["result"] == "MISS" and unary4["note"] == "floor / null 0.70x: out of reach for this design"
    assert got["18.3 StreamSteps at c=1 >= 0.7 x null"]["note"] == "floor / null 0.65x: out of reach for this design"
    assert got["18.3 StreamSteps at c=16 >= 0.7 x null"]["result"] == "n/a"
    assert got["18.2 StepGroup of 256 >= 0.6 x null"]["note"].startswith("floor / null 0.55x: out of reach")
    assert got["18.2 StepGroup of 1024 >= 1,000,000 session-steps/s"]["result"] == "PASS"
    assert "0.75x" in got["18.1 StepFrame of 1024 >= 0.8 x StepGroup of 1024"]["measured"]
    assert got["18.1 StepFrame of 1024 >= 0.8 x StepGroup of 1024"]["result"] == "MISS"
    assert got["18.1 StepFrame of 256 >= 0.8 x StepGroup of 256"]["result"] == "n/a"
    assert got["18.6 unary Step: p99 <= 2 x p50 at half load"]["result"] == "PASS"
    assert got["18.6 unary Step: p99 <= 2 x p50 at half load"]["note"] == (
        "null 4.0x: out of reach on this machine (the null server's own tail is above it)")
    assert got["18.1 StepFrame of 1024 >= 0.8 x StepGroup of 1024"]["note"] == (
        "the floor's frames / groups 0.62x: out of reach for this protocol")  # the floor's 500 / 800
    assert got["18.6 StreamSteps: p99 <= 2 x p50 at half load"]["result"] == "MISS"


def test_the_serial_bound_report_gives_the_floors_ratio_to_it():
    from bench.serial import FLOOR, summarise

    def run(rate: float) -> dict:
        return {"session_steps_per_s": rate, "cpu_us_per_call": 256 / rate * 1e6, "loop_us_per_call": 1.0,
                "cpu_share": 1.0, "p50_ms": 1.0, "p99_ms": 2.0, "command": "ghz ..."}

    orts = [{"ort_session_steps_per_s": 60_000.0, "ort_cpu_us": 4_266.0, "runner_cpu_us": 4_300.0,
             "handler_cpu_us": 4_600.0}] * 2
    runs = {"null, 1 core": [run(600_000.0)] * 2, "1 core": [run(40_000.0)] * 2, FLOOR: [run(50_000.0), run(52_000.0)]}
    s = summarise(runs, orts)
    bound = 1 / (1 / 60_000 + 1 / 600_000)  # 54,545
    assert abs(s["ratio_serial_bound"] - 40_000 / bound) < 1e-9
    assert abs(s["floor_ratio_serial_bound"] - 51_000 / bound) < 1e-9  # the median of the two rounds
    del runs[FLOOR]
    assert summarise(runs, orts)["floor_ratio_serial_bound"] is None
