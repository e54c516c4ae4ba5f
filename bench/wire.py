"""What a call costs the server at the wire, by thread: CPU from /proc, or instructions under callgrind.

`bench.hotpath` and `bench.instructions` time the handler in-process (no gRPC, one request repeated); this
drives the real server with ghz (the scenarios' data files, one core for ghz) and reads, per call:

- **cpu** (default): user and system CPU of every server thread from /proc/<pid>/task, and minor page faults,
  over one ghz run per scenario. Compare with bench.hotpath's CPU per call: the difference is what the
  transport, and running beside ghz, add.
- **--callgrind**: the server under `valgrind --tool=callgrind --separate-threads=yes`; ghz sends N calls, then
  4N, with `callgrind_control --dump` (which also zeroes the counts) before and after each; the event loop's
  instructions per call are the difference of the two dumps over 3N (each ghz run's own connection cancels;
  deterministic, unlike time on a shared machine). Compare with bench.instructions.

    python -m bench.wire group1024,frame1024              # CPU per call by thread, c=4
    python -m bench.wire group256 --floor                 # and the floor server's (bench.floor_server) after it
    python -m bench.wire group1024 --callgrind --calls 40  # event-loop instructions per call (minutes)
    python -m bench.wire group1024 --callgrind --null      # the same of the null server: the transport's floor
    python -m bench.wire unary -c 1 --callgrind --floor    # the same of the floor server: the model's floor
    python -m bench.wire group256 -- --inline-max-batch 0  # flags after -- go to statestream-server
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
from pathlib import Path

from statestream.server.engine.model import ModelRunner

from . import ghz, procs, scenarios
from .procs import ROOT
from .scenarios import Plan

DEMO = ROOT / "models" / "demo.onnx"


def _plan(model: Path, keys: list[str], c: int, raw: Path, duration: float = 3.0) -> Plan:
    sizes = sorted({scenarios.block_size(k) for k in keys if scenarios.block_size(k)})
    return Plan(model=model.stem, features=ModelRunner(model).features, concurrencies=[c], frame_sizes=sizes,
                duration=duration, stream_count=100, ghz_cpus=1, raw=raw, group_sizes=sizes, group_concurrencies=[c],
                frame_concurrencies=[c])


def _server_cmd(model: Path, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "statestream.server.app.main", "--models", str(model), "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", "--log-level", "WARNING", "--max-sessions", "100000", *flags]


def _threads(pid: int) -> dict[str, tuple[str, int, int, int]]:
    """tid -> (name, user ticks, system ticks, minor faults)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        rest = text.rsplit(")", 1)[1].split()
        out[tid] = (text[text.index("(") + 1:text.rindex(")")], int(rest[11]), int(rest[12]), int(rest[7]))
    return out


def cpu(model: Path, keys: list[str], c: int, flags: list[str], raw: Path, duration: float = 3.0,
        floor: bool = False) -> list[dict]:
    """One ghz run per scenario; per call: each thread's user and system CPU (us) and minor faults. `floor`: of the
    floor server (bench.floor_server: the model on each session's state row and nothing else) instead of ours."""
    plan = _plan(model, keys, c, raw, duration)
    plan.write_data()
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    rows = []
    with (procs.floor_server(model) if floor else procs.Proc("statestream-server", _server_cmd(model, flags))) as proc:
        if not floor:  # the floor opens a group on its first step
            plan.open_groups(proc)
        for key in keys:
            scenarios.warm(plan, proc, "s", key)
            before = _threads(proc.pid)
            d = scenarios.run_one(plan, proc, "s", key, c)
            after = _threads(proc.pid)
            calls = max(d["ok"], 1)
            threads = {}
            for tid, (name, user, system, faults) in after.items():
                u0, s0, f0 = before.get(tid, (name, 0, 0, 0))[1:]
                if user + system > u0 + s0:
                    threads[f"{name}:{tid}" + (" (event loop)" if int(tid) == proc.pid else "")] = {
                        "user_us": round((user - u0) * tick / calls), "sys_us": round((system - s0) * tick / calls),
                        "minflt": round((faults - f0) / calls, 1)}
            rows.append({"scenario": key, "c": c, "calls_per_s": round(d["calls_per_s"]),
                         "session_steps_per_s": round(d.get("session_steps_per_s") or d["msgs_per_s"]),
                         "threads": threads})
    return rows


