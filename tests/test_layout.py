"""StepLayout (state rows <-> a graph's tensors) and the manifest fields of adopted graphs."""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest
from serverproc import DEMO_MODEL

from statestream.contract.layout import StepLayout
from statestream.contract.manifest import (
    FORMAT_ADOPTED,
    Constant,
    Manifest,
    ManifestError,
    StateTensor,
    adopted_layers,
    read_manifest,
)


def test_the_general_path_equals_the_plain_keras_path():
    """Exported Keras models take a plain path (the hot one); the general one (any batch axis, constants,
    context) gives the same numbers on them."""
    sess = ort.InferenceSession(str(DEMO_MODEL), providers=["CPUExecutionProvider"])
    plain = StepLayout(read_manifest(sess.get_modelmeta()))
    general = StepLayout(read_manifest(sess.get_modelmeta()))
    general.plain = False
    assert plain.plain
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4, 3)).astype(np.float32)
    rows = rng.normal(size=(5, plain.width)).astype(np.float32)
    for a, b in zip(plain.run(sess.run, x, rows), general.run(sess.run, x, rows)):
        np.testing.assert_array_equal(a, b)


def _adopted(**kw) -> Manifest:
    states = (StateTensor("state", "h", "state", "stateN", (2, 128), 1),)
    fields = dict(name="vad", features=512, output_size=1, layers=adopted_layers(states, 64), format=FORMAT_ADOPTED,
                  layout="BF", states=states, constants=(Constant("sr", "int64", (), (16000,)),), context=64)
    fields.update(kw)
    return Manifest(**fields)


def test_an_adopted_manifest_round_trips_and_a_keras_one_keeps_format_1():
    m = _adopted()
    assert Manifest.from_json(m.to_json()) == m and m.state_width == 320
    keras = json.loads(read_manifest(ort.InferenceSession(str(DEMO_MODEL)).get_modelmeta()).to_json())
    assert keras["format"] == "statestream.manifest/1" and not {"states", "context", "layout"} & set(keras)


@pytest.mark.parametrize("change, message", [
    ({"layout": "BTF"}, "context window (64) needs the BF layout"),
    ({"layout": "FTB"}, "layout 'FTB'"),
    ({"states": (StateTensor("state", "h", "state", "stateN", (2, 128), 3),)}, "batch axis 3"),
    ({"layers": ()}, "do not describe the states"),
])
def test_a_manifest_that_cannot_run_is_refused_on_load(change, message):
    d = json.loads(_adopted().to_json())
    bad = _adopted(**change)
    d.update(json.loads(bad.to_json()))
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.from_json(json.dumps(d))


def test_model_runner_runs_a_plain_graph_on_state_rows_with_the_tensor_paths_numbers():
    """A plain (exported Keras) graph runs as a rows graph (rowgraph.py): its state tensors replaced by one [B, W]
    input that a Split cuts into them and one [B, W] output that a Concat joins, the graph's own nodes untouched.
    Batches of <= BIND_MAX session-timesteps go through per-thread I/O bindings. Every path gives exactly the
    numbers of StepLayout.run on the original graph, fresh arrays every run (the next run does not change an answer
    already given), from any thread."""
    from concurrent.futures import ThreadPoolExecutor

    import onnx

    from statestream.server.engine.model import BIND_MAX, ModelRunner
    from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT, rows_graph

    runner = ModelRunner(DEMO_MODEL)
    original = ort.InferenceSession(str(DEMO_MODEL), providers=["CPUExecutionProvider"])
    assert [i.name for i in runner.session.get_inputs()] == ["input", ROWS_IN]
    assert [o.name for o in runner.session.get_outputs()] == ["output", ROWS_OUT]
    ops = [n.op_type for n in onnx.load(str(DEMO_MODEL)).graph.node]
    wrapped = onnx.load_from_string(rows_graph(onnx.load(str(DEMO_MODEL)), runner.layout))
    assert [n.op_type for n in wrapped.graph.node] == ["Split", *ops, "Concat"]
    rng = np.random.default_rng(2)

    def case(B, T):
        return (rng.normal(size=(B, T, runner.features)).astype(np.float32),
                rng.normal(size=(B, runner.state_width)).astype(np.float32))

    cases = [case(B, T) for B, T in [(1, 1), (4, 1), (3, 5), (BIND_MAX, 1), (BIND_MAX + 1, 1), (300, 2), (1, 1)]]
    want = [runner.layout.run(original.run, x, rows) for x, rows in cases]
    got = [runner.run(x, rows) for x, rows in cases]
    got_again = [runner.run(x, rows) for x, rows in cases]  # reuses every binding: earlier answers must stand
    for (x, _), w, g, g2 in zip(cases, want, got, got_again):
        for a, b, c in zip(w, g, g2):
            if x.shape[1] == 1:  # the one-timestep graph (stepgraph.py): the LSTMs' sums in another order
                np.testing.assert_allclose(b, a, rtol=0, atol=2e-6)
            else:
                np.testing.assert_array_equal(b, a)
            np.testing.assert_array_equal(c, b)
    assert runner._local.bindings  # the small ones did go through bindings
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: runner.run(*cases[i % 3]), range(64)))
    for i, (y, new) in enumerate(results):
        np.testing.assert_array_equal(y, got[i % 3][0])
        np.testing.assert_array_equal(new, got[i % 3][1])


@pytest.mark.parametrize("opset", [11, 17])
def test_a_rows_graph_splits_and_joins_the_states_before_and_after_opset_13(opset):
    """Split takes its sizes as an attribute before opset 13 and as an input from 13 on: the rows graph of a small
    plain graph of either opset gives the graph's own outputs, its new states joined in slab order (a state input
    with a default value in the graph loses the default: the rows feed it)."""
    from onnx import TensorProto, helper

    from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT, rows_graph

    def value(name, *dims):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", *dims])

    two, three = (helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("two", 2.0), ("three", 3.0)))
    default = helper.make_tensor("sb", TensorProto.FLOAT, [1, 3], [0.0] * 3)  # a state input with a default value
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "two"], ["output"]), helper.make_node("Add", ["sa", "two"], ["sa_out"]),
         helper.make_node("Mul", ["sb", "three"], ["sb_out"])], "g",
        [value("input", "T", 3), value("sa", 2), value("sb", 3)],
        [value("output", "T", 3), value("sa_out", 2), value("sb_out", 3)], [two, three, default])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    states = (StateTensor("a", "h", "sa", "sa_out", (2,), 0), StateTensor("b", "h", "sb", "sb_out", (3,), 0))
    layout = StepLayout(Manifest(name="g", features=3, output_size=3, layers=adopted_layers(states, 0),
                                 format=FORMAT_ADOPTED, states=states))
    assert layout.plain
    sess = ort.InferenceSession(rows_graph(model, layout), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 2, 3)).astype(np.float32)
    rows = rng.normal(size=(4, 5)).astype(np.float32)
    y, new = sess.run(["output", ROWS_OUT], {"input": x, ROWS_IN: rows})
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)
    np.testing.assert_allclose(new, np.concatenate([rows[:, :2] + 2, rows[:, 2:] * 3], axis=1), rtol=1e-6)
