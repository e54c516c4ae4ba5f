"""Shared pytest set-up: skips of required tests fail under CI."""

import os
from pathlib import Path

import pytest

pytest_plugins = ["redisproc"]  # the redis_proc fixture, for every module

# CI (CI=true) or STATESTREAM_NO_SKIP=1 turns every skip into a failure: a
# required test that cannot run in CI must be red, not silently skipped.
NO_SKIP = os.environ.get("STATESTREAM_NO_SKIP") == "1" or os.environ.get("CI", "").lower() == "true"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("STATESTREAM_TOOLS_DIR", ROOT / ".tools"))
TOOLS_BIN = TOOLS / "bin"
INSTALL_FAILED = TOOLS / "failed"  # scripts/install-tools.sh: one file per tool whose install failed


def install_failure(name: str) -> str | None:
    """Why `make tools` could not install `name` (the tool, the cause, the fix), or None."""
    f = INSTALL_FAILED / name
    return f.read_text().strip() if f.is_file() else None


def require_tool(name: str, *, installed_as: str | None = None) -> str:
    """The path of a tool `make tools` installs (.tools/bin, else PATH). A tool whose install failed fails the
    test with the installer's reason; a tool never installed skips locally and FAILS under CI.
    `installed_as`: the install step's name when it differs from the command (go-client, node-client)."""
    import shutil
    reason = install_failure(installed_as or name)
    if reason:
        pytest.fail(reason, pytrace=False)
    path = TOOLS_BIN / name
    found = str(path) if path.is_file() else shutil.which(name)
    if found is None:
        msg = f"{name} is not installed (run `make tools`: scripts/install-tools.sh)"
        if NO_SKIP:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def require_installed(path: Path, installed_as: str, fix: str) -> None:
    """A file an install step makes (a venv's python, a tool): fail with the installer's reason if that step
    failed; skip (a failure under CI) when the file is missing."""
    reason = install_failure(installed_as)
    if reason:
        pytest.fail(reason, pytrace=False)
    if not path.exists():
        pytest.skip(f"{path} is missing: run `{fix}` (make test does)")


def pytest_terminal_summary(terminalreporter):
    """Say at the end of the run which tools failed to install, so one tool's failure is read as that."""
    if INSTALL_FAILED.is_dir():
        for f in sorted(INSTALL_FAILED.iterdir()):
            terminalreporter.write_line(f"TOOL INSTALL FAILED: {f.name}: " + " | ".join(f.read_text().split("\n")[1:3]),
                                        red=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI, which counts as a failure: {reason}"


@pytest.fixture()
def stub(server):
    """A generated StateStreamService stub on the test module's `server` fixture (a ServerProcess)."""
    import grpc

    from statestream.v1 import statestream_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.target) as ch:
        yield pb_grpc.StateStreamServiceStub(ch)


@pytest.fixture
def inproc():
    """A factory of in-process servers (create_server on port 0), all stopped after the test."""
    from inproc import InProcessServer

    servers = []

    def make(**kwargs):
        srv = InProcessServer(**kwargs)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()
