"""The server on asyncio's event loop against the same server on uvloop: the ghz rounds of bench.ab, same null server.

    pip install ".[server]"    # uvloop comes with the server extra
    python -m bench.loops --rounds 3 --duration 2     # writes loops_ab.md / loops_ab.json into --out

A is `statestream-server --loop asyncio`, B `--loop uvloop`: the same checkout, the flag the server has.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import ab, scenarios
from .procs import ROOT, null_server, statestream_server


def combine(paths: list[Path]) -> str:
    """One table of several runs: per scenario, each run's B/A (rates, and CPU per call when recorded) and the median."""
    runs = [json.loads(p.read_text()) for p in paths]
    head = [f"{r['meta']['date'][11:16]} (load {r['meta']['loadavg'].split()[0]})" for r in runs]
    lines = ["# asyncio (A) against uvloop (B): every run", "",
             "B/A of the medians of server/null per run (> 1: uvloop keeps more of the null server's rate); in brackets "
             "CPU per call A/B (> 1: uvloop spends less CPU per call) where the run recorded it. Runs: "
             + ", ".join(f"`{p}`" for p in paths) + ".", "",
             "| scenario | " + " | ".join(head) + " | median of runs (rates) | median of runs (CPU) |",
             "| --- | " + " | ".join("---" for _ in runs) + " | --- | --- |"]
    keys = list(dict.fromkeys((x["scenario"], x["concurrency"]) for r in runs for x in r["ghz"]))
    for key in keys:
        cells, rates, cpus = [], [], []
        for r in runs:
            x = next((x for x in r["ghz"] if (x["scenario"], x["concurrency"]) == key), None)
            if x is None:
                cells.append("")
                continue
            rates.append(x["b_over_a"])
            cell = f"{x['b_over_a']:.2f}"
            if x.get("cpu_a_over_b"):
                cpus.append(x["cpu_a_over_b"])
                cell += f" ({x['cpu_a_over_b']:.2f})"
            cells.append(cell)
        lines.append(f"| {key[0]} c={key[1]} | " + " | ".join(cells)
                     + f" | **{statistics.median(rates):.2f}** | " + (f"**{statistics.median(cpus):.2f}**" if cpus else "-")
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0, help="seconds per ghz run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--only", default="", help="scenario keys to run, comma-separated (e.g. frame256,stream); "
                   "default: all of bench.ab's")
    p.add_argument("--combine", type=Path, nargs="+", metavar="LOOPS_AB_JSON",
                   help="only summarize these runs' loops_ab.json into --out/summary.md (B/A per run, median of runs)")
    a = p.parse_args(argv)
    if a.combine:
        md = combine(a.combine)
        (a.out / "summary.md").write_text(md)
        print(md)
        return 0
    plan, responses, args = ab.prepare(a.model, a.duration, a.out / "raw" / "loops")
    res = {"meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
                    "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()), "A": "asyncio", "B": "uvloop",
                    "rounds": a.rounds, "duration": a.duration,
                    "command": "python -m bench.loops " + " ".join(argv if argv is not None else sys.argv[1:])}}
    with null_server(responses) as null, statestream_server(a.model, *args, "--loop", "asyncio") as plain, \
            statestream_server(a.model, *args, "--loop", "uvloop") as fast:
        procs = {"null": null, "A": plain, "B": fast}
        for proc in (plain, fast):
            plan.open_groups(proc)
        which = [(k, c) for k, c in ab.SCENARIOS if not a.only or k in a.only.split(",")]
        for key in {k for k, _ in which}:
            for who, proc in procs.items():
                scenarios.warm(plan, proc, who, key)
        res["ghz"] = ab.ghz_rounds(plan, procs, a.rounds, which)
    res["meta"]["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    (a.out / "loops_ab.json").write_text(json.dumps(res, indent=1))
    md = ab.report(res)
    (a.out / "loops_ab.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
