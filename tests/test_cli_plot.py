"""`statestream stream --plot`: refused in one line without matplotlib; the demo's plot shows it predicting."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from serverproc import DEMO_MODEL, ServerProcess

from statestream.client import Client
from statestream.client.cli import synthetic_input
from statestream.client.plot import figure
from statestream.contract import demo

N = 200


@pytest.fixture(scope="module")
def streamed():
    """The CLI's --synthetic input for the demo, its target, and the demo's outputs for it from a live server."""
    x, target = synthetic_input("demo", N, 3)
    with ServerProcess(DEMO_MODEL) as srv, Client(srv.target) as c, c.session("demo") as s:
        y = np.array(list(s.stream(x)))
    return x, y, target


def test_plot_without_matplotlib_is_one_line_naming_the_extra_before_any_work():
    # matplotlib hidden; the target is a closed port: had it connected or streamed, it would say so instead
    code = ("import sys; sys.modules['matplotlib'] = None; from statestream.client.cli import main; "
            "sys.exit(main(['--target', '127.0.0.1:1', 'stream', '--model', 'demo', '--synthetic', '200', "
            "'--plot', 'out.png']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.count("\n") == 1 and '"plot" extra' in r.stderr and 'pip install ".[plot]"' in r.stderr, r.stderr


def test_the_synthetic_signal_is_the_kind_the_demo_learned_and_it_predicts_it(streamed):
    x, y, target = streamed
    np.testing.assert_array_equal(x[1:, 0], target[:-1, 0])  # the target is channel 0's next reading
    mse = float(np.mean((y - target) ** 2))
    persistence = float(np.mean((x[:, :1] - target) ** 2))  # repeating the last reading
    assert mse < 0.5 * persistence, (mse, persistence)
    other, none = synthetic_input("not-the-demo", 10, 5)
    assert other.shape == (10, 5) and none is None


def test_the_demo_plot_says_what_it_predicts_with_legends_and_the_target_overlaid(streamed, tmp_path):
    x, y, target = streamed
    fig = figure(x, y, "demo", target)
    inputs, outputs = fig.axes
    assert demo.PREDICTS in inputs.get_title()
    assert [t.get_text() for t in inputs.get_legend().get_texts()] == list(demo.CHANNELS)
    labels = [t.get_text() for t in outputs.get_legend().get_texts()]
    assert any(label.startswith("target") for label in labels) and any("predicted" in label for label in labels)
    drawn = {line.get_label(): line.get_ydata() for line in outputs.get_lines()}
    np.testing.assert_array_equal(drawn[labels[0]], target[:, 0])
    np.testing.assert_array_equal(drawn[labels[1]], y[:, 0])
