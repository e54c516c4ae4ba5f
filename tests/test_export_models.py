"""Model zoo: Sequential/functional, stateful, stacks of LSTM/GRU/SimpleRNN, heads; I/O names, manifest, ops."""

import hashlib
import os

import keras
import numpy as np
import onnx
import pytest
from tutorial import stream_onnx

from statestream.contract.manifest import Layer, read_manifest
from statestream.export import export_model
from statestream.export.convert import op_counts

L = keras.layers
ATOL = 1e-5


def _seeded(i):
    return {"kernel_initializer": keras.initializers.GlorotUniform(100 + i),
            "recurrent_initializer": keras.initializers.Orthogonal(seed=200 + i)}


def _functional(layers, features, time=None, batch=None, name=None):
    x = keras.Input(shape=(time, features), batch_size=batch)
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y, name=name)


def _zoo():
    keras.utils.set_random_seed(11)  # Dense layers; recurrent kernels are seeded explicitly
    return {
        # name: (model, features, [(layer, cell, units)], output size)
        "seq_heads": (keras.Sequential([
            keras.Input((None, 5)),
            L.LSTM(7, return_sequences=True, name="enc", **_seeded(1)),
            L.TimeDistributed(L.Dense(4, activation="relu"), name="td"),
            L.Activation("tanh", name="act"),
            L.Dropout(0.5, name="drop"),
            L.Dense(3, activation="softmax", name="probs"),
        ], name="seq_heads"), 5, [("enc", "LSTM", 7)], 3),
        "lstm3": (_functional([
            L.LSTM(4, return_sequences=True, name="a", **_seeded(2)),
            L.LSTM(6, return_sequences=True, name="b", **_seeded(3)),
            L.LSTM(3, name="c", **_seeded(4)),
            L.Dense(2, name="out"),
        ], 2, name="lstm3"), 2, [("a", "LSTM", 4), ("b", "LSTM", 6), ("c", "LSTM", 3)], 2),
        "stateful": (keras.Sequential([
            keras.Input((None, 3), batch_size=2),
            L.LSTM(5, stateful=True, return_sequences=True, name="mem", **_seeded(5)),
            L.Dense(1, name="y"),
        ], name="stateful"), 3, [("mem", "LSTM", 5)], 1),
        "gru": (_functional([L.GRU(6, return_sequences=True, name="g1", **_seeded(6)),
                             L.GRU(4, name="g2", **_seeded(7)), L.Dense(2)], 3, name="gru"),
                3, [("g1", "GRU", 6), ("g2", "GRU", 4)], 2),
        "simplernn": (keras.Sequential([keras.Input((None, 4)), L.SimpleRNN(5, name="r", **_seeded(8)),
                                        L.Dense(3, activation="sigmoid", name="y")], name="simplernn"),
                      4, [("r", "SimpleRNN", 5)], 3),
        "mixed": (_functional([
            L.Dense(6, activation="tanh", name="pre"),
            L.LSTM(5, return_sequences=True, name="l", **_seeded(9)),
            L.GRU(4, return_sequences=True, name="g", **_seeded(10)),
            L.SimpleRNN(3, return_sequences=True, name="s", **_seeded(11)),
        ], 2, time=6, name="mixed"), 2, [("l", "LSTM", 5), ("g", "GRU", 4), ("s", "SimpleRNN", 3)], 3),
        "no_head": (_functional([L.LSTM(9, name="only", **_seeded(12))], 1, name="no_head"),
                    1, [("only", "LSTM", 9)], 9),
        "nested": (_functional([
            keras.Sequential([L.LSTM(3, return_sequences=True, name="inner", **_seeded(13)), L.Dense(2)],
                             name="block"),
            L.GRU(2, name="outer", **_seeded(14)),
        ], 4, name="nested"), 4, [("inner", "LSTM", 3), ("outer", "GRU", 2)], 2),
    }


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (model, spec, report, path): every zoo model exported once."""
    d = tmp_path_factory.mktemp("zoo")
    out = {}
    for name, (model, features, layers, out_size) in _zoo().items():
        path = d / f"{name}.onnx"
        out[name] = (model, (features, layers, out_size), export_model(model, path), path)
    return out


NAMES = ["seq_heads", "lstm3", "stateful", "gru", "simplernn", "mixed", "no_head", "nested"]


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", NAMES)
def test_canonical_io_names_and_shapes(zoo, name):
    _, (features, layers, out_size), report, path = zoo[name]
    g = onnx.load(str(path)).graph
    want_in = {"input": ["batch", "time", features]}
    want_out = {"output": ["batch", "time", out_size]}
    for lname, cell, units in layers:
        for kind in ("h", "c") if cell == "LSTM" else ("h",):
            want_in[f"state_in.{lname}.{kind}"] = ["batch", units]
            want_out[f"state_out.{lname}.{kind}"] = ["batch", units]
    assert {i.name: _dims(i) for i in g.input} == want_in
    assert {o.name: _dims(o) for o in g.output} == want_out
    assert [i.name for i in g.input][0] == "input" and [o.name for o in g.output][0] == "output"
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in list(g.input) + list(g.output))
    assert report.state_inputs == [n for n in want_in if n != "input"]
    assert report.state_outputs == [n for n in want_out if n != "output"]


@pytest.mark.parametrize("name", NAMES)
def test_manifest(zoo, name):
    model, (features, layers, out_size), report, path = zoo[name]
    m = read_manifest(onnx.load(str(path)))
    assert m == report.manifest
    assert m.name == name and m.features == features and m.output_size == out_size
    assert m.layers == tuple(Layer(*x) for x in layers)
    assert m.opset == 17 and m.format == "statestream.manifest/1"
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"} <= set(m.versions)
    assert m.versions["keras"] == keras.__version__
    assert 0 <= m.parity_max_abs_error <= ATOL and m.parity_max_abs_error == report.parity.max_abs_error
    assert len(m.source_sha256) == 64
    assert m.state_width == sum(u * (2 if c == "LSTM" else 1) for _, c, u in layers)


@pytest.mark.parametrize("name", NAMES)
def test_op_counts(zoo, name):
    _, (_, layers, _), report, path = zoo[name]
    counts = op_counts(onnx.load(str(path)))
    assert counts == report.op_counts
    n = {cell: sum(c == cell for _, c, _ in layers) for cell in ("LSTM", "GRU", "SimpleRNN")}
    # One native ONNX op per layer (LSTM, GRU, RNN), no Loop: tf2onnx for LSTM-only chains, the native builder
    # (export/native.py) for chains with a GRU or SimpleRNN.
    assert counts == {"LSTM": n["LSTM"], "GRU": n["GRU"], "RNN": n["SimpleRNN"], "Loop": 0}
    assert not report.notes


@pytest.mark.parametrize("name", NAMES)
def test_onnx_stepped_equals_original_keras(zoo, name):
    """End to end, independent of the exporter's own proof: the user's model vs the file, stepped."""
    model, (features, _, _), _, path = zoo[name]
    batch = model.inputs[0].shape[0] or 3
    steps = model.inputs[0].shape[1] or 6
    x = np.random.default_rng(5).normal(size=(batch, steps, features)).astype(np.float32)
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_state()
    want = np.asarray(model(x, training=False))
    y, _ = stream_onnx(path, x)
    got = y if want.ndim == 3 else y[:, -1]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_the_server_runs_each_model_as_a_rows_graph_with_the_files_numbers(zoo, name):
    """The server serves every exported graph as a rows graph (engine/rowgraph.py: one [B, W] state input split
    into the graph's state tensors, one [B, W] output joined from its new ones): the same numbers as the file fed
    tensor by tensor, for a batch through the I/O binding (<= BIND_MAX session-timesteps), one above it, and one
    timestep of a batch the one-timestep graph runs (its LSTMs as cell ops)."""
    import onnxruntime as ort

    from statestream.contract.layout import StepLayout
    from statestream.server.engine.model import BIND_MAX, ModelRunner
    from statestream.server.engine.rowgraph import ROWS_IN

    path = zoo[name][3]
    runner = ModelRunner(path)
    assert runner.rows and ROWS_IN in [i.name for i in runner.session.get_inputs()]
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    layout = StepLayout(read_manifest(onnx.load(str(path))))
    rng = np.random.default_rng(3)
    for B, T in ((2, 3), (BIND_MAX + 7, 2), (2, 1), (BIND_MAX + 7, 1)):  # T = 1: the one-timestep graph
        x = rng.normal(size=(B, T, runner.features)).astype(np.float32)
        rows = rng.normal(size=(B, runner.state_width)).astype(np.float32)
        for want, got in zip(layout.run(original.run, x, rows), runner.run(x, rows)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 if T > 1 else 1e-5)
    # every zoo layer is small enough for its cell's ops (stepgraph.py): each model has a one-timestep graph
    assert runner.step_session is not runner.session


def test_stateful_model_keeps_its_state(zoo):
    """Exporting runs the stateful model from zero but leaves the user's stored state as it was."""
    model = _zoo()["stateful"][0]
    x = np.ones((2, 4, 3), np.float32)
    model(x)
    layer = model.get_layer("mem")
    before = [v.numpy().copy() for v in layer.states]
    assert np.abs(before[0]).max() > 0
    export_model(model, zoo["stateful"][3].parent / "stateful_again.onnx")
    for a, v in zip(before, layer.states):
        np.testing.assert_array_equal(a, v.numpy())


def test_random_initial_states_flow_through(zoo):
    """A non-zero initial state changes the output, and stepping from it equals one whole-sequence run."""
    path = zoo["lstm3"][3]
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 5, 2)).astype(np.float32)
    states = {f"state_in.{n}.{k}": rng.normal(size=(2, u)).astype(np.float32)
              for n, u in (("a", 4), ("b", 6), ("c", 3)) for k in "hc"}
    zero, _ = stream_onnx(path, x)
    stepped, s1 = stream_onnx(path, x, states)
    whole, s5 = stream_onnx(path, x, states, chunk=5)
    assert np.abs(zero - stepped).max() > 1e-3
    np.testing.assert_allclose(stepped, whole, atol=ATOL)
    for k in s1:
        np.testing.assert_allclose(s1[k], s5[k], atol=ATOL)


