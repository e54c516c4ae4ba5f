"""What a user does today: Keras `model.predict` one timestep at a time (run in its own process).

The Keras model is, in order of preference: a `.keras` file beside the ONNX file (same stem); the
bundled demo's own architecture (statestream.export.demo.build_demo_model) when the model is `demo`;
else a same-shaped stack built from the ONNX file's manifest (cells, units, features, output size).
Timing depends on the shapes, not the weights, so all three measure the same thing.

    python -m bench.keras_baseline --model models/demo.onnx --steps 200 --out keras.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def manifest_of(path: Path):
    import onnxruntime as ort

    from statestream.contract.manifest import read_manifest

    return read_manifest(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta())


def keras_model(path: Path):
    """(model, how it was obtained)."""
    import keras

    man = manifest_of(path)
    sibling = path.with_suffix(".keras")
    if sibling.exists():
        model = keras.models.load_model(sibling, compile=False)
        if len(model.inputs) == 1:
            return model, f"loaded {sibling}"
    if man.name == "demo":
        try:
            from statestream.export.demo import build_demo_model
        except ImportError:
            pass
        else:
            return build_demo_model(), "statestream.export.demo.build_demo_model() (the demo's architecture, seeded weights)"
    cells = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU, "SimpleRNN": keras.layers.SimpleRNN}
    x = keras.Input(shape=(None, man.features))
    h = x
    for layer in man.layers:
        h = cells[layer.cell](layer.units, return_sequences=True, name=layer.name)(h)
    y = keras.layers.Dense(man.output_size)(h)
    desc = " -> ".join(f"{l.cell}({l.units})" for l in man.layers) + f" -> Dense({man.output_size})"
    return keras.Model(x, y), f"built from the ONNX manifest: {desc} (same shapes, random weights)"


def measure(path: Path, steps: int, max_seconds: float = 15.0) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    t0 = time.perf_counter()
    model, how = keras_model(path)
    features = model.inputs[0].shape[-1]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, features)).astype(np.float32)
    for _ in range(3):
        model.predict(x, verbose=0)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.predict(x, verbose=0)
        times.append(time.perf_counter() - t)
        if sum(times) > max_seconds:
            break
    steps = len(times)
    total = sum(times)
    times.sort()
    return {
        "how": how,
        "method": "model.predict(x[1, 1, F], verbose=0) once per timestep, batch 1",
        "steps": steps,
        "steps_per_s": steps / total,
        "p50_ms": times[len(times) // 2] * 1e3,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
        "setup_seconds": time.perf_counter() - t0 - total,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.keras_baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=15.0, help="stop measuring after this long")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.out.write_text(json.dumps(measure(a.model, a.steps, a.max_seconds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
