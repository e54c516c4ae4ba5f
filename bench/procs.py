"""Server processes for the bench: the real statestream-server and the echo server, on loopback ports."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from tests.support.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port that was free a moment ago (for --metrics-port, which has no 'pick one')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """pid and all its live descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _vmrss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Proc(ServerProcess):
    """A server subprocess of the bench (tests.support.process), plus the RSS of its process tree."""

    def __init__(self, name: str, cmd: list[str], timeout: float = 60):
        super().__init__(cmd, name=name, cwd=ROOT, timeout=timeout)

    def rss_bytes(self) -> int:
        """VmRSS of the process and every descendant (worker processes, if any), from /proc."""
        return sum(_vmrss(pid) for pid in descendants(self.pid))


def statestream_server(model: Path, *args: str, metrics_port: int = 0) -> Proc:
    """The real server on a free port (and a Prometheus port when metrics_port is given)."""
    cmd = [sys.executable, "-m", "statestream.server.app.main", "--models", str(model), "--host", "127.0.0.1",
           "--port", "0", "--metrics-port", str(metrics_port), "--log-level", "WARNING", *args]
    return Proc("statestream-server", cmd)


def echo_server(features: int, output_size: int) -> Proc:
    """The transport ceiling: the same service and message shapes, no model."""
    cmd = [sys.executable, "-m", "bench.echo_server", "--port", "0", "--features", str(features),
           "--output-size", str(output_size)]
    return Proc("echo-server", cmd)


def floor_server(model: Path) -> Proc:
    """The model's floor: the echo server plus the model run on each session's state row (bench.floor_server)."""
    return Proc("floor-server", [sys.executable, "-m", "bench.floor_server", "--port", "0", "--model", str(model)])


def null_server(responses: Path) -> Proc:
    """The tightest transport ceiling: pre-serialized responses, requests never parsed (bench.null_server)."""
    cmd = [sys.executable, "-m", "bench.null_server", "--port", "0", "--responses", str(responses)]
    return Proc("null-server", cmd)
