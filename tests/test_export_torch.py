"""statestream-export torch: PyTorch modules (stacked nn.LSTM / nn.GRU / nn.RNN, batch_first either way, Linear heads)
exported with torch in its own venv (make install-torch: tests/torch_export/driver.py runs there), then served here and
stepped equal to PyTorch stepping the module with its own states within 1e-5, also after a GetState/SetState move
to a second server; what the exporter refuses, and what it says without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import require_installed
from docblocks import all_blocks
from migration import step_across
from serverproc import ROOT, ServerProcess

from statestream.client import Client
from statestream.contract.manifest import read_manifest

TORCH_PY = ROOT / os.environ.get("TORCH_VENV", ".venv-torch") / "bin" / "python"
DRIVER = ROOT / "tests" / "torch_export" / "driver.py"
TOL = 1e-5
# name: (native ops, layers as clients see them, batch_first of the PyTorch module)
MODELS = {"torch_lstm": ({"LSTM": 2}, [("rnn_l0", "LSTM", 8), ("rnn_l1", "LSTM", 8)]),
          "torch_gru": ({"GRU": 2}, [("rnn_l0", "GRU", 8), ("rnn_l1", "GRU", 8)]),
          "torch_rnn": ({"RNN": 3}, [(f"rnn_l{k}", "SimpleRNN", 8) for k in range(3)]),
          "torch_last": ({"LSTM": 1}, [("rnn_l0", "LSTM", 8)])}


def drive(command: str, out: Path) -> dict:
    require_installed(TORCH_PY, "torch", "make install-torch")
    r = subprocess.run([str(TORCH_PY), str(DRIVER), command, str(out)], capture_output=True, text=True, timeout=900,
                       cwd=ROOT)
    assert r.returncode == 0, f"driver {command} failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_export")
    return folder, drive("export", folder)


@pytest.fixture(scope="module")
def servers(exported):
    folder, _ = exported
    models = [folder / f"{n}.onnx" for n in MODELS]
    with ServerProcess(models, "--metrics-port", "-1") as a, ServerProcess(models, "--metrics-port", "-1") as b:
        yield a, b


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_with_native_ops_per_layer_and_the_manifest(exported, name):
    _, result = exported
    ops, layers = MODELS[name]
    proto = onnx.load(result[name]["onnx"])
    counts = Counter(n.op_type for n in proto.graph.node)
    assert {op: counts[op] for op in ("LSTM", "GRU", "RNN", "Loop", "Scan") if counts[op]} == ops
    m = read_manifest(proto)
    assert [(l.name, l.cell, l.units) for l in m.layers] == layers
    assert m.features == 3 and m.layout == "BTF" and m.opset == 17 and "torch" in m.versions
    assert [i.name for i in proto.graph.input] == ["input"] + [p[2] for p in m.state_pairs()]
    assert m.parity_max_abs_error == result[name]["report"]["parity_max_abs_error"] <= TOL


@pytest.mark.parametrize("name", sorted(MODELS))
def test_served_and_stepped_equal_to_pytorch_across_a_migration(exported, servers, name):
    """Each of 4 sessions starts from random initial states, steps 6 timesteps one at a time on server A, moves to
    server B (GetState, then SetState on a fresh session) and steps the other 6 in one request; every output and
    the final states equal PyTorch stepping the module one timestep at a time with its own (h, c)."""
    a, b = servers
    _, result = exported
    ref = np.load(result[name]["npz"])
    x, y = ref["x"], ref["y"]
    layers = MODELS[name][1]
    kinds = [k for k in "hc" if f"{k}_in" in ref]
    B, T, _ = x.shape
    half = T // 2
    with Client(a.target) as ca, Client(b.target) as cb:
        for i in range(B):
            initial = {l: {k: ref[f"{k}_in"][n, i] for k in kinds} for n, (l, _, _) in enumerate(layers)}
            outputs, final, count = step_across(ca, cb, name, x[i], initial, half)
            np.testing.assert_allclose(outputs, y[i], atol=TOL, rtol=0)
            for n, (l, _, _) in enumerate(layers):
                for k in kinds:
                    np.testing.assert_allclose(final[l][k], ref[f"{k}_out"][n, i], atol=TOL, rtol=0)
            assert count == T


def test_refused_with_a_one_line_reason_and_nothing_written(tmp_path):
    result = drive("refuse", tmp_path)
    assert len(result) == 7
    for name, r in result.items():
        lines = r["stderr"].strip().splitlines()
        assert r["code"] == 3 and not r["written"], (name, r)
        assert len(lines) == 1 and lines[0].startswith("statestream-export: refused: ") and r["says"] in lines[0], r


def test_without_torch_the_exporter_says_which_extra_to_install(tmp_path):
    """.venv has no torch (it is in the torch extra only): the export package imports without it and the torch
    route names the extra."""
    probe = "import statestream.export.cli, statestream.export.torch_export, sys; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    (tmp_path / "m.pt").write_bytes(b"not read")
    r = subprocess.run([sys.executable, "-m", "statestream.export.cli", "torch", str(tmp_path / "m.pt"), "--out",
                        str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and not (tmp_path / "m.onnx").exists()
    assert 'pip install ".[torch]"' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_python_api_example_of_docs_models_runs_as_written(tmp_path):
    """docs/models.md's export_torch block (not run by tests/test_readme.py: .venv has no torch) runs here."""
    require_installed(TORCH_PY, "torch", "make install-torch")
    block = next(b for b in all_blocks("python") if "export_torch" in b.code)
    assert "tests/test_export_torch.py" in block.not_run
    (tmp_path / "models").mkdir()
    r = subprocess.run([str(TORCH_PY), "-c", block.code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_manifest(onnx.load(str(tmp_path / "models" / "net.onnx")))
    assert [(l.name, l.cell, l.units) for l in m.layers] == [("rnn_l0", "LSTM", 16), ("rnn_l1", "LSTM", 16)]
    assert "parity: max abs error" in r.stdout and m.parity_max_abs_error <= TOL


def test_torch_is_in_its_extra_only_and_the_cache_key_covers_its_pins():
    import tomllib

    sys.path.insert(0, str(ROOT / "scripts"))
    import install_torch

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert [r for r in extras["torch"] if r.startswith("torch")] == ["torch==2.15.0"]
    for name, reqs in [("base", project["dependencies"])] + [(k, v) for k, v in extras.items() if k != "torch"]:
        assert not [r for r in reqs if r.split("=")[0].split("[")[0].strip() in ("torch", "onnxscript")], name
    reqs = install_torch.requirements(ROOT / "pyproject.toml")
    assert reqs == project["dependencies"] + extras["torch"]
    assert install_torch.key(reqs) != install_torch.key([r.replace("2.15.0", "2.14.1") for r in reqs])


def test_a_second_clone_venv_reuses_the_cached_torch_and_runs_its_own_code(tmp_path):
    """What a second clone on this machine pays: no download, a small venv whose statestream is its clone's."""
    require_installed(TORCH_PY, "torch", "make install-torch")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_torch.py"), "--venv", str(tmp_path / "v")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "install_torch: reusing " in r.stdout and "installing" not in r.stdout, r.stdout + r.stderr
    probe = "import torch, statestream.export.torch_export as t; print(torch.__version__, t.__file__)"
    r = subprocess.run([str(tmp_path / "v" / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                       timeout=120)
    version, where = r.stdout.split()
    assert version.startswith("2.15.0") and Path(where).is_relative_to(ROOT / "export"), r.stdout + r.stderr
    assert sum(f.stat().st_size for f in (tmp_path / "v").rglob("*") if f.is_file()) < 100e6  # torch is not copied
