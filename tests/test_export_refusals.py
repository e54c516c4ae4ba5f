"""Refused models write nothing and say why in one line; CLI exit codes; a failed proof fails the export."""

import os
import subprocess
import sys

import keras
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from statestream.export import ExportError, ExportRefused, ParityError, cli, convert, export_model

L = keras.layers


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.rnn = L.LSTM(2)

    def call(self, x):
        return self.rnn(x)


def _chain(*layers, features=2):
    x = keras.Input((None, features))
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y)


def _attention():
    x = keras.Input((None, 2))
    h = L.LSTM(4, return_sequences=True, name="enc")(x)
    return keras.Model(x, L.MultiHeadAttention(2, 2, name="mha")(h, h))


def _dot_attention():
    x = keras.Input((None, 2))
    h = L.LSTM(4, return_sequences=True, name="enc")(x)
    return keras.Model(x, L.Attention(name="att")([h, h]))


def _merge():
    x = keras.Input((None, 2))
    a = L.LSTM(3, return_sequences=True, name="a")(x)
    b = L.LSTM(3, return_sequences=True, name="b")(x)
    return keras.Model(x, L.Add(name="sum")([a, b]))


def _explicit_state():
    x, h, c = keras.Input((None, 2)), keras.Input((3,)), keras.Input((3,))
    return keras.Model([x, h, c], L.LSTM(3, name="l")(x, initial_state=[h, c]))


def _state_fed_forward():
    x = keras.Input((None, 2))
    _, h, _ = L.LSTM(3, return_state=True, name="l")(x)
    return keras.Model(x, L.Dense(1, name="d")(h))


def _subclassed():
    m = Subclassed()
    m(np.zeros((1, 2, 2), np.float32))
    return m


