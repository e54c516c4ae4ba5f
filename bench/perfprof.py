"""Where a server process's CPU goes, native code included: `perf record` with DWARF call graphs, bucketed.

py-spy (bench.profile) sees Python frames and the GIL holder; onnxruntime, numpy's copies, gRPC's core and the
kernel show here by the function they run in. Each sample goes to the first bucket that its leaf-most
frame that names one falls in (libc, libstdc++ and unknown frames are skipped); numpy samples are named by the numpy
entry point up their stack (a memcpy under `ascontiguousarray` is the state split).

    python -m bench.serial --perf     # records the 1-core server under ghz; bench/results/serial/profile_*.txt
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

_NUMPY_ENTRY = (
    ("state split (np.ascontiguousarray, ModelRunner)", lambda f: "array_ascontiguousarray" in f),
    ("state concat (np.concatenate, ModelRunner)", lambda f: "array_concatenate" in f or "PyArray_Concatenate" in f),
    ("numpy ufuncs and reductions (isfinite checks, the engine's passes)",
     lambda f: "ufunc" in f.lower() or "isfinite" in f or "Reduction" in f),
    ("numpy fancy assignment (slab writes)", lambda f: "array_assign_subscript" in f),
)
BUCKETS = (
    ("onnxruntime", lambda f: "onnxruntime_pybind11_state" in f),
    ("numpy", lambda f: "_multiarray_umath" in f),
    ("protobuf (upb)", lambda f: "_message.abi3" in f),
    ("kernel: page faults", lambda f: "exc_page_fault" in f),
    ("kernel: scheduling", lambda f: re.search(r" (finish_task_switch|__schedule|schedule|_raw_spin_unlock_irq)", f)),
    ("kernel: network and wakeups (send, recv, epoll, eventfd, futex)",
     lambda f: re.search(r"(tcp_|sock_|sendmsg|recvmsg|epoll|eventfd|unix_stream|futex)", f)),
    ("gRPC core (cygrpc)", lambda f: "cygrpc" in f),
    ("Python interpreter (the engine, grpc.aio, asyncio)", lambda f: "libpython" in f or "_asyncio" in f),
)
_GENERIC = ("libc.so", "libstdc++", "[unknown] ([unknown])", "ld-linux", "[vdso]", "libm.so")


def available() -> bool:
    return shutil.which("perf") is not None


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """Start `perf record` of pid for `seconds` (DWARF stacks, 999 Hz); wait() on the returned process."""
    return subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(pid), "-o",
                             str(out), "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _bucket(frames: list[str]) -> str:
    for f in frames:
        if any(g in f for g in _GENERIC) and "onnxruntime" not in f:
            continue
        for name, test in BUCKETS:
            if test(f):
                if name == "numpy":
                    return next((n for g in frames for n, t in _NUMPY_ENTRY if t(g)), "numpy, other")
                return name
    return "other"


def buckets(data: Path) -> tuple[dict[str, float], int]:
    """Share of samples per bucket of a perf.data file, and the number of samples."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso"], capture_output=True,
                          text=True, timeout=600).stdout
    counts: Counter = Counter()
    for sample in text.split("\n\n"):
        frames = [ln.strip() for ln in sample.splitlines() if ln.startswith(("\t", " "))]
        if frames:
            counts[_bucket(frames)] += 1
    n = sum(counts.values()) or 1
    return {k: v / n for k, v in counts.most_common()}, n
