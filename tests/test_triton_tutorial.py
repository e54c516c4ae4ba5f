"""The seed tutorial over Triton's protocol: [0.1, 0.2, 0.3] as a 3-request sequence gives Keras's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serverproc import ServerProcess
from test_triton_config import check_entry
from tritonvenv import drive
from tutorial import TUTORIAL_INPUT, keras_outputs, tutorial_model

from statestream.export import cli

TOL = 1e-5
NAME = "lstm_both"  # LSTM(1, return_sequences=True, return_state=True): every output, h and c


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tutorial model saved as .keras, exported by the CLI with a Triton repository entry."""
    d = tmp_path_factory.mktemp("triton_tutorial")
    model = tutorial_model(NAME)
    model.save(d / f"{NAME}.keras")
    out = d / f"{NAME}.onnx"
    assert cli.main([str(d / f"{NAME}.keras"), "--out", str(out), "--triton-config", str(d / "repo")]) == 0
    return model, out, d / "repo" / NAME


def test_start_middle_end_equals_keras(exported):
    model, path, _ = exported
    seq, h, c = keras_outputs({NAME: model})[NAME]  # (1, 3, 1), (1, 1), (1, 1)
    with ServerProcess(path) as srv:
        got = drive("sequence", srv.target, NAME, json.dumps(TUTORIAL_INPUT[0].tolist()), "--sequence-id", 7,
                    "--outputs", "output,state_out.lstm.h,state_out.lstm.c")
    steps = got["steps"]
    assert len(steps) == 3 and [s["parameters"]["step_count"] for s in steps] == [1, 2, 3]
    np.testing.assert_allclose([s["outputs"]["output"][0][0] for s in steps], seq[0], atol=TOL)
    np.testing.assert_allclose(steps[-1]["outputs"]["state_out.lstm.h"][0], h[0], atol=TOL)
    np.testing.assert_allclose(steps[-1]["outputs"]["state_out.lstm.c"][0], c[0], atol=TOL)


def test_the_keras_export_wrote_a_triton_entry(exported):
    _, path, entry = exported
    cfg = check_entry(entry, path, NAME)
    assert [s.input_name for s in cfg.sequence_batching.state] == ["state_in.lstm.h", "state_in.lstm.c"]
