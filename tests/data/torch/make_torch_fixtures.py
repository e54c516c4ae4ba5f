"""PyTorch recurrent models exported with torch.onnx, and what PyTorch itself computes with them (run once, with torch).

torch is not in any of statestream's installs (PyPI's Linux wheel brings CUDA: about 5 GB, docs/models.md), so the
tests serve these committed files and compare with the committed PyTorch outputs. Regenerate:

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch onnx numpy
    /tmp/torchvenv/bin/python tests/data/torch/make_torch_fixtures.py

Each model: a stacked nn.LSTM / nn.GRU / nn.RNN (batch_first either way) with a Linear head, exported with
explicit state inputs and outputs (h0, c0 -> hn, cn; [num_layers, batch, hidden]) and dynamic batch and time.
The reference is the module stepped ONE timestep at a time, carrying its own (h, c), from random initial states.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).parent
F, H, LAYERS, B, T = 3, 8, 2, 4, 12


class Recurrent(nn.Module):
    """A stacked recurrent layer and a Linear head on every timestep; states in, states out."""

    def __init__(self, cell, batch_first: bool, layers: int = LAYERS, **kw):
        super().__init__()
        self.rnn = cell(F, H, num_layers=layers, batch_first=batch_first, **kw)
        self.head = nn.Linear(H, 2)
        self.lstm = cell is nn.LSTM

    def forward(self, x, h0, c0=None):
        if self.lstm:
            y, (hn, cn) = self.rnn(x, (h0, c0))
            return self.head(y), hn, cn
        y, hn = self.rnn(x, h0)
        return self.head(y), hn


MODELS = {  # name: (cell, batch_first, extra kwargs)
    "torch_lstm": (nn.LSTM, True, {}),
    "torch_gru": (nn.GRU, False, {}),
    "torch_rnn": (nn.RNN, True, {"nonlinearity": "relu", "layers": 1}),
}


def main() -> None:
    torch.manual_seed(0)
    for name, (cell, batch_first, kw) in MODELS.items():
        layers = kw.pop("layers", LAYERS)
        model = Recurrent(cell, batch_first, layers, **kw).eval()
        n_states = 2 if cell is nn.LSTM else 1
        ins, outs = ["x", "h0", "c0"][: 1 + n_states], ["y", "hn", "cn"][: 1 + n_states]
        seq_axes = {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}
        dynamic = {n: seq_axes for n in ("x", "y")} | {n: {1: "batch"} for n in ins[1:] + outs[1:]}
        x = torch.randn(B, T, F)
        states = [0.5 * torch.randn(layers, B, H) for _ in range(n_states)]
        seq = (lambda a: a) if batch_first else (lambda a: a.transpose(0, 1))
        torch.onnx.export(model, (seq(x), *states), str(HERE / f"{name}.onnx"), input_names=ins, output_names=outs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
        with torch.no_grad():
            cur, ys = states, []
            for t in range(T):  # one timestep at a time, the module's own states carried
                y, *cur = model(seq(x[:, t:t + 1]), *cur)
                ys.append(seq(y))
            whole = seq(model(seq(x), *states)[0])
        y = torch.cat(ys, dim=1)
        assert torch.allclose(y, whole, atol=1e-5)
        np.savez(HERE / f"{name}.npz", x=x.numpy(), y=y.numpy(), **{f"{k}_in": s.numpy() for k, s in
                                                                       zip(("h", "c"), states)},
                 **{f"{k}_out": s.numpy() for k, s in zip(("h", "c"), cur)}, torch=np.array(torch.__version__))
        print(f"wrote {name}.onnx and {name}.npz: {cell.__name__} x{layers}, batch_first={batch_first}")


if __name__ == "__main__":
    main()
