"""Compute-bound models at the serial bound (issue 18, target 4): one core against two, and how it scales.

For 2 x LSTM(256) and 2 x LSTM(128) (bench.realistic's model at two sizes), groups of 256:

- **in-process** (no gRPC, the bench process alone; `bench.inprocess`): onnxruntime at batch 256 with 1
  intra-op thread, with 2 (spinning and not), two batches at once on an executor of 2 threads (one session,
  1 intra-op thread each run), and the server's ModelRunner.run; wall time and process CPU per run. And
  ModelRunner.run against I/O binding and run_with_ort_values (--runner-batches).
- **at the wire**: ghz (`taskset -c 1`, `--cpus=1`) sends StepGroup of 256 at concurrency 2 to the null
  server and to statestream-server, each pinned with `taskset`: on core 0 only (the serial bound: model and
  transport back to back on one core) and on cores 0-1 (ghz shares core 1), the server with
  1 intra-op thread (the model on the loop), --inline-max-batch 0 (the model on the executor, the loop free
  meanwhile), and --intra-op-threads 2 with and without spinning. Every server and null are up at once and
  run in alternating rounds; onnxruntime in-process (pinned to core 0) is timed just before and after each
  round, with ModelRunner.run and the whole StepGroup handler (bench.hotpath's, no gRPC). The serial bound is
  1/(1/ORT + 1/null) of that round; the server's CPU per call (from /proc) is cut into ORT, ModelRunner's
  beyond it (the rows graph's Split and Concat; the state copies before it), the rest of the handler and gRPC;
  --perf adds `perf record` of the 1-core server (bench.perfprof). From the parts, `scaling` models N cores.

    python -m bench.serial                      # both sizes, 2 rounds of 3 s runs; bench/results/serial.{md,json}
    python -m bench.serial --units 128 --rounds 1 --duration 2 --skip wire
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from . import compute, ghz, perfprof, realistic, scenarios
from .cli import parser
from .inprocess import GROUP, inprocess, median, parts_inprocess, runner_variants
from .procs import ROOT, Proc

CORE0, BOTH = "0", "0,1"
FLOOR = "floor, 1 core"  # bench.floor_server: the model on each group's rows and nothing else
# (name, cpus of the server, its flags): the configurations measured at the wire
SERVERS = [
    ("1 core", CORE0, []),
    ("2 cores, loop", BOTH, []),
    ("2 cores, executor", BOTH, ["--inline-max-batch", "0"]),
    ("2 cores, intra-op 2", BOTH, ["--intra-op-threads", "2"]),
    ("2 cores, intra-op 2, spinning", BOTH, ["--intra-op-threads", "2", "--intra-op-spinning", "1"]),
    ("2 cores, intra-op 2 + executor", BOTH, ["--intra-op-threads", "2", "--inline-max-batch", "0"]),
]


def _pinned(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd]


# -- at the wire -----------------------------------------------------------------------------------------


def _server(path: Path, cpus: str, flags: list[str]) -> Proc:
    cmd = [sys.executable, "-m", "statestream.server.app.main", "--models", str(path), "--host", "127.0.0.1",
           "--port", "0", "--metrics-port", "0", "--log-level", "WARNING", "--max-sessions", "20000", *flags]
    return Proc("statestream-server", _pinned(cpus, cmd))


def _floor(path: Path, cpus: str) -> Proc:
    return Proc("floor-server", _pinned(cpus, [sys.executable, "-m", "bench.floor_server", "--port", "0",
                                               "--model", str(path)]))


def _null(responses: Path, cpus: str) -> Proc:
    return Proc("null-server", _pinned(cpus, [sys.executable, "-m", "bench.null_server", "--port", "0",
                                              "--responses", str(responses)]))


def _ghz_run(plan: scenarios.Plan, proc: Proc, who: str, c: int, tag: str) -> dict:
    """One ghz run (pinned to core 1) of StepGroup of GROUP; calls/s and the server's CPU per call."""
    out = plan.raw / f"{who.replace(' ', '_').replace(',', '')}-{tag}.json"
    cmd = _pinned("1", plan.cmd(proc, f"group{GROUP}", c, out, duration=plan.duration))
    cpu0, t0 = scenarios.cpu_seconds(proc.pid), time.perf_counter()
    r = ghz.run(cmd, out)
    cpu1, wall = scenarios.cpu_seconds(proc.pid), time.perf_counter() - t0
    calls = r.ok + r.errors
    return {"session_steps_per_s": r.calls_per_s * GROUP, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors,
            "cpu_us_per_call": (cpu1[0] - cpu0[0]) / calls * 1e6 if calls else None,
            "loop_us_per_call": (cpu1[1] - cpu0[1]) / calls * 1e6 if calls else None,
            "cpu_share": (cpu1[0] - cpu0[0]) / wall, "command": " ".join(cmd).replace(str(ROOT) + "/", "")}


