"""Server processes for the bench: the real statestream-server and the echo server, on loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


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


class Proc:
    """A server subprocess that prints `... listening on HOST:PORT` and answers grpc.health.v1."""

    def __init__(self, name: str, cmd: list[str], timeout: float = 60):
        self.name = name
        self.cmd = cmd
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.lines: list[str] = []
        self._seen = threading.Event()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "Proc":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=ROOT)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._seen.wait(self.timeout) or not self.port:
            self.kill()
            raise RuntimeError(f"{self.name} did not start:\n{self.output()}")
        self._wait_serving()
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if len(self.lines) < 2000:
                self.lines.append(line)
            m = _LISTENING.search(line)
            if m and not self.port:
                self.port = int(m.group(2))
                self._seen.set()
        self._seen.set()

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + self.timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} never became SERVING:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.lines)

    def rss_bytes(self) -> int:
        """VmRSS of the process and every descendant (worker processes, if any), from /proc."""
        return sum(_vmrss(pid) for pid in descendants(self.pid))

    def stop(self, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "Proc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def statestream_server(model: Path, *args: str, metrics_port: int = 0) -> Proc:
    """The real server on a free port (and a Prometheus port when metrics_port is given)."""
    cmd = [sys.executable, "-m", "statestream.server.main", "--models", str(model), "--host", "127.0.0.1",
           "--port", "0", "--metrics-port", str(metrics_port), "--log-level", "WARNING", *args]
    return Proc("statestream-server", cmd)


def echo_server(features: int, output_size: int) -> Proc:
    """The transport ceiling: the same service and message shapes, no model."""
    cmd = [sys.executable, "-m", "bench.echo_server", "--port", "0", "--features", str(features),
           "--output-size", str(output_size)]
    return Proc("echo-server", cmd)
