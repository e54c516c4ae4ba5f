"""The bundled demo model's contract: its name, what it reads and predicts, the signal it was trained on.

Shared by the exporter (which trains the demo on this signal) and the `statestream` CLI (which streams the same
kind of signal through it and plots the prediction against the target), so both always mean the same thing.
"""

from __future__ import annotations

import numpy as np

NAME = "demo"
FEATURES = 3
SEED = 7
CHANNELS = ("channel 0: slow + fast wave + noise", "channel 1: the slow wave alone",
            "channel 2: the fast wave alone")
PREDICTS = "the next reading of channel 0, from the history of all three channels"


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
