"""The proof: Keras whole-sequence == onnxruntime whole-sequence == onnxruntime one step at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExportError
from .twin import Twin

TOLERANCE = 1e-5
BATCH, STEPS, SEED = 3, 7, 20240611


@dataclass(frozen=True)
class ParityResult:
    """Max abs errors of each comparison over all outputs and final states."""

    original_vs_twin: float  # the user's model vs the twin (zero initial state, the user's own call)
    keras_vs_ort_sequence: float  # twin vs onnxruntime on the whole sequence, random non-zero states
    keras_vs_ort_steps: float  # twin vs onnxruntime one timestep at a time, states chained
    batch: int
    steps: int
    tolerance: float = TOLERANCE

    @property
    def max_abs_error(self) -> float:
        return max(self.original_vs_twin, self.keras_vs_ort_sequence, self.keras_vs_ort_steps)

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_error <= self.tolerance)

    def summary(self) -> str:
        return (f"max abs error {self.max_abs_error:.3g} (tolerance {self.tolerance:g}): "
                f"Keras model vs twin {self.original_vs_twin:.3g}, "
                f"Keras vs onnxruntime whole sequence {self.keras_vs_ort_sequence:.3g}, "
                f"Keras vs onnxruntime step by step {self.keras_vs_ort_steps:.3g} "
                f"(batch {self.batch}, {self.steps} steps, random non-zero initial states)")


def _err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _run_original(twin: Twin, x: np.ndarray) -> list[np.ndarray]:
    """The user's model on x from zero state; stateful layers' stored states are put back afterwards."""
    stateful = [l for l in twin.chain if getattr(l, "stateful", False) and getattr(l, "states", None) is not None]
    saved = [[v.numpy() for v in l.states] for l in stateful]
    for l in stateful:
        l.reset_state()
    try:
        out = twin.original(x, training=False)
    finally:
        for l, vals in zip(stateful, saved):
            for v, val in zip(l.states, vals):
                v.assign(val)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o) for o in out]


def original_vs_twin(twin: Twin, rng: np.random.Generator) -> float:
    """Run the user's model and the twin (zero states) on the same data; compare what the user's model outputs."""
    batch = twin.original_batch or BATCH
    steps = twin.original_time or STEPS
    x = rng.normal(size=(batch, steps, twin.features)).astype(np.float32)
    want = _run_original(twin, x)
    zeros = [np.zeros((batch,) + tuple(t.shape[1:]), np.float32) for t in twin.model.inputs[1:]]
    got = [np.asarray(o) for o in twin.model([x] + zeros, training=False)]
    last_states = got[len(got) - len(_last_layer_states(twin)):] if _last_layer_states(twin) else []
    err = 0.0
    for o, idx in zip(want, twin.original_output_map):
        if idx == 0:
            ref = got[0] if o.ndim == 3 else got[0][:, -1]
        else:
            ref = last_states[idx - 1]
        err = max(err, _err(o, ref))
    return err


def _last_layer_states(twin: Twin) -> tuple:
    return twin.layers[-1].state_names


def check(twin: Twin, onnx_bytes: bytes, seed: int = SEED, batch: int = BATCH, steps: int = STEPS) -> ParityResult:
    """Prove the ONNX file streams like Keras; returns the errors (the caller decides to fail)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    e0 = original_vs_twin(twin, rng)

    x = rng.normal(size=(batch, steps, twin.features)).astype(np.float32)
    states = [(0.5 * rng.normal(size=(batch,) + tuple(t.shape[1:]))).astype(np.float32) for t in twin.model.inputs[1:]]
    keras_out = [np.asarray(o) for o in twin.model([x] + states, training=False)]

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures surface as exceptions below
    try:
        sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        whole = sess.run(twin.output_names, dict(zip(twin.input_names, [x] + states)))
        cur, ys = states, []
        for t in range(steps):
            out = sess.run(twin.output_names, dict(zip(twin.input_names, [x[:, t:t + 1]] + cur)))
            ys.append(out[0])
            cur = out[1:]
    except Exception as e:  # onnxruntime's errors are long; the user needs the first line
        raise ExportError(f"onnxruntime could not run the exported graph: {str(e).splitlines()[0]}") from e
    e1 = max(_err(k, o) for k, o in zip(keras_out, whole))
    stepped = [np.concatenate(ys, axis=1)] + cur
    e2 = max(_err(k, o) for k, o in zip(keras_out, stepped))
    return ParityResult(e0, e1, e2, batch, steps)
