"""Load the user's model from a path (.keras, .h5, SavedModel dir) and fingerprint its source."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .compat import keras2_custom_objects
from .errors import ExportError


def sha256_of_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a directory's files (relative path and bytes, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_of_model(model) -> str:
    """SHA-256 of an in-memory model's architecture (JSON) and weights."""
    import numpy as np

    h = hashlib.sha256(model.to_json().encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def load_model(path: str | os.PathLike):
    """A Keras model from a .keras or .h5 file or a SavedModel directory."""
    import keras

    p = Path(path)
    if not p.exists():
        raise ExportError(f"no such model file or directory: {p}")
    if p.is_dir():
        from .savedmodel import load_savedmodel

        return load_savedmodel(p)
    if p.suffix not in (".keras", ".h5", ".hdf5"):
        raise ExportError(f"{p}: unknown model format {p.suffix!r}; give a .keras or .h5 file or a SavedModel "
                            "directory")
    try:
        return keras.models.load_model(p, compile=False, custom_objects=keras2_custom_objects())
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"could not load {p}: {type(e).__name__}: {e}".splitlines()[0]) from e
