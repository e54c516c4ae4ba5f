"""ModelRunner: one onnxruntime session and the state layout its manifest describes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from statestream.contract.layout import StepLayout
from statestream.contract.manifest import Manifest, ManifestError, read_manifest


class ModelRunner:
    """Runs a batch: (x[B,T,F], states[B,W]) -> (y[B,T,O], states'[B,W]).

    States of one session are one row of width W: every state tensor of every
    layer side by side, in manifest order (layer by layer, h then c); for an
    adopted graph, each state tensor with its batch axis removed, then the
    context window. `StepLayout` maps rows to the graph's tensors.
    """

    def __init__(self, path: str | Path, name: str | None = None, intra_op_threads: int = 1, version: int = 1,
                 spinning: bool = False):
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
        # With more than one intra-op thread, onnxruntime's workers spin between runs by default: on a machine
        # whose other cores serve gRPC (or a neighbour), that burns the cores the transport needs
        # (docs/performance.md, "Compute-bound models"); off, they sleep between runs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
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
        return self.layout.run(self.session.run, x, states)

    def split_state(self, row: np.ndarray) -> list[np.ndarray]:
        """A state row [W] (or [B,W]) cut into its parts, manifest order (the context window last)."""
        return self.layout.split(row)
