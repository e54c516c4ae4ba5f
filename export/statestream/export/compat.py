"""Reading tf.keras (Keras 2) configs with Keras 3: recurrent layers lose Keras-2-only arguments."""

from __future__ import annotations

from .errors import ExportError


def _compat(base):
    class Keras2Config:
        """Deserializes a Keras 2 `base` config into a plain Keras 3 `base` layer."""

        @classmethod
        def from_config(cls, config):
            config = dict(config)
            if config.pop("time_major", False):
                raise ExportError(f"layer {config.get('name')!r} ({base.__name__}) was saved with time_major=True; "
                                  "statestream streams [batch, time, features] models")
            return base.from_config(config)

    Keras2Config.__name__ = base.__name__
    return Keras2Config


def keras2_custom_objects() -> dict:
    """custom_objects for keras loaders so Keras 2 LSTM/GRU/SimpleRNN configs load as Keras 3 layers."""
    import keras

    return {c.__name__: _compat(c) for c in (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)}
