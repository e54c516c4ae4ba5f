"""The PyTorch modules the torch tests export, and PyTorch's own streaming loop over them (needs torch).

Imported by tests/torch_export/driver.py (the torch route's tests) and tests/data/torch/make_torch_fixtures.py (the
adopt route's committed files). A module saved with torch.save is unpickled by its class's import path, so the
exporter finds these classes with this folder on its path.
"""

from __future__ import annotations

import torch
from torch import nn

F, H = 3, 8


class Net(nn.Module):
    """A recurrent module (stacked) and Linear heads on every timestep; forward(x, state=None) -> (y, state), the
    state a tensor or an (h, c) pair of [num_layers, batch, hidden], as a stateful PyTorch model is usually written."""

    def __init__(self, cell=nn.LSTM, batch_first: bool = True, layers: int = 2, heads=(2,), **kw):
        super().__init__()
        self.rnn = cell(F, H, num_layers=layers, batch_first=batch_first, **kw)
        sizes = (H, *heads)
        self.head = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.Tanh())][:-1])

    def forward(self, x, state=None):
        y, state = self.rnn(x, state)
        return self.head(y), state


class LastStep(Net):
    """Its forward returns the last timestep's output only (a sequence classifier): streamed at every step."""

    def forward(self, x, state=None):
        y, state = super().forward(x, state)
        return y[:, -1] if self.rnn.batch_first else y[-1], state


class MeanOverTime(Net):
    """Its forward averages over time: not causal, not a stream (refused)."""

    def forward(self, x, state=None):
        y, _ = super().forward(x, state)
        return y.mean(dim=1 if self.rnn.batch_first else 0)


class TwoRecurrent(nn.Module):
    """Two recurrent modules in a row (refused: one stacked module is supported)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.LSTM(F, H, batch_first=True), nn.GRU(H, H, batch_first=True)

    def forward(self, x):
        return self.b(self.a(x)[0])[0]


class ConvHead(nn.Module):
    """A convolution over time after the LSTM (refused)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.conv = nn.LSTM(F, H, batch_first=True), nn.Conv1d(H, 2, 3)

    def forward(self, x):
        return self.conv(self.rnn(x)[0].transpose(1, 2))


def step(module: Net, x: torch.Tensor, state):
    """PyTorch stepping the module ONE timestep at a time with its own state: x [B, T, F] batch first whatever the
    module's layout; returns y [B, T, O] and the final state."""
    bf = module.rnn.batch_first
    ys = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            xt = x[:, t:t + 1] if bf else x[:, t:t + 1].transpose(0, 1)
            y, state = module(xt, state)
            ys.append(y[:, None] if y.ndim == 2 else y if bf else y.transpose(0, 1))  # [B, O]: the last step only
    return torch.cat(ys, dim=1), state
