"""One timestep through a recurrent node against its cell's ops (server/statestream/server/engine/stepgraph.py).

Two tables, in-process, one intra-op thread, thread CPU per run (the best of `--rounds` rounds, the two graphs
alternating within each round):

- one LSTM, GRU or RNN layer of H units on F features, one timestep of B sessions: onnxruntime's node against
  the cell's ops that replace it (where MAX_UNITS comes from);
- the served model (default the demo) as the server runs it: its rows graph against its one-timestep graph, per
  batch size.

    python -m bench.stepgraph
    python -m bench.stepgraph --layers 256x3x16,256x16x128 --batches 1,128,256 --model models/demo.onnx
    python -m bench.stepgraph --cells GRU --export GRU    # served: Keras 2 x GRU(16) + Dense(1), exported here
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .procs import ROOT

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def cell_model(kind: str, H: int, F: int = 3, *, bias: bool = True, opset: int = 17, time_steps: int | None = None,
               peepholes: bool = False, **attrs) -> onnx.ModelProto:
    """One LSTM, GRU or RNN node as an exported layer is fed: the step input [B, T, F] made time-major, states
    [1, B, H] (two directions: [2, B, H]); every output a graph output. Random weights (seeded by H), scaled by
    1/sqrt(F + H)."""
    rng = np.random.default_rng(H)
    G = GATES[kind]
    dirs = 2 if attrs.get("direction") == b"bidirectional" else 1
    scale = 1 / np.sqrt(F + H)  # pre-activations of order 1, as a trained layer's
    inits = [numpy_helper.from_array((scale * rng.normal(size=(dirs, G * H, F))).astype(np.float32), "W"),
             numpy_helper.from_array((scale * rng.normal(size=(dirs, G * H, H))).astype(np.float32), "R")]
    ins = ["x", "W", "R", "B" if bias else "", "", "h0"] + (["c0"] if kind == "LSTM" else [])
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=(dirs, 2 * G * H)).astype(np.float32), "B"))
    if peepholes:
        inits.append(numpy_helper.from_array(rng.normal(size=(dirs, 3 * H)).astype(np.float32), "P"))
        ins.append("P")
    outs = ["y", "y_h"] + (["y_c"] if kind == "LSTM" else [])
    node = helper.make_node(kind, ins, outs, hidden_size=H, **attrs)
    states = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dirs, "batch", H]) for n in ins[5:7]]
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["input"], ["x"], perm=[1, 0, 2]), node], kind.lower(),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", time_steps or "time", F]), *states],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _session(data: bytes) -> ort.InferenceSession:
    from statestream.server.engine.model import session_options

    return ort.InferenceSession(data, sess_options=session_options(1), providers=["CPUExecutionProvider"])


def _best_us(runs: dict, rounds: int, n: int) -> dict[str, float]:
    """name -> the best round's thread CPU per call of runs[name]() (the names alternate within each round)."""
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(10):
                run()
            t0 = time.thread_time()
            for _ in range(n):
                run()
            best[name] = min(best[name], (time.thread_time() - t0) / n * 1e6)
    return best


