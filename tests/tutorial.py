"""The seed tutorial's models (LSTM(1) on [0.1, 0.2, 0.3], four ways, and a two-layer stack), shared by tests.

Weights come from seeded initializers, so every build gives the same numbers. Import with
`from tutorial import TUTORIAL_INPUT, tutorial_models, export_all` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: The tutorial's one sequence: batch 1, 3 timesteps, 1 feature.
TUTORIAL_INPUT = np.array([0.1, 0.2, 0.3], dtype=np.float32).reshape(1, 3, 1)

#: name -> (LSTM kwargs) of the four single-layer configurations.
SINGLE = {
    "lstm_default": {},
    "lstm_sequences": {"return_sequences": True},
    "lstm_state": {"return_state": True},
    "lstm_both": {"return_sequences": True, "return_state": True},
}
STACK = "lstm_stack"
NAMES = (*SINGLE, STACK)


def _lstm(units: int, name: str, seed: int, **kwargs):
    import keras

    return keras.layers.LSTM(units, name=name, kernel_initializer=keras.initializers.GlorotUniform(seed),
                             recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 100),
                             bias_initializer="zeros", **kwargs)


def tutorial_model(name: str):
    """One tutorial model. The four single-layer ones share their weights (layer 'lstm')."""
    import keras

    x = keras.Input(shape=(3, 1), name="x")
    if name in SINGLE:
        return keras.Model(x, _lstm(1, "lstm", 1, **SINGLE[name])(x), name=name)
    if name == STACK:
        h = _lstm(2, "lstm1", 2, return_sequences=True)(x)
        return keras.Model(x, _lstm(2, "lstm2", 3)(h), name=name)
    raise KeyError(f"no tutorial model {name!r}; have {NAMES}")


def tutorial_models() -> dict:
    """name -> keras.Model for every tutorial configuration."""
    return {n: tutorial_model(n) for n in NAMES}


def keras_outputs(models: dict | None = None) -> dict[str, list[np.ndarray]]:
    """name -> the Keras model's outputs on TUTORIAL_INPUT, always as a list (e.g. [h, h, c])."""
    models = models or tutorial_models()
    out = {}
    for n, m in models.items():
        y = m(TUTORIAL_INPUT, training=False)
        out[n] = [np.asarray(t) for t in (y if isinstance(y, (list, tuple)) else [y])]
    return out


def export_all(tmpdir) -> dict[str, Path]:
    """Export every tutorial model to `<tmpdir>/<name>.onnx` (model name = name); name -> path.

    Slow-ish (TensorFlow + tf2onnx): call once from a session-scoped fixture.
    """
    from statestream.export import export_model

    paths = {}
    for n, m in tutorial_models().items():
        path = Path(tmpdir) / f"{n}.onnx"
        export_model(m, path, name=n)
        paths[n] = path
    return paths


def stream_onnx(path, x: np.ndarray, states: dict | None = None, chunk: int = 1):
    """Run an exported file over x [B, T, F], `chunk` timesteps per call, chaining the states.

    Returns (outputs [B, T, O], final states {state_out name: array}). Zero initial states unless given
    as {state_in name: array}.
    """
    import onnxruntime as ort

    sess = path if isinstance(path, ort.InferenceSession) else ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"])
    ins = [i for i in sess.get_inputs() if i.name != "input"]
    outs = [o.name for o in sess.get_outputs()]
    b = x.shape[0]
    cur = {i.name: np.zeros((b, i.shape[1]), np.float32) for i in ins}
    cur.update(states or {})
    ys = []
    for t in range(0, x.shape[1], chunk):
        res = dict(zip(outs, sess.run(outs, {"input": x[:, t:t + chunk], **cur})))
        ys.append(res["output"])
        cur = {i.name: res["state_out" + i.name[len("state_in"):]] for i in ins}
    final = {"state_out" + k[len("state_in"):]: v for k, v in cur.items()}
    return np.concatenate(ys, axis=1), final
