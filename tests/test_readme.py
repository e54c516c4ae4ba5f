"""The README and docs/ show the very commands and code the tests run: every Python block runs as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docblocks import PAGES, all_blocks, docs_text, section
from serverproc import DEMO_MODEL, ROOT, ServerProcess
from support.process import ServerProcess as AnyServer

README = ROOT / "README.md"
PYTHON = all_blocks("python")
BIN = Path(sys.prefix) / "bin"  # the venv running the tests: where `pip install` puts the commands
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
# Quick-start commands that another test runs (or that only set up a shell), with where.
CHECKED_ELSEWHERE = {
    "make serve": "tests/test_makefile.py runs it and reads what it prints",
    ". .venv/bin/activate": "these tests run the commands of the venv that runs them",
    'pip install -e ".[export]"': "make install-dev installs the same extra; tests/test_wheel.py installs a wheel",
}


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO_MODEL) as srv:
        yield srv


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=180, env=ENV)


@pytest.fixture
def workdir(tmp_path):
    """A reader's folder: a models/ folder beside them, as in a checkout."""
    (tmp_path / "models").mkdir()
    return tmp_path


@pytest.mark.parametrize("block", [b for b in PYTHON if not b.not_run], ids=lambda b: b.where)
def test_every_python_block_runs_as_written(block, server, workdir):
    r = run_python(block.against(server.target), workdir)
    assert r.returncode == 0, f"{block.where}:\n{block.code}\n{r.stderr[-3000:]}"


def test_a_python_block_that_is_not_run_here_says_which_test_runs_it():
    skipped = [b for b in PYTHON if b.not_run]
    assert len(skipped) <= 2, [b.where for b in skipped]  # Triton's client and torch: each runs in its own venv
    for b in skipped:
        named = re.findall(r"tests/\S+\.py", b.not_run)
        assert named and all((ROOT / t).is_file() for t in named), b.not_run


def test_the_exactly_once_snippet_runs_again_like_a_restarted_sensor(server, workdir):
    block = next(b for b in PYTHON if "open_or_attach" in b.code)
    for run in range(2):  # the second run attaches to the open session and continues its numbering
        r = run_python(block.against(server.target), workdir)
        assert r.returncode == 0, f"run {run + 1}: {r.stderr[-3000:]}"
        assert len(r.stdout.splitlines()) == 20


def quick_start_commands() -> list[str]:
    blocks = [b for b in section(README, "Start in 30 seconds") if b.lang == "sh"]
    lines = [line.split("  #")[0].strip() for b in blocks for line in b.code.splitlines()]
    return [line for line in lines if line]


def with_target(cmd: list[str], target: str) -> list[str]:
    return [cmd[0], "--target", target, *cmd[1:]]


def test_the_quick_start_commands_run_as_written(server, workdir):
    """Every command of "Start in 30 seconds", in a reader's folder: the CLI, an export of a Keras file, serving it."""
    import keras

    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4), keras.layers.Dense(1)])
    model.save(workdir / "my.keras")
    shutil.copy(DEMO_MODEL, workdir / "models")
    ran = []
    for line in quick_start_commands():
        if line in CHECKED_ELSEWHERE:
            continue
        cmd = line.split()
        if cmd[0] == "statestream-server":  # a second server beside make serve: here on a free port
            cmd[cmd.index("--port") + 1] = "0"
            with AnyServer(cmd, name=line, env=ENV, cwd=workdir) as second:
                r = subprocess.run(with_target(["statestream", "models"], second.target), capture_output=True,
                                   text=True, timeout=60, env=ENV)
            assert r.returncode == 0 and {"demo", "my"} == {row.split("\t")[0] for row in r.stdout.splitlines()}
        else:
            if cmd[0] == "statestream":
                cmd = with_target(cmd, server.target)
            r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300, env=ENV)
            assert r.returncode == 0, f"{line}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        ran.append(cmd[0])
    assert sorted(set(ran)) == ["statestream", "statestream-export", "statestream-server"]


def test_every_quick_start_command_is_run_or_checked_elsewhere():
    commands = quick_start_commands()
    assert set(CHECKED_ELSEWHERE) <= set(commands)
    assert commands[0] == "make serve"  # the first thing a reader does


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.sh")))
def test_example_scripts_are_in_the_docs_verbatim(script):
    body = (ROOT / "examples" / script).read_text().split("set -euo pipefail\n", 1)[1].strip()
    text = docs_text()
    assert body in text, f"the docs' snippet for examples/{script} differs from the file the tests run"
    assert f"examples/{script}" in text


def test_the_two_commands():
    readme = README.read_text()
    assert re.search(r"^make serve\b", readme, re.M) and re.search(r"^make test\b", readme, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link}"
        if anchor:
            assert anchor in anchors(target), f"{page.name}: {link}: no such heading"


def test_the_readme_is_short_and_the_long_sections_moved_to_docs():
    readme = README.read_text()
    assert len(readme.splitlines()) < 300
    for page in ("architecture", "performance", "scale-out", "clients", "triton"):
        assert f"(docs/{page}.md)" in readme
    assert "## Architecture" not in readme and "876,717" not in readme  # the numbers live with their commands
