"""The demo model stepped in-process with onnxruntime, one timestep at a time: what the server must answer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from serverproc import DEMO_MODEL


class Reference:
    """Many sessions at once, from zero states; `step` advances all of them one timestep."""

    def __init__(self, n_sessions: int = 1):
        self.sess = ort.InferenceSession(str(DEMO_MODEL), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs() if i.name.startswith("state_in.")]
        self.states = {n: np.zeros((n_sessions, 16), np.float32) for n in self.names}

    def step(self, x: np.ndarray) -> np.ndarray:
        """x: (n_sessions, F) -> outputs (n_sessions, O)."""
        outs = ["output"] + [n.replace("state_in.", "state_out.") for n in self.names]
        y, *new = self.sess.run(outs, {"input": x[:, None, :], **self.states})
        self.states = dict(zip(self.names, new))
        return y[:, 0]


def stepped(xs: np.ndarray) -> np.ndarray:
    """One session's outputs for the timesteps xs (T, F): (T, O)."""
    ref = Reference()
    return np.array([ref.step(x[None])[0] for x in xs])
