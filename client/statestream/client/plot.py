"""`statestream stream --plot`: the input, the model's output and (for the demo) the target it predicts, in one PNG."""

from __future__ import annotations

import numpy as np

from statestream.contract import demo

EXTRA_HINT = ('--plot needs matplotlib, which statestream installs with its "plot" extra: '
              'pip install ".[plot]" from a statestream checkout (or pip install matplotlib)')


def require_matplotlib() -> str | None:
    """None when matplotlib imports, else the one-line reason (checked before any work is done)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return EXTRA_HINT
    return None


def figure(x: np.ndarray, y: np.ndarray, model: str, target: np.ndarray | None = None):
    """A matplotlib Figure: inputs [T, F] above, outputs [T, O] (and the target, when known) below, with legends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    is_demo = model == demo.NAME and x.shape[1] == demo.FEATURES
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for i, column in enumerate(x.T):
        a.plot(column, lw=1, label=demo.CHANNELS[i] if is_demo else f"feature {i}")
    a.set_ylabel("input")
    a.legend(loc="upper right", fontsize="small")
    if target is not None:
        b.plot(target[:, 0], color="0.6", lw=3, label="target: " + ("the actual next reading of channel 0"
                                                                    if is_demo else "actual"))
    for j, column in enumerate(y.T):
        b.plot(column, lw=1.2, label=("model output: predicted next reading of channel 0" if is_demo
                                       else f"model output {j}"))
    b.set_ylabel("output")
    b.set_xlabel("timestep (one message each, the session keeps the state)")
    b.legend(loc="upper right", fontsize="small")
    a.set_title(f"statestream: {model} predicts {demo.PREDICTS}" if is_demo else f"statestream: {model}")
    fig.tight_layout()
    return fig


def save(path: str, x: np.ndarray, y: np.ndarray, model: str, target: np.ndarray | None = None) -> None:
    figure(x, y, model, target).savefig(path, dpi=100)
