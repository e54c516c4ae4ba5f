"""A model run after its core idled: one timestep of B sessions back to back, and after each idle gap.

Over the wire at low concurrency the server's core idles between calls (ghz waits for each answer), and the next
model run then costs more CPU than in a tight loop (cold caches, the host's handling of an idle vCPU): why the
bench's "model run us" at c=1 is two to four times onnxruntime's in-process figure, for the floor server as for
the server. Both graphs the server has for one timestep are timed: the rows graph (engine/rowgraph.py) and the
one-timestep graph (engine/stepgraph.py).

    python -m bench.idle                      # the demo, 256 sessions, gaps of 0, 0.3 and 1 ms
    python -m bench.idle --batch 1 --gaps 0,100,300,1000 --rounds 5
    python -m bench.idle --pm-qos             # root: hold /dev/cpu_dma_latency at 0 (no deep idle states)
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

from .procs import ROOT


def hold_pm_qos() -> int:
    """Ask the kernel to keep every CPU out of idle states with any exit latency (/dev/cpu_dma_latency = 0, as
    tuned's latency-performance profile does) for as long as the returned fd stays open; root only."""
    fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    os.write(fd, struct.pack("i", 0))
    return fd


def after_gaps(path: Path, batch: int, gaps_us: list[int], rounds: int, runs: int = 300) -> dict[tuple, float]:
    """(graph, gap us) -> the best round's thread CPU per run (us) of one timestep of `batch` sessions when each
    run follows an idle gap of that long (time.sleep; 0: back to back). Graphs and gaps alternate within a round."""
    from statestream.server.engine.model import ModelRunner
    from statestream.server.engine.rowgraph import ROWS_IN, ROWS_OUT

    runner = ModelRunner(path)
    rng = np.random.default_rng(0)
    feeds = {runner.manifest.input: rng.uniform(-1, 1, (batch, 1, runner.features)).astype(np.float32),
             ROWS_IN: rng.uniform(-0.1, 0.1, (batch, runner.state_width)).astype(np.float32)}
    names = [runner.manifest.output, ROWS_OUT]
    graphs = {"rows graph": runner.session, "one-timestep graph": runner.step_session}
    best = {(g, gap): float("inf") for g in graphs for gap in gaps_us}
    for _ in range(rounds):
        for gap in gaps_us:
            for g, sess in graphs.items():
                for _ in range(10):
                    sess.run(names, feeds)
                cpu = 0
                for _ in range(runs):
                    if gap:
                        time.sleep(gap / 1e6)
                    t0 = time.thread_time_ns()
                    sess.run(names, feeds)
                    cpu += time.thread_time_ns() - t0
                best[g, gap] = min(best[g, gap], cpu / runs / 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--gaps", default="0,300,1000", help="idle gaps before each run, us")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pm-qos", action="store_true", help="hold /dev/cpu_dma_latency at 0 meanwhile (root)")
    a = p.parse_args(argv)
    if a.pm_qos:
        hold_pm_qos()  # until this process exits
    gaps = [int(g) for g in a.gaps.split(",")]
    best = after_gaps(a.model, a.batch, gaps, a.rounds)
    print(f"| idle gap before each run | {a.model.name}, {a.batch} sessions: rows graph us | one-timestep graph us |")
    print("| --- | --- | --- |")
    base = {g: best[g, min(gaps)] for g, _ in best}
    for gap in gaps:
        print(f"| {gap} us | " + " | ".join(f"{best[g, gap]:.1f} ({best[g, gap] / base[g]:.2f}x)"
                                           for g in ("rows graph", "one-timestep graph")) + " |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
