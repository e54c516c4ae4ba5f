"""`python -m bench.redis_commit`: what a Redis commit costs the server (issue 18, target 5).

    python -m bench.redis_commit                  # ~1.5 minutes; writes bench/results/redis_commit.{md,json}
    python -m bench.redis_commit --skip frames    # only the in-process commit cost (~20 s)

1. Server CPU per session of `StateStore.commit()` in-process against a real redis-server on loopback (AOF
   everysec), per batch of 1 / 16 / 256: time.process_time() (this process's user + system CPU, so the kernel's
   socket work counts and redis-server's does not) around each commit, best of `--repeats` runs of
   `--commits` commits: CPU time is robust to the shared machine's load, wall time is not (both are shown).
   Sessions named without a hash tag (one EVALSHA each) and with one shared tag ("{bench-256}-7": one EVALSHA
   for the batch). Target: <= 5 us per session in a batch of 256.
2. Frames of 256 (`StepFrame`, ghz c=4 over 4 connections, as bench.scaleout) against a server on the memory
   store, on Redis, and on Redis with each frame's sessions sharing a hash tag, in alternating rounds; the
   medians as ratios to memory. Target: Redis >= 0.5x memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from statestream.server.store.base import Records, SessionRecord
from tests.support.redis_process import RedisProcess

from . import compute, ghz, scenarios
from .cli import ghz_parser, publish
from .procs import ROOT, statestream_server

TARGET_US = 5.0        # server CPU per session, batch of 256
TARGET_FRAMES = 0.5    # frames of 256 on Redis, x memory
BATCHES = (1, 16, 256)


def log(msg: str) -> None:
    print(f"[redis_commit {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def records(n: int, name: str, tagged: bool = False, width: int = 64) -> list[SessionRecord]:
    """n sessions of a `width`-float state with a recorded last step; ids share the hash tag {name-n} if `tagged`."""
    rng = np.random.default_rng(0)
    now = time.time()
    sid = (lambda i: f"{{{name}-{n}}}-{i}") if tagged else (lambda i: f"{name}-{n}-{i}")
    return [SessionRecord(sid(i), "demo", None, rng.standard_normal(width).astype(np.float32), 0, 0, 3600.0,
                          now + 3600, rng.standard_normal((1, 1)).astype(np.float32),
                          rng.standard_normal(width).astype(np.float32), 0, 1) for i in range(n)]


def on_cpu_ns(pid: int | None) -> int:
    """Nanoseconds process `pid` has run on a CPU (its main thread: /proc/PID/schedstat); 0 without a pid."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) if pid else 0


async def commit_cost(store, recs: list[SessionRecord], repeats: int, commits: int, redis_pid: int | None = None) -> dict:
    """CPU and wall time of store.commit of `recs` as one Records (by column, as a model run hands them to the
    store), each commit a new version of every record: the best of `repeats` runs of `commits` commits, per commit
    and per session; and redis-server's own CPU per session over all runs (`redis_pid`: its main thread's time on
    a CPU, which runs the scripts)."""
    n = len(recs)
    for r in recs:
        assert await store.create(r)
    batch = Records.of(recs)
    best_cpu = best_wall = float("inf")
    redis0 = on_cpu_ns(redis_pid)
    for _ in range(repeats):
        cpu = wall = 0.0
        for _ in range(commits):
            batch.version += 1
            batch.step_count += 1
            c0, w0 = time.process_time(), time.perf_counter()
            codes = await store.commit(batch)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            assert codes == ["ok"] * n, codes[:3]
        best_cpu, best_wall = min(best_cpu, cpu / commits), min(best_wall, wall / commits)
    redis_us = (on_cpu_ns(redis_pid) - redis0) / 1e3 / (repeats * commits * n) if redis_pid else None
    return {"batch": n, "us_per_commit": best_cpu * 1e6, "cpu_us_per_session": best_cpu * 1e6 / n,
            "wall_us_per_session": best_wall * 1e6 / n, "repeats": repeats, "commits": commits,
            "redis_cpu_us_per_session": redis_us}


