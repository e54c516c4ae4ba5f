"""Server CLI and config resolution, the container files, the client CLI, against real processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import yaml
from serverproc import DEMO_MODEL, ROOT, ServerProcess
from support import process

from statestream.server.app.config import build_parser, parse_config


def test_flag_beats_env_beats_default(monkeypatch):
    assert parse_config(["--models", str(DEMO_MODEL)]).max_sessions == 100_000
    monkeypatch.setenv("STATESTREAM_MAX_SESSIONS", "7")
    monkeypatch.setenv("STATESTREAM_MODELS", str(DEMO_MODEL))
    cfg = parse_config([])
    assert cfg.max_sessions == 7 and cfg.models == [str(DEMO_MODEL)]
    assert parse_config(["--max-sessions", "9"]).max_sessions == 9


@pytest.mark.parametrize("args, message", [
    (["--models", "/nonexistent"], "no such file or folder"),
    (["--models", str(DEMO_MODEL), "--max-batch-size", "0"], "--max-batch-size must be >= 1"),
    (["--models", str(DEMO_MODEL), "--tls-cert", "/nonexistent"], "--tls-cert and --tls-key go together"),
    (["--models", str(DEMO_MODEL), "--auth-token-file", "/nonexistent"], "--auth-token-file /nonexistent: no such file"),
    (["--models", str(DEMO_MODEL), "--store-timeout", "0"], "--store-timeout must be > 0"),
    (["--models", str(DEMO_MODEL), "--intra-op-spinning", "2"], "--intra-op-spinning must be 0 or 1"),
    (["--models", str(DEMO_MODEL), "--loop", "trio"], "--loop must be one of auto, asyncio, uvloop"),
    (["--models", str(DEMO_MODEL), "--frame-index", "-1"], "--frame-index must be >= 0"),
])
def test_bad_settings_refused_before_start(args, message):
    r = subprocess.run([sys.executable, "-m", "statestream.server.app.main", *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert message in r.stderr


@pytest.mark.parametrize("flags, threads, spinning", [
    ([], 1, "0"),
    (["--intra-op-threads", "2"], 2, "0"),  # onnxruntime's own default would spin
    (["--intra-op-threads", "2", "--intra-op-spinning", "1"], 2, "1"),
])
def test_intra_op_flags_reach_the_onnxruntime_session(flags, threads, spinning):
    from statestream.server.app.server import _load_model

    cfg = parse_config(["--models", str(DEMO_MODEL), *flags])
    opts = _load_model(cfg, DEMO_MODEL, "demo", 1).session.get_session_options()
    assert opts.intra_op_num_threads == threads
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == spinning


def test_bad_env_value_refused():
    env = {**os.environ, "STATESTREAM_PORT": "not-a-port"}
    r = subprocess.run([sys.executable, "-m", "statestream.server.app.main", "--models", str(DEMO_MODEL)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "not-a-port" in r.stderr


def test_not_an_exported_model_is_refused(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not onnx at all")
    r = subprocess.run([sys.executable, "-m", "statestream.server.app.main", "--models", str(bogus), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "bogus.onnx" in r.stderr and "cannot load" in r.stderr


def test_help_is_a_usage_guide():
    text = build_parser().format_help()
    for needle in ("examples:", "STATESTREAM_", "--max-queue-delay", "--state-store", "SIGTERM"):
        assert needle in text


def test_resolved_config_is_logged_and_sigterm_exits_zero():
    srv = ServerProcess(DEMO_MODEL, "--max-sessions", "123").start()
    assert srv.terminate() == 0
    out = srv.output()
    assert "--port 0 --max-sessions 123 (every other" in out and "Ctrl-C" in out
    assert "model 'demo'" in out and "stopped" in out


# The server's own main with uvloop made unimportable, as on a machine where it is not installed (the dev venv has
# it: the `uvloop` extra is part of `dev`).
WITHOUT_UVLOOP = ("import sys; sys.modules['uvloop'] = None; "
                  "from statestream.server.app.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("flag, loop", [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_server_runs_on_the_loop_it_is_asked_for_and_says_so(flag, loop):
    from statestream.client import Client

    with ServerProcess(DEMO_MODEL, "--loop", flag) as srv, Client(srv.target) as client, \
            client.session("demo") as s:
        assert s.step([0.1, 0.2, 0.3]).shape == (1,)
        out = srv.output()
    assert f"listening on 127.0.0.1:{srv.port} (event loop: {loop})" in out, out
    assert f"event loop: {loop} (--loop {flag})" in out, out


def test_the_imports_are_frozen_out_of_the_garbage_collector_at_start():
    """serve() freezes what the imports made (a full collection then skips it); what start-up makes stays young."""
    with ServerProcess(DEMO_MODEL) as srv:
        m = re.search(r"; (\d+) objects of the imports frozen out of the garbage collector", srv.output())
    assert m and int(m.group(1)) > 10_000, srv.output()


def test_auto_is_uvloop_when_installed_and_asyncio_when_not():
    with ServerProcess(DEMO_MODEL) as srv:
        assert "(event loop: uvloop)" in srv.output()
    srv = process.ServerProcess([sys.executable, "-c", WITHOUT_UVLOOP, "--models", str(DEMO_MODEL), "--port", "0"],
                                cwd=ROOT).start()
    try:
        assert "(event loop: asyncio)" in srv.output()
    finally:
        srv.stop()


def test_uvloop_asked_for_but_not_installed_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-c", WITHOUT_UVLOOP, "--models", str(DEMO_MODEL), "--port", "0", "--loop",
                        "uvloop"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stdout == "", r.stderr
    assert "--loop uvloop: uvloop is not installed" in r.stderr and ".[uvloop]" in r.stderr


def compose_service() -> dict:
    """The single-server setup (docker-compose.single.yml); the replicated one is tested in test_compose.py."""
    return yaml.safe_load((ROOT / "docker-compose.single.yml").read_text())["services"]["statestream"]


def test_compose_command_parses_with_the_server_cli_and_matches_ports():
    svc = compose_service()
    args = build_parser().parse_args(svc["command"])
    assert args.models == ["/app/models"] and args.host == "0.0.0.0"
    published = {int(p.split(":")[1]) for p in svc["ports"]}
    assert {args.port, args.metrics_port} == published
    health = svc["healthcheck"]["test"]
    assert health[:4] == ["CMD", "python", "-m", "statestream.server.app.healthcheck"]
    assert health[health.index("--target") + 1] == f"localhost:{args.port}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    assert installs == ['RUN pip install --no-cache-dir ".[server]"']  # no export extra: no TensorFlow
    assert "COPY models /app/models" in dockerfile


def test_compose_healthcheck_against_a_server_started_with_the_compose_flags():
    svc = compose_service()
    args = list(svc["command"])
    args[args.index("--models") + 1] = str(DEMO_MODEL)
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--metrics-port") + 1] = "0"
    del args[args.index("--port"):args.index("--port") + 2]
    models = args.pop(args.index("--models") + 1)
    args.remove("--models")
    with ServerProcess(models, *args) as srv:
        probe = svc["healthcheck"]["test"][1:]
        probe[probe.index("--target") + 1] = srv.target
        probe[0] = sys.executable
        r = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "SERVING"
    r = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "unhealthy" in r.stderr


def test_client_cli_models_and_stream_with_plot(tmp_path):
    with ServerProcess(DEMO_MODEL) as srv:
        r = subprocess.run([sys.executable, "-m", "statestream.client.cli", "--target", srv.target, "models"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("demo\tfeatures=3\toutputs=1")
        png = tmp_path / "out.png"
        r = subprocess.run([sys.executable, "-m", "statestream.client.cli", "--target", srv.target, "stream",
                            "--model", "demo", "--synthetic", "50", "--plot", str(png)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 50 and lines[0].split()[0] == "0" and len(lines[-1].split()) == 2
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        csv = tmp_path / "in.csv"
        csv.write_text("a,b,c\n0.1,0.2,0.3\n0.4,0.5,0.6\n")
        r = subprocess.run([sys.executable, "-m", "statestream.client.cli", "--target", srv.target, "stream",
                            "--model", "demo", "--csv", str(csv)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2
        r = subprocess.run([sys.executable, "-m", "statestream.client.cli", "--target", srv.target, "stream",
                            "--model", "nope", "--synthetic", "3"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "'nope'" in r.stderr


def run_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "statestream.server.app.main", *args], capture_output=True,
                          text=True, timeout=60)


def test_a_taken_port_is_one_line_naming_the_port_and_the_flag_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_server("--models", str(DEMO_MODEL), "--port", str(port))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stdout == "", r.stderr  # no traceback, no "Event loop is closed"
    assert f"port {port} is already in use" in r.stderr and "--port" in r.stderr


def test_a_port_taken_after_the_check_is_the_same_one_line_error(tmp_path):
    """The race the up-front check cannot close: App.start turns grpc's bind failure into BindError."""
    import asyncio

    from statestream.server.app.ports import BindError
    from statestream.server.app.server import create_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = parse_config(["--models", str(DEMO_MODEL), "--port", str(port)])
        with pytest.raises(BindError, match=f"port {port} is already in use.*--port"):
            asyncio.run(create_server(cfg))


@pytest.mark.parametrize("name", ["my.keras", "legacy.h5", "saved"])
def test_a_keras_model_is_refused_with_the_export_command_to_run(tmp_path, name):
    model = tmp_path / name
    if name == "saved":  # a SavedModel folder
        model.mkdir()
        (model / "saved_model.pb").write_bytes(b"")
    else:
        model.write_bytes(b"keras")
    r = run_server("--models", str(model))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    stem = model.stem
    assert "is a Keras model" in r.stderr
    assert f"statestream-export {model} --out {tmp_path / stem}.onnx" in r.stderr, r.stderr
    r = run_server("--models", str(tmp_path))  # a folder of Keras models and no .onnx
    assert r.returncode == 2 and "no .onnx file" in r.stderr and f"statestream-export {model}" in r.stderr


def test_an_address_not_on_this_machine_is_one_line_exit_2():
    r = run_server("--models", str(DEMO_MODEL), "--host", "192.0.2.1", "--port", "50051")  # TEST-NET-1: nobody's
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot listen on 192.0.2.1:50051" in r.stderr and "--host" in r.stderr
