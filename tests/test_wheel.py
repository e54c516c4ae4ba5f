"""The package a user installs: a wheel built from the checkout, installed with the server extra into a clean venv,
away from the checkout, serves the demo and answers the README's quick start (stubs, entry points, package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docblocks import section
from serverproc import DEMO_MODEL, ROOT
from support.process import ServerProcess

# What a checkout holds besides the sources: environments, tools, caches, build output.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", ".tools", "node_modules", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".hypothesis", ".cache")
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV, timeout=300, **kw)
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with the wheel built from a copy of the checkout, [server] extra."""
    d = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, d / "checkout", ignore=NOT_SOURCES)
    r = run(sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-q", "--no-deps", "-w", d / "dist",
            d / "checkout")
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (d / "dist").glob("statestream-*.whl")
    r = run(sys.executable, "-m", "venv", d / "venv")
    assert r.returncode == 0, r.stderr
    r = run(d / "venv" / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "install", "-q",
            f"{wheel}[server]")
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(d / "checkout")  # nothing may come from the sources now
    return d / "venv" / "bin"


def test_the_wheel_installs_the_packages_and_the_three_commands(installed, tmp_path):
    code = ("import statestream.client, statestream.server.app.main, statestream.v1.statestream_pb2_grpc, "
            "statestream.inference.grpc_service_pb2, statestream.contract.demo, statestream.export.cli; "
            "print(statestream.client.__file__)")
    r = run(installed / "python", "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(installed.parent), r.stdout  # the venv's copy, not the checkout
    for command in ("statestream", "statestream-server", "statestream-export"):
        assert (installed / command).is_file(), command
    r = run(installed / "statestream-export", tmp_path / "my.keras", "--out", tmp_path / "my.onnx")  # no extra
    assert r.returncode == 1 and 'pip install ".[export]"' in r.stderr, r.stderr


def test_the_installed_server_serves_the_demo_and_answers_the_quick_start(installed, tmp_path):
    (snippet,) = [b for b in section(ROOT / "README.md", "Start in 30 seconds") if b.lang == "python"]
    with ServerProcess([installed / "statestream-server", "--models", DEMO_MODEL, "--port", "0"],
                       name="installed statestream-server", env=ENV, cwd=tmp_path) as srv:
        assert "(event loop: uvloop)" in srv.output()  # the [server] extra brings uvloop; --loop auto picks it
        r = run(installed / "statestream", "--target", srv.target, "models", cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.startswith("demo\tfeatures=3\toutputs=1"), r.stdout + r.stderr
        r = run(installed / "python", "-c", snippet.against(srv.target), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(r.stdout.splitlines()) == 5
