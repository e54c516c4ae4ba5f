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


def _us_per_run(run, seconds: float) -> tuple[int, float]:
    """(runs, microseconds per run) of `run()` repeated for `seconds` (at least 3 runs, after 5 warm-up runs)."""
    for _ in range(5):
        run()
    runs, t0 = 0, time.perf_counter()
    while True:
        run()
        runs += 1
        now = time.perf_counter()
        if now - t0 >= seconds and runs >= 3:
            return runs, (now - t0) / runs * 1e6


def ort_ceiling(path: Path, batches: list[int], seconds: float = 1.0, threads: int = 1) -> list[OrtResult]:
    """One timestep for B sessions per run (states in, states out), as fast as ORT goes, per batch size: the file's
    graph, or where the server runs a one-timestep graph of it (engine/stepgraph.py) the faster of the two."""
    from statestream.server.engine.model import ModelRunner
    from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT

    sess, man = load(path, threads)
    pairs = man.state_pairs()
    outs = [OUTPUT_NAME] + [p[3] for p in pairs]
    runner = ModelRunner(path, intra_op_threads=threads)
    step = runner.step_session if runner.step_session is not runner.session else None
    rng = np.random.default_rng(0)
    results = []
    for b in batches:
        x = rng.uniform(-1, 1, (b, 1, man.features)).astype(np.float32)
        feeds = {INPUT_NAME: x, **{name: np.zeros((b, units), dtype=np.float32) for _, _, name, _, units in pairs}}
        runs, us = _us_per_run(lambda: sess.run(outs, feeds), seconds)
        if step is not None:
            rows = {INPUT_NAME: x, ROWS_IN: np.zeros((b, runner.state_width), dtype=np.float32)}
            runs, us = min((runs, us), _us_per_run(lambda: step.run([OUTPUT_NAME, ROWS_OUT], rows), seconds),
                           key=lambda r: r[1])
        results.append(OrtResult(b, threads, runs, us, b / us * 1e6))
    return results


def runner_ceiling(path: Path, batches: list[int], seconds: float = 0.5) -> list[dict]:
    """The server's own ModelRunner.run (the rows graph: the states' Split and Concat in the graph; for one timestep
    the one-timestep graph, engine/stepgraph.py) in-process: the model path minus serving."""
    from statestream.server.engine.model import ModelRunner

    runner = ModelRunner(path, intra_op_threads=1)
    rng = np.random.default_rng(0)
    out = []
    for b in batches:
        x = rng.uniform(-1, 1, (b, 1, runner.features)).astype(np.float32)
        states = np.zeros((b, runner.state_width), dtype=np.float32)
        _, us = _us_per_run(lambda: runner.run(x, states), seconds)
        out.append({"batch": b, "us_per_run": us, "session_steps_per_s": b / us * 1e6})
    return out
