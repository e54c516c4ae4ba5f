"""--workers N: N real server processes on one port (SO_REUSEPORT) sharing a store; refused with the memory store."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

from serverproc import DEMO_MODEL, ROOT, ServerProcess

_WORKER = re.compile(r"worker (\d+) \(pid (\d+)\) serving on \S+, metrics port (\d+)")


def worker_metrics_ports(srv: ServerProcess) -> dict[int, int]:
    """{worker index: its Prometheus port}, from the workers' log lines."""
    return {int(m.group(1)): int(m.group(3)) for m in _WORKER.finditer(srv.output())}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_workers_with_the_memory_store_are_refused():
    for extra in ([], ["--state-store", "memory"]):
        p = subprocess.run([sys.executable, "-m", "statestream.server.app.main", "--models", str(DEMO_MODEL),
                            "--workers", "2", *extra], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert p.returncode == 2, p.stderr
        assert "--workers 2 needs a shared state store" in p.stderr
        assert "use --state-store sqlite:PATH or redis://HOST:PORT/DB" in p.stderr
        assert "listening" not in p.stdout
    p = subprocess.run([sys.executable, "-m", "statestream.server.app.main", "--models", str(DEMO_MODEL), "--workers", "0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and "--workers must be >= 1, got 0" in p.stderr


def test_workers_share_the_port_report_metrics_and_drain_on_sigterm(tmp_path):
    srv = ServerProcess(DEMO_MODEL, "--workers", "2", "--state-store", f"sqlite:{tmp_path / 'w.db'}",
                        "--metrics-port", "-1", "--loop", "uvloop").start()
    try:
        ports = worker_metrics_ports(srv)
        assert sorted(ports) == [0, 1] and len(set(ports.values())) == 2
        for port in ports.values():
            assert "statestream_active_sessions" in scrape(port)
        assert srv.terminate(60) == 0
        out = srv.output()
        assert out.count("statestream.server: stopped") == 2
        assert out.count("event loop: uvloop (--loop uvloop)") == 2  # each worker process runs on the loop asked for
        assert "workers stopped (exit codes [0, 0])" in out
    finally:
        srv.stop()
