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
