"""The torch route's test driver; run with .venv-torch's python (make install-torch), prints one JSON object.

    .venv-torch/bin/python tests/torch_export/driver.py export OUTDIR    # export the models, record PyTorch's steps
    .venv-torch/bin/python tests/torch_export/driver.py refuse OUTDIR    # what the exporter refuses, through the CLI

The tests (tests/test_export_torch.py, in .venv) serve what `export` wrote and compare with what PyTorch computed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from nets import ConvHead, F, LastStep, MeanOverTime, Net, TwoRecurrent, step
from torch import nn

from statestream.export.torch_export import export_torch

HERE = Path(__file__).resolve().parent
CLI = Path(sys.executable).parent / "statestream-export"
B, T = 4, 12

# name: (module, how it is exported). Seeded in this order: the same weights on every run.
EXPORTS = {
    "torch_lstm": (lambda: Net(nn.LSTM, batch_first=True, layers=2, heads=(16, 2)), "cli"),
    "torch_gru": (lambda: Net(nn.GRU, batch_first=False, layers=2, heads=(2,)), "api"),
    "torch_rnn": (lambda: Net(nn.RNN, batch_first=True, layers=3, heads=(2,), nonlinearity="relu"), "api"),
    "torch_last": (lambda: LastStep(nn.LSTM, batch_first=False, layers=1, heads=(3,)), "cli"),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    """statestream-export from this venv, where the classes of nets.py import (cwd)."""
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=HERE, timeout=300)


def cmd_export(out: Path) -> dict:
    torch.manual_seed(0)
    result = {}
    for name, (make, how) in EXPORTS.items():
        module = make().eval()
        target = out / f"{name}.onnx"
        if how == "cli":
            saved = out / f"{name}.pt"
            torch.save(module, saved)
            example = []
            if not module.rnn.batch_first:  # the module's own layout: time first
                np.save(out / f"{name}.example.npy", torch.randn(5, 2, module.rnn.input_size).numpy())
                example = ["--example", str(out / f"{name}.example.npy")]
            r = cli("torch", str(saved), "--out", str(target), "--json", *example)
            if r.returncode:
                raise SystemExit(f"statestream-export torch {name} exited {r.returncode}: {r.stderr}")
            report = json.loads(r.stdout)
        else:
            rep = export_torch(module, target)
            report = {"parity_max_abs_error": rep.max_abs_error, "op_counts": rep.op_counts}
        x = torch.randn(B, T, module.rnn.input_size)
        lstm = isinstance(module.rnn, nn.LSTM)
        states = [0.5 * torch.randn(module.rnn.num_layers, B, module.rnn.hidden_size) for _ in range(1 + lstm)]
        y, final = step(module, x, tuple(states) if lstm else states[0])
        final = list(final) if lstm else [final]
        np.savez(out / f"{name}.npz", x=x.numpy(), y=y.numpy(), **{f"{k}_in": s.numpy() for k, s in zip("hc", states)},
                 **{f"{k}_out": s.numpy() for k, s in zip("hc", final)})
        result[name] = {"onnx": str(target), "npz": str(out / f"{name}.npz"), "how": how, "report": report}
    return result


# name: (module, what the refusal says). Each goes through the CLI: exit 3, one line, no file.
REFUSALS = {
    "bidirectional": (lambda: Net(nn.LSTM, bidirectional=True).eval(), "bidirectional=True"),
    "proj_size": (lambda: Net(nn.LSTM, proj_size=4).eval(), "proj_size=4"),
    "train_dropout": (lambda: Net(nn.GRU, layers=2, dropout=0.2).train(), "in training mode: call module.eval()"),
    "conv": (lambda: ConvHead().eval(), "'conv' (Conv1d): not a per-timestep head"),
    "two_recurrent": (lambda: TwoRecurrent().eval(), "one nn.LSTM, nn.GRU or nn.RNN"),
    "mean_over_time": (lambda: MeanOverTime().eval(), "not what its modules compute"),
    "torchscript": (lambda: torch.jit.trace(Net(nn.LSTM).eval(), torch.zeros(1, 2, F)), "TorchScript"),
}


def cmd_refuse(out: Path) -> dict:
    result = {}
    for name, (make, says) in REFUSALS.items():
        module, saved, target = make(), out / f"{name}.pt", out / f"{name}.onnx"
        (torch.jit.save if isinstance(module, torch.jit.ScriptModule) else torch.save)(module, saved)
        r = cli("torch", str(saved), "--out", str(target))
        result[name] = {"code": r.returncode, "stderr": r.stderr, "says": says, "written": target.exists()}
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["export", "refuse"])
    p.add_argument("out", type=Path)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps((cmd_export if a.command == "export" else cmd_refuse)(a.out)))


if __name__ == "__main__":
    main()