def wire(path: Path, duration: float, rounds: int, concurrency: int, raw: Path, log, perf: bool = False) -> dict:
    _, man = compute.load(path)
    plan = scenarios.Plan(model=man.name, features=man.features, concurrencies=[concurrency], frame_sizes=[],
                          duration=duration, stream_count=1, ghz_cpus=1, raw=raw / man.name, group_sizes=[GROUP],
                          group_concurrencies=[concurrency])
    plan.write_data()
    responses = plan.write_null_responses(man.output_size)
    procs: dict[str, Proc] = {}
    runs: dict[str, list[dict]] = {}
    orts: list[dict] = []
    profile: dict[str, dict] = {}
    try:
        procs["null, 1 core"] = _null(responses, CORE0).start()
        procs["null, 2 cores"] = _null(responses, BOTH).start()
        procs[FLOOR] = _floor(path, CORE0).start()
        for name, cpus, flags in SERVERS:
            procs[name] = _server(path, cpus, flags).start()
            plan.open_groups(procs[name])
        for who, proc in procs.items():
            scenarios.warm(plan, proc, who.replace(" ", "_").replace(",", ""), f"group{GROUP}")
        for rnd in range(rounds):
            before = parts_inprocess(path, 0.6)
            order = list(procs) if rnd % 2 == 0 else list(reversed(procs))
            for who in order:
                recording = None
                if perf and rnd == 0 and who in ("1 core", "null, 1 core") and perfprof.available():
                    recording = perfprof.record(procs[who].pid, max(1.0, duration - 0.5), plan.raw / "perf.data")
                r = _ghz_run(plan, procs[who], who, concurrency, f"r{rnd}")
                if recording is not None:
                    recording.wait()
                    shares, samples = perfprof.buckets(plan.raw / "perf.data")
                    profile[who] = {"samples": samples, "shares": shares, "cpu_us_per_call": r["cpu_us_per_call"]}
                runs.setdefault(who, []).append(r)
                log(f"{man.name} round {rnd} {who:32s} {r['session_steps_per_s']:10,.0f} session-steps/s "
                    f"cpu {r['cpu_us_per_call'] or 0:7.0f} us/call (loop {r['loop_us_per_call'] or 0:6.0f}) "
                    f"share {r['cpu_share']:.2f} p50 {r['p50_ms']:.2f} ms errors {r['errors']}")
            after = parts_inprocess(path, 0.6)
            # the better (lower CPU, higher rate) of just before and just after the round: neighbours only add
            orts.append({k: (max if k.endswith("per_s") else min)(before[k], after[k]) for k in before})
            log(f"{man.name} round {rnd} in-process on core 0: " + ", ".join(f"{k} {v:,.0f}"
                                                                           for k, v in orts[-1].items()))
    finally:
        for p in procs.values():
            p.stop()
    return {**summarise(runs, orts), "perf": profile or None}


