"""Runs the tritonclient drivers (tests/triton_client/driver.py) with .venv-triton's python.

tritonclient 2.73.0 pins protobuf<7 and the server needs protobuf>=7, so Triton's client lives in its own venv
(`make install-triton-client`), a separate process as a Triton user's client is anyway.
"""

from __future__ import annotations

import json
import os
import subprocess

from conftest import require_installed
from serverproc import ROOT

TRITON_PY = ROOT / os.environ.get("TRITON_VENV", ".venv-triton") / "bin" / "python"
DRIVER = ROOT / "tests" / "triton_client" / "driver.py"


def need(path) -> None:
    """Fail with the installer's reason if the tool's install failed; skip (a failure under CI) when it is missing."""
    require_installed(path, "tritonclient" if path == TRITON_PY else path.name, "make install-triton-client tools")


def drive(*args, timeout: float = 120) -> dict:
    """Run one driver subcommand; its JSON answer."""
    need(TRITON_PY)
    r = subprocess.run([str(TRITON_PY), str(DRIVER), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, f"driver {args[0]} failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout)


def spawn(*args) -> subprocess.Popen:
    """Start one driver subcommand that talks on stdin/stdout as it goes (expire); finish it with `answer`."""
    need(TRITON_PY)
    return subprocess.Popen([str(TRITON_PY), str(DRIVER), *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def answer(p: subprocess.Popen, line: str = "", timeout: float = 120) -> dict:
    """Send `line` to a spawned driver, wait for it to end; its JSON answer."""
    out, err = p.communicate(line + "\n", timeout=timeout)
    assert p.returncode == 0, f"driver failed:\n{err[-4000:]}"
    return json.loads(out.splitlines()[-1])
