"""A Triton model repository entry (config.pbtxt + 1/model.onnx) for an exported file, from its manifest."""

from __future__ import annotations

from pathlib import Path

from statestream.contract.manifest import FORMAT, read_manifest
from statestream.contract.triton_config import DEFAULT_IDLE_SECONDS, DEFAULT_MAX_BATCH_SIZE, write_repository_entry

from .errors import ExportError


def write_triton_entry(onnx_path, repo, name: str | None = None, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                       idle_seconds: float = DEFAULT_IDLE_SECONDS) -> Path:
    """Write `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/model.onnx` for an exported ONNX file.

    The configuration is the one a statestream server reports over Triton's ModelConfig (same function):
    `input`/`output` with a dynamic time dimension, every state an implicit state starting at zero, a
    `sequence_batching` section. `name` defaults to the model's name in its manifest.
    """
    import onnx

    from statestream.contract.manifest import ManifestError

    try:
        manifest = read_manifest(onnx.load(str(onnx_path), load_external_data=False))
    except ManifestError as e:
        raise ExportError(f"{onnx_path}: not an exported statestream model: {e}") from None
    except Exception as e:  # onnx raises DecodeError, OSError and others for what is not an ONNX file
        raise ExportError(f"{onnx_path}: cannot read it as ONNX: {e}") from None
    if manifest.format != FORMAT:
        raise ExportError(f"{onnx_path}: an adopted graph (its states laid out as the graph has them, a context "
                          "window, constants): Triton's implicit state cannot carry that; serve it with statestream")
    return write_repository_entry(onnx_path, manifest, repo, name or manifest.name,
                                  max_batch_size=max_batch_size, idle_seconds=idle_seconds)
