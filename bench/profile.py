"""py-spy (pinned) on the running server: where its CPU goes under a load, as a text top-N."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

PY_SPY_VERSION = "0.4.3"
_NATIVE = re.compile(r"^0x[0-9a-f]+ \((?P<lib>[^)]*)\)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def ensure_py_spy() -> Path:
    """py-spy beside this interpreter, else `pip install py-spy==PINNED` into it."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists() and not shutil.which("py-spy"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"py-spy=={PY_SPY_VERSION}"], check=True)
    return exe if exe.exists() else Path(shutil.which("py-spy"))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of every thread of `pid` and its children, by thread name."""
    from .procs import descendants

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    tasks = []
    for p in descendants(pid):
        try:
            tasks += list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            pass
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Fraction of one core each thread (name) used between two thread_cpu() readings."""
    shares = {n: (after.get(n, 0.0) - before.get(n, 0.0)) / seconds for n in after}
    return {n: round(v, 3) for n, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v > 0.005}


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.CompletedProcess:
    """Collapsed stacks of the thread holding the GIL (with native frames) into `out`.

    --gil: the server is one event loop, so what holds the GIL is what bounds it; onnxruntime runs
    with the GIL released and shows in the per-thread CPU (thread_cpu) instead.
    """
    cmd = [str(ensure_py_spy()), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
           "--rate", str(rate), "--format", "raw", "--threads", "--gil", "--native", "--subprocesses",
           "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0 or not out.exists():
        # --native needs unwinding support; fall back to Python frames only.
        cmd.remove("--native")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _frame(raw: str) -> tuple[str, str]:
    """(display name, area) of one collapsed-stack frame; native frames collapse to their library."""
    m = _NATIVE.match(raw)
    if m:
        lib = m.group("lib").split("/")[-1].split(".cpython")[0].split(".so")[0]
        return f"[native {lib}]", f"native:{lib}"
    m = _FRAME.match(raw)
    if not m:
        return raw, "other"
    file = m.group("file")
    name = f"{m.group('func')} ({file}:{m.group('line')})" if m.group("line") else f"{m.group('func')} ({file})"
    if ".so" in file:
        area = "native:" + file.split("/")[-1].split(".cpython")[0].split(".so")[0]
    elif file.startswith("server/"):
        area = "statestream server"
    elif file.endswith(".c"):
        area = "CPython (C)"
    else:
        area = file.split("/")[0]
    return name, area


# Buckets of GIL time, first match wins: (name, test on (owner frame, whole stack)). The owner is the
# deepest frame that is not generic runtime (libc, libpython, CPython headers): a sendmsg under cygrpc
# is grpc's, a malloc under numpy is numpy's.
BUCKETS = (
    ("executor handoff (run_in_executor, ThreadPoolExecutor.submit)",
     lambda own, st: "ThreadPoolExecutor.submit" in st or "run_in_executor" in st),
    ("onnxruntime (with the GIL)", lambda own, st: "onnxruntime" in own),
    ("garbage collector", lambda own, st: "gc_collect" in st),
    ("protobuf (upb)", lambda own, st: "_message" in own),
    ("prometheus_client", lambda own, st: "prometheus_client" in own),
    ("numpy", lambda own, st: "numpy" in own or "_multiarray" in own),
    ("statestream server (Python)", lambda own, st: "(server/" in own),
    ("grpc (cygrpc, with its sendmsg/eventfd syscalls)", lambda own, st: "cygrpc" in own),
    ("asyncio event loop", lambda own, st: "asyncio" in own or "selectors" in own or "_asynciomodule" in own),
)
_RUNTIME = ("libc.so", "libpython", "object.h", "abstract.h", "(<", "libstdc++", "[vdso]", "ceval", "call.c")


def _owner(frames: list[str]) -> str:
    for f in reversed(frames):
        if not any(r in f for r in _RUNTIME):
            return f
    return frames[-1] if frames else ""


def buckets(raw_path: Path) -> dict[str, float]:
    """Share of GIL-holder samples per bucket (BUCKETS, then 'other')."""
    counts: Counter = Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        own = _owner(stack.split(";"))
        name = next((b for b, test in BUCKETS if test(own, stack)), "other (CPython, threading, ...)")
        counts[name] += int(count)
    n = sum(counts.values()) or 1
    return {k: round(v / n, 3) for k, v in counts.most_common()}


def summarize(raw_path: Path, title: str, top: int = 25, seconds: float = 0.0, rate: int = 200) -> str:
    """A text report: samples per thread, per area (leaf frame), top functions by self and total samples."""
    threads: Counter = Counter()
    self_: Counter = Counter()
    total: Counter = Counter()
    areas: Counter = Counter()
    per_thread_self: dict[str, Counter] = defaultdict(Counter)
    n = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        proc = ""
        if frames[0].startswith("process "):  # --subprocesses: "process PID:\"cmdline\"" first
            proc = frames.pop(0).split(":")[0].replace("process ", "pid ") + " "
        thread = frames.pop(0).split(":")[-1].strip() if frames and frames[0].startswith("thread") else "?"
        thread = proc + thread
        frames = [f for f in frames if not f.startswith("0x") or "(" in f]
        named = [_frame(f) for f in frames]
        # Native frames above the last Python frame are the leaf's C work; keep the deepest Python caller too.
        leaf, area = named[-1] if named else ("?", "other")
        n += c
        threads[thread] += c
        self_[leaf] += c
        per_thread_self[thread][leaf] += c
        areas[area] += c
        for name in {nm for nm, _ in named if not nm.startswith("[native")}:
            total[name] += c
    if n == 0:
        return f"# {title}\n\nno samples\n"
    lines = [f"# {title}", "", f"{n} samples of the GIL holder (py-spy --gil --native); "
             "native frames without symbols are collapsed by library"]
    if seconds:
        lines += [f"GIL held in {100 * n / (seconds * rate):.0f}% of {seconds * rate:.0f} sample ticks"]
    lines += ["", "## GIL time by kind of work", ""]
    lines += [f"{100 * v:6.1f}%  {k}" for k, v in buckets(raw_path).items()]
    lines += ["", "## samples per thread"]
    lines += [f"{c:7d} {100 * c / n:5.1f}%  {t}" for t, c in threads.most_common()]
    lines += ["", "## where the leaf frame is (area)"]
    lines += [f"{c:7d} {100 * c / n:5.1f}%  {a}" for a, c in areas.most_common(15)]
    lines += ["", f"## top {top} by self samples (leaf frame; native code collapsed by library)"]
    lines += [f"{c:7d} {100 * c / n:5.1f}%  {f}" for f, c in self_.most_common(top)]
    lines += ["", f"## top {top} functions by total samples (on the stack; frames on >= 90% of stacks left out)"]
    lines += [f"{c:7d} {100 * c / n:5.1f}%  {f}" for f, c in
              [(f, c) for f, c in total.most_common() if c < 0.9 * n][:top]]
    for t, cnt in per_thread_self.items():
        lines += ["", f"## thread {t}: top 10 by self samples"]
        lines += [f"{c:7d} {100 * c / n:5.1f}%  {f}" for f, c in cnt.most_common(10)]
    return "\n".join(lines) + "\n"
