"""PyTorch recurrent models (stacked nn.LSTM / nn.GRU / nn.RNN, batch_first either way, a Linear head) exported with
torch.onnx and adopted: native ops, served, stepped equal to PyTorch stepping the module with its own states within
1e-5, also after GetState/SetState migration to a second server. The files and PyTorch's outputs were made with
torch by tests/data/torch/make_torch_fixtures.py (torch itself is not installed for the tests: docs/models.md)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from migration import step_across
from serverproc import ServerProcess

from statestream.client import Client
from statestream.contract.manifest import read_manifest
from statestream.export.adopt import AdoptSpec, adopt_model

DATA = Path(__file__).parent / "data" / "torch"
TOL = 1e-5
# name: (layout to give, native recurrent ops expected, state inputs)
MODELS = {"torch_lstm": (None, {"LSTM": 2}, ("h0", "c0")),
          "torch_gru": ("TBF", {"GRU": 2}, ("h0",)),
          "torch_rnn": (None, {"RNN": 1}, ("h0",))}


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_models")
    reports = {name: adopt_model(DATA / f"{name}.onnx", folder / f"{name}.onnx", spec=AdoptSpec(layout=layout))
               for name, (layout, _, _) in MODELS.items()}
    return folder, reports


@pytest.fixture(scope="module")
def servers(adopted):
    folder, _ = adopted
    with ServerProcess(folder, "--metrics-port", "-1") as a, ServerProcess(folder, "--metrics-port", "-1") as b:
        yield a, b


@pytest.mark.parametrize("name", sorted(MODELS))
def test_adopted_with_native_ops_and_the_batch_axis_guessed(adopted, name):
    folder, reports = adopted
    layout, ops, states = MODELS[name]
    g = onnx.load(str(folder / f"{name}.onnx")).graph
    counts = Counter(n.op_type for n in g.node)
    assert {op: counts[op] for op in ("LSTM", "GRU", "RNN", "Loop", "Scan") if counts[op]} == ops
    m = read_manifest(onnx.load(str(folder / f"{name}.onnx")))
    assert [(s.input, s.output, s.batch_axis) for s in m.states] == [(s, s[0] + "n", 1) for s in states]
    assert m.layout == (layout or "BTF") and m.features == 3 and m.output_size == 2
    assert reports[name].max_abs_error <= TOL
    assert any("batch axis 1, its one dynamic dimension" in g for g in reports[name].guesses)


def test_a_guessed_layout_that_does_not_fit_is_refused_with_the_fix(tmp_path):
    from statestream.export.errors import ExportRefused

    with pytest.raises(ExportRefused, match="give --layout TBF if time comes first"):
        adopt_model(DATA / "torch_gru.onnx", tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_served_and_stepped_equal_to_pytorch_across_a_migration(servers, name):
    """Each of 4 sessions starts from PyTorch's random initial states, steps 6 timesteps one at a time on server A,
    moves to server B (GetState, then SetState on a fresh session) and steps the other 6 in one request."""
    a, b = servers
    ref = np.load(DATA / f"{name}.npz")
    x, y = ref["x"], ref["y"]  # [B, T, F], [B, T, 2]: PyTorch stepping the module one timestep at a time
    kinds = [k for k in ("h", "c") if f"{k}_in" in ref]
    states = MODELS[name][2]
    B, T, _ = x.shape
    half = T // 2
    with Client(a.target) as ca, Client(b.target) as cb:
        for i in range(B):
            initial = {s: {"h": ref[f"{k}_in"][:, i].ravel()} for s, k in zip(states, kinds)}
            outputs, final, count = step_across(ca, cb, name, x[i], initial, half)
            np.testing.assert_allclose(outputs, y[i], atol=TOL, rtol=0)
            for s_name, k in zip(states, kinds):
                np.testing.assert_allclose(final[s_name]["h"], ref[f"{k}_out"][:, i].ravel(), atol=TOL, rtol=0)
            assert count == T


def test_no_triton_repository_entry_for_an_adopted_graph(adopted, tmp_path):
    from statestream.export.errors import ExportError
    from statestream.export.triton import write_triton_entry

    folder, _ = adopted
    with pytest.raises(ExportError, match="Triton's implicit state cannot carry that"):
        write_triton_entry(folder / "torch_lstm.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
