"""One model run per cell type: a 2-layer, 128-unit stack on 16 features with a Dense(1) head, exported by
statestream-export and run by the server's ModelRunner on one core, one timestep, at batch 1 and 256.

    python -m bench.cells                 # LSTM, GRU, SimpleRNN
    python -m bench.cells --cells GRU --loop    # GRU as tf2onnx's Loop, as before native ops
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def export(cell: str, folder: Path, native: bool) -> tuple[Path, dict]:
    import keras

    from statestream.export import export_model

    layer = getattr(keras.layers, cell)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 16)), layer(128, return_sequences=True, name="r1"),
                              layer(128, return_sequences=True, name="r2"), keras.layers.Dense(1)])
    report = export_model(model, folder / f"{cell.lower()}.onnx", native=native)
    return Path(report.path), report.op_counts


def per_call(runner, batch: int, seconds: float, rounds: int = 40) -> float:
    """Seconds of one run: the fastest of `rounds` rounds of `seconds / rounds` (the least disturbed by other
    processes on a shared machine)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch, 1, runner.features)).astype(np.float32)
    states = np.zeros((batch, runner.state_width), np.float32)
    for _ in range(20):
        runner.run(x, states)
    best = float("inf")
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / rounds:
            runner.run(x, states)
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["LSTM", "GRU", "SimpleRNN"])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--loop", action="store_true", help="GRU/SimpleRNN as tf2onnx's Loop (before native ops)")
    p.add_argument("--out")
    a = p.parse_args()
    from statestream.server.engine.model import ModelRunner

    results = {}
    with tempfile.TemporaryDirectory() as d:
        for cell in a.cells:
            path, ops = export(cell, Path(d), native=not a.loop)
            runner = ModelRunner(path, intra_op_threads=1)
            b1, b256 = per_call(runner, 1, a.seconds), per_call(runner, 256, a.seconds)
            results[cell] = {"ops": ops, "batch1_us_per_call": b1 * 1e6, "batch256_us_per_session": b256 / 256 * 1e6}
            print(f"{cell:10s} ops {ops}: batch 1 {b1 * 1e6:7.1f} us/call, batch 256 {b256 / 256 * 1e6:6.2f} "
                  "us/session", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