def test_report_text(zoo):
    text = str(zoo["gru"][2])
    assert "state_in.g1.h [batch, 6]" in text and "GRU 2" in text and "Loop 0" in text
    assert "parity: max abs error" in text and "note:" not in text


VARIANTS = {  # cell options the native builder maps: reset_after, activations, no bias, heads between layers
    "gru_reset_before": lambda: [L.GRU(5, reset_after=False, return_sequences=True, **_seeded(20)), L.Dense(2)],
    "gru_hard_sigmoid_no_bias": lambda: [L.GRU(4, recurrent_activation="hard_sigmoid", use_bias=False,
                                               return_sequences=True, **_seeded(21)),
                                         L.LeakyReLU(0.2), L.Dense(3, activation="softmax")],
    "rnn_relu_stack": lambda: [L.SimpleRNN(6, activation="relu", return_sequences=True, **_seeded(22)),
                               L.ELU(), L.SimpleRNN(3, **_seeded(23)), L.Activation("sigmoid")],
    "lstm_then_gru": lambda: [L.LSTM(4, return_sequences=True, **_seeded(24)), L.Dense(5, activation="relu"),
                              L.GRU(3, return_sequences=True, **_seeded(25))],
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_native_ops_for_cell_variants(name, tmp_path):
    keras.utils.set_random_seed(3)
    model = _functional(VARIANTS[name](), 3, name=name)
    report = export_model(model, tmp_path / "m.onnx")
    cells = [l.cell for l in report.layers]
    assert report.op_counts == {"LSTM": cells.count("LSTM"), "GRU": cells.count("GRU"),
                                "RNN": cells.count("SimpleRNN"), "Loop": 0}
    assert report.parity_max_abs_error <= ATOL
    x = np.random.default_rng(5).normal(size=(2, 6, 3)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    y, _ = stream_onnx(tmp_path / "m.onnx", x)
    np.testing.assert_allclose(y if want.ndim == 3 else y[:, -1], want, atol=ATOL)


def test_what_the_native_builder_does_not_map_falls_back_to_a_proven_loop(tmp_path):
    """A capped ReLU head is outside the builder's map: tf2onnx converts the chain (a Loop), proven, with a note;
    native=False gives the Loop too (the path before native ops)."""
    keras.utils.set_random_seed(4)
    model = _functional([L.GRU(4, return_sequences=True, **_seeded(26)), L.ReLU(max_value=6.0)], 3, name="capped")
    report = export_model(model, tmp_path / "capped.onnx")
    assert report.op_counts == {"LSTM": 0, "GRU": 0, "RNN": 0, "Loop": 1} and report.parity_max_abs_error <= ATOL
    assert "converted to an ONNX Loop" in report.notes[0]
    loop = export_model(_zoo()["gru"][0], tmp_path / "loop.onnx", native=False)
    assert loop.op_counts == {"LSTM": 0, "GRU": 0, "RNN": 0, "Loop": 2} and loop.parity_max_abs_error <= ATOL


def test_default_name_is_file_stem_and_source_hash(tmp_path):
    model = _zoo()["no_head"][0]
    src = tmp_path / "my_model.keras"
    model.save(src)
    report = export_model(src, tmp_path / "sensor-v2.onnx")
    assert report.manifest.name == "sensor-v2"
    assert report.manifest.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_model.keras", "sensor-v2.onnx"]  # no temp left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sensor-v2.onnx").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    named = export_model(src, tmp_path / "x.onnx", name="custom")
    assert named.manifest.name == "custom"


CELL_CLASSES = {"LSTM": L.LSTM, "GRU": L.GRU, "SimpleRNN": L.SimpleRNN}


def test_any_feature_and_unit_count(tmp_path):
    """Property: random chains (cells, units, features, head or not) export and stream like Keras."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    arch = st.tuples(
        st.integers(1, 6),  # features
        st.lists(st.tuples(st.sampled_from(sorted(CELL_CLASSES)), st.integers(1, 7)), min_size=1, max_size=2),
        st.one_of(st.none(), st.integers(1, 4)),  # Dense head size
        st.booleans(),  # last recurrent layer returns sequences
    )

    @settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(arch)
    def prop(a):
        features, cells, head, last_seq = a
        layers = [CELL_CLASSES[c](u, name=f"r{i}", return_sequences=(i < len(cells) - 1) or last_seq)
                  for i, (c, u) in enumerate(cells)]
        model = _functional(layers + ([L.Dense(head)] if head else []), features)
        path = tmp_path / "p.onnx"
        report = export_model(model, path)
        assert report.manifest.features == features
        assert report.manifest.output_size == (head or cells[-1][1])
        assert [(l.cell, l.units) for l in report.layers] == cells
        x = np.random.default_rng(0).normal(size=(2, 4, features)).astype(np.float32)
        want = np.asarray(model(x))
        y, _ = stream_onnx(path, x)
        np.testing.assert_allclose(y if want.ndim == 3 else y[:, -1], want, atol=ATOL)

    prop()


def test_same_model_exports_to_the_same_bytes(tmp_path):
    """Names are canonical (tf2onnx's counters are not), so re-exporting gives an identical file: LSTM graphs
    (tf2onnx) and graphs with GRU/SimpleRNN (the native builder)."""
    for zoo_name in ("lstm3", "mixed"):
        model = _zoo()[zoo_name][0]
        (tmp_path / zoo_name / "a").mkdir(parents=True)
        (tmp_path / zoo_name / "b").mkdir()
        export_model(model, tmp_path / zoo_name / "a" / "m.onnx")
        export_model(model, tmp_path / zoo_name / "b" / "m.onnx")
        a, b = (tmp_path / zoo_name / d / "m.onnx" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
        names = [n.name for n in onnx.load(str(a)).graph.node]
        assert len(set(names)) == len(names) and not any("__" in n for n in names)
