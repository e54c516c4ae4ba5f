"""`statestream-export --triton-config`: a Triton model repository entry whose config.pbtxt matches the model."""

from __future__ import annotations

import subprocess
import sys

from google.protobuf import text_format
from serverproc import DEMO_MODEL, ROOT

from statestream.export import cli
from statestream.inference import model_config_pb2 as mc
from statestream.server.engine.model import ModelRunner


def read_config(path) -> mc.ModelConfig:
    """config.pbtxt parsed back with protobuf's text format (unknown fields would fail the parse)."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def check_entry(entry, onnx_path, name: str) -> mc.ModelConfig:
    """The entry's config.pbtxt describes `onnx_path` (inputs, outputs, every state implicit from zero)."""
    m = ModelRunner(onnx_path).manifest
    cfg = read_config(entry / "config.pbtxt")
    assert (entry / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size > 0 and cfg.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("input", mc.TYPE_FP32, [-1, m.features])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("output", mc.TYPE_FP32, [-1, m.output_size])]
    assert cfg.WhichOneof("scheduling_choice") == "sequence_batching"
    states = [(s.input_name, s.output_name, s.data_type, list(s.dims)) for s in cfg.sequence_batching.state]
    assert states == [(i, o, mc.TYPE_FP32, [u]) for _, _, i, o, u in m.state_pairs()]
    for s in cfg.sequence_batching.state:
        (init,) = s.initial_state
        assert init.zero_data and list(init.dims) == list(s.dims) and init.data_type == mc.TYPE_FP32
    assert cfg.sequence_batching.max_sequence_idle_microseconds >= 60 * 10**6  # not Triton's 1 s default
    return cfg


def test_entry_for_an_exported_file_without_tensorflow(tmp_path, capsys):
    assert cli.main([str(DEMO_MODEL), "--triton-config", str(tmp_path / "repo")]) == 0
    assert "wrote Triton model repository entry" in capsys.readouterr().out
    cfg = check_entry(tmp_path / "repo" / "demo", DEMO_MODEL, "demo")
    assert len(cfg.sequence_batching.state) == 4  # two LSTM layers, h and c each
    r = subprocess.run([sys.executable, "-c", "import statestream.export.cli, sys; "
                        "statestream.export.cli.main(['models/demo.onnx', '--triton-config', sys.argv[1]]); "
                        "print('tensorflow' in sys.modules)", str(tmp_path / "repo2")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip().endswith("False"), r.stdout + r.stderr  # the .onnx path never imports TensorFlow


def test_name_option_and_bad_files(tmp_path, capsys):
    assert cli.main([str(DEMO_MODEL), "--triton-config", str(tmp_path), "--name", "sensor"]) == 0
    assert read_config(tmp_path / "sensor" / "config.pbtxt").name == "sensor"
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("not a model")
    assert cli.main([str(not_onnx), "--triton-config", str(tmp_path)]) == 1
    assert "cannot read it as ONNX" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
