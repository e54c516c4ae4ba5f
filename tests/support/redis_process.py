"""A real redis-server on a free loopback port with its own temp dir (AOF, everysec or always), for tests and bench."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """`redis-server` on 127.0.0.1:PORT with data in DIR; `restart()` keeps both, so AOF data comes back.

    with RedisProcess() as r:
        r.url           # redis://127.0.0.1:PORT/0 (for --state-store)
        r.client()      # a sync redis-py client
        r.restart()            # SIGTERM (Redis writes and fsyncs its AOF), start again on the same port and dir
        r.restart(kill=True)   # kill -9: with appendfsync everysec the last ~2 s of writes may be lost
    """

    def __init__(self, directory: str | Path | None = None, port: int = 0, appendonly: bool = True,
                 fsync: str = "everysec"):
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="statestream-redis-")
        self.dir = Path(directory or self._tmp.name)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.fsync = fsync  # appendfsync: everysec (Redis' default) or always (no acknowledged write lost)
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 20) -> "RedisProcess":
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (`make tools` installs the Debian package)")
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
               "--daemonize", "no", "--save", "", "--logfile", str(self.log),
               "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.fsync]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with self.client() as c:
                    if c.ping():
                        return self
            except redis.RedisError:
                time.sleep(0.05)
        self.kill()
        log = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING:\n{log}")

    def kill(self) -> None:
        """kill -9 (a redis process crash)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (redis flushes the AOF and exits), kill after 10 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, kill: bool = False) -> "RedisProcess":
        """Stop (or kill -9) and start again on the same port and dir."""
        self.kill() if kill else self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "RedisProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
