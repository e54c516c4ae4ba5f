"""--workers N: N server processes on one port (SO_REUSEPORT), started, watched and drained by a parent."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import wait

from statestream.server.app import loops
from statestream.server.app.config import Config
from statestream.server.app.server import serve

log = logging.getLogger("statestream.server.workers")

_QUICK_EXIT_SECONDS = 10.0   # a worker that dies sooner than this after its start exited "quickly"
_QUICK_EXITS = 3             # a worker that exits quickly this many times in a row is not restarted: all stop


@contextmanager
def reserve_port(host: str, port: int):
    """A bound, never-listening SO_REUSEPORT socket holding HOST:PORT (port 0: a free one) while workers run.

    As grpc's examples/python/multiprocessing does: the workers bind the same port with grpc.so_reuseport=1 and
    the kernel spreads incoming connections over them; this socket takes no connection (it does not listen).
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def worker_config(cfg: Config, index: int, port: int) -> Config:
    """Worker `index`'s settings: the reserved port; metrics on --metrics-port + index (-1: any free port each)."""
    metrics = cfg.metrics_port + index if cfg.metrics_port > 0 else cfg.metrics_port
    return replace(cfg, port=port, metrics_port=metrics)


def _worker(cfg: Config, index: int, ready) -> None:
    """A worker process: one server (its own event loop, models and cache), SIGTERM drains it."""
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker{index} %(name)s: %(message)s")
    try:
        loops.run(serve(cfg, ready=ready, worker=index), cfg.loop)
    except (OSError, ValueError) as e:
        logging.getLogger("statestream.server").error("%s", e)
        sys.exit(1)


class Supervisor:
    """Starts the workers, prints the listening line once all are SERVING, forwards SIGTERM, restarts crashes."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no grpc/onnxruntime state forked
        self.procs: dict[int, multiprocessing.Process] = {}
        self.started: dict[int, float] = {}
        self.quick_exits: dict[int, int] = {}
        self.ready: dict[int, object] = {}   # each worker's Event, held here until the worker exits
        self.stopping = False
        self._termed: set[int] = set()

    def _start(self, index: int, port: int) -> None:
        ready = self.ready[index] = self.ctx.Event()
        p = self.ctx.Process(target=_worker, args=(worker_config(self.cfg, index, port), index, ready),
                             name=f"statestream-worker{index}", daemon=False)
        p.start()
        self.procs[index], self.started[index] = p, time.monotonic()
        log.info("worker %d started (pid %d)", index, p.pid)

    def _signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info("signal %d: draining %d workers (grace %.1f s)", signum, len(self.procs), self.cfg.grace)
        self.stopping = True
        self._terminate()

    def _terminate(self) -> None:
        """SIGTERM, once, to every live worker: it drains like a single server (a second one would kill it)."""
        for p in self.procs.values():
            if p.is_alive() and p.pid not in self._termed:
                self._termed.add(p.pid)
                p.terminate()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 when every worker drained cleanly."""
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        with reserve_port(self.cfg.host, self.cfg.port) as port:
            for i in range(self.cfg.workers):
                self._start(i, port)
            while not all(r.is_set() for r in self.ready.values()):
                if self.stopping or any(not p.is_alive() for p in self.procs.values()):
                    return self._shutdown(failed=not self.stopping)
                time.sleep(0.05)
            log.info("%d workers serving on %s:%d (SO_REUSEPORT)", self.cfg.workers, self.cfg.host, port)
            print(f"statestream-server listening on {self.cfg.host}:{port}", flush=True)
            return self._watch(port)

    def _watch(self, port: int) -> int:
        while not self.stopping:
            wait([p.sentinel for p in self.procs.values()], timeout=0.5)
            for i, p in list(self.procs.items()):
                if p.is_alive() or self.stopping:
                    continue
                quick = time.monotonic() - self.started[i] < _QUICK_EXIT_SECONDS
                self.quick_exits[i] = self.quick_exits.get(i, 0) + 1 if quick else 0
                if self.quick_exits[i] >= _QUICK_EXITS:
                    log.error("worker %d exited with %s, %d times in a row within %.0f s of its start; stopping all",
                              i, p.exitcode, _QUICK_EXITS, _QUICK_EXIT_SECONDS)
                    return self._shutdown(failed=True)
                log.error("worker %d exited with %s; starting it again (sessions live in the shared store)",
                          i, p.exitcode)
                self._start(i, port)
        return self._shutdown(failed=False)

    def _shutdown(self, failed: bool) -> int:
        self.stopping = True
        self._terminate()
        deadline = time.monotonic() + self.cfg.grace + 10
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.error("worker pid %d did not drain in time; killing it", p.pid)
                p.kill()
                p.join(5)
        codes = [p.exitcode for p in self.procs.values()]
        log.info("workers stopped (exit codes %s)", codes)
        return 1 if failed or any(codes) else 0


def run_workers(cfg: Config) -> int:
    """The parent of --workers N: binds nothing that serves; returns the exit code."""
    return Supervisor(cfg).run()
