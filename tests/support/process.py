"""A gRPC server subprocess on a loopback port: started, known by its port, healthy, stopped (tests, bench)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_MAX_LINES = 5000


class ServerProcess:
    """Runs `cmd` (a server started with port 0 that prints `... listening on HOST:PORT`).

    with ServerProcess([sys.executable, "-m", "statestream.server.app.main", "--models", m, "--port", "0"]) as srv:
        grpc.insecure_channel(srv.target) ...
    """

    def __init__(self, cmd: list[str], *, name: str = "server", env: dict | None = None, cwd: str | Path | None = None,
                 wait_serving: bool = True, timeout: float = 60):
        self.cmd = [str(c) for c in cmd]
        self.name = name
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.wait_serving = wait_serving
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.lines: list[str] = []
        self._port_seen = threading.Event()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, cwd=self.cwd)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._port_seen.wait(self.timeout) or not self.port:
            self.kill()
            raise RuntimeError(f"{self.name} did not start:\n" + self.output())
        if self.wait_serving:
            self.wait_until_serving()
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if len(self.lines) < _MAX_LINES:
                self.lines.append(line)
            m = _LISTENING.search(line)
            if m and not self.port:
                self.port = int(m.group(2))
                self._port_seen.set()
        self._port_seen.set()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_serving(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        """Poll grpc.health.v1 until SERVING; RuntimeError (with the server's output) if it never is."""
        deadline = time.monotonic() + self.timeout
        channel = grpc.secure_channel(self.target, credentials) if credentials else grpc.insecure_channel(self.target)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
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
        raise RuntimeError(f"{self.name} never became SERVING:\n" + self.output())

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then kill if it is still there."""
        try:
            if self.proc is not None:
                self.terminate(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
