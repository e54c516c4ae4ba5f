"""A/B of two server versions: the same ghz runs against both and the null server, alternately, in one run.

Each scenario runs `--rounds` times; in every round the null server, version A and version B run back to back
(the order turns each round), so both ratios to the null server come from the same minute. Then each
version's own `bench.hotpath` (the server's CPU per call in-process, no gRPC) runs alternately. Writes
`engine_ab.md` and `engine_ab.json` into --out.

Version A is another checkout with its own venv (its wheel installed with the server extra), e.g.:

    git worktree add /tmp/old 9cc6d87
    python3 -m venv /tmp/venv-old && (cd /tmp/old && /tmp/venv-old/bin/pip wheel --no-deps -w /tmp/old-dist .)
    /tmp/venv-old/bin/pip install "$(ls /tmp/old-dist/*.whl)[server]"
    python -m bench.ab --old-tree /tmp/old --old-python /tmp/venv-old/bin/python

Version B is this checkout, run by this interpreter.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import compute, scenarios
from .cli import publish
from .procs import ROOT, Proc, null_server, statestream_server

# (scenario key, ghz concurrency): the headline rows of docs/performance.md
SCENARIOS = [("unary", 1), ("unary", 4), ("stream", 1), ("stream", 16), ("frame256", 16), ("group256", 4),
             ("group1024", 4)]
HOTPATH_ROW = re.compile(r"^(\S+)\s+([\d.]+) us/call")


def log(msg: str) -> None:
    print(f"[ab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def old_server(python: Path, tree: Path, model: Path, *args: str) -> Proc:
    """Version A's server: its venv's statestream-server entry point (module paths differ between versions)."""
    exe = python.parent / "statestream-server"
    cmd = [str(exe), "--models", str(model), "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING", *args]
    return Proc(f"server-A ({tree.name})", cmd)


def rate(r: dict) -> float:
    return r.get("session_steps_per_s") or r["msgs_per_s"]


def cpu_us(r: dict) -> float:
    """The server process's CPU time (all threads) per ghz call, us: steadier than rates on a shared machine."""
    calls = r["calls_per_s"]
    return r["cpu"]["process"] / calls * 1e6 if calls else 0.0


