"""A real statestream-server process on a loopback port, for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "models" / "demo.onnx"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServerProcess:
    """`statestream-server` started with --port 0; knows its port once it is SERVING.

    with ServerProcess([model_path], "--max-sessions", "10") as srv:
        Client(srv.target) ...
    """

    def __init__(self, models, *args: str, env: dict | None = None, wait_serving: bool = True, timeout: float = 60):
        self.models = [str(m) for m in (models if isinstance(models, (list, tuple)) else [models])]
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.wait_serving = wait_serving
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.lines: list[str] = []
        self._port_seen = threading.Event()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "statestream.server.main", "--models", *self.models, "--port", "0",
               "--host", "127.0.0.1", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                     cwd=ROOT)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._port_seen.wait(self.timeout):
            self.kill()
            raise RuntimeError("server did not start:\n" + self.output())
        if self.wait_serving:
            self.wait_until_serving()
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = _LISTENING.search(line)
            if m and not self.port:
                self.port = int(m.group(2))
                self._port_seen.set()
        self._port_seen.set()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_serving(self, credentials=None) -> None:
        deadline = time.monotonic() + self.timeout
        with (grpc.secure_channel(self.target, credentials) if credentials else grpc.insecure_channel(self.target)) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("server never became SERVING:\n" + self.output())

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()
