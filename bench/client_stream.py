"""What exactly-once costs a Python client's stream: pipelined vs one step in flight, against a local server.

    python -m bench.client_stream                # 3 rounds of 3000 steps per mode, one session, memory store
    python -m bench.client_stream --store sqlite # a durable store: every step waits for its commit either way

Prints steps/s per mode (median of the rounds) and each mode's ratio to pipelined, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from statestream.client import Client

from .procs import ROOT, statestream_server

MODES = ("pipelined stream", "exactly-once stream", "exactly-once unary")


def run_mode(client: Client, mode: str, xs: np.ndarray, sid: str) -> float:
    """Steps per second of one pass over xs in `mode`."""
    s = client.session("demo", sid, exactly_once=mode.startswith("exactly-once"))
    t0 = time.perf_counter()
    if mode.endswith("stream"):
        n = sum(1 for _ in s.stream(xs))
    else:
        n = sum(1 for x in xs if s.step(x) is not None)
    took = time.perf_counter() - t0
    assert n == len(xs) and s.get_state().step_count == len(xs)
    s.close()
    return n / took


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    p.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    xs = np.random.default_rng(0).normal(size=(args.steps, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = ["--state-store", f"sqlite:{tmp}/bench.db"] if args.store == "sqlite" else []
        with statestream_server(ROOT / "models" / "demo.onnx", *store) as srv, Client(srv.target) as client:
            rates = {m: [] for m in MODES}
            for r in range(args.rounds):
                for m in MODES:  # interleaved, so drift of the machine hits every mode alike
                    rates[m].append(run_mode(client, m, xs, f"bench-{r}-{MODES.index(m)}"))
    base = statistics.median(rates[MODES[0]])
    result = {"store": args.store, "steps": args.steps, "rounds": args.rounds,
              "steps_per_s": {m: round(statistics.median(v)) for m, v in rates.items()},
              "ratio_to_pipelined": {m: round(statistics.median(v) / base, 3) for m, v in rates.items()}}
    for m in MODES:
        print(f"{m:22s} {result['steps_per_s'][m]:8d} steps/s  x{result['ratio_to_pipelined'][m]:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
