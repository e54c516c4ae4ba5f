"""The results of one bench run: targets, results.json, results.md (the printed table) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from .targets import HALF_LOAD_P99_MS, floor_ratio, targets, targets_18


def _n(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (v != v):
        return "-"
    return f"{v:,.{digits}f}"


def _r(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _ceil(r: dict, who: str, field: str, digits: int = 0) -> str:
    return _n(r[who][field], digits) if who in r else "-"


def _lat(r: dict, who: str) -> str:
    """p50 / p99 ms of one run in a row (the server's or a ceiling's)."""
    return f"{r[who]['p50_ms']:.2f} / {r[who]['p99_ms']:.2f}" if r.get(who) else "-"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _cpu(d: dict) -> str:
    c = d.get("cpu")
    return "-" if not c else f"{c['process']:.2f} / {c['main_thread']:.2f} / {c['ghz']:.2f}"


def _run_us(row: dict, ort_us: dict) -> str:
    us, b = row["server"].get("compute_us_per_batch"), row["server"].get("mean_batch")
    if us is None:
        return "-"
    alone = ort_us.get(round(b)) if b else None
    return f"{us:,.0f}" + (f" ({alone:,.0f})" if alone else "")


CEILINGS = ("null: pre-serialized responses, requests never parsed (the tightest ceiling); echo: parses the request "
            "and builds the response, no model; floor: the echo plus the model run on each session's state row and "
            "nothing else (bench.floor_server: no exactly-once, checks, deadlines or store; concurrent streams' steps "
            "share a run), the most a server of this design reaches with this model, so floor / null bounds server "
            "/ null.")


CEILING_STYLES = (("null", "s--"), ("echo", "x:"), ("floor", "v-."))


def _floor(r: dict, field: str) -> list[str]:
    """The floor server's columns of a row: its rate, latency, its ratio to the null server, the server's to it."""
    if "floor" not in r:
        return ["-"] * 4
    return [_n(r["floor"][field]), _lat(r, "floor"), _r(floor_ratio(r, field)), _r(r.get("ratio_floor"))]


def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [f"# statestream bench: {m['date']}", "",
             f"Model `{m['model']}` ({m['model_shape']}), {m['cpus']} CPUs, load {m['loadavg']} at start. "
             f"ghz {m['ghz_version']} with `--cpus={m['ghz_cpus']}`, one connection, {m['duration']:g} s per run. "
             f"Server: `{m['server_cmd']}`. Ratios are to ceilings measured in this same run."
             + (f" Each row: {m['rounds']} rounds, the ceilings then the server in each; the median run of each, "
                "and each ratio the median of the rounds' own ratios." if m.get("rounds", 1) > 1 else ""), ""]

    for title, key in (("Targets (issue 12)", "targets"), ("Targets (issue 18: 1, 2, 3 and 6)", "targets_18")):
        lines += [f"## {title}", ""]
        lines += _table(["target", "wanted", "measured", "result", "margin", "note"],
                        [[t["target"], t["wanted"], t["measured"], f"**{t['result']}**", t["margin"], t["note"]]
                         for t in res.get(key, [])])
        lines += [""]
    lines += ["Issue 18's ratios to the null server carry their bound in the note: the floor server's ratio in this "
              "run (the model on each session's state row and nothing else); a target above it is out of reach "
              "for any server of this design on this machine."]

    tr = res.get("transport", [])
    if tr:
        lines += ["", "## Steps: server vs the null server (transport ceiling), the echo and the floor server, msgs/s",
                  "", f"{CEILINGS} Requests carry raw float32 bytes (`input_raw`, "
                  f"`raw_output`). StreamSteps: each ghz call is one stream of {m['stream_count']} steps; msgs/s "
                  "counts steps, latency is of the whole stream call.", ""]
        lines += _table(["scenario", "c", "server msgs/s", "server p50 / p99 ms", "null msgs/s", "null p50 / p99 ms",
                         "server / null", "echo msgs/s", "echo p50 / p99 ms", "server / echo", "floor msgs/s",
                         "floor p50 / p99 ms", "floor / null", "server / floor", "mean batch",
                         "CPU server / loop / ghz", "CPU null / loop / ghz"],
                        [[r["scenario"], str(r["concurrency"]), _n(r["server"]["msgs_per_s"]), _lat(r, "server"),
                          _ceil(r, "null", "msgs_per_s"), _lat(r, "null"), _r(r.get("ratio_null")),
                          _ceil(r, "echo", "msgs_per_s"), _lat(r, "echo"), _r(r.get("ratio_echo")),
                          *_floor(r, "msgs_per_s"),
                          _n(r["server"].get("mean_batch"), 1), _cpu(r["server"]), _cpu(r.get("null", {}))]
                         for r in tr])
        lines += ["", "CPU: shares of one core during the run: the whole server process, its main thread (the event "
                      "loop) and the ghz client; a loop near 1.0 is saturated."]
    fr = res.get("frames", [])
    ort_us = {o["batch"]: o["us_per_run"] for o in res.get("ort", [])}
    for rows, title in ((fr, "Frames (StepFrame)"), (res.get("groups", []), "Session groups (StepGroup)")):
        if not rows:
            continue
        lines += ["", f"## {title}: session-steps/s against the null, echo and floor servers and in-process ORT", "",
                  CEILINGS, ""]
        lines += _table(["size", "c", "calls/s", "server session-steps/s", "p50 ms", "p99 ms",
                         "null session-steps/s", "null p50 / p99 ms", "server / null", "echo session-steps/s",
                         "echo p50 / p99 ms", "server / echo", "floor session-steps/s", "floor p50 / p99 ms",
                         "floor / null", "server / floor",
                         "ORT session-steps/s (same B)", "server / ORT", "mean batch", "model run us (ORT alone)",
                         "model busy", "CPU server / loop / ghz"],
                        [[str(r["size"]), str(r["concurrency"]), _n(r["server"]["frames_per_s"]),
                          _n(r["server"]["session_steps_per_s"]), _n(r["server"]["p50_ms"], 2),
                          _n(r["server"]["p99_ms"], 2), _ceil(r, "null", "session_steps_per_s"), _lat(r, "null"),
                          _r(r.get("ratio_null")), _ceil(r, "echo", "session_steps_per_s"), _lat(r, "echo"),
                          _r(r.get("ratio_echo")), *_floor(r, "session_steps_per_s"),
                          _n(r.get("ort_session_steps_per_s")), _r(r.get("ratio_ort")),
                          _n(r["server"].get("mean_batch"), 1), _run_us(r, ort_us),
                          "-" if r["server"].get("model_busy") is None else f"{100 * r['server']['model_busy']:.0f}%",
                          _cpu(r["server"])]
                         for r in rows])
    if fr:
        lines += ["", "model run us: the server's mean time per model run from its compute histogram (batches of "
                      "`mean batch`; as the server times it, from the run's start to its apply: the gather, the model, "
                      "the checks and the apply, and for a run on the executor the thread hand-off and the loop's "
                      "resumption) and, in brackets, in-process ORT at that batch size, back to back; at low "
                      "concurrency the core idles between calls and a model run after an idle gap costs more "
                      "(`python -m bench.idle`); model busy: share of wall time in model runs."]
    hl = res.get("half_load")
    if hl:
        lines += ["", "## At half the maximum load", "",
                  f"Max unary Step throughput this run: {hl['max_msgs_per_s']:,.0f} msgs/s (c={hl['max_concurrency']}); "
                  f"ghz `--rps={hl['rps']}` with c={hl['concurrency']}."]
        st = hl.get("stream")
        if st:
            lines += [f"Max StreamSteps throughput: {st['max_msgs_per_s']:,.0f} steps/s (c={st['max_concurrency']}); "
                      f"ghz `--rps={st['rps']}` stream calls of {m['stream_count']} steps with c={st['concurrency']} "
                      "(a stream's latency is of the whole call)."]
        rows = []
        for what, part in (("one step", hl), ("a stream", st or {})):
            for who in ("server", "null", "echo", "floor"):
                r = part.get(who)
                if r:
                    rows.append([what, who, _n(r["msgs_per_s"]), _n(r["p50_ms"], 2), _n(r["p90_ms"], 2),
                                 _n(r["p99_ms"], 2), f"{r['p99_ms'] / r['p50_ms']:.1f}x" if r["p50_ms"] else "-"])
        lines += [""] + _table(["call", "target", "steps/s", "p50 ms", "p90 ms", "p99 ms", "p99 / p50"], rows)

    real = res.get("realistic") or {}
    if real.get("rows"):
        lines += ["", f"## Realistic model: {real['shape']}, server vs onnxruntime in-process", "",
                  f"`{real['model']}`, exported in the bench by statestream.export.export_model. {real['how']}. "
                  "threads = `--intra-op-threads` (server) = intra_op_num_threads (ORT).", ""]
        lines += _table(["threads", "batch", "RPC", "server session-steps/s", "ORT session-steps/s", "server / ORT",
                         "ORT us per run", "server mean batch", "server p50 ms", "server p99 ms", "CPU server / loop / ghz"],
                        [[str(r["threads"]), str(r["batch"]), r.get("rpc", "-"), _n(r["server_session_steps_per_s"]),
                          _n(r["ort_session_steps_per_s"]), _r(r["ratio_ort"]), _n(r["ort_us_per_run"]),
                          _n(r["server"].get("mean_batch"), 1), _n(r["server"]["p50_ms"], 2),
                          _n(r["server"]["p99_ms"], 2), _cpu(r["server"])] for r in real["rows"]])
        by = {(r["threads"], r["batch"], r.get("rpc")): r["server_session_steps_per_s"] for r in real["rows"]}
        gains = [f"B={b} {rpc}: {by[(2, b, rpc)] / by[(1, b, rpc)]:.2f}x" for (t, b, rpc) in by
                 if t == 1 and (2, b, rpc) in by and by[(1, b, rpc)]]
        if gains:
            lines += ["", "What `--intra-op-threads 2` buys the server on this 2-core machine (server session-steps/s, "
                          "2 threads / 1 thread): " + ", ".join(gains) + "."]
    elif real:
        lines += ["", f"Realistic model: {real.get('skipped') or real.get('error')}"]

    tri = res.get("triton")
    if tri:
        lines += ["", "## Triton protocol (perf_analyzer), beside ghz on statestream.v1", "",
                  f"{tri['version']}, `inference.GRPCInferenceService/ModelInfer` (unary) and `ModelStreamInfer` "
                  f"(streaming) on the same server: sequences of {tri['sequence_length']} one-timestep requests "
                  "(start, middle, end), concurrency = sequences in flight. ghz: unary `Step` and `StreamSteps` at the "
                  "same concurrency, from the table above.", ""]
        lines += _table(["mode", "c", "infer/s", "p50 ms", "p90 ms", "p99 ms", "ghz statestream.v1 msgs/s",
                         "ghz p99 ms", "Triton / ghz"],
                        [[r["mode"], str(r["concurrency"]), _n(r.get("infer_per_s")), _n(r.get("p50_ms"), 2),
                          _n(r.get("p90_ms"), 2), _n(r.get("p99_ms"), 2), _n(r.get("ghz_msgs_per_s")),
                          _n(r.get("ghz_p99_ms"), 2), _r(r.get("ratio_ghz"))] for r in tri["rows"]])
        lines += [f"- {r['mode']} c={r['concurrency']}: {r['error']}" for r in tri["rows"] if "error" in r]

    lines += ["", "## Compute ceilings", ""]
    ort = res.get("ort", [])
    if ort:
        lines += _table(["onnxruntime in-process, batch B", "us per run", "session-steps/s",
                         "server's ModelRunner.run in-process, us per run"],
                        [[str(o["batch"]), _n(o["us_per_run"], 1), _n(o["session_steps_per_s"]),
                          _n(o.get("model_runner_us_per_run"), 1)] for o in ort])
    k = res.get("keras") or {}
    if "steps_per_s" in k:
        lines += ["", f"Keras today ({k['method']}): **{k['steps_per_s']:,.1f} steps/s**, p50 {k['p50_ms']:.1f} ms, "
                      f"p99 {k['p99_ms']:.1f} ms over {k['steps']} steps. Model: {k['how']}."]
        best = max((r["server"]["session_steps_per_s"] for r in fr), default=0)
        if best:
            lines += [f"The server's best frame throughput is {best / k['steps_per_s']:,.0f}x that."]
    elif k:
        lines += ["", f"Keras: {k.get('skipped') or k.get('error')}"]

    mem = res.get("memory") or {}
    if mem.get("points"):
        lines += ["", "## Memory of idle sessions", "", mem["method"], ""]
        lines += _table(["sessions", "RSS MB", "bytes/session (over empty)", "open seconds"],
                        [[_n(p["sessions"]), _n(p["rss_bytes"] / 1e6, 1), _n(p.get("bytes_per_session")),
                          _n(p["open_seconds"], 1)] for p in mem["points"]])
    elif mem:
        lines += ["", f"Memory: {mem.get('skipped') or mem.get('error')}"]

    prof = res.get("profiles") or []
    if prof:
        lines += ["", "## Profiles (py-spy)", ""]
        for p in prof:
            if "error" in p:
                lines += [f"- {p['name']}: {p['error']}"]
                continue
            cpu = ", ".join(f"{n} {100 * v:.0f}%" for n, v in list(p["cpu_share"].items())[:5])
            kinds = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(p.get("gil_by_kind", {}).items())[:6])
            lines += [f"- **{p['name']}** ({p['load']}): `{p['file']}`; CPU per thread (share of one core): {cpu}; "
                      f"GIL held {100 * p['gil_share']:.0f}% of the time.",
                      f"  - GIL time by kind: {kinds}",
                      "  - top self: " + "; ".join(f"{t['frame']} {t['percent']:.0f}%" for t in p["top"][:6])]
    lines += ["", "## ghz commands (copy and change the target)", ""]
    lines += ["```"] + [f"# {k}\n{v}" for k, v in res.get("commands", {}).items()] + ["```"]
    lines += ["", "Plots: throughput_vs_concurrency.png, latency_vs_concurrency.png, throughput_vs_frame_size.png, "
                  "latency_vs_frame_size.png. Raw ghz reports: raw/ (not committed)."]
    notes = list(m.get("notes", []))
    for r in tr + fr:
        what = f"{r['scenario']} c={r['concurrency']}" if "scenario" in r else f"frames of {r['size']} c={r['concurrency']}"
        for who in ("server", "null", "echo", "floor"):
            if who in r and r[who].get("errors"):
                notes.append(f"{what}: {who} answered {r[who]['errors']:,} calls with errors "
                             f"(e.g. {r[who].get('error_sample') or r[who].get('statuses')}); figures count OK calls only")
        if r["server"].get("inband_errors_suspected"):
            notes.append(f"{what}: the server applied fewer steps than ghz's OK calls carry (in-band errors); "
                         "the table counts applied steps only")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _xticks(ax, values) -> None:
    ax.set_xticks(sorted(set(values)))
    ax.set_xticklabels([str(v) for v in sorted(set(values))])


def _finish(plt, fig, ax, path: Path, xs, xlabel: str, ylabel: str, title: str, *, logy: bool = False,
            legend: dict | None = None) -> str:
    """Common axes (log2 x with the measured ticks), labels, legend; save the PNG and close it."""
    ax.set_xscale("log", base=2)
    _xticks(ax, xs)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both" if logy else "major")
    ax.legend(**(legend or {"fontsize": 8}))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def plots(res: dict, out: Path) -> list[str]:
    """PNG plots of throughput and p50/p99 latency against concurrency and against frame size."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", message="Data has no positive values")
    import matplotlib.pyplot as plt

    made = []
    tr = res.get("transport", [])
    if tr:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for scen, color in (("unary", "tab:blue"), ("stream", "tab:green")):
            rows = [r for r in tr if r["scenario"] == scen]
            if not rows:
                continue
            c = [r["concurrency"] for r in rows]
            ax.plot(c, [r["server"]["msgs_per_s"] for r in rows], "o-", color=color, label=f"{scen}: server")
            for who, style in CEILING_STYLES:
                if all(who in r for r in rows):
                    ax.plot(c, [r[who]["msgs_per_s"] for r in rows], style, color=color, alpha=0.6,
                            label=f"{scen}: {who} (ceiling)")
        made.append(_finish(plt, fig, ax, out / "throughput_vs_concurrency.png", [r["concurrency"] for r in tr],
                            "ghz concurrency", "steps (messages) per second",
                            "Step / StreamSteps throughput vs concurrency"))

        rows = [r for r in tr if r["scenario"] == "unary"]
        if rows:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            c = [r["concurrency"] for r in rows]
            for who, style in (("server", "-"), ("null", "--")):
                ax.plot(c, [r[who]["p50_ms"] for r in rows], "o" + style, color="tab:blue", label=f"{who} p50")
                ax.plot(c, [r[who]["p99_ms"] for r in rows], "^" + style, color="tab:red", label=f"{who} p99")
            hl = res.get("half_load")
            if hl and hl.get("server"):
                ax.axhline(HALF_LOAD_P99_MS, color="gray", lw=0.8, ls=":", label="2 ms (p99 target at half load)")
            made.append(_finish(plt, fig, ax, out / "latency_vs_concurrency.png", c, "ghz concurrency",
                                "latency of one unary Step (ms)", "Unary Step latency vs concurrency", logy=True))

    fr = res.get("frames", [])
    if fr:
        sizes = sorted({r["size"] for r in fr})
        concs = sorted({r["concurrency"] for r in fr})
        cmap = plt.get_cmap("viridis")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, c in enumerate(concs):
            rows = sorted((r for r in fr if r["concurrency"] == c), key=lambda r: r["size"])
            color = cmap(i / max(1, len(concs) - 1))
            ax.plot([r["size"] for r in rows], [r["server"]["session_steps_per_s"] for r in rows], "o-", color=color,
                    label=f"server c={c}")
        for who, style in CEILING_STYLES:
            if all(who in r for r in fr):
                best = [max(r[who]["session_steps_per_s"] for r in fr if r["size"] == s) for s in sizes]
                ax.plot(sizes, best, style, color="gray", label=f"{who}, best c (ceiling)")
        ort = {o["batch"]: o["session_steps_per_s"] for o in res.get("ort", [])}
        if all(s in ort for s in sizes):
            ax.plot(sizes, [ort[s] for s in sizes], "k:", marker="d", label="onnxruntime in-process (compute ceiling)")
        made.append(_finish(plt, fig, ax, out / "throughput_vs_frame_size.png", sizes,
                            "sessions per frame (= ORT batch size)", "session-steps per second",
                            "StepFrame throughput vs frame size", logy=True, legend={"fontsize": 7}))

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, c in enumerate(concs):
            rows = sorted((r for r in fr if r["concurrency"] == c), key=lambda r: r["size"])
            color = cmap(i / max(1, len(concs) - 1))
            ax.plot([r["size"] for r in rows], [r["server"]["p50_ms"] for r in rows], "o-", color=color,
                    label=f"c={c} p50")
            ax.plot([r["size"] for r in rows], [r["server"]["p99_ms"] for r in rows], "^--", color=color,
                    label=f"c={c} p99")
        made.append(_finish(plt, fig, ax, out / "latency_vs_frame_size.png", sizes, "sessions per frame",
                            "latency of one StepFrame (ms)", "StepFrame latency vs frame size (server)", logy=True,
                            legend={"fontsize": 7, "ncol": 2}))
    return made


def write(res: dict, out: Path) -> str:
    """Targets into `res`, then results.json, results.md and the plots into `out`; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    res["targets"] = targets(res)
    res["targets_18"] = targets_18(res)
    res["plots"] = plots(res, out)
    md = markdown(res)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return md
