"""StepLayout: the engine's view of a model run (x[B,T,F], state rows [B,W]) mapped onto the graph's tensors.

The server's ModelRunner runs through it, and the exporter proves files through the same code.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from statestream.contract.manifest import Manifest

#: `call(output_names, feeds) -> list of arrays`: onnxruntime's `InferenceSession.run`.
Call = Callable[[list, dict], list]


class StepLayout:
    """Maps rows to state tensors (batch on any axis), feeds constants, keeps the context window.

    A session's state row holds, side by side: every graph state tensor for that session (batch axis removed,
    C order), in manifest order, then the last `context` values of the step input (BF layout).
    """

    def __init__(self, manifest: Manifest):
        self.manifest = m = manifest
        self.states = m.graph_states()
        ends = np.cumsum([s.size for s in self.states] + [m.context]).tolist()
        self.blocks = [slice(a, b) for a, b in zip([0] + ends[:-1], ends)]
        if not m.context:
            self.blocks.pop()
        self.width = ends[-1]
        self.out_names = [m.output] + [s.output for s in self.states]
        self.constants = {c.name: np.array(c.values, dtype=c.dtype).reshape(c.shape) for c in m.constants}
        self.input_names = [m.input] + [s.input for s in self.states] + list(self.constants)
        # Every exported Keras model: [B,T,F] in, [B,units] states; run as plainly as possible (the hot path).
        self.plain = m.layout == "BTF" and not m.context and not self.constants and \
            all(s.batch_axis == 0 and len(s.shape) == 1 for s in self.states)

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """A state row [W] (or [B,W]) cut into its parts: every state tensor flattened, then the context."""
        return [rows[..., block] for block in self.blocks]

    def _to_graph(self, rows: np.ndarray) -> list[np.ndarray]:
        B = rows.shape[0]
        out = []
        for s, block in zip(self.states, self.blocks):
            t = rows[:, block].reshape((B,) + s.shape)
            out.append(np.ascontiguousarray(np.moveaxis(t, 0, s.batch_axis) if s.batch_axis else t))
        return out

    def _from_graph(self, tensors: list[np.ndarray], B: int) -> list[np.ndarray]:
        return [(np.moveaxis(t, s.batch_axis, 0) if s.batch_axis else t).reshape(B, s.size)
                for s, t in zip(self.states, tensors)]

    def _call(self, call: Call, x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = dict(zip(self.input_names, [x] + states))
        feeds.update(self.constants)
        y, *new = call(self.out_names, feeds)
        return y, new

    def run(self, call: Call, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One run for B sessions: x float32 [B,T,F], rows float32 [B,W] -> (y [B,T,O], rows' [B,W])."""
        if self.plain:
            feeds = {self.manifest.input: x}
            for s, block in zip(self.states, self.blocks):
                feeds[s.input] = np.ascontiguousarray(rows[:, block])
            y, *new = call(self.out_names, feeds)
            return y, np.concatenate(new, axis=1)
        B, T, _ = x.shape
        m = self.manifest
        states = self._to_graph(rows)
        if m.layout == "BTF":
            y, states = self._call(call, x, states)
            y = y.reshape(B, T, -1)
        elif m.layout == "TBF":
            y, states = self._call(call, np.ascontiguousarray(x.transpose(1, 0, 2)), states)
            y = np.moveaxis(y.reshape(T, B, -1), 0, 1)
        else:  # BF: one graph call per timestep, states (and the context window) carried between them
            context = rows[:, self.width - m.context:] if m.context else None
            ys = []
            for t in range(T):
                step = x[:, t]
                if m.context:
                    step = np.concatenate([context, step], axis=1)
                    context = step[:, step.shape[1] - m.context:]
                y, states = self._call(call, np.ascontiguousarray(step), states)
                ys.append(y.reshape(B, 1, -1))
            y = ys[0] if T == 1 else np.concatenate(ys, axis=1)
        parts = self._from_graph(states, B)
        if m.context:
            parts.append(context)
        return y, parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
