"""The one-timestep graph (engine/stepgraph.py): small LSTM nodes as their cell's ops, with the node's numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from statestream.server.engine.model import BIND_MAX, ModelRunner
from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT, rows_graph
from statestream.server.engine.stepgraph import MAX_UNITS, step_graph

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a package at the repo root, not an installed one
    sys.path.insert(0, str(ROOT))

from bench.stepgraph import cell_model, layer  # noqa: E402

DEMO = ROOT / "models" / "demo.onnx"
F = 3


def _ops(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


CASES = [("LSTM", {}), ("GRU", {"linear_before_reset": 1}), ("GRU", {}), ("RNN", {}),
         ("RNN", {"activations": [b"Relu"]})]  # Keras's GRU is reset_after: linear_before_reset


@pytest.mark.parametrize("kind,attrs", CASES, ids=["lstm", "gru-reset-after", "gru", "rnn-tanh", "rnn-relu"])
@pytest.mark.parametrize("H,bias", [(1, True), (5, True), (5, False), (None, True)])  # None: MAX_UNITS
def test_a_recurrent_node_becomes_its_cells_ops_with_the_nodes_numbers(kind, attrs, H, bias):
    H = H or MAX_UNITS[kind]
    model = cell_model(kind, H, F, bias=bias, **attrs)
    original = model.SerializeToString()
    step = step_graph(model, "input")
    assert step is not None
    ops = _ops(step)
    # [x, h] by [W_k; R_k] per LSTM gate and per GRU z and r (no Split of one Gemm's output), x and h (or r * h)
    # apart for a GRU's n; [x, h] by [W; R] for an RNN
    assert kind not in ops and ops.count("Gemm") == {"LSTM": 4, "GRU": 4, "RNN": 1}[kind] and "Split" not in ops
    assert onnx.load_from_string(step).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1
    rng = np.random.default_rng(7)
    for B in (1, 4, 300):
        feeds = {i.name: rng.normal(size=(B, 1, F) if i.name == "input" else (1, B, H)).astype(np.float32)
                 for i in model.graph.input}
        want, got = _session(original).run(None, feeds), _session(step).run(None, feeds)
        assert len(want) == len(got) == len(model.graph.output)
        for w, g in zip(want, got):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)  # float32 sums in another order


@pytest.mark.parametrize("kind,variant", [
    ("LSTM", {"direction": b"bidirectional", "activations": [b"Sigmoid", b"Tanh", b"Tanh"] * 2}),
    ("LSTM", {"peepholes": True}), ("LSTM", {"clip": 3.0}), ("LSTM", {"input_forget": 1}),
    ("LSTM", {"activations": [b"Sigmoid", b"Relu", b"Tanh"]}), ("LSTM", {"H": MAX_UNITS["LSTM"] + 1}),
    ("LSTM", {"opset": 12}), ("LSTM", {"time_steps": 6}), ("GRU", {"direction": b"reverse"}),
    ("GRU", {"activations": [b"Sigmoid", b"Relu"]}), ("RNN", {"activations": [b"Affine"], "activation_alpha": [2.0]}),
    ("GRU", {"H": MAX_UNITS["GRU"] + 1}), ("RNN", {"H": MAX_UNITS["RNN"] + 1}),
])
def test_a_node_the_rewrite_does_not_cover_stays_a_node(kind, variant):
    """Anything but the plain forward cell of at most MAX_UNITS units: no one-timestep graph (None)."""
    v = {"H": 5, **variant}
    model = cell_model(kind, v.pop("H"), F, **v)
    _session(model.SerializeToString())  # a model onnxruntime runs
    assert step_graph(model, "input") is None


def test_the_demo_runs_one_timestep_as_cell_ops_with_the_files_numbers():
    """The served demo: its rows graph's two LSTM nodes are cell ops in the one-timestep graph, with the squeezes
    between them folded away; the runner uses it for every run of one timestep (through the I/O binding for small
    ones too), and the numbers are the LSTM nodes' (the graph of many timesteps, which keeps them)."""
    proto = onnx.load(str(DEMO))
    runner = ModelRunner(DEMO)
    rows_graph(proto, runner.layout)
    before = _ops(proto.SerializeToString())
    step = _ops(step_graph(proto, runner.manifest.input))
    assert step.count("LSTM") == 0 and step.count("Gemm") == 8 and before.count("LSTM") == 2
    assert step.count("Squeeze") == 1 and step.count("Unsqueeze") == 1  # the step input's, the head's
    for op in ("Transpose", "Shape", "Gather", "Cast", "Reshape", "Identity"):  # the Dense head's [B, T, O] plumbing
        assert op not in step, op
    assert len(step) == 34
    assert runner.step_session is not runner.session
    rng = np.random.default_rng(1)
    names = [runner.manifest.output, ROWS_OUT]
    for B in (1, BIND_MAX, 300, 1024):
        x = rng.normal(size=(B, 1, runner.features)).astype(np.float32)
        rows = rng.normal(size=(B, runner.state_width)).astype(np.float32)
        feeds = {runner.manifest.input: x, ROWS_IN: rows}
        nodes, cells = runner.session.run(names, feeds), runner.step_session.run(names, feeds)
        for w, c in zip(nodes, cells):
            np.testing.assert_allclose(c, w, rtol=0, atol=2e-6)
        assert any((w != c).any() for w, c in zip(nodes, cells))  # rounding tells the two graphs apart
        for want, got in zip(cells, runner.run(x, rows)):
            np.testing.assert_array_equal(got, want)  # the runner ran the one-timestep graph
    x = rng.normal(size=(300, 2, runner.features)).astype(np.float32)  # two timesteps: the LSTM nodes
    rows = rng.normal(size=(300, runner.state_width)).astype(np.float32)
    for w, g in zip(runner.session.run(names, {runner.manifest.input: x, ROWS_IN: rows}), runner.run(x, rows)):
        np.testing.assert_array_equal(g, w)


