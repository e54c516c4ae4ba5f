"""The bundled demo model: a 3-channel sensor forecaster (LSTM(16) -> LSTM(16) -> Dense(1)), trained in seconds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAME = "demo"
FEATURES = 3
UNITS = 16
SEED = 7


def synthetic_signal(n: int, steps: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, steps, 3], y [n, steps, 1]): noisy sensor readings; y[t] is channel 0 at t+1.

    Channel 0 is a mix of a slow and a fast sine plus noise; channels 1 and 2 are noisy readings of
    each component alone, so the next value of channel 0 is predictable from the history of all three.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(steps + 1, dtype=np.float64)[None, :]
    w1 = rng.uniform(0.05, 0.15, (n, 1))
    w2 = rng.uniform(0.3, 0.6, (n, 1))
    p1, p2 = rng.uniform(0, 2 * np.pi, (2, n, 1))
    slow, fast = np.sin(w1 * t + p1), 0.5 * np.sin(w2 * t + p2)
    noise = rng.normal(0, 0.05, (3, n, steps + 1))
    chans = np.stack([slow + fast + noise[0], slow + noise[1], fast + noise[2]], axis=-1).astype(np.float32)
    return chans[:, :-1], chans[:, 1:, :1]


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