def summarise(runs: dict[str, list[dict]], orts: list[dict]) -> dict:
    """Medians over rounds; the serial bound of each round and the server's ratio to it, at the wire (rates) and
    in CPU time ((ORT + null) CPU per call / the server's); where the server's CPU per call goes."""
    med = {who: {k: median([r[k] for r in rs if r[k] is not None]) for k in
                 ("session_steps_per_s", "cpu_us_per_call", "loop_us_per_call", "cpu_share", "p50_ms", "p99_ms")}
           for who, rs in runs.items()}
    for who, rs in runs.items():
        med[who]["command"] = rs[0]["command"]
    bounds = []
    for k, o in enumerate(orts):
        null, one = runs["null, 1 core"][k], runs["1 core"][k]
        bound = 1 / (1 / o["ort_session_steps_per_s"] + 1 / null["session_steps_per_s"])
        bound_cpu = o["ort_cpu_us"] + null["cpu_us_per_call"]
        floor = runs[FLOOR][k]["session_steps_per_s"] if FLOOR in runs else None
        bounds.append({"ort": o["ort_session_steps_per_s"], "null": null["session_steps_per_s"], "bound": bound,
                       "floor_1core": floor, "floor_ratio": floor / bound if floor else None,
                       "server_1core": one["session_steps_per_s"], "ratio": one["session_steps_per_s"] / bound,
                       "bound_cpu_us": bound_cpu, "server_cpu_us": one["cpu_us_per_call"],
                       "ratio_cpu": bound_cpu / one["cpu_us_per_call"]})
    p = {k: median([o[k] for o in orts]) for k in orts[0]}
    wire_cpu, null_cpu = med["1 core"]["cpu_us_per_call"], med["null, 1 core"]["cpu_us_per_call"]
    parts = {"ort_cpu_us": p["ort_cpu_us"], "copies_us": p["runner_cpu_us"] - p["ort_cpu_us"],
             "engine_codec_us": p["handler_cpu_us"] - p["runner_cpu_us"],
             "transport_us": wire_cpu - p["handler_cpu_us"], "null_cpu_us": null_cpu, "server_cpu_us": wire_cpu,
             "server_loop_us": med["1 core"]["loop_us_per_call"], "handler_cpu_us": p["handler_cpu_us"],
             "excess_us": wire_cpu - p["ort_cpu_us"] - null_cpu}
    floors = [b["floor_ratio"] for b in bounds if b["floor_ratio"] is not None]
    return {"servers": med, "rounds": bounds, "ratio_serial_bound": median([b["ratio"] for b in bounds]),
            "floor_ratio_serial_bound": median(floors) if floors else None,
            "ratio_serial_bound_cpu": median([b["ratio_cpu"] for b in bounds]), "parts": parts, "inprocess": orts}


# -- the model of N cores --------------------------------------------------------------------------------


def scaling(w: dict, inproc: dict | None, cores=(1, 2, 4, 8)) -> dict:
    """Session-steps/s of groups of GROUP on N free cores, from parts measured on this machine (CPU us per call):
    m = onnxruntime's run (1 thread; it releases the GIL), L = the loop thread's other work per call with the model
    inline (the 1-core server's loop CPU - m), Lx = the loop's work per call with the model on the executor (the
    "executor" server's loop CPU: L plus the thread hand-off), O = the server's other threads (gRPC's poller) per
    call, s2 = intra-op 2's speedup of one run in-process (wall). Then:

    - model on the loop (today's default): B / (L + m) on any N;
    - model on the executor, one run at a time (today's batcher, --inline-max-batch 0): B / (L + m + O) on 1 core,
      min(B / max(Lx, m), N B / (Lx + m + O)) on 2+ (the loop prepares the next call while a core runs the model);
    - intra-op 2, model on the loop: B / (L + m / s2) on 2+ cores;
    - runs of different calls at once on an executor of N - 1 threads (a batcher that starts the next unit while
      one runs): min(B / Lx, (N - 1) B / m, N B / (Lx + m + O)): the loop (GIL) is the ceiling.
    """
    p, servers = w["parts"], w["servers"]
    m = p["ort_cpu_us"]
    loop = p["server_loop_us"] - m
    lx = servers["2 cores, executor"]["loop_us_per_call"]
    other = p["server_cpu_us"] - p["server_loop_us"]
    s2 = None
    if inproc:
        s2 = inproc["ORT, 1 thread"]["wall_us"] / inproc["ORT, intra-op 2"]["wall_us"]
    rate = lambda us: GROUP / us * 1e6  # noqa: E731
    rows = []
    for n in cores:
        rows.append({"cores": n, "loop": rate(loop + m),
                     "executor_one_run": rate(loop + m + other) if n == 1 else
                     min(rate(max(lx, m)), n * rate(lx + m + other)),
                     "intra_op_2": rate(loop + m / s2) if s2 and n >= 2 else None,
                     "runs_at_once": rate(loop + m + other) if n == 1 else
                     min(rate(lx), (n - 1) * rate(m), n * rate(lx + m + other))})
    return {"m_us": m, "loop_us": loop, "executor_loop_us": lx, "other_threads_us": other, "intra_op_2_speedup": s2,
            "rows": rows}


# -- report ----------------------------------------------------------------------------------------------


