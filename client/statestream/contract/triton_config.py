"""Triton's view of a statestream model: ModelConfig (config.pbtxt) and ModelMetadata, from its manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format

from statestream.contract.manifest import INPUT_NAME, OUTPUT_NAME, Manifest
from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import model_config_pb2 as mc

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
VERSION = "1"           # the version of a model file outside Triton's <name>/<version>/ layout
FILENAME = "model.onnx"
DATATYPE = "FP32"       # every tensor of an exported model
DEFAULT_MAX_BATCH_SIZE = 256     # the server's --max-batch-size default
DEFAULT_IDLE_SECONDS = 3600.0    # the server's --idle-timeout default


def model_config(manifest: Manifest, name: str, *, max_batch_size: int, idle_seconds: float) -> mc.ModelConfig:
    """The Triton model configuration of an exported model: one input, one output, every state implicit.

    Shapes leave out the batch dimension (max_batch_size > 0), as Triton's do: input [-1, features] (time is
    dynamic), output [-1, outputs], states [units]. States start at zero (`initial_state { zero_data: true }`),
    as statestream's sessions and Keras do, so a real Triton serving the same file gives the same numbers.
    """
    cfg = mc.ModelConfig(name=name, platform=PLATFORM, backend=BACKEND, max_batch_size=max_batch_size,
                         default_model_filename=FILENAME)
    cfg.input.add(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, manifest.features])
    cfg.output.add(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, manifest.output_size])
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = int(idle_seconds * 1_000_000)
    # `oldest` batches only requests of equal shape, so sequences sending different numbers of timesteps work.
    seq.oldest.max_candidate_sequences = max_batch_size
    for layer, kind, state_in, state_out, units in manifest.state_pairs():
        state = seq.state.add(input_name=state_in, output_name=state_out, data_type=mc.TYPE_FP32, dims=[units])
        state.initial_state.add(name=f"{layer}.{kind}.zero", data_type=mc.TYPE_FP32, dims=[units], zero_data=True)
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return cfg


def model_metadata(manifest: Manifest, name: str, versions: list[str] | None = None) -> ipb.ModelMetadataResponse:
    """ModelMetadata: shapes with the batch dimension, -1 where dynamic (batch, time); `versions`: the loaded
    versions of the model."""
    tensor = ipb.ModelMetadataResponse.TensorMetadata
    return ipb.ModelMetadataResponse(
        name=name, versions=versions or [VERSION], platform=PLATFORM,
        inputs=[tensor(name=INPUT_NAME, datatype=DATATYPE, shape=[-1, -1, manifest.features])],
        outputs=[tensor(name=OUTPUT_NAME, datatype=DATATYPE, shape=[-1, -1, manifest.output_size])])


def config_text(cfg: mc.ModelConfig) -> str:
    """config.pbtxt text of a ModelConfig."""
    return text_format.MessageToString(cfg)


def write_repository_entry(onnx_path: str | Path, manifest: Manifest, repo: str | Path, name: str, *,
                           max_batch_size: int, idle_seconds: float) -> Path:
    """Write `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/model.onnx` (a Triton model repository entry)."""
    entry = Path(repo) / name
    (entry / VERSION).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, entry / VERSION / FILENAME)
    cfg = model_config(manifest, name, max_batch_size=max_batch_size, idle_seconds=idle_seconds)
    (entry / "config.pbtxt").write_text(config_text(cfg))
    return entry
