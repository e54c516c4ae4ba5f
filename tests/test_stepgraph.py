"""The one-timestep graph (engine/stepgraph.py): small LSTM nodes as their cell's ops, with the node's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from statestream.server.engine.model import ModelRunner
from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT, rows_graph
from statestream.server.engine.stepgraph import MAX_UNITS, STEP_MIN_BATCH, step_graph

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo.onnx"
F = 3


def _lstm_model(H: int = 5, *, bias: bool = True, opset: int = 17, time=None, **attrs) -> onnx.ModelProto:
    """One LSTM node as an exported layer is fed: the step input [B, T, F] made time-major, states [1, B, H];
    every output a graph output."""
    rng = np.random.default_rng(H)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4 * H, F)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(np.float32), "R")]
    ins = ["x", "W", "R", "B" if bias else "", "", "h0", "c0"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=(1, 8 * H)).astype(np.float32), "B"))
    if attrs.pop("peepholes", False):
        inits.append(numpy_helper.from_array(rng.normal(size=(1, 3 * H)).astype(np.float32), "P"))
        ins.append("P")
    node = helper.make_node("LSTM", ins, ["y", "y_h", "y_c"], hidden_size=H, **attrs)
    dirs = 2 if attrs.get("direction") == b"bidirectional" else 1
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["input"], ["x"], perm=[1, 0, 2]), node], "lstm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", time or "time", F]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, "batch", H]),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, [dirs, "batch", H])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h", "y_c")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _ops(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("H,bias", [(1, True), (5, True), (5, False), (MAX_UNITS, True)])
def test_an_lstm_node_becomes_its_cells_ops_with_the_nodes_numbers(H, bias):
    model = _lstm_model(H, bias=bias)
    original = model.SerializeToString()
    step = step_graph(model, "input")
    assert step is not None
    ops = _ops(step)
    assert "LSTM" not in ops and ops.count("Gemm") == 1  # one GEMM of [x, h] by [W; R]
    assert onnx.load_from_string(step).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1
    rng = np.random.default_rng(7)
    for B in (1, 4, 300):
        feeds = {"input": rng.normal(size=(B, 1, F)).astype(np.float32),
                 "h0": rng.normal(size=(1, B, H)).astype(np.float32),
                 "c0": rng.normal(size=(1, B, H)).astype(np.float32)}
        want, got = _session(original).run(None, feeds), _session(step).run(None, feeds)
        for w, g in zip(want, got):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)  # float32 sums in another order


@pytest.mark.parametrize("variant", [
    {"direction": b"bidirectional"}, {"peepholes": True}, {"clip": 3.0}, {"input_forget": 1},
    {"activations": [b"Sigmoid", b"Relu", b"Tanh"]}, {"H": MAX_UNITS + 1}, {"opset": 12}, {"time": 6},
])
def test_an_lstm_the_rewrite_does_not_cover_stays_a_node(variant):
    """Anything but the plain forward cell of at most MAX_UNITS units: no one-timestep graph (None)."""
    v = dict(variant)
    direction = v.get("direction")
    kwargs = {k: v.pop(k) for k in ("H", "opset", "time") if k in v}
    if direction == b"bidirectional":
        v["activations"] = [b"Sigmoid", b"Tanh", b"Tanh"] * 2
    model = _lstm_model(**kwargs, **v)
    _session(model.SerializeToString())  # a model onnxruntime runs
    assert step_graph(model, "input") is None


def test_the_demo_runs_one_timestep_as_cell_ops_with_the_files_numbers():
    """The served demo: its rows graph's two LSTM nodes are cell ops in the one-timestep graph, which the runner
    uses for one timestep of STEP_MIN_BATCH sessions or more, and the numbers are the LSTM nodes' (the graph of
    many timesteps, which keeps them)."""
    proto = onnx.load(str(DEMO))
    runner = ModelRunner(DEMO)
    rows_graph(proto, runner.layout)
    step = step_graph(proto, runner.manifest.input)
    assert _ops(step).count("LSTM") == 0 and _ops(step).count("Gemm") == 2
    assert runner.step_session is not runner.session
    assert "LSTM" in [n.op_type for n in onnx.load(str(DEMO)).graph.node]
    rng = np.random.default_rng(1)
    names = [runner.manifest.output, ROWS_OUT]
    for B in (STEP_MIN_BATCH - 1, STEP_MIN_BATCH, 1024):
        x = rng.normal(size=(B, 1, runner.features)).astype(np.float32)
        rows = rng.normal(size=(B, runner.state_width)).astype(np.float32)
        feeds = {runner.manifest.input: x, ROWS_IN: rows}
        nodes, cells = runner.session.run(names, feeds), runner.step_session.run(names, feeds)
        for w, c in zip(nodes, cells):
            np.testing.assert_allclose(c, w, rtol=0, atol=2e-6)
        assert any((w != c).any() for w, c in zip(nodes, cells))  # rounding tells the two graphs apart
        for want, got in zip(cells if B >= STEP_MIN_BATCH else nodes, runner.run(x, rows)):
            np.testing.assert_array_equal(got, want)  # the runner ran the graph it should
    x = rng.normal(size=(STEP_MIN_BATCH, 2, runner.features)).astype(np.float32)  # two timesteps: the LSTM nodes
    rows = rng.normal(size=(STEP_MIN_BATCH, runner.state_width)).astype(np.float32)
    for w, g in zip(runner.session.run(names, {runner.manifest.input: x, ROWS_IN: rows}), runner.run(x, rows)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("broken", [lambda proto, name: b"not an onnx graph", lambda proto, name: 1 / 0])
def test_a_one_timestep_graph_that_fails_leaves_the_model_on_its_own_graph(monkeypatch, caplog, broken):
    """A rewrite that raises, or a graph onnxruntime refuses: the model still loads and runs every step on its own
    graph, and the log says why."""
    import statestream.server.engine.model as model

    monkeypatch.setattr(model, "step_graph", broken)
    runner = ModelRunner(DEMO)
    assert runner.step_session is runner.session
    assert "no one-timestep graph" in caplog.text
    x = np.zeros((STEP_MIN_BATCH, 1, runner.features), np.float32)
    y, rows = runner.run(x, np.zeros((STEP_MIN_BATCH, runner.state_width), np.float32))
    assert y.shape == (STEP_MIN_BATCH, 1, runner.output_size) and rows.shape == (STEP_MIN_BATCH, runner.state_width)
