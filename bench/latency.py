"""Latency at half the maximum load: p50 and p99 of unary steps and of streams, the server beside the null server.

    python -m bench.latency --rounds 3 --duration 5     # writes latency.md / latency.json into --out

First the maximum: the server (its defaults) at c=16, unary `Step` and `StreamSteps`, for --duration. Then ghz
holds `--rps` at half of each maximum against every target in turn: the null server (the transport alone, no
parsing: the bound for the tail that gRPC, asyncio and this machine leave) and the server's variants (--variants;
flags or a start-up change each), in --rounds interleaved rounds (the order of the targets rotates every round),
each round once with nothing pinned and once pinned (ghz `taskset -c 1`, every thread of the servers on core 0:
do client and server stealing each other's core widen the tail?). Streams are ghz calls of --stream-count steps;
their latency is of the whole call. Every run records the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import compute, scenarios
from .cli import publish
from .procs import ROOT, Proc, descendants

VARIANTS = {  # name -> (extra server flags, bench.gctrace options: start-up changes of the server's process)
    "default": ([], []),
    "asyncio": (["--loop", "asyncio"], []),
    "uvloop": (["--loop", "uvloop"], []),
    "no-freeze": ([], ["--no-freeze"]),
    "switch-0.5ms": ([], ["--switch-interval", "0.0005"]),
    "null-switch-0.5ms": (None, ["--switch-interval", "0.0005"]),  # the null server so
}
KEYS = ("unary", "stream")


def log(msg: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def variant_server(model: Path, name: str, *args: str) -> Proc:
    """The server of a variant, its collections timed (bench.gctrace)."""
    flags, trace = VARIANTS[name]
    return Proc(f"server ({name})", [sys.executable, "-m", "bench.gctrace", *trace,
                                     "statestream.server.app.main", "--models", str(model), "--host", "127.0.0.1",
                                     "--port", "0", "--log-level", "WARNING", *args, *flags])


def traced_null(responses: Path, trace: list[str] = ()) -> Proc:
    return Proc("null-server", [sys.executable, "-m", "bench.gctrace", *trace, "bench.null_server", "--port", "0",
                                "--responses", str(responses)])


def gc_totals(proc: Proc, timeout: float = 10) -> dict:
    """The process's collections so far (bench.gctrace's answer to SIGUSR1); {} if it does not answer in time."""
    seen = sum(1 for line in proc.lines if line.startswith("gctrace "))
    proc.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in proc.lines if line.startswith("gctrace ")]
        if len(found) > seen:
            return json.loads(found[-1][len("gctrace "):])
        time.sleep(0.01)
    return {}


def gc_delta(before: dict, after: dict) -> dict:
    """Collections during one run: per generation, count and total ms (the longest pause is since the start)."""
    if not before or not after:
        return {}
    return {g: {"n": after["gen"][g]["n"] - before["gen"][g]["n"],
                "ms": round(after["gen"][g]["ms"] - before["gen"][g]["ms"], 3), "max_ms_so_far": after["gen"][g]["max_ms"]}
            for g in after["gen"]} | {"frozen": after.get("frozen")}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of pid and its descendants onto `cpus` (threads started later inherit the main thread's)."""
    for p in descendants(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def gc_text(d: dict) -> str:
    return ", ".join(f"gen{g} {v['n']} x / {v['ms']:.1f} ms" for g, v in d.items() if g != "frozen" and v["n"]) or "-"


def summary(runs: list[dict]) -> dict:
    p50 = [r["p50_ms"] for r in runs]
    p99 = [r["p99_ms"] for r in runs]
    return {"rate": statistics.median(r["msgs_per_s"] for r in runs), "p50_ms": statistics.median(p50),
            "p99_ms": statistics.median(p99), "tail": statistics.median(b / a for a, b in zip(p50, p99) if a),
            "tail_min": min(b / a for a, b in zip(p50, p99) if a), "tail_max": max(b / a for a, b in zip(p50, p99) if a),
            "load1": [r["load1"] for r in runs], "errors": sum(r["errors"] for r in runs),
            "cpu_us": statistics.median(r["cpu"]["process"] / r["msgs_per_s"] * 1e6 for r in runs),
            "gc": {g: {"n": sum(r["gc"][g]["n"] for r in runs if r.get("gc")),
                       "ms": round(sum(r["gc"][g]["ms"] for r in runs if r.get("gc")), 1),
                       "max_ms": max((r["gc"][g]["max_ms_so_far"] for r in runs if r.get("gc")), default=0.0)}
                   for g in ("0", "1", "2")}}


def report(res: dict) -> str:
    m = res["meta"]
    lines = [f"# Latency at half the maximum load ({m['date']})", "",
             f"{m['cpus']} cores, load average {m['loadavg']} at start, {m['loadavg_end']} at the end; "
             f"`{m['command']}`. Each cell: the median over {m['rounds']} interleaved rounds of {m['duration']:g} s "
             "(p99/p50 is the median of each run's ratio, min-max in brackets). Streams: one ghz call is a stream of "
             f"{m['stream_count']} steps, its latency that of the whole call; rates are steps/s.", "",
             "GC: collections during the runs of a cell (all rounds together), per generation count / total ms, and "
             "the longest single pause of that generation since the process started.", "",
             "CPU: the target process's CPU time per step (all its threads), median over the rounds.", "",
             "| scenario | max (server, c=16) | --rps (calls/s) | pinned | target | steps/s | p50 ms | p99 ms | "
             "p99 / p50 | CPU us/step | 1-min load | GC gen0 / gen1 / gen2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in res["rows"]:
        s = row["summary"]
        lines.append(f"| {row['scenario']} c={row['concurrency']} | {row['max_rate']:,.0f} steps/s | {row['rps']:,} | "
                     f"{'yes' if row['pinned'] else 'no'} | {row['target']} | {s['rate']:,.0f} | {s['p50_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} | **{s['tail']:.1f}x** ({s['tail_min']:.1f}-{s['tail_max']:.1f}) | "
                     f"{s['cpu_us']:,.0f} | "
                     f"{min(s['load1']):.1f}-{max(s['load1']):.1f} | "
                     + " / ".join(f"{v['n']} / {v['ms']:.1f} (max {v['max_ms']:.1f})" for v in s["gc"].values()) + " |")
    lines += ["", "Targets: " + "; ".join(f"{k}: {v}" for k, v in m["targets"].items()) + ".", "",
              "ghz commands (target and data file differ per server):", ""]
    lines += [f"- {k}: `{v}`" for k, v in m["commands"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per ghz run")
    p.add_argument("--concurrency", type=int, default=16, help="ghz workers, at the maximum and at half load")
    p.add_argument("--stream-count", type=int, default=10, help="steps per stream call")
    p.add_argument("--variants", default="default,asyncio,no-freeze,switch-0.5ms,null-switch-0.5ms",
                   help=f"server variants, comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--no-pin", action="store_true", help="skip the pinned runs")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--report", type=Path, help="only write latency.md again from this latency.json")
    a = p.parse_args(argv)
    if a.report:
        res = json.loads(a.report.read_text())
        for row in res["rows"]:
            row["summary"] = summary(row["runs"])
        (a.report.parent / "latency.md").write_text(report(res))
        return 0
    variants = a.variants.split(",")
    raw = a.out / "raw" / "latency"
    raw.mkdir(parents=True, exist_ok=True)
    _, man = compute.load(a.model)
    c = a.concurrency
    plan = scenarios.Plan(model=a.model.stem, features=man.features, concurrencies=[c], frame_sizes=[],
                          duration=a.duration, stream_count=a.stream_count, ghz_cpus=1, raw=raw)
    plan.write_data()
    responses = plan.write_null_responses(man.output_size)
    args = ["--max-sessions", str(int(plan.sessions_needed() * 1.2) + 10_000)]
    cpus = sorted(os.sched_getaffinity(0))
    pins = [False] if a.no_pin or len(cpus) < 2 else [False, True]
    res = {"meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
                    "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()), "rounds": a.rounds,
                    "duration": a.duration, "stream_count": a.stream_count, "server_args": args,
                    "command": "python -m bench.latency " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "targets": {"null": "bench.null_server", **{
                        (f"null ({v[5:]})" if v.startswith("null-") else f"server ({v})"):
                        " ".join(["bench.null_server" if VARIANTS[v][0] is None else "statestream-server",
                                  *(VARIANTS[v][0] or [])]) + (f", `bench.gctrace {' '.join(VARIANTS[v][1])}`"
                                                               if VARIANTS[v][1] else "") for v in variants}},
                    "commands": {}}, "rows": []}
    procs = {"null": traced_null(responses),
             **{(f"null ({v[5:]})" if v.startswith("null-") else f"server ({v})"):
                traced_null(responses, VARIANTS[v][1]) if VARIANTS[v][0] is None else variant_server(a.model, v, *args)
                for v in variants}}
    for proc in procs.values():
        proc.start()
    try:
        for key in KEYS:
            for who, proc in procs.items():
                scenarios.warm(plan, proc, who, key)
        names = list(procs)
        for key in KEYS:
            top = scenarios.run_one(plan, procs[names[1]], names[1], key, c, tag="max")
            rps = max(1, int(top["msgs_per_s"] / 2 / (a.stream_count if key == "stream" else 1)))
            log(f"{key}: max {top['msgs_per_s']:,.0f} steps/s (p50 {top['p50_ms']:.2f} p99 {top['p99_ms']:.2f} ms); "
                f"half load --rps={rps}")
            runs: dict[tuple[str, bool], list[dict]] = {}
            for r in range(a.rounds):
                for pinned in pins if r % 2 == 0 else pins[::-1]:
                    plan.ghz_prefix = ["taskset", "-c", str(cpus[1])] if pinned else []
                    order = names[r % len(names):] + names[:r % len(names)]
                    for who in order:
                        pin(procs[who].pid, {cpus[0]} if pinned else set(cpus))
                        gc0 = gc_totals(procs[who])
                        x = scenarios.run_one(plan, procs[who], who, key, c, rps=rps,
                                              tag=f"half-r{r}{'-pinned' if pinned else ''}")
                        x["load1"] = os.getloadavg()[0]
                        x["gc"] = gc_delta(gc0, gc_totals(procs[who]))
                        runs.setdefault((who, pinned), []).append(x)
                        res["meta"]["commands"].setdefault(f"{key} at half load{' pinned' if pinned else ''}",
                                                           x["command"])
                        log(f"{key} r{r} {'pinned ' if pinned else ''}{who:20s} {x['msgs_per_s']:8,.0f} steps/s "
                            f"p50 {x['p50_ms']:6.2f} p99 {x['p99_ms']:6.2f} ms ({x['p99_ms'] / x['p50_ms']:.1f}x) "
                            f"load {x['load1']:.2f} gc {gc_text(x['gc'])}")
            for (who, pinned), xs in runs.items():
                res["rows"].append({"scenario": key, "concurrency": c, "max_rate": top["msgs_per_s"],
                                    "max_p50_ms": top["p50_ms"], "max_p99_ms": top["p99_ms"], "rps": rps,
                                    "pinned": pinned, "target": who, "summary": summary(xs), "runs": xs})
    finally:
        for proc in procs.values():
            pin(proc.pid, set(cpus))
            proc.stop()
    res["meta"]["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    res["rows"].sort(key=lambda row: (KEYS.index(row["scenario"]), row["pinned"], row["target"]))
    return publish(a.out, "latency", res, report(res))


if __name__ == "__main__":
    sys.exit(main())
