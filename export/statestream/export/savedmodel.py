"""SavedModel directories: rebuild the Keras model a tf.keras (Keras 2) SavedModel describes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .compat import keras2_custom_objects
from .errors import ExportError

METADATA = "keras_metadata.pb"
_NO_ARCHITECTURE = ("carries no Keras architecture (written by Keras 3 model.export() or tf.saved_model.save), "
                    "so its layers cannot be rebuilt: save the model with model.save('model.keras') and export that")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, value) of a protobuf message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, val


def root_metadata(path: Path) -> dict:
    """The root object's JSON metadata from keras_metadata.pb (SavedMetadata.nodes[path='root'])."""
    data = (path / METADATA).read_bytes()
    for num, node in _fields(data):
        if num != 1:  # SavedMetadata.nodes
            continue
        f = dict(_fields(node))  # SavedObject: 3 node_path, 4 identifier, 5 metadata
        if f.get(3, b"").decode() == "root":
            from keras.src.legacy.saving import json_utils  # decodes tf.keras's {"class_name": "__tuple__"}

            return json_utils.decode(f[5].decode())
    raise ExportError(f"{path}: {METADATA} has no root object")


def load_savedmodel(path: Path):
    """A Keras 3 model equal to the tf.keras model saved at `path`, checked against the SavedModel's own graph."""
    import tensorflow as tf
    from keras.src.legacy.saving import saving_utils

    if not (path / "saved_model.pb").exists():
        raise ExportError(f"{path} is a directory without saved_model.pb: not a SavedModel")
    if not (path / METADATA).exists():
        raise ExportError(f"SavedModel {path} {_NO_ARCHITECTURE}")
    meta = root_metadata(path)
    try:
        model = saving_utils.model_from_config({"class_name": meta["class_name"], "config": meta["config"]},
                                             custom_objects=keras2_custom_objects())
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"SavedModel {path}: could not rebuild its Keras architecture: "
                          f"{type(e).__name__}: {e}".splitlines()[0]) from e
    loaded = tf.saved_model.load(str(path))
    # tf.keras saves the model's `variables` list in model.weights order, which a rebuilt model shares.
    values = [v.numpy() for v in getattr(loaded, "variables", [])]
    want = [tuple(w.shape) for w in model.weights]
    if [v.shape for v in values] != want:
        raise ExportError(f"SavedModel {path}: saved variables {[v.shape for v in values]} do not match the "
                          f"architecture's weights {want}")
    model.set_weights(values)
    _check_against_graph(path, model, loaded)
    return model


def _check_against_graph(path: Path, model, loaded) -> None:
    """The rebuilt model must compute what the SavedModel's own traced graph computes."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 3 or shape[-1] is None:
        return  # twin building refuses it with a clearer message
    x = np.random.default_rng(0).normal(size=(shape[0] or 2, shape[1] or 5, shape[2])).astype(np.float32)
    try:
        ref = loaded(x, training=False)
    except Exception:
        return  # saved without traces: the variables are all there is to go on
    ref = ref if isinstance(ref, (list, tuple)) else [ref]
    got = model(x, training=False)
    got = got if isinstance(got, (list, tuple)) else [got]
    err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(ref, got))
    if len(ref) != len(got) or not err <= 1e-5:
        raise ExportError(f"SavedModel {path}: the rebuilt Keras model differs from the saved graph "
                          f"(max abs error {err:.3g}); export the model from a .keras file instead")
