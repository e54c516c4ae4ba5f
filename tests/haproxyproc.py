"""A real HAProxy (deploy/haproxy.cfg rendered for loopback backends) on a free port, for tests and bench."""

from __future__ import annotations

import csv
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from conftest import require_tool
from serverproc import ROOT

if str(ROOT) not in sys.path:  # bench/ is a package at the repo root
    sys.path.insert(0, str(ROOT))
from bench.procs import free_port  # noqa: E402

CONFIG = ROOT / "deploy" / "haproxy.cfg"
_SERVERS = re.compile(r"(    # SERVERS BEGIN\n).*?(    # SERVERS END\n)", re.S)
_BIND = re.compile(r"^    bind :50051 proto h2$", re.M)
_MONITOR_BIND = re.compile(r"^    bind :8404$", re.M)


def health_check_request() -> bytes:
    """The bytes of deploy/haproxy.cfg's `tcp-check send-binary`: an HTTP/2 client that sends one
    grpc.health.v1.Health/Check with the empty request (HPACK literals, no Huffman, no dynamic table)."""

    def string(b: bytes) -> bytes:
        return bytes([len(b)]) + b

    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    headers = (b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
               + b"\x04" + string(b"/grpc.health.v1.Health/Check")  # :path, literal with name index 4
               + b"\x01" + string(b"localhost")  # :authority (index 1)
               + b"\x0f\x10" + string(b"application/grpc")  # content-type (index 31 = 15 + 16)
               + b"\x00" + string(b"te") + string(b"trailers"))  # a new name
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0, b"")  # preface, empty SETTINGS
            + frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS, stream 1
            + frame(0x0, 0x1, 1, bytes(5)))  # DATA, END_STREAM: an uncompressed empty message


SERVING_REPLY = "00000000020801"  # a gRPC frame holding HealthCheckResponse{status: SERVING}


def require_haproxy() -> str:
    """The haproxy binary; skips locally, fails under CI."""
    return require_tool("haproxy")


def render(backends: list[str], port: int, stats_socket: str | Path | None = None, monitor_port: int = 0,
           text: str | None = None) -> str:
    """deploy/haproxy.cfg with `bind 127.0.0.1:PORT`, one server line per backend (host:port) named r0, r1...,
    the monitor frontend on 127.0.0.1:monitor_port (0: a free port), optionally an admin socket (for `states`)."""
    text = CONFIG.read_text() if text is None else text
    assert _BIND.search(text) and _SERVERS.search(text) and _MONITOR_BIND.search(text), \
        f"{CONFIG} lost its bind lines or SERVERS markers"
    text = _MONITOR_BIND.sub(f"    bind 127.0.0.1:{monitor_port or free_port()}", text)
    servers = "".join(f"    server r{i} {b}\n" for i, b in enumerate(backends))
    text = _SERVERS.sub(lambda m: m.group(1) + servers + m.group(2), text)
    if stats_socket:
        text = text.replace("global\n", f"global\n    stats socket {stats_socket} level admin\n", 1)
    return _BIND.sub(f"    bind 127.0.0.1:{port} proto h2", text)


class HAProxy:
    """`haproxy -db -f <rendered config>` in front of `backends`; `target` is its frontend.

    with HAProxy([srv.target for srv in replicas]) as proxy:
        Client(proxy.target) ...
        proxy.wait_state("r1", "DOWN")
    """

    def __init__(self, backends: list[str], timeout: float = 30):
        self.backends = list(backends)
        self.port = free_port()
        self.monitor_port = free_port()
        self.timeout = timeout
        self._dir = tempfile.TemporaryDirectory(prefix="statestream-haproxy-")
        self.config = Path(self._dir.name) / "haproxy.cfg"
        self.socket = Path(self._dir.name) / "admin.sock"
        self.config.write_text(render(self.backends, self.port, self.socket, self.monitor_port))
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "HAProxy":
        self.proc = subprocess.Popen([require_haproxy(), "-db", "-f", str(self.config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()
        for i in range(len(self.backends)):
            self.wait_state(f"r{i}", "UP")
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def command(self, cmd: str) -> str:
        """One command on HAProxy's admin socket (the runtime API)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(cmd.encode() + b"\n")
            return b"".join(iter(lambda: s.recv(65536), b"")).decode()

    def states(self) -> dict[str, str]:
        """Backend server name -> status ("UP", "DOWN", "UP 1/2" while going down...), from `show stat`."""
        try:
            rows = list(csv.DictReader(self.command("show stat").lstrip("# ").splitlines()))
        except OSError:
            return {}
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "statestream" and r["svname"] != "BACKEND"}

    def wait_state(self, server: str, state: str) -> None:
        """Poll until `server`'s check status is exactly `state` (UP or DOWN)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.states().get(server) == state:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"haproxy: {server} never became {state} ({self.states()}):\n{self.output()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._dir.cleanup()

    def __enter__(self) -> "HAProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
