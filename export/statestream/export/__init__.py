"""Keras (or PyTorch) recurrent model -> one self-describing streaming ONNX file, proven equal to its framework."""

from .errors import ExportError, ExportRefused, ParityError

__all__ = ["export_model", "ExportReport", "export_torch", "ExportError", "ExportRefused", "ParityError",
           "build_demo_model"]


def __getattr__(name):
    # TensorFlow loads only when an export actually runs (keeps `statestream-export --help` fast).
    if name in ("export_model", "ExportReport"):
        from . import api

        return getattr(api, name)
    if name == "export_torch":  # torch too, only when called (the torch extra)
        from . import torch_export

        return torch_export.export_torch
    if name == "build_demo_model":
        from . import demo

        return demo.build_demo_model
    raise AttributeError(name)
