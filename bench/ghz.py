"""ghz (pinned) located or installed into .tools/bin, run with --format json, its report parsed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .procs import ROOT

GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
PROTO = ROOT / "proto" / "statestream" / "v1" / "statestream.proto"
SERVICE = "statestream.v1.StateStreamService"
INSTALL_TOOLS = ROOT / "scripts" / "install-tools.sh"


def pinned_version() -> str:
    """The ghz version scripts/install-tools.sh pins (`make tools`), so bench and tests use the same one."""
    try:
        m = re.search(r"^GHZ_VERSION=(\S+)", INSTALL_TOOLS.read_text(), re.M)
    except OSError:
        m = None
    return m.group(1) if m else "v0.121.0"


GHZ_VERSION = pinned_version()


def _go() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


def binary_version(path: Path) -> str:
    """The module version a Go binary was built from (`go version -m`), or "unknown"."""
    try:
        out = subprocess.run([_go(), "version", "-m", str(path)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "mod":
            return f[2]
    return "unknown"


def ensure_ghz() -> Path:
    """.tools/bin/ghz at the pinned version (`make tools` puts it there), else `go install` it there now."""
    path = ROOT / ".tools" / "bin" / "ghz"
    if path.exists() and binary_version(path) == GHZ_VERSION:
        return path
    env = {**os.environ, "GOBIN": str(path.parent)}
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([_go(), "install", f"{GHZ_MODULE}@{GHZ_VERSION}"], check=True, env=env, cwd=ROOT)
    return path


@dataclass
class GhzResult:
    """One ghz run, reduced: OK calls per second and latency percentiles (ms) of OK calls."""

    ok: int
    errors: int
    seconds: float
    calls_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    statuses: dict = field(default_factory=dict)
    error_sample: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def parse_report(report: dict) -> GhzResult:
    """Reduce ghz's JSON report (durations are nanoseconds)."""
    statuses = dict(report.get("statusCodeDistribution") or {})
    ok = int(statuses.get("OK", 0))
    total = sum(statuses.values())
    seconds = report["total"] / 1e9
    pct = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or [] if d}
    errs = report.get("errorDistribution") or {}
    return GhzResult(ok=ok, errors=total - ok, seconds=seconds, calls_per_s=ok / seconds if seconds else 0.0,
                     p50_ms=pct.get(50, 0.0), p90_ms=pct.get(90, 0.0), p99_ms=pct.get(99, 0.0),
                     avg_ms=report.get("average", 0) / 1e6, statuses=statuses,
                     error_sample=next(iter(errs), "")[:300])


def command(ghz: Path, target: str, method: str, data_file: Path, *, concurrency: int, duration: float | None = None,
            total: int | None = None, rps: float | None = None, stream_count: int | None = None,
            cpus: int | None = None, out: Path | None = None) -> list[str]:
    """The ghz command line for one run (what a user can copy)."""
    cmd = [str(ghz), "--insecure", f"--proto={PROTO.relative_to(ROOT)}", f"--call={SERVICE}/{method}",
           f"--data-file={data_file}", f"--concurrency={concurrency}", "--connections=1"]
    if duration is not None:
        cmd += [f"--duration={duration:g}s", "--duration-stop=ignore"]
    if total is not None:
        cmd += [f"--total={total}"]
    if rps:
        cmd += [f"--rps={int(rps)}"]
    if stream_count:
        cmd += [f"--stream-call-count={stream_count}"]
    if cpus:
        cmd += [f"--cpus={cpus}"]
    if out is not None:
        cmd += ["--format=json", f"--output={out}"]
    return cmd + [target]


def run(cmd: list[str], out: Path, timeout: float = 120) -> GhzResult:
    """Run a command built with `out`; returns its parsed report."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"ghz failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    with open(out) as f:
        report = json.load(f)
    report.pop("details", None)  # one entry per call: megabytes we never read
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    return parse_report(report)