def _views_model(shape: list, perm: list[int], squeeze: int) -> onnx.ModelProto:
    """X [shape] -> Transpose(perm) -> Squeeze(squeeze) -> Relu -> Unsqueeze(1) -> Identity -> Y."""
    h = onnx.helper
    nodes = [h.make_node("Transpose", ["X"], ["t"], perm=perm), h.make_node("Squeeze", ["t", "sq"], ["s"]),
             h.make_node("Relu", ["s"], ["r"]), h.make_node("Unsqueeze", ["r", "a1"], ["u"]),
             h.make_node("Identity", ["u"], ["Y"])]
    graph = h.make_graph(nodes, "views", [h.make_tensor_value_info("X", onnx.TensorProto.FLOAT, shape)],
                         [h.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
                         [h.make_tensor("sq", onnx.TensorProto.INT64, [1], [squeeze]),
                          h.make_tensor("a1", onnx.TensorProto.INT64, [1], [1])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("shape,perm,squeeze,left", [
    (["B", 1, 4], [1, 0, 2], 0, ["Squeeze", "Relu", "Unsqueeze"]),  # a size-1 axis moved: the views fold
    ([1, "B", 4], [0, 1, 2], 0, ["Squeeze", "Relu", "Unsqueeze"]),
    (["B", "C", 4], [1, 0, 2], 0, ["Transpose", "Squeeze", "Relu", "Unsqueeze"]),  # C (1 when run) not known 1
    (["B", 1, 4], [2, 1, 0], 1, ["Transpose", "Squeeze", "Relu", "Unsqueeze"]),  # B and 4 swap: it stays
])
def test_views_of_one_tensor_fold_only_where_shapes_prove_it(shape, perm, squeeze, left):
    """The one-timestep graph's view folding (stepgraph._fold_views) on its own: a Transpose that only moves axes
    of size 1 and the Squeeze after it become one Squeeze of the input, and the Identity into the graph output goes
    (the Unsqueeze writes it); a Transpose of axes not known to be 1 stays. The numbers are the same, bit for bit."""
    from statestream.server.engine.stepgraph import _fold_views

    model = _views_model(shape, perm, squeeze)
    original = model.SerializeToString()
    _fold_views(model)
    assert [n.op_type for n in model.graph.node] == left
    x = np.random.default_rng(3).normal(size=[3 if d == "B" else 1 if d == "C" else d for d in shape])
    feeds = {"X": x.astype(np.float32)}
    want, got = _session(original).run(None, feeds), _session(model.SerializeToString()).run(None, feeds)
    assert got[0].shape == want[0].shape
    np.testing.assert_array_equal(got[0], want[0])


def test_a_view_of_a_tensor_of_unknown_shape_folds_into_a_reshape():
    """X of unknown shape -> Reshape([2, -1]) -> Unsqueeze(0) -> Relu: the Unsqueeze views X directly, as a Reshape
    to [1, 2, -1] (X's own shape is not known, so no Squeeze or Unsqueeze of it is provable); same numbers."""
    from statestream.server.engine.stepgraph import _fold_views

    h = onnx.helper
    nodes = [h.make_node("Reshape", ["X", "shape"], ["r"]), h.make_node("Unsqueeze", ["r", "a0"], ["u"]),
             h.make_node("Relu", ["u"], ["Y"])]
    graph = h.make_graph(nodes, "unknown", [h.make_tensor_value_info("X", onnx.TensorProto.FLOAT, None)],
                         [h.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
                         [h.make_tensor("shape", onnx.TensorProto.INT64, [2], [2, -1]),
                          h.make_tensor("a0", onnx.TensorProto.INT64, [1], [0])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    original = model.SerializeToString()
    _fold_views(model)
    assert [(n.op_type, n.input[0]) for n in model.graph.node] == [("Reshape", "X"), ("Relu", "u")]
    feeds = {"X": np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)}
    want, got = _session(original).run(None, feeds), _session(model.SerializeToString()).run(None, feeds)
    assert got[0].shape == want[0].shape == (1, 2, 6)
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("broken", [lambda proto, name: b"not an onnx graph", lambda proto, name: 1 / 0])
def test_a_one_timestep_graph_that_fails_leaves_the_model_on_its_own_graph(monkeypatch, caplog, broken):
    """A rewrite that raises, or a graph onnxruntime refuses: the model still loads and runs every step on its own
    graph, and the log says why."""
    import statestream.server.engine.model as model

    monkeypatch.setattr(model, "step_graph", broken)
    runner = ModelRunner(DEMO)
    assert runner.step_session is runner.session
    assert "no one-timestep graph" in caplog.text
    for B in (1, 300):
        y, rows = runner.run(np.zeros((B, 1, runner.features), np.float32), np.zeros((B, runner.state_width), np.float32))
        assert y.shape == (B, 1, runner.output_size) and rows.shape == (B, runner.state_width)


def test_the_bench_times_the_graphs_and_counts_their_kernels():
    """`python -m bench.stepgraph`'s measurements run (no timing asserted: unit tests are never timed), and its
    kernel count is onnxruntime's: the demo's one-timestep graph has 34 nodes and runs 26 kernels (onnxruntime fuses
    each gate's Gemm with its Sigmoid or Tanh), its views not folded 56."""
    from bench.stepgraph import _graphs, kernels, served

    assert set(layer(4, F, 5, rounds=1, kind="GRU")) == {"node", "cells"}
    r = served(DEMO, 16, rounds=1)
    assert set(r) == {"node", "cells", "unfolded"} and min(r.values()) > 0
    runner = ModelRunner(DEMO)
    feeds = {runner.manifest.input: np.zeros((2, 1, runner.features), np.float32),
             ROWS_IN: np.zeros((2, runner.state_width), np.float32)}
    step, unfolded = _graphs(runner)[1], _graphs(runner, fold=False)[1]
    assert len(_ops(step)) == 34 and kernels(step, feeds) == 26
    assert kernels(unfolded, feeds) == 56


def test_a_served_gru_and_simplernn_run_one_timestep_as_cell_ops():
    """Keras GRU and SimpleRNN layers, exported (native GRU and RNN nodes), get a one-timestep graph too (what
    `python -m bench.stepgraph --export KIND` serves), with the file's numbers within 1e-5, for one session too (a
    served GRU's cells are as fast as its node from one session on, since each gate has its own Gemm)."""
    from bench.stepgraph import _export
    from statestream.contract.layout import StepLayout
    from statestream.contract.manifest import read_manifest

    for kind in ("GRU", "SimpleRNN"):
        path = _export(kind)
        runner = ModelRunner(path)
        assert runner.step_session is not runner.session
        names = [runner.manifest.output, ROWS_OUT]
        original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        layout = StepLayout(read_manifest(onnx.load(str(path))))
        rng = np.random.default_rng(4)
        for B in (1, 7, 300):
            x = rng.normal(size=(B, 1, runner.features)).astype(np.float32)
            rows = rng.normal(size=(B, runner.state_width)).astype(np.float32)
            got = runner.run(x, rows)
            for want, g in zip(layout.run(original.run, x, rows), got):
                np.testing.assert_allclose(g, want, rtol=0, atol=1e-5)
            feeds = {runner.manifest.input: x, ROWS_IN: rows}
            for want, g in zip(runner.step_session.run(names, feeds), got):
                np.testing.assert_array_equal(g, want)  # the runner ran the one-timestep graph ...
            if kind == "GRU":  # ... not the node (its rounding differs)
                assert any((w != g).any() for w, g in zip(runner.session.run(names, feeds), got)), B
