"""PyTorch recurrent models exported with torch.onnx by hand (the adopt route), and what PyTorch itself computes with
them (run once, with torch; the files are committed).

The adopt route's tests (tests/test_torch_models.py) run without torch: they serve these files and compare with the
committed PyTorch outputs. The modules and PyTorch's step loop are the torch route's (tests/torch_export/nets.py).
Regenerate, in the torch extra's venv (make install-torch):

    .venv-torch/bin/python tests/data/torch/make_torch_fixtures.py

Each model: a stacked nn.LSTM / nn.GRU / nn.RNN (batch_first either way) with a Linear head, exported the way a
PyTorch user would for adopt: explicit state inputs and outputs (h0, c0 -> hn, cn; [num_layers, batch, hidden]) and
dynamic batch and time. The reference is the module stepped ONE timestep at a time, carrying its own (h, c), from
random initial states.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent / "torch_export"))
from nets import Net, step  # noqa: E402

B, T = 4, 12
MODELS = {  # name: (cell, batch_first, layers, extra kwargs)
    "torch_lstm": (nn.LSTM, True, 2, {}),
    "torch_gru": (nn.GRU, False, 2, {}),
    "torch_rnn": (nn.RNN, True, 1, {"nonlinearity": "relu"}),
}


def main() -> None:
    torch.manual_seed(0)
    for name, (cell, batch_first, layers, kw) in MODELS.items():
        model = Net(cell, batch_first, layers, **kw).eval()
        lstm = cell is nn.LSTM
        ins, outs = ["x", "h0", "c0"][: 2 + lstm], ["y", "hn", "cn"][: 2 + lstm]
        seq_axes = {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}
        dynamic = {n: seq_axes for n in ("x", "y")} | {n: {1: "batch"} for n in ins[1:] + outs[1:]}
        x = torch.randn(B, T, model.rnn.input_size)
        states = [0.5 * torch.randn(layers, B, model.rnn.hidden_size) for _ in range(1 + lstm)]
        state = tuple(states) if lstm else states[0]
        seq = (lambda a: a) if batch_first else (lambda a: a.transpose(0, 1))
        torch.onnx.export(model, (seq(x), state), str(HERE / f"{name}.onnx"), input_names=ins, output_names=outs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
        y, final = step(model, x, state)
        with torch.no_grad():
            whole = seq(model(seq(x), state)[0])
        assert torch.allclose(y, whole, atol=1e-5)
        final = list(final) if lstm else [final]
        np.savez(HERE / f"{name}.npz", x=x.numpy(), y=y.numpy(), **{f"{k}_in": s.numpy() for k, s in zip("hc", states)},
                 **{f"{k}_out": s.numpy() for k, s in zip("hc", final)}, torch=np.array(torch.__version__))
        print(f"wrote {name}.onnx and {name}.npz: {cell.__name__} x{layers}, batch_first={batch_first}")


if __name__ == "__main__":
    main()
