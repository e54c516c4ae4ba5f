"""The bundled demo model: a 3-channel sensor forecaster (LSTM(16) -> LSTM(16) -> Dense(1)), trained in seconds.

What it reads and predicts, and the signal it learns from, are statestream.contract.demo (the CLI uses them too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from statestream.contract.demo import FEATURES, NAME, SEED, synthetic_signal

UNITS = 16
__all__ = ["FEATURES", "NAME", "SEED", "UNITS", "synthetic_signal", "build_demo_model", "train_demo_model", "DemoFit"]


def build_demo_model(seed: int = SEED):
    """The untrained demo architecture with seeded weights (functional, so tf2onnx converts it)."""
    import keras

    init = keras.initializers
    x = keras.Input(shape=(None, FEATURES), name="sensors")
    h = keras.layers.LSTM(UNITS, return_sequences=True, name="lstm1",
                          kernel_initializer=init.GlorotUniform(seed), recurrent_initializer=init.Orthogonal(seed=seed))(x)
    h = keras.layers.LSTM(UNITS, return_sequences=True, name="lstm2", kernel_initializer=init.GlorotUniform(seed + 1),
                          recurrent_initializer=init.Orthogonal(seed=seed + 1))(h)
    y = keras.layers.Dense(1, name="head", kernel_initializer=init.GlorotUniform(seed + 2))(h)
    return keras.Model(x, y, name=NAME)


@dataclass(frozen=True)
class DemoFit:
    """How well the trained demo predicts the next reading, against repeating the last one."""

    mse: float
    persistence_mse: float
    seconds: float

    def __str__(self) -> str:
        return (f"demo trained in {self.seconds:.1f} s: next-value MSE {self.mse:.4f} on held-out sequences "
                f"(repeating the last value: {self.persistence_mse:.4f})")


def train_demo_model(epochs: int = 12, n: int = 256, steps: int = 48, seed: int = SEED):
    """Train the demo deterministically (fixed seeds, deterministic ops). Returns (model, DemoFit)."""
    import time

    import keras
    import tensorflow as tf

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    x, y = synthetic_signal(n, steps, seed)
    xv, yv = synthetic_signal(64, steps, seed + 1)
    model = build_demo_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0)
    mse = float(np.mean((model.predict(xv, verbose=0) - yv) ** 2))
    persistence = float(np.mean((xv[:, :, :1] - yv) ** 2))
    return model, DemoFit(mse, persistence, time.perf_counter() - t0)
