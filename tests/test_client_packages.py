"""Issue 20: the clients used from outside the repository (the Go module through its module path, the Node package
packed and installed into a fresh project), every client example in the docs run as written, and the Go and Node
load tests."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from serverproc import DEMO_MODEL, ROOT, ServerProcess
from test_interop import GO_DIR, GO_MODULE, NODE_DIR, client_env, run, tool

DOCS = ROOT / "docs" / "clients.md"


@pytest.fixture(scope="module")
def server():
    with ServerProcess([DEMO_MODEL]) as srv:
        yield srv


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced ```lang blocks of a Markdown file."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", path.read_text(), re.S | re.M)


def twice(cmd: list[str], cwd: Path, env: dict) -> tuple[str, str]:
    """Run a client example twice (a sensor restarted): both must exit 0."""
    return run(cmd, cwd=cwd, env=env), run(cmd, cwd=cwd, env=env)


def test_node_package_ships_the_contract_unchanged():
    shipped = NODE_DIR / "proto" / "statestream" / "v1" / "statestream.proto"
    assert shipped.read_bytes() == (ROOT / "proto" / "statestream" / "v1" / "statestream.proto").read_bytes(), \
        "client/node/proto is stale: run `make proto`"


def test_the_python_examples_in_the_docs_run_and_a_second_run_reattaches(server, tmp_path):
    sync, asyncio_ = blocks(DOCS, "python")
    env = client_env(server.target)
    for name, code, steps in (("sync", sync, 20), ("asyncio", asyncio_, 5)):
        script = tmp_path / f"example_{name}.py"
        script.write_text(code)
        first, second = twice([sys.executable, str(script)], tmp_path, env)
        assert first.splitlines()[-1] == f"steps so far: {steps}", (name, first)
        assert second.splitlines()[-1] == f"steps so far: {2 * steps}", (name, second)  # re-attached, numbering resumed
    assert "[[" in second  # the group step printed its (4, 1) outputs


def test_the_go_module_is_used_by_its_module_path_from_outside_the_repository(server, tmp_path):
    """The README's example as its own module, requiring the client by module path (replaced by the checkout,
    as a user of an unreleased version would), built offline from the module cache."""
    (code,) = blocks(GO_DIR / "README.md", "go")
    (tmp_path / "main.go").write_text(code)
    (tmp_path / "go.mod").write_text(f"module example.com/sensor\n\ngo 1.24.0\n\nrequire {GO_MODULE} v0.1.0\n\n"
                                     f"replace {GO_MODULE} => {GO_DIR}\n")
    (tmp_path / "go.sum").write_text((GO_DIR / "go.sum").read_text())
    env = client_env(server.target) | {"GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOWORK": "off"}
    run([tool("go"), "build", "-o", "sensor", "."], cwd=tmp_path, env=env)
    first, second = twice([str(tmp_path / "sensor")], tmp_path, env)
    assert re.findall(r"step (\d+)", first) == ["1", "2", "3"], first
    assert re.findall(r"step (\d+)", second) == ["4", "5", "6"], second  # re-attached, numbering resumed
    assert "not found: NotFound" in first, first


def test_the_node_package_packs_installs_into_a_fresh_project_and_runs_its_readme(server, tmp_path):
    npm = str(Path(tool("node")).with_name("npm"))  # npm comes with node
    packed = json.loads(run([npm, "pack", "--json", "--pack-destination", str(tmp_path)], cwd=NODE_DIR,
                            env=client_env(server.target)))
    tarball = tmp_path / packed[0]["filename"]
    with tarfile.open(tarball) as tar:
        files = set(tar.getnames())
    assert "package/proto/statestream/v1/statestream.proto" in files and "package/src/client.js" in files, files
    assert not any(f.startswith(("package/test/", "package/node_modules/")) for f in files), files
    assert '"private"' not in (NODE_DIR / "package.json").read_text()

    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "sensor", "private": true, "type": "module"}\n')
    env = client_env(server.target)
    run([npm, "install", "--prefer-offline", "--no-audit", "--no-fund", str(tarball)], cwd=project, env=env,
        timeout=300)
    (code,) = blocks(NODE_DIR / "README.md", "js")
    (project / "example.js").write_text(code)
    first, second = twice([tool("node"), "example.js"], project, env)
    assert re.findall(r"step (\d+)", first) == ["1", "2", "3"], first
    assert re.findall(r"step (\d+)", second) == ["4", "5", "6"], second
    assert f"not found: {5}" in first, first  # NOT_FOUND's numeric code


@pytest.mark.parametrize("lang", ["go", "node"])
def test_the_load_tests_print_p50_and_p99_for_concurrent_sessions(server, lang):
    env = client_env(server.target)
    if lang == "go":
        cmd, cwd = [tool("go"), "run", "./cmd/loadtest"], GO_DIR
        sessions, steps, stream = "-sessions", "-steps", "-stream"
    else:
        cmd, cwd = [tool("node"), "loadtest.js"], NODE_DIR
        sessions, steps, stream = "--sessions", "--steps", "--stream"
    text = run([*cmd, sessions, "3", steps, "5"], cwd=cwd, env=env)
    assert re.fullmatch(r"3 sessions x 5 steps \(unary\): p50 [\d.]+ ms, p99 [\d.]+ ms, \d+ steps/s\n", text), text
    for mode in ([], [stream]):
        rep = json.loads(run([*cmd, sessions, "4", steps, "10", *mode, "-json" if lang == "go" else "--json"],
                             cwd=cwd, env=env))
        assert rep["completed"] == rep["server_steps"] == 40, rep  # every step timed, and counted by the server
        assert 0 < rep["p50_ms"] <= rep["p99_ms"], rep
        assert rep["mode"] == ("stream" if mode else "unary"), rep


def test_the_wheel_without_extras_carries_both_python_clients(server, tmp_path):
    """`pip install statestream` (no extras): the blocking and asyncio clients work, and no server dependency came."""
    src = tmp_path / "src"  # a clean copy: a build/ left in the checkout could carry deleted modules into the wheel
    for part in ("client/statestream", "server/statestream", "export/statestream"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src, timeout=300)
    (wheel,) = tmp_path.glob("statestream-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], cwd=tmp_path, timeout=600)
    missing = run([str(python), "-c", "import importlib.util as u; print([m for m in ('onnxruntime', 'tensorflow', "
                   "'prometheus_client', 'redis') if u.find_spec(m)])"], cwd=tmp_path)
    assert missing.strip() == "[]", missing  # the client's install pulls in none of the server's dependencies
    env = client_env(server.target)
    for name, code in zip(("sync", "asyncio"), blocks(DOCS, "python")):
        script = tmp_path / f"wheel_{name}.py"
        script.write_text(code.replace('"sensor-7"', '"wheel-sensor-7"'))
        out = run([str(python), str(script)], cwd=tmp_path, env=env)
        assert out.splitlines()[-1].startswith("steps so far: "), (name, out)
