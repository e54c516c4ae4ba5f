"""How a model run is fed its states: three layouts of the slab, for a group step and a frame, in-process.

- **tensors**: the slab keeps a session's states as one row [W]; each run cuts the rows into the graph's state
  tensors (one strided numpy copy per tensor) and joins the new ones (np.concatenate): StepLayout's plain path,
  the server before the rows graph.
- **parts**: one slab per state tensor ([capacity, size] each); a group's block feeds as views, a frame gathers
  from each; new states go back tensor by tensor (not built: measured here only).
- **rows**: the row slab fed whole to the rows graph (engine/rowgraph.py: Split and Concat in the graph), as the
  server runs more than one timestep (one timestep runs through engine/stepgraph.py's graph, `python -m
  bench.stepgraph`).

A group step is B contiguous rows (one block of NB cycled), a frame B random rows of NB * B. Each variant runs
its calls, including writing the new states back into the slab, interleaved over rounds; printed as thread CPU
per call (median of the rounds) and its ratio to onnxruntime alone on ready feeds in the same round.

    python -m bench.rowfeeds              # B = 256 and 1024, the demo model
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from statestream.server.engine.model import ModelRunner
from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT

from .inprocess import tensor_session
from .procs import ROOT

NB = 32  # blocks (groups) or frames cycled: the slab is NB * B rows, bigger than the caches at B = 1024


def _rows_graph(runner: ModelRunner):
    """run(x, rows) -> (y, new rows) through the runner's rows graph (not its one-timestep graph)."""
    run, names = runner.session._sess.run, [runner.manifest.output, ROWS_OUT]

    def go(x, rows):
        return run(names, {runner.manifest.input: x, ROWS_IN: rows}, None)

    return go


def variants(path: Path, B: int) -> dict:
    """name -> function(k) doing the k-th call of that variant (state written back)."""
    runner = ModelRunner(path)
    rows_run = _rows_graph(runner)
    plain = tensor_session(path)  # the graph as exported, fed tensor by tensor
    L = runner.layout
    call = plain._sess.run

    def tensor_call(names, feeds):
        return call(names, feeds, None)

    rng = np.random.default_rng(0)
    slab = rng.random((NB * B, L.width), dtype=np.float32)
    parts = [np.ascontiguousarray(slab[:, b]) for b in L.blocks]
    x = rng.random((B, 1, runner.features), dtype=np.float32)
    frames = [rng.permutation(NB * B)[:B] for _ in range(NB)]
    ready = {L.manifest.input: x, **{s.input: np.ascontiguousarray(slab[:B, b]) for s, b in zip(L.states, L.blocks)}}

    def block(k):
        return slice((k % NB) * B, (k % NB) * B + B)

    def ort_alone(k):
        call(L.out_names, ready, None)

    def tensors_group(k):
        b = block(k)
        slab[b] = L.run(tensor_call, x, slab[b])[1]

    def tensors_frame(k):
        f = frames[k % NB]
        slab[f] = L.run(tensor_call, x, slab[f])[1]

    def parts_run(pick):
        feeds = {L.manifest.input: x, **{s.input: p[pick] for s, p in zip(L.states, parts)}}
        _, *new = call(L.out_names, feeds, None)
        for p, n in zip(parts, new):
            p[pick] = n

    def rows_group(k):
        b = block(k)
        slab[b] = rows_run(x, slab[b])[1]

    def rows_frame(k):
        f = frames[k % NB]
        slab[f] = rows_run(x, slab[f])[1]

    return {"onnxruntime alone": ort_alone, "group: tensors": tensors_group,
            "group: parts": lambda k: parts_run(block(k)), "group: rows": rows_group,
            "frame: tensors": tensors_frame, "frame: parts": lambda k: parts_run(frames[k % NB]),
            "frame: rows": rows_frame}


def agree(path: Path, B: int) -> bool:
    """Do the states fed tensor by tensor (StepLayout, and contiguous parts) and the rows graph give the same new
    states from the same rows?"""
    runner = ModelRunner(path)
    L = runner.layout
    plain = tensor_session(path)
    rng = np.random.default_rng(1)
    rows = rng.random((B, L.width), dtype=np.float32)
    x = rng.random((B, 1, runner.features), dtype=np.float32)
    _, tensors = L.run(plain.run, x, rows)
    _, *new = plain.run(L.out_names, {L.manifest.input: x, **{s.input: np.ascontiguousarray(rows[:, b])
                                                                for s, b in zip(L.states, L.blocks)}})
    _, whole = _rows_graph(runner)(x, rows)
    return bool(np.array_equal(tensors, np.concatenate(new, axis=1)) and np.array_equal(tensors, whole))


def measure(path: Path, B: int, rounds: int) -> dict[str, tuple[float, float]]:
    """name -> (median us per call, median ratio to onnxruntime alone in the same round)."""
    fns = variants(path, B)
    reps = max(20, 20_000 // B)
    us: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.thread_time()
            for k in range(reps):
                fn(k)
            us[name].append((time.thread_time() - t0) / reps * 1e6)
    base = us["onnxruntime alone"]
    return {name: (statistics.median(v), statistics.median(a / b for a, b in zip(v, base))) for name, v in us.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rowfeeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--sizes", default="256,1024")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args(argv)
    for B in (int(s) for s in a.sizes.split(",")):
        print(f"B = {B} ({a.model.name}; thread CPU per call, median of {a.rounds} interleaved rounds):")
        for name, (us, ratio) in measure(a.model, B, a.rounds).items():
            print(f"  {name:18s} {us:9.1f} us  {ratio:5.2f}x onnxruntime alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
