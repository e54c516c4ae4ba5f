"""Writes tests/data/keras2/: a tf.keras (Keras 2) SavedModel and .h5 file plus their own outputs.

The committed files were made with tf_keras 2.21.0 on TensorFlow 2.21 (Keras 2 is not a test
dependency). To remake them:
    pip install --target /tmp/tfk --no-deps tf_keras==2.21.0
    PYTHONPATH=/tmp/tfk TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python tests/data/make_keras2_fixtures.py
"""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as k2

OUT = Path(__file__).parent / "keras2"


def main() -> None:
    tf.random.set_seed(3)
    model = k2.Sequential([
        k2.layers.InputLayer(input_shape=(None, 2)),
        k2.layers.LSTM(3, return_sequences=True, name="enc"),
        k2.layers.GRU(2, name="dec"),
        k2.layers.Dense(1, name="head"),
    ], name="keras2_model")
    OUT.mkdir(exist_ok=True)
    model.save(OUT / "savedmodel", save_format="tf", include_optimizer=False)
    model.save(OUT / "model.h5", include_optimizer=False)
    x = np.random.default_rng(0).normal(size=(2, 5, 2)).astype(np.float32)
    np.savez(OUT / "io.npz", x=x, y=model(x).numpy())


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