def commit_costs(stores: dict, repeats: int, commits: int, batches: tuple = BATCHES,
                 redis_pid: int | None = None) -> list[dict]:
    """Per store (name -> a StateStore factory), batch size and naming (untagged / one hash tag): commit_cost
    (`redis_pid`: the redis-server whose own CPU per session is read too)."""
    async def go():
        rows = []
        for k, (name, make) in enumerate(stores.items()):
            store = make()
            store.load()
            for n in batches:
                for tagged in (False, True) if n > 1 and "redis" in name else (False,):
                    recs = records(n, f"bench{k}{'t' if tagged else ''}", tagged)
                    row = {"store": name, "tagged": tagged,
                           **await commit_cost(store, recs, repeats, max(3, commits // n), redis_pid)}
                    log(f"commit {name}{' tagged' if tagged else ''}, batch {n}: {row['us_per_commit']:.0f} us CPU "
                        f"({row['cpu_us_per_session']:.2f} us/session; wall {row['wall_us_per_session']:.1f})")
                    rows.append(row)
            await store.aclose() if hasattr(store, "aclose") else store.close()
        return rows
    return asyncio.run(go())


def tagged_frames(path: Path) -> Path:
    """The frames of a ghz data file, each frame's session ids sharing one hash tag (the frame's own name)."""
    frames = json.loads(path.read_text())
    for k, frame in enumerate(frames):
        frame["session_ids"] = [f"{{t{k}}}{sid}" for sid in frame["session_ids"]]
    out = path.with_name(path.stem + "-tagged.json")
    out.write_text(json.dumps(frames))
    return out


def frames(plan: scenarios.Plan, redis_url: str, rounds: int) -> dict:
    """Frames of 256 (c=4, 4 connections) on memory, Redis and Redis with tagged frames, in alternating rounds
    (both servers started once; warmed first, so the runs time steady-state steps)."""
    plan.data["frame256-tagged"] = tagged_frames(plan.data["frame256"])
    model = ROOT / "models" / f"{plan.model}.onnx"
    with contextlib.ExitStack() as stack:
        mem, red = (stack.enter_context(statestream_server(model, "--state-store", store, "--max-sessions", "50000"))
                    for store in ("memory", redis_url))
        configs = {"memory": (mem, "frame256"), "redis": (red, "frame256"),
                   "redis, frames tagged": (red, "frame256-tagged")}
        rates: dict[str, list[float]] = {name: [] for name in configs}
        cpu: dict[str, list[float]] = {name: [] for name in configs}   # server CPU us per session-step

        def run(srv, key: str, out: Path, **how) -> ghz.GhzResult:
            cmd = [p.replace("--connections=1", "--connections=4") for p in plan.cmd(srv, key, 4, out, **how)]
            return ghz.run(cmd, out)

        for name, (srv, key) in configs.items():
            run(srv, key, plan.raw / "redis-commit-warm.json", total=64)
        for r in range(rounds):
            for name, (srv, key) in configs.items():
                cpu0, t0 = scenarios.cpu_seconds(srv.pid)[0], time.perf_counter()
                res = run(srv, key, plan.raw / f"redis-commit-{key}-{srv is mem}-{r}.json", duration=plan.duration)
                used, wall = scenarios.cpu_seconds(srv.pid)[0] - cpu0, time.perf_counter() - t0
                rates[name].append(res.calls_per_s * 256)
                cpu[name].append(used / wall / rates[name][-1] * 1e6 if rates[name][-1] else 0.0)
                log(f"round {r + 1}, frames of 256, {name}: {res.calls_per_s * 256:,.0f} session-steps/s, "
                    f"errors {res.errors}")
    median = {name: statistics.median(v) for name, v in rates.items()}
    return {"rates": rates, "median": median, "vs_memory": {name: median[name] / median["memory"] for name in rates},
            "server_cpu_us": {name: statistics.median(v) for name, v in cpu.items()}}


def redis_bound(commits: list[dict], memory: float) -> list[str]:
    """The most frames on Redis could do whatever the server does: redis-server runs every compare-and-set on one
    thread, so with a whole core to itself it commits at most 1e6 / (its CPU us per session) sessions per second."""
    lines = []
    for r in commits:
        us = r.get("redis_cpu_us_per_session")
        if r["batch"] == 256 and us:
            top = 1e6 / us
            lines.append(f"Bound, {'one hash tag' if r['tagged'] else 'untagged'}: redis-server {us:.2f} us of its "
                         f"own CPU per session -> at most {top:,.0f} session-steps/s with a core to itself = "
                         f"**{top / memory:.2f}x** memory ({memory:,.0f}).")
    return [" ".join(lines)] if lines else []


def report(res: dict) -> str:
    m = res["meta"]
    out = [f"# Redis commits (issue 18, target 5): {m['date']}", "",
           f"{m['cpus']} CPUs, load {m['loadavg']} at start; redis-server {m['redis']} "
           f"({'AOF everysec' if m.get('aof', True) else 'no AOF'}, loopback); "
           f"`{m['command']}`.", "",
           "## Server CPU per session of one commit (in-process, `StateStore.commit()`)", "",
           f"process_time() around each commit, best of {m['repeats']} runs; target <= {TARGET_US:g} us per session "
           "in a batch of 256.", "",
           "redis-server's own CPU per session: its main thread's time on a CPU (/proc/PID/schedstat) over every "
           "run of the cell, per session committed.", "",
           "| store | session ids | batch | CPU us per commit | CPU us per session | wall us per session | "
           "redis-server CPU us per session | target |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["commits"]:
        verdict = ("PASS" if r["cpu_us_per_session"] <= TARGET_US else "MISS") \
            if r["batch"] == 256 and "redis" in r["store"] else ""
        redis_us = r.get("redis_cpu_us_per_session")
        out.append(f"| {r['store']} | {'one hash tag' if r['tagged'] else 'untagged'} | {r['batch']} | "
                   f"{r['us_per_commit']:,.0f} | {r['cpu_us_per_session']:.2f} | {r['wall_us_per_session']:.1f} | "
                   f"{'-' if redis_us is None else f'{redis_us:.2f}'} | {verdict} |")
    if res.get("frames"):
        f = res["frames"]
        out += ["", f"## Frames of 256 (StepFrame, ghz c=4 over 4 connections, {m['duration']} s runs, "
                    f"{len(f['rates']['memory'])} alternating rounds)", "",
                "Server CPU: the server process's CPU time (all threads, /proc) over a run, per session-step "
                "(median of the rounds): steadier than the rates on a shared machine.", "",
                "| server store | session-steps/s per round | median | x memory | server CPU us per session-step | "
                "target |",
                "| --- | --- | --- | --- | --- | --- |"]
        for name, rates in f["rates"].items():
            ratio = f["vs_memory"][name]
            verdict = "" if name == "memory" else ("PASS" if ratio >= TARGET_FRAMES else "MISS")
            server = f.get("server_cpu_us", {}).get(name)
            out.append(f"| {name} | {', '.join(f'{v:,.0f}' for v in rates)} | {f['median'][name]:,.0f} | "
                       f"{ratio:.2f}x | {'-' if server is None else f'{server:.2f}'} | {verdict} |")
        out += ["", *redis_bound(res["commits"], f["median"]["memory"])]
    return "\n".join(out + [""])


def main(argv: list[str] | None = None) -> int:
    p = ghz_parser("redis_commit", __doc__, "1.5 s runs, 2 rounds, fewer commits")
    p.add_argument("--repeats", type=int, default=7, help="runs of commits per cell (the best counts)")
    p.add_argument("--commits", type=int, default=12800, help="sessions committed per run (commits = this / batch)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the frame runs")
    p.add_argument("--skip", default="", help="comma-separated: frames")
    p.add_argument("--no-aof", action="store_true", help="redis-server without its append-only file (what the log "
                   "costs redis-server per session)")
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.rounds, a.commits, a.repeats = 1.5, 2, 2560, 3
    a.out.mkdir(parents=True, exist_ok=True)
    from statestream.server.store.redis import RedisStore
    with RedisProcess(appendonly=not a.no_aof) as redis_srv:
        res = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()), "duration": a.duration,
                        "aof": not a.no_aof, "repeats": a.repeats,
                        "redis": redis_srv.client().info("server")["redis_version"],
                        "command": "python -m bench.redis_commit " + " ".join(argv if argv is not None else sys.argv[1:])}}
        res["commits"] = commit_costs({"redis": lambda: RedisStore(redis_srv.url)}, a.repeats, a.commits,
                                      redis_pid=redis_srv.proc.pid)
        if "frames" not in a.skip.split(","):
            redis_srv.client().flushall()
            raw = a.out / "raw"
            raw.mkdir(exist_ok=True)
            _, man = compute.load(a.model)
            plan = scenarios.Plan(model=a.model.stem, features=man.features, concurrencies=[4], frame_sizes=[256],
                                  duration=a.duration, stream_count=1, ghz_cpus=1, raw=raw)
            plan.write_data()
            res["frames"] = frames(plan, redis_srv.url, a.rounds)
    return publish(a.out, "redis_commit", res, report(res))


if __name__ == "__main__":
    sys.exit(main())
