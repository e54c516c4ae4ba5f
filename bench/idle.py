"""A model run after its core idled: ModelRunner.run of B sessions back to back, and after each idle gap.

Over the wire at low concurrency the server's core idles between calls (ghz waits for each answer), and the next
model run then costs more CPU than in a tight loop (cold caches, the core's idle state): why the bench's "model run
us" at c=1 is two to four times onnxruntime's in-process figure, for the floor server as for the server.

    python -m bench.idle                      # the demo, 256 sessions, gaps of 0, 0.3 and 1 ms
    python -m bench.idle --batch 1024 --gaps 0,100,300,1000 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .procs import ROOT


def after_gaps(path: Path, batch: int, gaps_us: list[int], rounds: int, runs: int = 300) -> dict[int, float]:
    """gap (us) -> the best round's thread CPU per ModelRunner.run (us) when each run follows an idle gap of that
    long (time.sleep; 0: back to back). The gaps alternate within each round."""
    from statestream.server.engine.model import ModelRunner

    runner = ModelRunner(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, 1, runner.features)).astype(np.float32)
    rows = rng.uniform(-0.1, 0.1, (batch, runner.state_width)).astype(np.float32)
    best = {g: float("inf") for g in gaps_us}
    for _ in range(rounds):
        for gap in gaps_us:
            for _ in range(10):
                runner.run(x, rows)
            cpu = 0
            for _ in range(runs):
                if gap:
                    time.sleep(gap / 1e6)
                t0 = time.thread_time_ns()
                runner.run(x, rows)
                cpu += time.thread_time_ns() - t0
            best[gap] = min(best[gap], cpu / runs / 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--gaps", default="0,300,1000", help="idle gaps before each run, us")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    best = after_gaps(a.model, a.batch, [int(g) for g in a.gaps.split(",")], a.rounds)
    print(f"| idle gap before each run | {a.model.name}, {a.batch} sessions: CPU us per run | against back to back |")
    print("| --- | --- | --- |")
    base = best[min(best)]
    for gap, us in best.items():
        print(f"| {gap} us | {us:.1f} | {us / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
