"""Triton's perf_analyzer on the server's Triton protocol (sequences of 20), beside ghz on statestream.v1."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

from .procs import ROOT, Proc

INSTALL = ROOT / "scripts" / "install-perf-analyzer.sh"
PERF_ANALYZER = ROOT / ".tools" / "bin" / "perf_analyzer"  # `make tools` runs INSTALL
SEQUENCE_LENGTH = 20
MODES = {"unary": [], "streaming": ["--streaming"]}
GHZ_SCENARIO = {"unary": "unary", "streaming": "stream"}  # the ghz scenario each mode stands beside


def command(target: str, model: str, features: int, mode: str, concurrency: int, *, window_ms: int = 0,
            requests: int = 0, first_id: int = 1) -> list[str]:
    """perf_analyzer on Triton's gRPC protocol: one timestep per request, sequences of SEQUENCE_LENGTH.

    `window_ms`: time windows, three in a row within 100% of each other count as stable (this shared machine
    is noisy, and a run that never stabilizes reports nothing); for measuring. `requests`: a fixed number of requests, always
    completes but is timed in whole seconds; for a smoke run."""
    measure = ["--request-count", str(requests)] if requests else \
        ["--measurement-interval", str(window_ms), "--stability-percentage", "100", "--max-trials", "10"]
    return [str(PERF_ANALYZER), "-m", model, "-u", target, "-i", "grpc", "--shape", f"input:1,{features}",
            "--sequence-length", str(SEQUENCE_LENGTH), "--sequence-id-range", f"{first_id}:{first_id + 10**6}",
            "--concurrency-range", str(concurrency), *measure, *MODES[mode]]


def run(plan, server: Proc, transport_rows: list[dict], log) -> dict:
    """Every mode at every concurrency of the plan; each row carries ghz's msgs/s at the same concurrency."""
    if not PERF_ANALYZER.exists():
        raise RuntimeError(f"{PERF_ANALYZER} is missing: run `make tools`")
    ghz = {(r["scenario"], r["concurrency"]): r["server"] for r in transport_rows}
    window_ms = int(1000 * plan.duration)
    rows = []
    for mode in MODES:
        for i, c in enumerate(plan.concurrencies):
            out = plan.raw / f"perf_analyzer-{mode}-c{c}.csv"
            cmd = command(server.target, plan.model, plan.features, mode, c, window_ms=window_ms,
                          first_id=1 + i * 10**7)
            r = subprocess.run(cmd + ["-f", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
            g = ghz.get((GHZ_SCENARIO[mode], c)) or {}
            row = {"mode": mode, "concurrency": c, "window_ms": window_ms, "ghz_msgs_per_s": g.get("msgs_per_s"),
                   "ghz_p99_ms": g.get("p99_ms")}
            rows.append(row)
            if r.returncode != 0:  # one point lost (say, never stable), not the part
                row["error"] = f"perf_analyzer exited {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"
                log(f"perf_analyzer {mode:9s} c={c:<3d} FAILED: {row['error'][-200:]}")
                continue
            row.update(parse(out))
            row["ratio_ghz"] = row["infer_per_s"] / g["msgs_per_s"] if g.get("msgs_per_s") else None
            plan.commands.setdefault(f"Triton protocol, {mode} (perf_analyzer)", " ".join(
                cmd).replace(str(ROOT) + "/", "").replace(server.target, "127.0.0.1:50051"))
            log(f"perf_analyzer {mode:9s} c={c:<3d} {row['infer_per_s']:9,.0f} infer/s p99 {row['p99_ms']:7.2f} ms | "
                f"ghz statestream.v1 {GHZ_SCENARIO[mode]} {row['ghz_msgs_per_s'] or 0:9,.0f} msgs/s")
    return {"rows": rows, "sequence_length": SEQUENCE_LENGTH, "version": _version()}


def parse(path: Path) -> dict:
    """perf_analyzer's -f CSV: infer/s and latency percentiles (us in the file, ms here)."""
    with open(path) as f:
        (row,) = list(csv.DictReader(f))
    return {"infer_per_s": float(row["Inferences/Second"]),
            **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1000 for p in (50, 90, 99)}}


def _version() -> str:
    """The pinned wheel version (scripts/install-perf-analyzer.sh) and what the binary says of itself."""
    m = re.search(r"^PERF_ANALYZER_VERSION=(\S+)", INSTALL.read_text(), re.M)
    r = subprocess.run([str(PERF_ANALYZER), "--version"], capture_output=True, text=True, timeout=30)
    return f"perf_analyzer {m.group(1) if m else '?'} ({(r.stdout + r.stderr).strip() or 'no --version'})"