# name -> (builder, [strings the one-line message must contain])
REFUSED = {
    "bidirectional": (lambda: _chain(L.Bidirectional(L.LSTM(3), name="bi")),
                      ["layer 'bi' (Bidirectional)", "backwards", "causally"]),
    "go_backwards": (lambda: _chain(L.LSTM(3, go_backwards=True, name="rev")),
                     ["layer 'rev' (LSTM)", "go_backwards=True"]),
    "masking": (lambda: _chain(L.Masking(0.0, name="mask"), L.LSTM(3)), ["layer 'mask' (Masking)", "masks timesteps"]),
    "conv1d": (lambda: _chain(L.Conv1D(4, 3, padding="causal", name="conv"), L.LSTM(3)),
               ["layer 'conv' (Conv1D)", "convolves"]),
    "pooling": (lambda: _chain(L.LSTM(3, return_sequences=True), L.GlobalAveragePooling1D(name="pool")),
                ["layer 'pool' (GlobalAveragePooling1D)", "pools across timesteps"]),
    "multihead_attention": (_attention, ["layer 'mha' (MultiHeadAttention)", "attends across timesteps"]),
    "attention": (_dot_attention, ["layer 'att' (Attention)", "attends across timesteps"]),
    "unknown_layer": (lambda: _chain(L.LSTM(3, return_sequences=True), L.LayerNormalization(name="norm")),
                      ["layer 'norm' (LayerNormalization)", "not supported", "supported: LSTM, GRU"]),
    "generic_rnn": (lambda: _chain(L.RNN(L.LSTMCell(3), name="cellwrap")),
                    ["layer 'cellwrap' (RNN)", "generic keras.layers.RNN"]),
    "td_conv": (lambda: _chain(L.LSTM(3, return_sequences=True), L.TimeDistributed(L.Flatten(), name="tdf")),
                ["layer 'tdf' (TimeDistributed)", "wraps Flatten"]),
    "merge": (_merge, ["layer 'sum' (Add)", "takes 2 inputs"]),
    "explicit_initial_state": (_explicit_state, ["has 3 inputs"]),
    "state_fed_forward": (_state_fed_forward, ["layer 'd' (Dense)", "output #1 (a state) of layer 'l'"]),
    "no_recurrent_layer": (lambda: _chain(L.Dense(3)), ["no LSTM, GRU or SimpleRNN layer"]),
    "subclassed": (_subclassed, ["subclassed keras.Model", "Sequential or functional"]),
    "sequential_masking": (lambda: keras.Sequential([keras.Input((None, 2)), L.Masking(name="pad"), L.GRU(2)]),
                           ["layer 'pad' (Masking)"]),
    "sequential_embedding": (lambda: keras.Sequential([keras.Input((None,)), L.Embedding(10, 2, name="emb"),
                                                       L.LSTM(2)]), ["[batch, time, features]"]),
    "sequential_bidirectional": (lambda: keras.Sequential([keras.Input((None, 2)), L.LSTM(2, return_sequences=True),
                                                           L.Bidirectional(L.GRU(2), name="bigru")]),
                                 ["layer 'bigru' (Bidirectional)"]),
    "not_sequence_input": (lambda: keras.Sequential([keras.Input((4,)), L.Dense(2)]), ["[batch, time, features]"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_writes_nothing_and_says_why_in_one_line(tmp_path, case):
    build, needles = REFUSED[case]
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportRefused) as e:
        export_model(build(), out)
    msg = str(e.value)
    assert msg.startswith("refused: ") and "\n" not in msg
    for needle in needles:
        assert needle in msg
    assert list(tmp_path.iterdir()) == []  # not the file, not a temp file


def test_refused_export_keeps_an_existing_file(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(ExportRefused):
        export_model(REFUSED["bidirectional"][0](), out)
    assert out.read_bytes() == b"previous"


def _tampered(monkeypatch, factor=1.01):
    """Make the converter emit a wrong file: scale the first LSTM op's input weights."""
    real = convert.to_onnx

    def tamper(twin, *a, **kw):
        model = real(twin, *a, **kw)
        node = next(n for n in model.graph.node if n.op_type == "LSTM")
        init = next(i for i in model.graph.initializer if i.name == node.input[1])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
        return model

    monkeypatch.setattr(convert, "to_onnx", tamper)


def _small_lstm():
    return _chain(L.LSTM(4, name="l"), L.Dense(1))


def test_parity_failure_raises_with_numbers_and_writes_nothing(tmp_path, monkeypatch):
    _tampered(monkeypatch)
    with pytest.raises(ParityError) as e:
        export_model(_small_lstm(), tmp_path / "m.onnx")
    r = e.value.result
    assert r.max_abs_error > 1e-5 and not r.ok
    assert r.original_vs_twin < 1e-6  # the twin is right; the file is what is wrong
    assert r.keras_vs_ort_sequence > 1e-5 and r.keras_vs_ort_steps > 1e-5
    msg = str(e.value)
    assert msg.startswith("parity check failed: max abs error") and "tolerance 1e-05" in msg and "\n" not in msg
    assert f"{r.max_abs_error:.3g}" in msg
    assert list(tmp_path.iterdir()) == []


def test_parity_catches_a_twin_that_differs_from_the_users_model(tmp_path, monkeypatch):
    """The proof starts at the user's model, not at the twin: a wrong twin fails even if ONNX matches it."""
    from statestream.export import twin as twin_mod

    real = twin_mod.build_twin

    def wrong_twin(model):
        t = real(model)
        dense = t.model.layers[-1]
        dense.set_weights([w + 0.01 for w in dense.get_weights()])
        return t

    monkeypatch.setattr(twin_mod, "build_twin", wrong_twin)
    with pytest.raises(ParityError) as e:
        export_model(_small_lstm(), tmp_path / "m.onnx")
    assert e.value.result.original_vs_twin > 1e-3
    assert e.value.result.keras_vs_ort_steps < 1e-5  # the file does match the (wrong) twin
    assert list(tmp_path.iterdir()) == []


def test_cli_parity_failure_exit_code(tmp_path, monkeypatch, capsys):
    src = tmp_path / "m.keras"
    _small_lstm().save(src)
    _tampered(monkeypatch)
    rc = cli.main([str(src), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == ParityError.exit_code == 4
    assert err.startswith("statestream-export: parity check failed: max abs error")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_success_and_json(tmp_path, capsys):
    src = tmp_path / "m.keras"
    _small_lstm().save(src)
    rc = cli.main([str(src), "--out", str(tmp_path / "out.onnx"), "--name", "sensor", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    import json

    report = json.loads(out)
    assert report["manifest"]["name"] == "sensor" and report["op_counts"]["LSTM"] == 1
    assert report["parity"]["max_abs_error"] <= 1e-5
    assert onnx.load(str(tmp_path / "out.onnx")).graph.input[0].name == "input"


@pytest.mark.parametrize("args, code, needle", [
    (["nowhere.keras"], 1, "no such model file or directory"),
    (["model.txt"], 1, "unknown model format '.txt'"),
])
def test_cli_load_errors(tmp_path, capsys, args, code, needle):
    (tmp_path / "model.txt").write_text("x")
    rc = cli.main([str(tmp_path / args[0]), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == code and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_bad_name_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="model name 'bad name!'"):
        export_model(_small_lstm(), tmp_path / "m.onnx", name="bad name!")
    assert list(tmp_path.iterdir()) == []


def test_console_script_refusal(tmp_path):
    """The installed `statestream-export` in a real process: exit 3, one line on stderr, nothing on stdout."""
    src = tmp_path / "bi.keras"
    REFUSED["bidirectional"][0]().save(src)
    exe = os.path.join(os.path.dirname(sys.executable), "statestream-export")
    p = subprocess.run([exe, str(src), "--out", str(tmp_path / "bi.onnx")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 3, p.stderr
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "statestream-export: refused: layer 'bi' (Bidirectional): runs a second RNN backwards, so each step's "
        "output depends on future steps; it cannot stream causally"]
    assert not (tmp_path / "bi.onnx").exists()


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "statestream-export")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for needle in ("statestream-export demo --out models/demo.onnx", "state_in.<layer>.h", "exit status"):
        assert needle in p.stdout
    p = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "required" in p.stderr


def test_without_the_export_extra_one_line_says_how_to_install_it_from_a_checkout(tmp_path):
    code = ("import sys; sys.modules['keras'] = None; from statestream.export.cli import main; "
            f"sys.exit(main([{str(tmp_path / 'm.keras')!r}, '--out', {str(tmp_path / 'm.onnx')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "keras" in r.stderr and 'pip install ".[export]"' in r.stderr and "statestream[" not in r.stderr
