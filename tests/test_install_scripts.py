"""The install scripts survive the registry drift that broke CI, and one tool's failure stays contained."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPTS = ROOT / "scripts"
DROPPED_PIN = "libc6=2.41-12+deb13u4"  # the point release Debian dropped on 2026-11-22; it broke `make tools`


def test_a_dropped_debian_pin_still_resolves_to_the_current_libc_with_glibc_2_38(tmp_path):
    """The script asks for a version the archive no longer has, falls back to trixie's current libc6, checks
    that it provides GLIBC_2.38, records what it resolved, and the wrapped perf_analyzer starts."""
    env = {**os.environ, "STATESTREAM_TOOLS_DIR": str(tmp_path), "STATESTREAM_TRIXIE_PIN_TEST": DROPPED_PIN,
           "STATESTREAM_FORCE_SHIPPED_LIBC": "1", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(SCRIPTS / "install-perf-analyzer.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"pin {DROPPED_PIN} is gone from the archive; using the current version" in r.stdout, r.stdout
    stamp = (tmp_path / "perf_analyzer.stamp").read_text().splitlines()
    assert stamp[0] == "perf-analyzer==2.60.0"
    resolved = dict(p.split("=", 1) for p in stamp[1].removeprefix("trixie ").split())
    assert set(resolved) == {"libc6", "libstdc++6", "libgcc-s1"}, stamp
    assert resolved["libc6"] != DROPPED_PIN.split("=")[1]
    assert resolved["libc6"] in r.stdout  # printed as well as recorded
    libc = tmp_path / "trixie" / "usr" / "lib" / "x86_64-linux-gnu" / "libc.so.6"
    assert b"GLIBC_2.38" in libc.read_bytes()
    out = subprocess.run([str(tmp_path / "bin" / "perf_analyzer"), "--version"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "Perf Analyzer Version" in out.stdout + out.stderr, out.stderr


def fake_go(tmp_path: Path) -> Path:
    """A PATH whose `go` fails the way an unreachable module proxy does."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text("#!/bin/sh\necho 'go: github.com/bojand/ghz@v0.121.0: dial tcp: connection refused' >&2\nexit 1\n")
    go.chmod(0o755)
    return bin_dir


def test_a_failed_tool_install_names_the_tool_cause_and_fix_and_the_suite_still_runs(tmp_path):
    tools = tmp_path / "tools"
    env = {**os.environ, "STATESTREAM_TOOLS_DIR": str(tools), "PYTHON": sys.executable,
           "PATH": f"{fake_go(tmp_path)}:{os.environ['PATH']}"}
    keep_going = subprocess.run(["bash", str(SCRIPTS / "install-tools.sh"), "--keep-going"], env=env,
                                capture_output=True, text=True, timeout=600)
    assert keep_going.returncode == 0, keep_going.stderr  # make test goes on to run the suite
    ghz = (tools / "failed" / "ghz").read_text()
    assert "install of 'ghz' failed" in ghz
    assert "cause: " in ghz and "connection refused" in ghz
    assert "fix: " in ghz and "Go module proxy" in ghz
    assert "FAILED ghz" in keep_going.stderr
    assert not (tools / "failed" / "perf_analyzer").exists()  # the other tools installed
    assert (tools / "bin" / "perf_analyzer").is_file()

    strict = subprocess.run(["bash", str(SCRIPTS / "install-tools.sh")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert strict.returncode == 1  # `make tools` alone says it failed

    # Only the tool's own tests fail, with its reason; the others run and pass.
    (tmp_path / "test_probe.py").write_text(
        "from conftest import require_tool\n"
        "def test_needs_ghz():\n    require_tool('ghz')\n"
        "def test_needs_nothing():\n    assert 1 + 1 == 2\n")
    for name in ("conftest.py", "redisproc.py"):  # the suite's own conftest, and the fixture module it loads
        (tmp_path / name).write_text((ROOT / "tests" / name).read_text())
    shutil.copytree(ROOT / "tests" / "support", tmp_path / "support")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_probe.py")],
                         env={**env, "STATESTREAM_NO_SKIP": "1"}, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stdout
    assert "1 failed, 1 passed" in run.stdout, run.stdout
    assert "install of 'ghz' failed" in run.stdout and "TOOL INSTALL FAILED: ghz" in run.stdout, run.stdout
