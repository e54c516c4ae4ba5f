"""`python -m bench.scaleout`: memory vs sqlite vs redis, 1 vs 2 worker processes, and what one Redis commit costs.

    python -m bench.scaleout                 # ~1.5 minutes on 2 cores; writes bench/results/scaleout.{md,json}
    python -m bench.scaleout --quick         # 1.5 s runs, fewer commit iterations

Throughput is ghz (one core, --cpus=1) against a real server per configuration, over 8 connections so that
SO_REUSEPORT spreads them over the workers; every figure is also given as a ratio to the memory store with
one process, measured in the same run. The commit cost is StateStore.commit() timed in-process against a
real redis-server (AOF everysec) and a real sqlite file, per batch of 1 / 16 / 256 sessions (bench.redis_commit).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from statestream.server.store.redis import RedisStore
from statestream.server.store.sqlite import SqliteStore
from tests.support.redis_process import RedisProcess

from . import compute, ghz, redis_commit, scenarios
from .cli import ghz_parser
from .procs import ROOT, statestream_server

CONFIGS = (("memory", 1), ("sqlite", 1), ("sqlite", 2), ("redis", 1), ("redis", 2))
LOADS = (("unary", 16, 8), ("frame256", 4, 4))   # (payload, ghz concurrency, connections)


def log(msg: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def commit_costs(redis_url: str, tmp: Path, repeats: int, commits: int,
                 batches: tuple = redis_commit.BATCHES) -> list[dict]:
    """Per store kind, batch size (and for Redis, session ids with and without a shared hash tag): the server CPU
    and wall time of one commit() in-process (bench.redis_commit)."""
    return redis_commit.commit_costs({"sqlite (shared, BEGIN IMMEDIATE)": lambda: SqliteStore(str(tmp / "commit.db"),
                                                                                              shared=True),
                                      "redis: pre-packed EVALSHA pipeline": lambda: RedisStore(redis_url)},
                                     repeats, commits, batches)


def throughput(plan: scenarios.Plan, redis_url: str, tmp: Path, log_) -> list[dict]:
    """ghz per (store, workers) configuration and load; servers one at a time."""
    rows = []
    for kind, workers in CONFIGS:
        spec = {"memory": "memory", "sqlite": f"sqlite:{tmp / f'bench-{workers}.db'}", "redis": redis_url}[kind]
        args = ["--state-store", spec, "--workers", str(workers), "--max-sessions", "50000"]
        with statestream_server(plan_model(plan), *args) as srv:
            for key, c, conns in LOADS:
                out = plan.raw / f"scaleout-{kind}-{workers}-{key}.json"
                cmd = [p.replace("--connections=1", f"--connections={conns}") for p in plan.cmd(srv, key, c, out)]
                warm = [p.replace("--connections=1", f"--connections={conns}")
                        for p in plan.cmd(srv, key, c, out.with_suffix(".warm.json"),
                                          total=4 * c * (4 if key == "frame256" else 1))]
                ghz.run(warm, out.with_suffix(".warm.json"))
                r = ghz.run(cmd, out)
                per = 256 if key == "frame256" else 1
                row = {"store": kind, "workers": workers, "load": key, "concurrency": c, "connections": conns,
                       "session_steps_per_s": r.calls_per_s * per, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                       "errors": r.errors, "error_sample": r.error_sample}
                log_(f"{kind:6s} x{workers} {key:9s}: {row['session_steps_per_s']:10,.0f} session-steps/s, "
                     f"p99 {r.p99_ms:.2f} ms, errors {r.errors}")
                rows.append(row)
    base = {r["load"]: r["session_steps_per_s"] for r in rows if r["store"] == "memory" and r["workers"] == 1}
    one = {(r["store"], r["load"]): r["session_steps_per_s"] for r in rows if r["workers"] == 1}
    for r in rows:
        r["vs_memory_1"] = r["session_steps_per_s"] / base[r["load"]] if base.get(r["load"]) else None
        r["vs_same_store_1"] = r["session_steps_per_s"] / one[(r["store"], r["load"])] \
            if one.get((r["store"], r["load"])) else None
    return rows


def plan_model(plan: scenarios.Plan) -> Path:
    return ROOT / "models" / f"{plan.model}.onnx"


def report(res: dict) -> str:
    m = res["meta"]
    out = [f"# statestream scale-out bench: {m['date']}", "",
           f"{m['cpus']} CPUs, load {m['loadavg']} at start; ghz `--cpus=1`, {m['duration']} s per run; "
           f"redis-server {m['redis']} (AOF everysec). Ratios are to figures of this same run.", "",
           "## Throughput: store and worker processes", "",
           "| load | store | workers | session-steps/s | x memory, 1 process | x same store, 1 process | p50 ms "
           "| p99 ms | errors |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["throughput"]:
        ratio = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        out.append(f"| {r['load']} c={r['concurrency']}, {r['connections']} conns | {r['store']} | {r['workers']} | "
                   f"{r['session_steps_per_s']:,.0f} | {ratio(r['vs_memory_1'])} | {ratio(r['vs_same_store_1'])} | "
                   f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")
    out += ["", "## One commit (one batch) in-process (bench.redis_commit: process_time, best of runs)", "",
            "| store | session ids | batch | CPU us per commit | CPU us per session | wall us per session |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in res["commits"]:
        out.append(f"| {r['store']} | {'one hash tag' if r['tagged'] else 'untagged'} | {r['batch']} | "
                   f"{r['us_per_commit']:,.0f} | {r['cpu_us_per_session']:.2f} | {r['wall_us_per_session']:.1f} |")
    out += ["", "Commands: `python -m bench.scaleout` (this file); the server flags per row are "
            "`--state-store memory | sqlite:PATH | redis://127.0.0.1:PORT/0 --workers N`.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = ghz_parser("scaleout", __doc__, "1.5 s runs, 0.3 s of commits per cell")
    p.add_argument("--commit-repeats", type=int, default=5, help="runs of commits per store and batch size")
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.commit_repeats = 1.5, 2
    a.out.mkdir(parents=True, exist_ok=True)
    raw = a.out / "raw"
    raw.mkdir(exist_ok=True)
    _, man = compute.load(a.model)
    plan = scenarios.Plan(model=a.model.stem, features=man.features, concurrencies=[16], frame_sizes=[256],
                          duration=a.duration, stream_count=100, ghz_cpus=1, raw=raw)
    plan.write_data()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="statestream-scaleout-") as tmp, RedisProcess() as redis_srv:
        version = redis_srv.client().info("server")["redis_version"]
        res = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()), "duration": a.duration,
                        "redis": version}}
        res["commits"] = commit_costs(redis_srv.url, Path(tmp), a.commit_repeats, 2560 if a.quick else 12800)
        redis_srv.client().flushall()
        res["throughput"] = throughput(plan, redis_srv.url, Path(tmp), log)
    res["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    (a.out / "scaleout.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    (a.out / "scaleout.md").write_text(md)
    print(md)
    log(f"done in {res['meta']['seconds']:.0f} s: {a.out / 'scaleout.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
