"""ModelRunner: one onnxruntime session and the state layout its manifest describes."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from statestream.contract.layout import StepLayout
from statestream.contract.manifest import Manifest, ManifestError, read_manifest

_sum = np.add.reduce


def finite(a: np.ndarray) -> bool:
    """Is every value finite? One reduction: a sum is finite only when every term is (NaN and Inf propagate); a sum
    that overflows (float32 values near 3e38) is checked value by value."""
    return math.isfinite(_sum(a, axis=None)) or bool(np.isfinite(a).all())


class ModelRunner:
    """Runs a batch: (x[B,T,F], states[B,W]) -> (y[B,T,O], states'[B,W]).

    States of one session are one row of width W: every state tensor of every
    layer side by side, in manifest order (layer by layer, h then c); for an
    adopted graph, each state tensor with its batch axis removed, then the
    context window. `StepLayout` maps rows to the graph's tensors.
    """

    def __init__(self, path: str | Path, name: str | None = None, intra_op_threads: int = 1, version: int = 1):
        path = Path(path)
        self.path = path
        data = path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        ort.set_default_logger_severity(3)  # run failures are reported as INTERNAL, not printed
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types
            raise ManifestError(f"{path}: onnxruntime cannot load it: {e}") from None
        self.manifest: Manifest = read_manifest(self.session.get_modelmeta())
        self.name = name or path.stem
        self.version = version
        self.key = (self.name, version)  # what the table, slabs and batchers are keyed by
        self.layout = StepLayout(self.manifest)
        self._check_graph()
        # onnxruntime's own binding, without InferenceSession.run's Python checks of every call (the feeds' names,
        # OrtValue ownership, graph capture, provider fallback): _check_graph checked the names once, the feeds are
        # numpy arrays and the provider is the CPU. A third of a unary step's Python bytecodes went there.
        self._sess_run = self.session._sess.run

    def _check_graph(self) -> None:
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        fed = set(self.layout.input_names)
        missing = (fed - inputs) | (set(self.layout.out_names) - outputs)
        if missing:
            raise ManifestError(f"{self.path}: graph lacks {sorted(missing)} that its manifest names")
        unfed = sorted(inputs - fed)
        if unfed:
            raise ManifestError(f"{self.path}: graph inputs {unfed} are neither the step input, a state nor a "
                                "constant in its manifest")

    @property
    def features(self) -> int:
        return self.manifest.features

    @property
    def output_size(self) -> int:
        return self.manifest.output_size

    @property
    def state_width(self) -> int:
        return self.manifest.state_width

    def run(self, x: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One model run for B sessions; x is float32 [B,T,F], states float32 [B,W]."""
        return self.layout.run(self._call, x, states)

    def _call(self, output_names: list, feeds: dict) -> list:
        return self._sess_run(output_names, feeds, None)

    def split_state(self, row: np.ndarray) -> list[np.ndarray]:
        """A state row [W] (or [B,W]) cut into its parts, manifest order (the context window last)."""
        return self.layout.split(row)
