"""`python -m bench.proxy`: replicas on Redis called directly vs through HAProxy (deploy/haproxy.cfg).

    python -m bench.proxy            # ~1 minute on 2 cores; writes bench/results/proxy.{md,json}
    python -m bench.proxy --quick    # 1.5 s runs

ghz (one core, --cpus=1) sends unary Steps and 100-step streams, each worker on its own session and naming it
in the x-session-id header as every client does; the figures are ratios to the direct call of one replica,
measured in the same run (on 2 shared cores, 3 replicas + HAProxy + Redis + ghz compete: read the ratios).
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

from tests.support.redis_process import RedisProcess

from . import compute, ghz, scenarios
from .cli import ghz_parser, publish
from .procs import ROOT, statestream_server

sys.path.insert(0, str(ROOT / "tests"))
from haproxyproc import HAProxy  # noqa: E402  (the tests' runner of deploy/haproxy.cfg)

CONFIGS = (("direct", 1), ("haproxy", 1), ("haproxy", 3))  # (path, replicas)
LOADS = (("unary", 16, 8), ("stream", 16, 8))  # (payload, ghz concurrency, connections)
HEADER = {"unary": "ghz-{{.WorkerID}}", "stream": "ghzs-{{.WorkerID}}"}  # the session ids of bench/payloads.py


def log(msg: str) -> None:
    print(f"[proxy {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def command(plan: scenarios.Plan, target: str, key: str, c: int, conns: int, out: Path, **kw) -> list[str]:
    """plan's ghz command for `key` over `conns` connections, naming each worker's session in x-session-id."""
    cmd = plan.cmd(SimpleNamespace(target=target), key, c, out, **kw)
    return [p.replace("--connections=1", f"--connections={conns}") for p in cmd[:-1]] \
        + [f"--metadata={json.dumps({'x-session-id': HEADER[key]})}", cmd[-1]]


def run_config(plan: scenarios.Plan, redis_url: str, path: str, replicas: int) -> list[dict]:
    rows = []
    with ExitStack() as stack:
        servers = [stack.enter_context(statestream_server(ROOT / "models" / f"{plan.model}.onnx", "--state-store",
                                                          redis_url)) for _ in range(replicas)]
        target = servers[0].target if path == "direct" else \
            stack.enter_context(HAProxy([s.target for s in servers])).target
        for key, c, conns in LOADS:
            out = plan.raw / f"proxy-{path}-{replicas}-{key}.json"
            warm = out.with_suffix(".warm.json")
            ghz.run(command(plan, target, key, c, conns, warm, total=4 * c), warm)  # connections, sessions, caches
            r = ghz.run(command(plan, target, key, c, conns, out), out)
            per = plan.stream_count if key == "stream" else 1
            row = {"path": path, "replicas": replicas, "load": key, "concurrency": c, "connections": conns,
                   "steps_per_s": r.calls_per_s * per, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors,
                   "error_sample": r.error_sample}
            log(f"{path:7s} x{replicas} {key:6s}: {row['steps_per_s']:9,.0f} steps/s, p50 {r.p50_ms:.2f} ms, "
                f"p99 {r.p99_ms:.2f} ms, errors {r.errors}")
            rows.append(row)
    return rows


def report(res: dict) -> str:
    m = res["meta"]
    base = {r["load"]: r["steps_per_s"] for r in res["rows"] if r["path"] == "direct"}
    out = [f"# statestream through HAProxy: {m['date']}", "",
           f"{m['cpus']} CPUs, load {m['loadavg']} at start; ghz `--cpus=1`, {m['duration']} s per run; "
           f"replicas on one redis-server (AOF everysec), HAProxy {m['haproxy']} with deploy/haproxy.cfg. "
           "Ratios are to the direct call of one replica in this same run.", "",
           "| load | path | replicas | steps/s | x direct | p50 ms | p99 ms | errors |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        out.append(f"| {r['load']} c={r['concurrency']}, {r['connections']} conns | {r['path']} | {r['replicas']} | "
                   f"{r['steps_per_s']:,.0f} | {r['steps_per_s'] / base[r['load']]:.2f}x | {r['p50_ms']:.2f} | "
                   f"{r['p99_ms']:.2f} | {r['errors']} |")
    return "\n".join(out + ["", "Command: `python -m bench.proxy`.", ""])


def main(argv: list[str] | None = None) -> int:
    p = ghz_parser("proxy", __doc__)
    a = p.parse_args(argv)
    a.duration = 1.5 if a.quick else a.duration
    raw = a.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _, man = compute.load(a.model)
    plan = scenarios.Plan(model=a.model.stem, features=man.features, concurrencies=[16], frame_sizes=[],
                          duration=a.duration, stream_count=100, ghz_cpus=1, raw=raw)
    plan.write_data()
    haproxy = os.popen("haproxy -v").readline().split()[2]
    t0 = time.perf_counter()
    with RedisProcess() as redis_srv:
        res = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()), "duration": a.duration,
                        "haproxy": haproxy}, "rows": []}
        for path, replicas in CONFIGS:
            res["rows"] += run_config(plan, redis_srv.url, path, replicas)
            redis_srv.client().flushall()
    res["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    return publish(a.out, "proxy", res, report(res))


if __name__ == "__main__":
    sys.exit(main())
