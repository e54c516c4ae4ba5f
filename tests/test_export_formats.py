"""Model files: .keras, tf.keras (Keras 2) .h5 and SavedModel, and Keras 3 SavedModels (no architecture)."""

from pathlib import Path

import keras
import numpy as np
import pytest
from tutorial import stream_onnx

from statestream.contract.manifest import Layer
from statestream.export import ExportError, export_model
from statestream.export.load import load_model, sha256_of_path

KERAS2 = Path(__file__).resolve().parent / "data" / "keras2"
LAYERS = (Layer("enc", "LSTM", 3), Layer("dec", "GRU", 2))


@pytest.fixture(scope="module")
def io():
    d = np.load(KERAS2 / "io.npz")
    return d["x"], d["y"]


@pytest.mark.parametrize("source", ["model.h5", "savedmodel"])
def test_keras2_files_load_equal_to_tf_keras(io, source):
    x, y = io  # y: what tf_keras itself computed when it saved the files
    model = load_model(KERAS2 / source)
    assert type(model.get_layer("enc")) is keras.layers.LSTM
    np.testing.assert_allclose(np.asarray(model(x)), y, atol=1e-6)


@pytest.mark.parametrize("source", ["model.h5", "savedmodel"])
def test_keras2_files_export(io, tmp_path, source):
    x, y = io
    report = export_model(KERAS2 / source, tmp_path / "k2.onnx")
    assert report.layers == LAYERS
    assert report.op_counts == {"LSTM": 1, "GRU": 1, "RNN": 0, "Loop": 0}  # the GRU built natively
    assert report.manifest.source_sha256 == sha256_of_path(KERAS2 / source)
    stepped, _ = stream_onnx(tmp_path / "k2.onnx", x)
    np.testing.assert_allclose(stepped[:, -1], y, atol=1e-5)


def test_directory_hash_covers_file_names_and_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    h1 = sha256_of_path(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    h2 = sha256_of_path(tmp_path)
    (tmp_path / "a").rename(tmp_path / "b")
    assert len({h1, h2, sha256_of_path(tmp_path)}) == 3


def test_keras3_savedmodel_is_an_error_that_says_what_to_do(tmp_path):
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(2), keras.layers.Dense(1)])
    model.export(str(tmp_path / "sm"), verbose=False)
    with pytest.raises(ExportError) as e:
        export_model(tmp_path / "sm", tmp_path / "m.onnx")
    assert "carries no Keras architecture" in str(e.value) and "model.save('model.keras')" in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def test_directory_that_is_not_a_savedmodel(tmp_path):
    with pytest.raises(ExportError, match="without saved_model.pb"):
        export_model(tmp_path, tmp_path / "m.onnx")