def instructions(model: Path, key: str, c: int, n: int, flags: list[str], raw: Path, who: str = "server") -> dict:
    """A server under callgrind: event-loop instructions per call, (dump of 4N calls - dump of N calls) / 3N. `who`:
    "server" (ours), "null" (bench.null_server: pre-serialized responses, requests never parsed) or "floor"
    (bench.floor_server: the model on each session's state row and nothing else)."""
    plan = _plan(model, [key], c, raw)
    plan.write_data()
    out = raw / f"{'' if who == 'server' else who + '-'}{key}.cg"
    for f in glob.glob(f"{out}*"):
        os.remove(f)
    server = {"null": lambda: [sys.executable, "-m", "bench.null_server", "--port", "0", "--responses",
                               str(plan.write_null_responses(ModelRunner(model).output_size))],
              "floor": lambda: [sys.executable, "-m", "bench.floor_server", "--port", "0", "--model", str(model)],
              "server": lambda: _server_cmd(model, flags)}[who]()
    cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}", *server]
    with procs.Proc(who, cmd, timeout=900) as proc:
        if who == "server":  # the floor opens a group on its first step
            plan.open_groups(proc)
        if who != "null":
            scenarios.warm(plan, proc, "s", key)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)  # start-up
        counts = []
        for total in (n, 4 * n):
            o = raw / "calls.json"
            r = ghz.run(plan.cmd(proc, key, c, o, total=total), o, timeout=3600)
            if r.ok != total:
                raise RuntimeError(f"{key}: {r.ok} of {total} calls answered OK")
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            dumps = sorted(glob.glob(f"{out}.*-01"), key=lambda p: int(p.rsplit(".", 1)[1].split("-")[0]))
            counts.append(int(next(line.split()[1] for line in Path(dumps[-1]).read_text().splitlines()
                                   if line.startswith("summary:"))))
    return {"server": {"server": "statestream"}.get(who, who), "scenario": key, "c": c, "calls": 3 * n,
            "event_loop_instructions_per_call": round((counts[1] - counts[0]) / (3 * n))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", help="comma-separated: unary, stream, frame256, group1024, ...")
    p.add_argument("--model", default=str(DEMO), help="an exported .onnx (default the demo)")
    p.add_argument("-c", "--concurrency", type=int, default=4)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per ghz run (cpu)")
    p.add_argument("--callgrind", action="store_true", help="instructions per call under callgrind")
    p.add_argument("--calls", type=int, default=40, help="--callgrind: N (then 4N) calls")
    p.add_argument("--null", action="store_true", help="--callgrind: the null server instead (the transport's floor)")
    p.add_argument("--floor", action="store_true", help="cpu: then the floor server, the same runs (the engine's "
                   "cost at the wire is the difference); --callgrind: the floor server instead")
    p.add_argument("--raw", default=str(ROOT / "bench" / "results" / "raw" / "wire"))
    a = p.parse_args(argv)
    raw = Path(a.raw)
    raw.mkdir(parents=True, exist_ok=True)
    keys = a.scenarios.split(",")
    if a.callgrind:
        for key in keys:
            who = "null" if a.null else "floor" if a.floor else "server"
            print(instructions(Path(a.model), key, a.concurrency, a.calls, flags, raw, who), flush=True)
        return 0
    for who in ("server", "floor") if a.floor else ("server",):
        for row in cpu(Path(a.model), keys, a.concurrency, flags, raw, a.duration, floor=who == "floor"):
            total = sum(t["user_us"] + t["sys_us"] for t in row["threads"].values())
            print(f"{who}: {row['scenario']} c={row['c']}: {row['calls_per_s']:,} calls/s, "
                  f"{row['session_steps_per_s']:,} session-steps/s; {total:,} us of CPU per call:")
            for name, t in row["threads"].items():
                print(f"    {name:32s} user {t['user_us']:6d} us  sys {t['sys_us']:5d} us  minflt {t['minflt']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
