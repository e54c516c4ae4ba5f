"""The seed tutorial's semantics on Keras, and the exported files stepped one timestep at a time."""

import numpy as np
import onnx
import pytest
from tutorial import NAMES, TUTORIAL_INPUT, export_all, keras_outputs, stream_onnx, tutorial_models

from statestream.contract.manifest import Layer, read_manifest
from statestream.export.convert import op_counts

ATOL = 1e-5


@pytest.fixture(scope="module")
def models():
    return tutorial_models()


@pytest.fixture(scope="module")
def outs(models):
    return keras_outputs(models)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return export_all(tmp_path_factory.mktemp("tutorial"))


def _numpy_lstm(x, kernel, recurrent, bias, h=None, c=None):
    """Keras LSTM equations (gates i, f, c, o; sigmoid/tanh), written out: an independent reference."""
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units)) if h is None else h
    c = np.zeros((x.shape[0], units)) if c is None else c
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    seq = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        seq.append(h)
    return np.stack(seq, axis=1), h, c


def test_tutorial_input_is_the_seed():
    assert TUTORIAL_INPUT.shape == (1, 3, 1)
    np.testing.assert_array_equal(TUTORIAL_INPUT.ravel(), np.float32([0.1, 0.2, 0.3]))


def test_builds_are_deterministic(models):
    again = tutorial_models()
    for n in NAMES:
        for a, b in zip(models[n].get_weights(), again[n].get_weights()):
            np.testing.assert_array_equal(a, b)


def test_keras_default_is_last_h(models, outs):
    (y,) = outs["lstm_default"]
    assert y.shape == (1, 1)
    seq, h, c = _numpy_lstm(TUTORIAL_INPUT.astype(np.float64), *models["lstm_default"].get_layer("lstm").get_weights())
    np.testing.assert_allclose(y, h, atol=1e-6)
    assert abs(float(y[0, 0])) > 1e-3  # a real number, not an all-zero model


def test_keras_return_sequences_is_h_per_step(models, outs):
    (seq,) = outs["lstm_sequences"]
    assert seq.shape == (1, 3, 1)
    ref, _, _ = _numpy_lstm(TUTORIAL_INPUT.astype(np.float64), *models["lstm_sequences"].get_layer("lstm").get_weights())
    np.testing.assert_allclose(seq, ref, atol=1e-6)
    np.testing.assert_allclose(seq[:, -1], outs["lstm_default"][0], atol=1e-7)
    assert len(np.unique(seq.round(6))) == 3  # three different steps


def test_keras_return_state_is_h_h_c(outs):
    out = outs["lstm_state"]
    assert len(out) == 3 and all(t.shape == (1, 1) for t in out)
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.allclose(out[1], out[2])  # c is not h
    np.testing.assert_allclose(out[0], outs["lstm_default"][0], atol=1e-7)


def test_keras_both_last_of_sequence_is_state_h(outs):
    seq, h, c = outs["lstm_both"]
    assert seq.shape == (1, 3, 1) and h.shape == (1, 1) and c.shape == (1, 1)
    np.testing.assert_allclose(seq[:, -1], h, atol=1e-7)
    np.testing.assert_allclose(seq, outs["lstm_sequences"][0], atol=1e-7)
    np.testing.assert_allclose(c, outs["lstm_state"][2], atol=1e-7)


def test_keras_stack(models, outs):
    m = models["lstm_stack"]
    (y,) = outs["lstm_stack"]
    assert y.shape == (1, 2)
    assert m.get_layer("lstm1").return_sequences and not m.get_layer("lstm2").return_sequences
    s1, _, _ = _numpy_lstm(TUTORIAL_INPUT.astype(np.float64), *m.get_layer("lstm1").get_weights())
    assert s1.shape == (1, 3, 2)
    _, h2, _ = _numpy_lstm(s1, *m.get_layer("lstm2").get_weights())
    np.testing.assert_allclose(y, h2, atol=1e-6)


def test_onnx_stepped_default_and_sequences(files, outs):
    for name in ("lstm_default", "lstm_sequences"):
        y, _ = stream_onnx(files[name], TUTORIAL_INPUT)
        assert y.shape == (1, 3, 1)
        np.testing.assert_allclose(y, outs["lstm_sequences"][0], atol=ATOL)
        np.testing.assert_allclose(y[:, -1], outs["lstm_default"][0], atol=ATOL)


@pytest.mark.parametrize("name", ["lstm_state", "lstm_both"])
def test_onnx_stepped_states_equal_keras(files, outs, name):
    y, states = stream_onnx(files[name], TUTORIAL_INPUT)
    h, c = outs[name][-2:]
    np.testing.assert_allclose(states["state_out.lstm.h"], h, atol=ATOL)
    np.testing.assert_allclose(states["state_out.lstm.c"], c, atol=ATOL)
    np.testing.assert_allclose(y[:, -1], h, atol=ATOL)
    np.testing.assert_allclose(y[:, -1], outs[name][0][:, -1] if name == "lstm_both" else outs[name][0], atol=ATOL)


def test_onnx_stepped_stack(files, outs):
    y, states = stream_onnx(files["lstm_stack"], TUTORIAL_INPUT)
    assert y.shape == (1, 3, 2)
    np.testing.assert_allclose(y[:, -1], outs["lstm_stack"][0], atol=ATOL)
    np.testing.assert_allclose(states["state_out.lstm2.h"], outs["lstm_stack"][0], atol=ATOL)
    assert set(states) == {"state_out.lstm1.h", "state_out.lstm1.c", "state_out.lstm2.h", "state_out.lstm2.c"}


def test_onnx_whole_sequence_and_chunks_equal_steps(files):
    for name in NAMES:
        one, s1 = stream_onnx(files[name], TUTORIAL_INPUT, chunk=1)
        whole, s3 = stream_onnx(files[name], TUTORIAL_INPUT, chunk=3)
        np.testing.assert_allclose(one, whole, atol=ATOL)
        for k in s1:
            np.testing.assert_allclose(s1[k], s3[k], atol=ATOL)


def test_tutorial_files_manifest_and_ops(files):
    for name, path in files.items():
        model = onnx.load(str(path))
        m = read_manifest(model)
        assert m.name == name and m.features == 1
        if name == "lstm_stack":
            assert m.layers == (Layer("lstm1", "LSTM", 2), Layer("lstm2", "LSTM", 2)) and m.output_size == 2
            assert op_counts(model) == {"LSTM": 2, "GRU": 0, "RNN": 0, "Loop": 0}
        else:
            assert m.layers == (Layer("lstm", "LSTM", 1),) and m.output_size == 1
            assert op_counts(model) == {"LSTM": 1, "GRU": 0, "RNN": 0, "Loop": 0}
        assert 0 <= m.parity_max_abs_error <= ATOL