def ghz_rounds(plan: scenarios.Plan, procs: dict[str, Proc], rounds: int,
               which: list[tuple[str, int]] = SCENARIOS) -> list[dict]:
    rows = []
    names = list(procs)
    for key, c in which:
        runs: dict[str, list[dict]] = {who: [] for who in names}
        for r in range(rounds):
            order = names if r % 2 == 0 else [names[0], *reversed(names[1:])]  # null first, A/B alternate
            for who in order:
                runs[who].append({**scenarios.run_one(plan, procs[who], who, key, c, tag=f"r{r}"),
                                  "load1": os.getloadavg()[0]})
        row = {"scenario": key, "concurrency": c, "command": runs["B"][0]["command"], "rounds": {}}
        for who in names:
            row["rounds"][who] = [{"rate": rate(x), "p50_ms": x["p50_ms"], "p99_ms": x["p99_ms"], "errors": x["errors"],
                                   "load1": x.get("load1"), "cpu_us": cpu_us(x)} for x in runs[who]]
        for who in ("A", "B"):
            ratios = [rate(x) / rate(n) for x, n in zip(runs[who], runs["null"])]
            row[f"ratio_{who}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        row["b_over_a"] = row["ratio_B"]["median"] / row["ratio_A"]["median"]
        cpu = {who: statistics.median(x["cpu_us"] for x in row["rounds"][who]) for who in ("A", "B")}
        row["cpu_a_over_b"] = cpu["A"] / cpu["B"] if cpu["B"] else None  # > 1: B spends less CPU per call
        rows.append(row)
        med = {who: {k: statistics.median(x[k] for x in row["rounds"][who]) for k in ("rate", "p50_ms", "p99_ms")}
               for who in names}
        log(f"{key:9s} c={c:<2d} null {med['null']['rate']:11,.0f} "
            + " ".join(f"{who} p50/p99 {m['p50_ms']:.2f}/{m['p99_ms']:.2f} ms" for who, m in med.items()) + " | "
            f"A {row['ratio_A']['median']:.3f}x ({row['ratio_A']['min']:.3f}-{row['ratio_A']['max']:.3f}) | "
            f"B {row['ratio_B']['median']:.3f}x ({row['ratio_B']['min']:.3f}-{row['ratio_B']['max']:.3f}) | "
            f"B/A {row['b_over_a']:.2f} | CPU per call A/B {row['cpu_a_over_b'] or 0:.2f}")
    return rows


# Runs a version's bench.hotpath on uvloop, as the server: one that predates its --loop (2026-12-01) ran on asyncio's
# own loop, which the uvloop policy set here replaces (a newer one's --loop auto picks uvloop itself).
_ON_UVLOOP = ("import asyncio, runpy, sys\n"
              "try:\n    import uvloop\n    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
              "except ImportError:\n    pass\n"
              "sys.argv[0] = 'bench.hotpath'\nrunpy.run_module('bench.hotpath', run_name='__main__', alter_sys=True)")


def hotpath(python: str, cwd: Path, seconds: float) -> dict[str, float]:
    """One run of a version's own `python -m bench.hotpath` on uvloop: scenario -> us of event-loop CPU per call."""
    out = subprocess.run([python, "-c", _ON_UVLOOP, "--sizes", "256,1024", "--seconds", str(seconds)],
                         cwd=cwd, capture_output=True, text=True, timeout=600, check=True).stdout
    return {m.group(1): float(m.group(2)) for line in out.splitlines() if (m := HOTPATH_ROW.match(line))}


def hotpath_rounds(old_python: Path, old_tree: Path, rounds: int, seconds: float) -> list[dict]:
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for r in range(rounds):
        for who in ("A", "B") if r % 2 == 0 else ("B", "A"):
            runs[who].append(hotpath(str(old_python), old_tree, seconds) if who == "A"
                             else hotpath(sys.executable, ROOT, seconds))
    rows = []
    for name in runs["B"][0]:
        a = [x[name] for x in runs["A"] if name in x]
        b = [x[name] for x in runs["B"]]
        if not a:
            continue
        row = {"scenario": name, "us_A": a, "us_B": b, "b_over_a": min(a) / min(b)}  # best runs: least disturbed
        rows.append(row)
        log(f"hotpath {name:16s} A {min(a):9.1f}-{max(a):9.1f} us | B {min(b):9.1f}-{max(b):9.1f} us | "
            f"speed B/A {row['b_over_a']:.2f}")
    return rows


def report(res: dict) -> str:
    m = res["meta"]
    lines = [f"# A/B: {m['A']} (A) against {m['B']} (B)", "",
             f"{m['date']}, {m['cpus']} cores, load average at start {m['loadavg']}"
             + (f", at the end {m['loadavg_end']}" if m.get("loadavg_end") else "") + f"; `{m['command']}`.", "",
             f"Ratios to the null server measured in the same round ({m['rounds']} rounds of {m['duration']:g} s per "
             "scenario, null then A and B in turn, the order of A and B alternating); median (min-max). "
             "B/A > 1: B keeps more of the ceiling. Rates are session-steps/s (frames, groups) or "
             "msgs/s.", "",
             "CPU us/call: each server process's CPU time (all threads) per ghz call, median of the rounds; A/B > 1: "
             "B spends less (it moves less with the machine's load than rates do).", "",
             "| scenario | null (median) | A / null | B / null | B/A | p50 / p99 ms null | p50 / p99 ms A | "
             "p50 / p99 ms B | CPU us/call A / B | CPU A/B | 1-min load during the rounds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def rng(d: dict) -> str:
        return f"{d['median']:.3f} ({d['min']:.3f}-{d['max']:.3f})"

    def lat(rounds: list[dict]) -> str:
        return (f"{statistics.median(x['p50_ms'] for x in rounds):.2f} / "
                f"{statistics.median(x['p99_ms'] for x in rounds):.2f}")

    def cpu(row: dict, who: str) -> str:
        us = [x["cpu_us"] for x in row["rounds"][who] if x.get("cpu_us")]
        return f"{statistics.median(us):,.0f}" if us else "-"

    def load(rounds: dict) -> str:
        loads = [x["load1"] for runs in rounds.values() for x in runs if x.get("load1") is not None]
        return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"

    for row in res["ghz"]:
        null = statistics.median(x["rate"] for x in row["rounds"]["null"])
        lines.append(f"| {row['scenario']} c={row['concurrency']} | {null:,.0f} | {rng(row['ratio_A'])} | "
                     f"{rng(row['ratio_B'])} | **{row['b_over_a']:.2f}** | {lat(row['rounds']['null'])} | "
                     f"{lat(row['rounds']['A'])} | {lat(row['rounds']['B'])} | {cpu(row, 'A')} / {cpu(row, 'B')} | "
                     + (f"**{row['cpu_a_over_b']:.2f}**" if row.get("cpu_a_over_b") else "-")
                     + f" | {load(row['rounds'])} |")
    if res.get("hotpath"):
        lines += ["", "In-process CPU per call (`python -m bench.hotpath --sizes 256,1024`, each version's own, on "
                  "uvloop, alternately; event-loop thread CPU, best of 7 repeats per run; range over runs):", "",
                  "| scenario | A us/call | B us/call | speed B/A (best runs) |", "| --- | --- | --- | --- |"]
        for row in res["hotpath"]:
            lines.append(f"| {row['scenario']} | {min(row['us_A']):.1f}-{max(row['us_A']):.1f} | "
                         f"{min(row['us_B']):.1f}-{max(row['us_B']):.1f} | **{row['b_over_a']:.2f}** |")
    lines += ["", "ghz commands (the target and data file differ per server; B's shown):", ""]
    lines += [f"- {row['scenario']} c={row['concurrency']}: `{row['command']}`" for row in res["ghz"]]
    return "\n".join(lines) + "\n"


def prepare(model: Path, duration: float, raw: Path) -> tuple[scenarios.Plan, Path, list[str]]:
    """The scenarios of an A/B (unary and streams at 1/4/16, frames of 256, groups of 256 and 1024), their data and
    the null server's responses written under `raw`; (the plan, the responses file, the servers' extra flags)."""
    raw.mkdir(parents=True, exist_ok=True)
    _, man = compute.load(model)
    plan = scenarios.Plan(model=model.stem, features=man.features, concurrencies=[1, 4, 16], frame_sizes=[256],
                          duration=duration, stream_count=100, ghz_cpus=1, raw=raw, group_sizes=[256, 1024],
                          group_concurrencies=[4], frame_concurrencies=[16])
    plan.write_data()
    responses = plan.write_null_responses(man.output_size)
    return plan, responses, ["--max-sessions", str(int(plan.sessions_needed() * 1.2) + 10_000)]


def _scenarios(text: str) -> list[tuple[str, int]]:
    """--scenarios: "unary:1,unary:4" -> [("unary", 1), ("unary", 4)]; keys of SCENARIOS only."""
    known = {k for k, _ in SCENARIOS}
    out = []
    for part in text.split(","):
        key, _, c = part.partition(":")
        if key not in known or not c.isdigit() or int(c) < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: expected KEY:CONCURRENCY, KEY one of {sorted(known)}")
        out.append((key, int(c)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-tree", type=Path, default=Path("/tmp/old"), help="version A's checkout (its bench.hotpath)")
    p.add_argument("--old-python", type=Path, default=Path("/tmp/venv-old/bin/python"),
                   help="the python of version A's venv (its wheel installed with the server extra)")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0, help="seconds per ghz run")
    p.add_argument("--hotpath-seconds", type=float, default=1.0)
    p.add_argument("--skip-hotpath", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--scenarios", type=_scenarios, default=SCENARIOS,
                   help="KEY:CONCURRENCY,... of ghz runs (default: every headline row, e.g. unary:1,unary:4)")
    a = p.parse_args(argv)

    def describe(tree: Path) -> str:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=tree, capture_output=True,
                              text=True).stdout.strip()

    plan, responses, args = prepare(a.model, a.duration, a.out / "raw" / "ab")
    res = {"meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
                    "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()), "A": describe(a.old_tree),
                    "B": describe(ROOT), "rounds": a.rounds, "duration": a.duration,
                    "command": "python -m bench.ab " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "server_args": args}}
    with null_server(responses) as null, old_server(a.old_python, a.old_tree, a.model, *args) as old, \
            statestream_server(a.model, *args) as new:
        procs = {"null": null, "A": old, "B": new}
        for proc in (old, new):
            plan.open_groups(proc)
        for key in {k for k, _ in a.scenarios}:
            for who, proc in procs.items():
                scenarios.warm(plan, proc, who, key)
        log(f"null {null.target}, A ({res['meta']['A']}) {old.target}, B ({res['meta']['B']}) {new.target}")
        res["ghz"] = ghz_rounds(plan, procs, a.rounds, a.scenarios)
    res["meta"]["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    if not a.skip_hotpath:
        res["hotpath"] = hotpath_rounds(a.old_python, a.old_tree, a.rounds, a.hotpath_seconds)
    return publish(a.out, "engine_ab", res, report(res))


if __name__ == "__main__":
    sys.exit(main())
