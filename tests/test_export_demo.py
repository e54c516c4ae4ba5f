"""The committed models/demo.onnx, the demo's training, and the `demo` CLI command."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tutorial import stream_onnx

from statestream.contract.manifest import Layer, read_manifest
from statestream.export import cli, demo
from statestream.export.convert import op_counts

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo.onnx"
IO = {
    "input": ["batch", "time", 3],
    **{f"state_in.lstm{i}.{k}": ["batch", 16] for i in (1, 2) for k in "hc"},
}
OUT = {
    "output": ["batch", "time", 1],
    **{f"state_out.lstm{i}.{k}": ["batch", 16] for i in (1, 2) for k in "hc"},
}


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _check_demo_file(path: Path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    m = read_manifest(model)
    assert m.name == "demo" and m.features == 3 and m.output_size == 1
    assert m.layers == (Layer("lstm1", "LSTM", 16), Layer("lstm2", "LSTM", 16))
    assert m.state_width == 64
    assert 0 <= m.parity_max_abs_error <= 1e-5 and m.opset == 17 and len(m.source_sha256) == 64
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"} <= set(m.versions)
    assert {i.name: _dims(i) for i in model.graph.input} == IO
    assert {o.name: _dims(o) for o in model.graph.output} == OUT
    assert op_counts(model) == {"LSTM": 2, "GRU": 0, "RNN": 0, "Loop": 0}
    assert path.stat().st_size < 64 * 1024
    return m


def _fit(path: Path):
    """The file's next-value MSE on held-out synthetic sequences, and that of repeating the last value."""
    x, y = demo.synthetic_signal(32, 48, seed=123)
    pred, _ = stream_onnx(path, x, chunk=48)
    return float(np.mean((pred - y) ** 2)), float(np.mean((x[:, :, :1] - y) ** 2))


def test_committed_demo_file():
    _check_demo_file(DEMO)


def test_committed_demo_learned_the_signal():
    mse, persistence = _fit(DEMO)
    assert mse < 0.5 * persistence, (mse, persistence)


def test_committed_demo_streams_one_step_at_a_time():
    x, _ = demo.synthetic_signal(4, 20, seed=5)
    sess = ort.InferenceSession(str(DEMO), providers=["CPUExecutionProvider"])
    whole, s_whole = stream_onnx(sess, x, chunk=20)
    steps, s_steps = stream_onnx(sess, x, chunk=1)
    np.testing.assert_allclose(whole, steps, atol=1e-5)
    for k in s_whole:
        np.testing.assert_allclose(s_whole[k], s_steps[k], atol=1e-5)


def test_demo_training_is_deterministic():
    a, fa = demo.train_demo_model(epochs=1, n=32, steps=12)
    b, fb = demo.train_demo_model(epochs=1, n=32, steps=12)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert fa.mse == fb.mse
    assert a.name == "demo" and [layer.name for layer in a.layers[1:]] == ["lstm1", "lstm2", "head"]


def test_synthetic_signal_targets_are_next_values():
    x, y = demo.synthetic_signal(3, 10)
    assert x.shape == (3, 10, 3) and y.shape == (3, 10, 1)
    np.testing.assert_array_equal(x[:, 1:, 0], y[:, :-1, 0])


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo.onnx"
    assert cli.main(["demo", "--out", str(out)]) == 0
    return out


def test_cli_demo_rebuilds_it(rebuilt):
    m = _check_demo_file(rebuilt)
    committed = read_manifest(onnx.load(str(DEMO)))
    assert (m.name, m.features, m.output_size, m.layers) == (committed.name, committed.features,
                                                             committed.output_size, committed.layers)
    mse, persistence = _fit(rebuilt)
    assert mse < 0.5 * persistence