def report(res: dict) -> str:
    lines = ["# Compute-bound models at the serial bound (issue 18, target 4)", "",
             f"`{res['command']}` at {res['started']} UTC, load average at start {res['load']}, at end "
             f"{res.get('load_end', '?')}; onnxruntime {res['onnxruntime']}, {os.cpu_count()} cores. Groups of "
             f"{GROUP} (StepGroup), ghz pinned to core 1 at concurrency {res['concurrency']}.", ""]
    for label, m in res["models"].items():
        lines += [f"## {label}", ""]
        if "inprocess" in m:
            lines += ["In-process, no gRPC (the bench process, not pinned; the best of 7 interleaved rounds each):", "",
                      "| what | wall us per batch of 256 | process CPU us per batch | session-steps/s |",
                      "| --- | --- | --- | --- |"]
            for what, r in m["inprocess"].items():
                lines.append(f"| {what} | {r['wall_us']:,.0f} | {r['cpu_us']:,.0f} | {r['session_steps_per_s']:,.0f} |")
            lines.append("")
        if "runner" in m:
            lines += ["ModelRunner.run against its alternatives (process CPU us per run, pinned to core 0; median "
                      "paired difference to ModelRunner.run in the same round):", "",
                      "| batch | what | CPU us per run | vs ModelRunner.run |", "| --- | --- | --- | --- |"]
            for b, vs in m["runner"].items():
                for what, r in vs.items():
                    lines.append(f"| {b} | {what} | {r['cpu_us']:,.1f} | {r['paired_diff_us']:+,.1f} |")
            lines.append("")
        w = m.get("wire")
        if w:
            sc = m["scaling"]
            lines += ["At the wire (medians over rounds):", "",
                      "| server (taskset) | session-steps/s | CPU us per call (process / loop thread) | CPU share | "
                      "p50 / p99 ms |", "| --- | --- | --- | --- | --- |"]
            for who, r in w["servers"].items():
                lines.append(f"| {who} | {r['session_steps_per_s']:,.0f} | {r['cpu_us_per_call']:,.0f} / "
                             f"{r['loop_us_per_call']:,.0f} | {r['cpu_share']:.2f} | {r['p50_ms']:.2f} / "
                             f"{r['p99_ms']:.2f} |")
            p = w["parts"]
            lines += ["", "Serial bound per round (1 core): " + "; ".join(
                f"ORT {b['ort']:,.0f}, null {b['null']:,.0f} -> bound {b['bound']:,.0f}, server {b['server_1core']:,.0f} "
                f"= **{b['ratio']:.2f}x**" for b in w["rounds"]) + f". Median ratio {w['ratio_serial_bound']:.2f}x.", "",
                "In CPU time: " + "; ".join(f"(ORT + null) {b['bound_cpu_us']:,.0f} us / server "
                                            f"{b['server_cpu_us']:,.0f} us per call = **{b['ratio_cpu']:.2f}x**"
                                            for b in w["rounds"])
                + f". Median {w['ratio_serial_bound_cpu']:.2f}x.", "",
                *(["The floor server on 1 core (`bench.floor_server`: the model on each group's rows and nothing "
                   "else, the most a server of this design reaches): " + "; ".join(
                       f"{b['floor_1core']:,.0f} = {b['floor_ratio']:.2f}x of the bound" for b in w["rounds"])
                   + f". Median **{w['floor_ratio_serial_bound']:.2f}x**.", ""]
                  if w.get("floor_ratio_serial_bound") else []),
                f"Where the 1-core server's CPU per call goes (medians; in-process parts pinned to core 0): "
                f"**{p['server_cpu_us']:,.0f} us** (loop thread {p['server_loop_us']:,.0f}) = onnxruntime "
                f"{p['ort_cpu_us']:,.0f} + ModelRunner beyond onnxruntime alone (the rows graph's Split and Concat) "
                f"{p['copies_us']:,.0f} + the rest of the "
                f"handler in-process (parse, engine, isfinite checks, slab write, serialize) {p['engine_codec_us']:,.0f} + "
                f"gRPC and asyncio in the server {p['transport_us']:,.0f} (the null server's whole call: "
                f"{p['null_cpu_us']:,.0f}). Beyond ORT + null: {p['excess_us']:,.0f} us.", "",
                f"Model of N free cores from these parts (`bench.serial.scaling`): m = {sc['m_us']:,.0f} us (ORT), "
                f"L = {sc['loop_us']:,.0f} us (the loop's other work per call), Lx = {sc['executor_loop_us']:,.0f} us (the "
                f"loop's work with the model on the executor), O = {sc['other_threads_us']:,.0f} us (other threads), "
                f"intra-op 2 speedup s2 = " + (f"{sc['intra_op_2_speedup']:.2f}" if sc['intra_op_2_speedup'] else "n/a")
                + "; session-steps/s:", "",
                "| cores | model on the loop | executor, one run at a time | intra-op 2 on the loop | runs at once on "
                "N-1 threads |", "| --- | --- | --- | --- | --- |"]
            for r in sc["rows"]:
                i2 = f"{r['intra_op_2']:,.0f}" if r["intra_op_2"] else "-"
                lines.append(f"| {r['cores']} | {r['loop']:,.0f} | {r['executor_one_run']:,.0f} | {i2} | "
                             f"{r['runs_at_once']:,.0f} |")
            if w.get("perf"):
                pf = w["perf"]
                whos = list(pf)
                lines += ["", "perf of the servers on 1 core, round 0 (`bench.perfprof`; us per call = share x that run's "
                          "CPU per call): " + "; ".join(f"{who}: {pf[who]['samples']} samples, "
                                                         f"{pf[who]['cpu_us_per_call']:,.0f} us per call" for who in whos),
                          "", "| where | " + " | ".join(f"{who}: share, us" for who in whos) + " |",
                          "| --- |" + " --- |" * len(whos)]
                keys = list(dict.fromkeys(k for who in whos for k in pf[who]["shares"]))
                for k in keys:
                    shares = [(pf[who]["shares"].get(k, 0.0), pf[who]["cpu_us_per_call"]) for who in whos]
                    cells = [f"{v:.1%}, {v * cpu:,.0f}" for v, cpu in shares]
                    lines.append(f"| {k} | " + " | ".join(cells) + " |")
            lines += ["", "ghz command (1 core): `" + w["servers"]["1 core"]["command"] + "`", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser("serial", __doc__)
    p.add_argument("--units", default="256,128", help="LSTM sizes (2 layers each), comma-separated")
    p.add_argument("--model", type=Path, help="measure this .onnx instead (e.g. models/demo.onnx)")
    p.add_argument("--runner-batches", default=f"1,{GROUP}", help="batch sizes of the ModelRunner comparison")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per ghz run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per in-process measurement")
    p.add_argument("--skip", default="", help="inprocess,runner,wire")
    p.add_argument("--perf", action="store_true", help="perf record the 1-core server in round 0 (bench.perfprof)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serial")
    a = p.parse_args(argv)
    import onnxruntime

    skip = set(filter(None, a.skip.split(",")))
    res = {"command": "python -m bench.serial " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load": os.getloadavg()[0],
           "onnxruntime": onnxruntime.__version__, "concurrency": a.concurrency, "models": {}}
    a.out.mkdir(parents=True, exist_ok=True)
    log = print
    models = [(a.model.stem, a.model)] if a.model else \
        [(f"2 x LSTM({u})", realistic.ensure_model(realistic.cache_path(u), log=log, units=u))
         for u in (int(u) for u in a.units.split(","))]
    for label, path in models:
        m = res["models"][label] = {}
        if "inprocess" not in skip:
            m["inprocess"] = inprocess(path, a.seconds)
            for what, r in m["inprocess"].items():
                log(f"{label} {what:40s} {r['wall_us']:8,.0f} us wall {r['cpu_us']:8,.0f} us CPU per batch "
                    f"{r['session_steps_per_s']:10,.0f} session-steps/s")
        if "runner" not in skip:
            m["runner"] = {b: runner_variants(path, b) for b in (int(b) for b in a.runner_batches.split(","))}
            for b, vs in m["runner"].items():
                for what, r in vs.items():
                    log(f"{label} B={b:<4d} {what:42s} {r['cpu_us']:8,.1f} us CPU (paired diff to ModelRunner.run "
                        f"{r['paired_diff_us']:+.1f})")
        if "wire" not in skip:
            m["wire"] = wire(path, a.duration, a.rounds, a.concurrency, a.out / "raw", log, perf=a.perf)
            m["scaling"] = scaling(m["wire"], m.get("inprocess"))
    res["load_end"] = os.getloadavg()[0]
    (a.out / "serial.json").write_text(json.dumps(res, indent=1, default=str))
    (a.out / "serial.md").write_text(report(res))
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
