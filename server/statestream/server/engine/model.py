"""ModelRunner: one onnxruntime session and the state layout its manifest describes."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from statestream.contract.layout import StepLayout
from statestream.contract.manifest import Manifest, ManifestError, read_manifest
from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT, rows_graph
from statestream.server.engine.stepgraph import step_graph

log = logging.getLogger("statestream.model")

_all = np.logical_and.reduce  # ndarray.all without numpy's Python wrapper
_vdot = getattr(np.vdot, "_implementation", np.vdot)  # the C function, without numpy's __array_function__ dispatch
#: values up to which `finite` takes one dot product, else tests each value. OpenBLAS may split a long dot over
#: threads, and a server's other cores serve gRPC: measured on one thread here up to 262,144 values.
DOT_MAX = 65_536


def finite(a: np.ndarray) -> bool:
    """Is every value finite? Up to DOT_MAX values, one call: the sum of squares (a dot product: for 64 values 0.6 us
    against 0.9 for numpy's sum and 1.4 for isfinite-then-all; for 16,384 1.6 us against 3.5 and 2.7) is finite only
    when every value is (NaN and Inf propagate, and squares never cancel); one that overflows (values beyond 1.8e19)
    is tested value by value. More values, value by value at once."""
    if a.size <= DOT_MAX and math.isfinite(_vdot(a, a)):
        return True
    return bool(_all(np.isfinite(a), axis=None))


#: Runs of at most this many session-timesteps go through an I/O binding made once per (thread, B, T): measured
#: 4-16 us less CPU per run than the session's pybind `run` for batches of 1-64 (the feed dict, output
#: allocation), no gain at 256 (bench/results/serial_demo, `python -m bench.serial --skip inprocess,wire`).
BIND_MAX = 64
_BINDINGS_PER_THREAD = 32  # (B, T) shapes kept per thread; the oldest goes first


def session_options(intra_op_threads: int = 1, spinning: bool = False) -> ort.SessionOptions:
    """onnxruntime's options for a served model: `intra_op_threads` per run, runs one after another."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # With more than one intra-op thread, onnxruntime's workers spin between runs by default: on a machine whose
    # other cores serve gRPC (or a neighbour), that burns the cores the transport needs (docs/performance.md,
    # "Compute-bound models"); off, they sleep between runs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


class _Binding:
    """One (B, T) shape of a rows graph (rowgraph.py), bound once: input buffers and output OrtValues owned here. A
    run copies x and the state rows in and returns fresh arrays (the buffers are this thread's next run's)."""

    def __init__(self, session: ort.InferenceSession, layout: StepLayout, x_shape: tuple, output_size: int):
        B = x_shape[0]
        self.x = np.empty(x_shape, dtype=np.float32)
        self.rows = np.empty((B, layout.width), dtype=np.float32)
        outs = [ort.OrtValue.ortvalue_from_shape_and_type([*x_shape[:2], output_size], np.float32),
                ort.OrtValue.ortvalue_from_shape_and_type([B, layout.width], np.float32)]
        self.outs = outs  # keeps the OrtValues (and so `arrays`' memory) alive
        self.arrays = [o.numpy() for o in outs]
        self.io = io = session.io_binding()
        io.bind_cpu_input(layout.manifest.input, self.x)
        io.bind_cpu_input(ROWS_IN, self.rows)
        io.bind_ortvalue_output(layout.manifest.output, outs[0])
        io.bind_ortvalue_output(ROWS_OUT, outs[1])
        # onnxruntime's own call, without InferenceSession.run_with_iobinding's Python checks of every run (the
        # binding's session, WebGPU graph capture): a CPU session and its own binding
        self._run = session._sess.run_with_iobinding
        self._bound = io._iobinding

    def run(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.x[...] = x  # (np.copyto's __array_function__ dispatch costs more than the copy of a few rows)
        self.rows[...] = rows
        self._run(self._bound, None)
        y, new = self.arrays
        return y.copy(), new.copy()


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
        try:
            proto = onnx.load_from_string(data)
        except Exception as e:  # onnx raises its own types (DecodeError, ...)
            raise ManifestError(f"{path}: cannot load it as an ONNX model: {e}") from None
        self.manifest: Manifest = read_manifest(proto)
        self.name = name or path.stem
        self.version = version
        self.key = (self.name, version)  # what the table, slabs and batchers are keyed by
        self.layout = StepLayout(self.manifest)
        self._check_graph(proto.graph)
        # A plain graph (every exported Keras model) runs on state rows: one [B, W] input and output in place of its
        # state tensors (rowgraph.py); an adopted one tensor by tensor through StepLayout.
        self.rows = self.layout.plain
        if self.rows:
            data = rows_graph(proto, self.layout)
        ort.set_default_logger_severity(3)  # run failures are reported as INTERNAL, not printed
        opts = session_options(intra_op_threads, spinning)
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types
            raise ManifestError(f"{path}: onnxruntime cannot load it: {e}") from None
        #: runs of one timestep (stepgraph.py: small LSTM, GRU and RNN layers as their cells' ops); else `session`
        self.step_session = self._step_session(proto, opts) if self.rows else self.session
        del proto
        # onnxruntime's own binding, without InferenceSession.run's Python checks of every call (the feeds' names,
        # OrtValue ownership, graph capture, provider fallback): _check_graph checked the names once, the feeds are
        # numpy arrays and the provider is the CPU. A third of a unary step's Python bytecodes went there.
        self._sess_run = self.session._sess.run
        self._step_run = self.step_session._sess.run
        self._rows_io = ([self.manifest.output, ROWS_OUT], self.manifest.input)
        # Rows graphs whose output is [B,T,O] run small batches through per-thread bindings (runs of one model
        # may overlap: the loop's and the executor's).
        out = self.session.get_outputs()[0].shape
        self._bindable = self.rows and len(out) == 3 and (not isinstance(out[2], int) or out[2] == self.output_size)
        self._local = threading.local()

    def _step_session(self, proto: onnx.ModelProto, opts: ort.SessionOptions) -> ort.InferenceSession:
        """The rows graph `proto` for one timestep, its small recurrent layers as cell ops; `session` when there is
        nothing to replace, or when the rewrite or its session fails (logged: the model still runs, on its own
        graph)."""
        try:
            step = step_graph(proto, self.manifest.input)
            if step is None:
                return self.session
            return ort.InferenceSession(step, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnx and onnxruntime raise their own types
            log.warning("model %r: no one-timestep graph (%s: %s); one timestep runs on the model's own graph",
                        self.name, type(e).__name__, e)
            return self.session

    def _check_graph(self, graph) -> None:
        """The graph has every tensor its manifest names, and no input its manifest does not feed."""
        inputs = {i.name for i in graph.input}
        outputs = {o.name for o in graph.output}
        fed = set(self.layout.input_names)
        missing = (fed - inputs) | (set(self.layout.out_names) - outputs)
        if missing:
            raise ManifestError(f"{self.path}: graph lacks {sorted(missing)} that its manifest names")
        unfed = sorted(inputs - fed - {t.name for t in graph.initializer})  # an input with a default needs no feed
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
        """One model run for B sessions; x is float32 [B,T,F], states float32 [B,W] (C-contiguous: onnxruntime
        reads them in place)."""
        if not self.rows:
            return self.layout.run(self._call, x, states)
        if self._bindable and x.shape[0] * x.shape[1] <= BIND_MAX:
            return self._binding(x.shape).run(x, states)
        names, input_name = self._rows_io
        return (self._step_run if x.shape[1] == 1 else self._sess_run)(names, {input_name: x, ROWS_IN: states}, None)

    def _call(self, output_names: list, feeds: dict) -> list:
        return self._sess_run(output_names, feeds, None)

    def _binding(self, shape: tuple) -> _Binding:
        cache = getattr(self._local, "bindings", None)
        if cache is None:
            cache = self._local.bindings = {}
        b = cache.get(shape)
        if b is None:
            if len(cache) >= _BINDINGS_PER_THREAD:
                del cache[next(iter(cache))]
            b = cache[shape] = _Binding(self.step_session if shape[1] == 1 else self.session, self.layout, shape,
                                        self.output_size)
        return b

    def split_state(self, row: np.ndarray) -> list[np.ndarray]:
        """A state row [W] (or [B,W]) cut into its parts, manifest order (the context window last)."""
        return self.layout.split(row)
