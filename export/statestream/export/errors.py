"""The one exception family of the exporter: refused models, failed conversions, failed proofs."""

from __future__ import annotations


class ExportError(Exception):
    """An export did not produce a file. `str(e)` is one line a user can act on."""

    exit_code = 1


class ExportRefused(ExportError):
    """The model cannot stream causally, or uses a layer the exporter does not support."""

    exit_code = 3

    def __init__(self, reason: str, layer=None):
        self.layer = None if layer is None else layer.name
        self.layer_class = None if layer is None else type(layer).__name__
        where = "" if layer is None else f"layer {layer.name!r} ({type(layer).__name__}): "
        super().__init__(f"refused: {where}{reason}")


class ParityError(ExportError):
    """The exported file does not compute what the Keras model computes (max abs error > tolerance)."""

    exit_code = 4

    def __init__(self, result):
        self.result = result
        super().__init__(f"parity check failed: {result.summary()}")