def layer(B: int, F: int, H: int, rounds: int, kind: str = "LSTM", **attrs) -> dict[str, float]:
    """One layer's timestep: the node against the cell's ops, us per run."""
    from statestream.server.engine.stepgraph import step_graph

    model = cell_model(kind, H, F, **attrs)
    node = _session(model.SerializeToString())
    cells = _session(step_graph(model, "input", max_units={kind: H}))  # above MAX_UNITS too: where it comes from
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.normal(size=[B if d == "batch" else 1 if d == "time" else d for d in
                                      (dim.dim_param or dim.dim_value for dim in i.type.tensor_type.shape.dim)]
                                ).astype(np.float32) for i in model.graph.input}
    n = max(20, 200_000 // (B * H))
    return _best_us({"node": lambda: node.run(None, feeds), "cells": lambda: cells.run(None, feeds)}, rounds, n)


def served(path: Path, B: int, rounds: int) -> dict[str, float]:
    """The served model's one timestep of B sessions: its rows graph ("node"), its one-timestep graph ("cells") and
    that graph with its views not folded ("unfolded"), us per run."""
    from statestream.server.engine.model import ModelRunner
    from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT

    runner = ModelRunner(path)
    if runner.step_session is runner.session:
        raise SystemExit(f"{path}: no one-timestep graph (no LSTM, GRU or RNN layer of at most MAX_UNITS units)")
    unfolded = _session(_graphs(runner, fold=False)[1])
    rng = np.random.default_rng(0)
    feeds = {runner.manifest.input: rng.normal(size=(B, 1, runner.features)).astype(np.float32),
             ROWS_IN: rng.normal(size=(B, runner.state_width)).astype(np.float32)}
    names = [runner.manifest.output, ROWS_OUT]
    n = max(20, 100_000 // B)
    return _best_us({"node": lambda: runner.session.run(names, feeds),
                     "cells": lambda: runner.step_session.run(names, feeds),
                     "unfolded": lambda: unfolded.run(names, feeds)}, rounds, n)


def _graphs(runner, fold: bool = True) -> tuple[bytes, bytes]:
    """A served model's rows graph and its one-timestep graph (`fold`: its views folded), as the runner builds them."""
    from statestream.server.engine.rowgraph import rows_graph
    from statestream.server.engine.stepgraph import step_graph

    rows = onnx.load(str(runner.path))
    data = rows_graph(rows, runner.layout)
    return data, step_graph(onnx.load_from_string(data), runner.manifest.input, fold=fold)


def kernels(data: bytes, feeds: dict) -> int:
    """How many kernels onnxruntime launches for one run of this graph (its profile's node events)."""
    import json
    import os
    import tempfile

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "kernels")
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    return sum(1 for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))


def _export(kind: str) -> Path:
    """A Keras 3 features -> 2 x kind(16) -> Dense(1), exported with statestream-export into a temporary file."""
    import tempfile

    import keras

    from statestream.export import export_model

    keras.utils.set_random_seed(0)
    cell = getattr(keras.layers, kind)
    model = keras.Sequential([keras.Input((None, 3)), cell(16, return_sequences=True), cell(16),
                              keras.layers.Dense(1)], name=f"two_{kind.lower()}")
    path = Path(tempfile.mkdtemp()) / f"two_{kind.lower()}.onnx"
    export_model(model, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stepgraph", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="1x3x16,256x3x16,1024x3x16,256x3x32,256x8x64,256x16x128,256x32x256",
                   help="BxFxH: sessions x features x units of one layer")
    p.add_argument("--cells", default="LSTM,GRU,RNN", help="the layers' kinds (GRU: Keras's reset_after)")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--batches", default="1,16,64,128,256,1024")
    p.add_argument("--export", choices=("LSTM", "GRU", "SimpleRNN"),
                   help="serve a Keras 3 features -> 2 x KIND(16) -> Dense(1), exported now, instead of --model")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    if a.export:
        a.model = _export(a.export)
    print("| layer, one timestep: B x F x H | node us | cell ops us | node / cells |")
    print("| --- | --- | --- | --- |")
    for kind in a.cells.split(","):
        attrs = {"linear_before_reset": 1} if kind == "GRU" else {}
        for spec in a.layers.split(","):
            B, F, H = (int(v) for v in spec.split("x"))
            r = layer(B, F, H, a.rounds, kind, **attrs)
            print(f"| {kind} {B} x {F} x {H} | {r['node']:.1f} | {r['cells']:.1f} | {r['node'] / r['cells']:.2f}x |")
    print(f"\n| {a.model.name}: sessions, one timestep | rows graph us | one-timestep graph us | rows / one-timestep "
          "| views not folded us | not folded / folded |")
    print("| --- | --- | --- | --- | --- | --- |")
    for B in (int(b) for b in a.batches.split(",")):
        r = served(a.model, B, a.rounds)
        print(f"| {B} | {r['node']:.1f} | {r['cells']:.1f} | {r['node'] / r['cells']:.2f}x | {r['unfolded']:.1f} "
              f"| {r['unfolded'] / r['cells']:.2f}x |")
    from statestream.server.engine.model import ModelRunner
    from statestream.server.engine.rowgraph import ROWS_IN

    runner = ModelRunner(a.model)
    feeds = {runner.manifest.input: np.zeros((4, 1, runner.features), np.float32),
             ROWS_IN: np.zeros((4, runner.state_width), np.float32)}
    rows, step = _graphs(runner)
    print(f"\nkernels per run: rows graph {kernels(rows, feeds)}, one-timestep graph {kernels(step, feeds)}, "
          f"views not folded {kernels(_graphs(runner, fold=False)[1], feeds)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
