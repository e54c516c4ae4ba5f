"""`make bench`: ghz against the server and its ceilings, memory, profiles; writes bench/results/.

    python -m bench.run                      # everything (transport, frames, groups and half load: 300 s, 18:05 UTC)
    python -m bench.run --quick              # a smaller grid, no memory/Keras/profiles
    python -m bench.run --skip memory,keras  # leave parts out
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import compute, ghz, idle, memory, perf_analyzer, profile, realistic, report, scenarios
from .procs import ROOT, echo_server, floor_server, free_port, null_server, statestream_server

PARTS = ("transport", "frames", "groups", "halfload", "triton", "profile", "realistic", "memory", "keras")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _csv_ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--concurrency", type=_csv_ints, help="ghz concurrencies (default 1,4,16,64)")
    p.add_argument("--frame-sizes", type=_csv_ints, help="sessions per frame (default 16,256,1024)")
    p.add_argument("--frame-concurrency", type=_csv_ints, help="ghz concurrencies of StepFrame (default 1,4,16)")
    p.add_argument("--group-sizes", type=_csv_ints, default=[256, 1024], help="members per session group")
    p.add_argument("--group-concurrency", type=_csv_ints, default=[1, 4], help="ghz concurrencies of StepGroup")
    p.add_argument("--duration", type=float, help="seconds per ghz run (default 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure each scenario's ceilings and server this many times, alternately: medians (the "
                        "rates, and each ratio the median of the rounds' own ratios)")
    p.add_argument("--stream-count", type=int, default=100, help="steps per StreamSteps call")
    p.add_argument("--ghz-cpus", type=int, default=1, help="ghz --cpus: the load generator gets one core")
    p.add_argument("--memory-sessions", type=_csv_ints, default=[100_000, 1_000_000])
    p.add_argument("--server-arg", action="append", default=[], help="extra statestream-server flag (repeatable)")
    p.add_argument("--skip", default="", help=f"comma list of parts to leave out: {','.join(PARTS)}")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to this long for the 1-minute load average to drop below 1")
    p.add_argument("--pm-qos", action="store_true",
                   help="hold /dev/cpu_dma_latency at 0 for the run (root): no CPU idles in a deep state, as on a "
                        "latency-tuned host (bench.idle)")
    p.add_argument("--quick", action="store_true", help="c=1,16, frames 16,256, 1.5 s runs; no memory/keras/profile")
    a = p.parse_args(argv)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    quick = {"concurrency": [1, 16], "frame_sizes": [16, 256], "duration": 1.5, "frame_concurrency": [1, 16]}
    full = {"concurrency": [1, 4, 16, 64], "frame_sizes": [16, 256, 1024], "duration": 3.0,
            "frame_concurrency": [1, 4, 16]}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.quick:
        a.skip |= {"memory", "keras", "profile"}
    if unknown := a.skip - set(PARTS):
        p.error(f"--skip: unknown part(s) {sorted(unknown)}; have {PARTS}")
    return a


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def meta(a: argparse.Namespace, man, server_cmd: str) -> dict:
    shape = f"{man.features} features -> " + " -> ".join(f"{l.cell}({l.units})" for l in man.layers) + \
            f" -> {man.output_size} outputs, {man.state_width} state floats/session"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "model": str(a.model.relative_to(ROOT) if a.model.is_relative_to(ROOT) else a.model),
            "model_name": man.name, "model_shape": shape, "cpus": os.cpu_count(),
            "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()), "python": platform.python_version(),
            "versions": {d: _version(d) for d in ("grpcio", "protobuf", "onnxruntime", "numpy")},
            "ghz_version": ghz.binary_version(ghz.ensure_ghz()), "ghz_cpus": a.ghz_cpus, "duration": a.duration,
            "rounds": a.rounds, "concurrency": a.concurrency, "frame_sizes": a.frame_sizes, "stream_count": a.stream_count,
            "server_cmd": server_cmd,
            "git": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip(),
            "notes": ["--pm-qos: the run held /dev/cpu_dma_latency at 0 (CPUs never idle in a deep state); every "
                      "server and ceiling ran under it"] if a.pm_qos else []}


def profiles(plan: scenarios.Plan, server, out: Path, conc: int, seconds: float) -> list[dict]:
    """py-spy on the server under unary Step load and under frames of 256."""
    loads = [("unary", "unary", conc, f"unary Step, ghz c={conc}")]
    size = 256 if 256 in plan.frame_sizes else plan.frame_sizes[0]
    loads.append((f"frame{size}", f"frame{size}", 4, f"StepFrame of {size}, ghz c=4"))
    res = []
    for name, key, c, label in loads:
        raw = plan.raw / f"profile-{name}.txt"
        txt = out / f"profile_{name}.txt"
        gout = plan.raw / f"profile-{name}-ghz.json"
        load = subprocess.Popen(plan.cmd(server, key, c, gout, duration=seconds + 2), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            before, t0 = profile.thread_cpu(server.pid), time.perf_counter()
            profile.record(server.pid, seconds, raw)
            share = profile.cpu_share(before, profile.thread_cpu(server.pid), time.perf_counter() - t0)
        except Exception as e:  # a profile is a help, never a reason to lose the run
            res.append({"name": name, "load": label, "error": str(e)[:500]})
            continue
        finally:
            load.wait(seconds + 30)
        head = (f"load: {label} (ghz running while sampled)\nCPU per thread, share of one core over the window "
                f"(lowered by py-spy pausing the process to sample; the results tables have unprofiled CPU): {share}\n\n")
        text = profile.summarize(raw, f"statestream-server profile: {label}", seconds=seconds)
        txt.write_text(head + text)
        samples = sum(int(l.rpartition(" ")[2]) for l in raw.read_text().splitlines() if l.rpartition(" ")[2].isdigit())
        top = [ln.split(None, 2) for ln in text.split("## top 25 by self samples")[1].splitlines()[1:] if ln.strip()]
        top = [{"samples": int(t[0]), "percent": float(t[1].rstrip("%")), "frame": t[2]} for t in top
               if len(t) == 3 and t[0].isdigit()][:15]
        res.append({"name": name, "load": label, "file": txt.name, "cpu_share": share,
                    "gil_by_kind": profile.buckets(raw),
                    "gil_share": samples / (seconds * 200), "top": top})
    return res


def keras(a: argparse.Namespace, raw: Path) -> dict:
    out = raw / "keras.json"
    try:
        subprocess.run([sys.executable, "-m", "bench.keras_baseline", "--model", str(a.model), "--out", str(out)],
                       cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as e:
        return {"error": f"keras baseline failed: {e.stderr[-800:]}"}
    except subprocess.TimeoutExpired:
        return {"error": "keras baseline timed out"}
    import json

    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    if not a.model.exists():
        print(f"bench: no model at {a.model} (--model)", file=sys.stderr)
        return 2
    waited = 0.0
    if a.wait_quiet > 0:
        deadline = time.monotonic() + a.wait_quiet
        while os.getloadavg()[0] >= 1.0 and time.monotonic() < deadline:
            log(f"waiting for a quiet machine: load average {os.getloadavg()[0]:.2f}")
            time.sleep(15)
        waited = time.perf_counter() - t_start
        t_start = time.perf_counter()
    if a.pm_qos:
        idle.hold_pm_qos()  # until this process exits
    a.out.mkdir(parents=True, exist_ok=True)
    raw = a.out / "raw"
    raw.mkdir(exist_ok=True)
    _, man = compute.load(a.model)
    plan = scenarios.Plan(model=a.model.stem, features=man.features, concurrencies=a.concurrency,
                          frame_sizes=a.frame_sizes, duration=a.duration, stream_count=a.stream_count,
                          ghz_cpus=a.ghz_cpus, raw=raw, group_sizes=[] if "groups" in a.skip else a.group_sizes,
                          group_concurrencies=a.group_concurrency, frame_concurrencies=a.frame_concurrency,
                          rounds=a.rounds)
    plan.write_data()
    responses = plan.write_null_responses(man.output_size)
    max_sessions = int(plan.sessions_needed() * 1.2) + 10_000
    server_args = ["--max-sessions", str(max_sessions), *a.server_arg]
    mport = free_port()
    srv = statestream_server(a.model, *server_args, metrics_port=mport)
    res: dict = {"meta": meta(a, man, " ".join(["statestream-server", "--models", str(a.model.name), *server_args]))}
    log(f"model {man.name}: {res['meta']['model_shape']}; ghz {plan.ghz}")

    batches = sorted({1, *a.frame_sizes, *plan.group_sizes})
    log(f"onnxruntime in-process, batch sizes {batches}")
    res["ort"] = [r.to_dict() for r in compute.ort_ceiling(a.model, batches)]
    try:
        runner = compute.runner_ceiling(a.model, batches)
        for o, r in zip(res["ort"], runner):
            o["model_runner_us_per_run"] = r["us_per_run"]
    except Exception as e:  # the server's internals may change; the ORT ceiling stands alone
        res["meta"]["notes"].append(f"ModelRunner timing skipped: {e}")
    ort = {r["batch"]: r["session_steps_per_s"] for r in res["ort"]}
    for r in res["ort"]:
        log(f"ORT batch {r['batch']:5d}: {r['us_per_run']:8.1f} us/run, {r['session_steps_per_s']:12,.0f} session-steps/s")

    with srv, null_server(responses) as null, echo_server(man.features, man.output_size) as echo, \
            floor_server(a.model) as floor:
        log(f"server on {srv.target} (metrics :{mport}), null on {null.target}, echo on {echo.target}, "
            f"floor on {floor.target}")
        ceilings = {"null": null, "echo": echo, "floor": floor}
        def part(name: str, fn):
            """Run one part; a failure (say, the server died) is recorded and the rest still runs."""
            if name in a.skip:
                return None
            try:
                return fn()
            except Exception as e:
                log(f"{name} FAILED: {str(e)[:2000]}")
                res["meta"]["notes"].append(f"part {name!r} failed: {str(e)[:300]}")
                if srv.proc.poll() is not None:
                    res["meta"]["notes"].append(f"the server exited ({srv.proc.returncode}): {srv.output()[-1500:]}")
                return None

        res["transport"] = part("transport", lambda: scenarios.transport(plan, srv, ceilings, mport, log)) or []
        res["frames"] = part("frames", lambda: scenarios.frames(plan, srv, ceilings, mport, ort, log)) or []
        if plan.group_sizes:
            plan.open_groups(srv)
        res["groups"] = part("groups", lambda: scenarios.frames(plan, srv, ceilings, mport, ort, log, "group")) or []
        if res["transport"]:
            res["half_load"] = part("halfload", lambda: scenarios.half_load(plan, srv, ceilings, res["transport"], log))
        res["triton"] = part("triton", lambda: perf_analyzer.run(plan, srv, res["transport"], log))
        conc = 16 if 16 in a.concurrency else max(a.concurrency)
        if "profile" not in a.skip:
            log("profiling the server with py-spy (unary, then frames)")
        res["profiles"] = part("profile", lambda: profiles(plan, srv, a.out, conc, max(3.0, a.duration))) or []
        if srv.proc.poll() is None:
            res["meta"]["server_rss_after_load_bytes"] = srv.rss_bytes()
        else:
            res["meta"]["notes"].append(f"the server exited during the bench (code {srv.proc.returncode}); "
                                        f"its last output: {srv.output()[-1000:]!r}")
    res["commands"] = plan.commands

    if "realistic" not in a.skip:
        log(f"realistic model ({realistic.NAME}): server vs onnxruntime in-process, intra-op threads {realistic.THREADS}")
        try:
            res["realistic"] = realistic.measure(raw, a.duration, a.ghz_cpus, log)
        except Exception as e:
            res["realistic"] = {"error": f"realistic model failed: {str(e)[-800:]}"}
            log(res["realistic"]["error"])
    else:
        res["realistic"] = {"skipped": "skipped (--skip realistic)"}

    if "memory" not in a.skip:
        log(f"memory: a fresh server, then {', '.join(f'{n:,}' for n in a.memory_sessions)} idle sessions")
        try:
            res["memory"] = memory.measure(a.model, plan.model, man.features, tuple(a.memory_sessions))
            for p in res["memory"]["points"]:
                log(f"  {p['sessions']:>9,} sessions: RSS {p['rss_bytes'] / 1e6:8.1f} MB")
        except Exception as e:
            res["memory"] = {"error": f"memory measurement failed: {str(e)[-800:]}"}
    else:
        res["memory"] = {"skipped": "skipped (--skip memory / --quick)"}
    if "keras" not in a.skip:
        log("Keras model.predict one step at a time (separate process)")
        res["keras"] = keras(a, raw)
    else:
        res["keras"] = {"skipped": "skipped (--skip keras / --quick)"}

    res["meta"]["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    res["meta"]["waited_for_quiet_seconds"] = round(waited, 1)
    if float(res["meta"]["loadavg"].split()[0]) > os.cpu_count() / 2:
        res["meta"]["notes"].append(f"load average was {res['meta']['loadavg']} at start: other work shared the CPUs")
    md = report.write(res, a.out)
    print(md)
    log(f"done in {res['meta']['bench_seconds']:.0f} s: {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
