"""The compute ceiling: onnxruntime in-process on the served model, and the model's manifest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from statestream.contract.manifest import INPUT_NAME, OUTPUT_NAME, Manifest, read_manifest


def load(path: Path, threads: int = 1) -> tuple[ort.InferenceSession, Manifest]:
    """An InferenceSession with the server's settings (ModelRunner: sequential, `threads` intra-op)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return sess, read_manifest(sess.get_modelmeta())


@dataclass
class OrtResult:
    batch: int
    threads: int
    runs: int
    us_per_run: float
    session_steps_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def ort_ceiling(path: Path, batches: list[int], seconds: float = 1.0, threads: int = 1) -> list[OrtResult]:
    """One timestep for B sessions per run (states in, states out), as fast as ORT goes, per batch size."""
    sess, man = load(path, threads)
    pairs = man.state_pairs()
    outs = [OUTPUT_NAME] + [p[3] for p in pairs]
    rng = np.random.default_rng(0)
    results = []
    for b in batches:
        feeds = {INPUT_NAME: rng.uniform(-1, 1, (b, 1, man.features)).astype(np.float32)}
        for _, _, name, _, units in pairs:
            feeds[name] = np.zeros((b, units), dtype=np.float32)
        for _ in range(5):
            sess.run(outs, feeds)
        runs, t0 = 0, time.perf_counter()
        deadline = t0 + seconds
        while True:
            sess.run(outs, feeds)
            runs += 1
            now = time.perf_counter()
            if now >= deadline and runs >= 3:
                break
        dt = now - t0
        results.append(OrtResult(b, threads, runs, dt / runs * 1e6, b * runs / dt))
    return results


def runner_ceiling(path: Path, batches: list[int], seconds: float = 0.5) -> list[dict]:
    """The server's own ModelRunner.run (the rows graph: the states' Split and Concat in the graph) in-process: the model
    path minus serving."""
    from statestream.server.engine.model import ModelRunner

    runner = ModelRunner(path, intra_op_threads=1)
    rng = np.random.default_rng(0)
    out = []
    for b in batches:
        x = rng.uniform(-1, 1, (b, 1, runner.features)).astype(np.float32)
        states = np.zeros((b, runner.state_width), dtype=np.float32)
        for _ in range(5):
            runner.run(x, states)
        runs, t0 = 0, time.perf_counter()
        while True:
            runner.run(x, states)
            runs += 1
            now = time.perf_counter()
            if now - t0 >= seconds and runs >= 3:
                break
        dt = now - t0
        out.append({"batch": b, "us_per_run": dt / runs * 1e6, "session_steps_per_s": b * runs / dt})
    return out
