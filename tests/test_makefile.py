"""The Makefile a newcomer meets first: `make help` lists every target, `make serve` says how to stop and where."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from serverproc import ROOT

MAKEFILE = (ROOT / "Makefile").read_text()
TARGETS = re.findall(r"^([a-z][a-z-]*):", MAKEFILE, re.M)
VENV = Path(sys.prefix)  # the venv running the tests: `make serve` finds its server installed


def make(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, **kw)


def test_make_help_lists_every_target_and_every_target_is_phony():
    assert len(TARGETS) >= 10
    listed = re.findall(r"^make (\S+)\s+\S", make("help").stdout, re.M)
    assert listed == TARGETS
    phony = re.search(r"^\.PHONY: (.*)$", MAKEFILE, re.M).group(1).split()
    assert sorted(phony) == sorted(TARGETS)


def test_make_serve_says_how_to_stop_it_and_how_to_listen_elsewhere_without_noise():
    proc = subprocess.Popen(["make", "-s", "--no-print-directory", "serve", "PORT=0", f"VENV={VENV}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "only this machine can connect" in line:  # the last line the server prints once it is up
                break
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    head = "".join(lines)
    assert re.search(r"listening on 127\.0\.0\.1:\d+", head), head
    assert "stop: Ctrl-C" in head and "make serve HOST=0.0.0.0" in head
    for noise in ("{'models'", "Editable installation", "Warning", "Traceback"):
        assert noise not in head + rest, noise
    assert "stopped" in rest
