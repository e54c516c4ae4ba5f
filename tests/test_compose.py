"""docker-compose.yml (3 replicas on Redis behind HAProxy): every command parses, every health check works for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import dockerfile
import pytest
import tomllib
import yaml
from haproxyproc import CONFIG, HAProxy
from serverproc import DEMO_MODEL, ROOT, ServerProcess

from statestream.server.app.config import build_parser

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
REPLICAS = sorted(name for name in SERVICES if name.startswith("statestream-"))
SINGLE = yaml.safe_load((ROOT / "docker-compose.single.yml").read_text())["services"]
DOCKERFILE = dockerfile.parse_file(str(ROOT / "Dockerfile"))  # buildkit's own parser
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
EXACT_TAG = re.compile(r"^[a-z0-9._/-]+:\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")  # name:X.Y.Z[-variant], never :latest or :7


def test_three_replicas_redis_and_haproxy_each_with_a_health_check():
    assert REPLICAS == ["statestream-1", "statestream-2", "statestream-3"]
    assert set(SERVICES) == {"redis", "haproxy", *REPLICAS}
    for name, svc in SERVICES.items():
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc.get("restart") == "unless-stopped", name
    published = [p.split(":")[0] for svc in SERVICES.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published)), published


@pytest.mark.parametrize("name", REPLICAS)
def test_every_replica_command_parses_with_the_server_cli(name):
    svc = SERVICES[name]
    args = build_parser().parse_args(svc["command"])
    assert args.state_store == "redis://redis:6379/0" and args.host == "0.0.0.0" and args.port == 50051
    assert args.models == ["/app/models"] and args.grace < int(svc["stop_grace_period"].rstrip("s"))
    health = svc["healthcheck"]["test"]
    assert health[:4] == ["CMD", "python", "-m", "statestream.server.app.healthcheck"]
    assert health[health.index("--target") + 1] == f"localhost:{args.port}"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["ports"] == [f"{9100 + int(name[-1])}:{args.metrics_port}"]


def test_redis_keeps_an_append_only_file_fsynced_every_second():
    cmd = SERVICES["redis"]["command"]
    assert cmd[0] == "redis-server"
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert opts["--appendonly"] == "yes" and opts["--appendfsync"] == "everysec"
    assert SERVICES["redis"]["volumes"] == ["redis-data:/data"] and "redis-data" in COMPOSE["volumes"]
    assert "everysec" in (ROOT / "docker-compose.yml").read_text().split("x-replica")[0]  # the promise is stated


def test_haproxy_gets_deploy_haproxy_cfg_whose_servers_are_the_replicas():
    hp = SERVICES["haproxy"]
    assert hp["image"].startswith("haproxy:2.6")
    assert hp["volumes"] == ["./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    servers = re.findall(r"^    server (\S+) (\S+):(\d+) ", CONFIG.read_text(), re.M)
    assert [(n, h) for n, h, _ in servers] == [(r, r) for r in REPLICAS]
    for _, host, port in servers:
        assert int(port) == build_parser().parse_args(SERVICES[host]["command"]).port
    assert hp["ports"] == ["50051:50051", "8404:8404"] and sorted(hp["depends_on"]) == REPLICAS


def haproxy_probe(port: int) -> list[str]:
    """The compose health check of the haproxy service, pointed at a local port."""
    test = SERVICES["haproxy"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and "/dev/tcp/127.0.0.1/8404" in test[3]
    return ["bash", "-c", test[3].replace("/8404", f"/{port}")]


def test_the_haproxy_health_check_command_against_a_real_haproxy():
    with ServerProcess(DEMO_MODEL) as srv, HAProxy([srv.target]) as proxy:
        probe = haproxy_probe(proxy.monitor_port)
        assert subprocess.run(probe, timeout=30).returncode == 0
        srv.kill()
        proxy.wait_state("r0", "DOWN")
        assert subprocess.run(probe, timeout=30).returncode != 0  # no replica left: 503


@pytest.fixture
def redis_server():
    from redisproc import RedisProcess  # the scale-out branch's fixture (skips locally, fails in CI without it)

    with RedisProcess() as r:
        yield r


def replica_args(redis_url: str) -> list[str]:
    """statestream-1's compose flags for a local server (ServerProcess adds the models and port 0)."""
    args = list(SERVICES["statestream-1"]["command"])
    args[args.index("--state-store") + 1] = redis_url
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--metrics-port") + 1] = "0"
    del args[args.index("--port"):args.index("--port") + 2]
    del args[args.index("--models"):args.index("--models") + 2]
    return args


def replica_probe(target: str) -> list[str]:
    """statestream-1's compose health check, pointed at `target`."""
    probe = SERVICES["statestream-1"]["healthcheck"]["test"][1:]
    probe[0] = sys.executable
    probe[probe.index("--target") + 1] = target
    return probe


def test_a_replica_started_with_the_compose_flags_on_a_real_redis_is_healthy(redis_server):
    with ServerProcess(DEMO_MODEL, *replica_args(redis_server.url)) as srv:
        r = subprocess.run(replica_probe(srv.target), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "SERVING", r.stdout + r.stderr
        assert "redis://127.0.0.1" in srv.output()


def test_the_replica_health_check_speaks_tls_when_the_replica_does(redis_server, tmp_path):
    """A TLS deployment sets STATESTREAM_TLS_CERT/KEY in the replica's environment; the same compose health check
    then probes over TLS (trusting STATESTREAM_TLS_CA, or the server's own certificate)."""
    import grpc
    from test_security import CA

    ca = CA("compose test CA")
    key, cert = ca.issue("statestream-server", server=True)
    (tmp_path / "server.key").write_bytes(key)
    (tmp_path / "server.pem").write_bytes(cert)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    tls = {"STATESTREAM_TLS_CERT": str(tmp_path / "server.pem"), "STATESTREAM_TLS_KEY": str(tmp_path / "server.key")}
    plain = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_TLS_")}
    with ServerProcess(DEMO_MODEL, *replica_args(redis_server.url), env=tls, wait_serving=False) as srv:
        srv.wait_until_serving(grpc.ssl_channel_credentials(ca.pem))
        for extra in ({}, {"STATESTREAM_TLS_CA": str(tmp_path / "ca.pem")}):
            r = subprocess.run(replica_probe(srv.target), env={**plain, **tls, **extra}, capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 0 and r.stdout.strip() == "SERVING", r.stdout + r.stderr
        r = subprocess.run(replica_probe(srv.target), env=plain, capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "UNAVAILABLE" in r.stderr   # plaintext to a TLS server: unhealthy
def test_the_replicas_share_one_image_built_once():
    images = {SERVICES[r]["image"] for r in REPLICAS} | {SINGLE["statestream"]["image"]}
    assert images == {f"statestream:{VERSION}"}
    builders = [name for name, svc in SERVICES.items() if "build" in svc]
    assert builders == ["statestream-1"]  # compose builds it once; statestream-2/3 run the same tag
    assert SERVICES["statestream-1"]["pull_policy"] == "build"  # never pulled: a registry's "statestream" is not ours
    assert all(SERVICES[r]["pull_policy"] == "never" for r in REPLICAS[1:])


def test_base_and_service_images_are_pinned_to_exact_tags():
    bases = [c.value[0] for c in DOCKERFILE if c.cmd == "FROM"]
    tags = bases + [svc["image"] for svc in (*SERVICES.values(), *SINGLE.values())]
    assert bases == ["python:3.11.7-slim-bookworm"]
    assert [t for t in tags if not EXACT_TAG.match(t)] == [], tags


def test_the_server_image_runs_as_a_non_root_user():
    users = [c for c in DOCKERFILE if c.cmd == "USER"]
    assert users, "the Dockerfile has no USER: the server would run as root"
    user = users[-1].value[0].split(":")[0]
    assert user not in ("root", "0")
    last_run = max(c.start_line for c in DOCKERFILE if c.cmd == "RUN")
    assert users[-1].start_line > last_run  # nothing after it runs as root
    created = [c.value[0] for c in DOCKERFILE if c.cmd == "RUN" and "useradd" in c.value[0]]
    assert created and re.search(rf"useradd\b.*\b{user}\b", created[0])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one of its parent folders wins."""
    def regex(pattern: str) -> re.Pattern:
        out = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return re.compile(out.replace(r"\?", "[^/]") + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for p in patterns:
        negate = p.startswith("!")
        if any(regex(p.lstrip("!")).match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_heavy_folders_out_and_what_the_dockerfile_copies_in():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    heavy = [".venv/lib/python3.11/site-packages/tensorflow/__init__.py", ".venv-triton/bin/python", ".tools/bin/ghz",
             "client/node/node_modules/@grpc/grpc-js/package.json", "bench/results/raw/run.json", ".git/HEAD",
             "client/go/go.mod", "tests/test_compose.py", "server/statestream/server/__pycache__/x.pyc",
             "statestream.egg-info/PKG-INFO"]
    assert [p for p in heavy if not dockerignored(p, patterns)] == []
    copied = [src for c in DOCKERFILE if c.cmd == "COPY" for src in c.value[:-1]]
    needed = copied + [f"{src}/{f.relative_to(ROOT / src)}" for src in copied if (ROOT / src).is_dir()
                       for f in (ROOT / src).rglob("*.py") if "__pycache__" not in f.parts]
    assert len(needed) > 20 and [p for p in needed if dockerignored(p, patterns)] == []


def test_what_the_dockerfile_copies_from_the_build_context_builds_the_server_package(tmp_path):
    """The image's `pip install ".[server]"`, without Docker: the Dockerfile's COPYs of what .dockerignore lets
    through, laid out under its WORKDIR, build a wheel with the stubs and the server's command."""
    import zipfile

    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    (workdir,) = [c.value[0] for c in DOCKERFILE if c.cmd == "WORKDIR"]
    app = tmp_path / "app"
    for copy in (c for c in DOCKERFILE if c.cmd == "COPY"):
        *sources, dest = copy.value
        dest = app / dest.removeprefix(workdir).lstrip("/")
        for src in sources:
            files = [ROOT / src] if (ROOT / src).is_file() else [f for f in (ROOT / src).rglob("*") if f.is_file()]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if dockerignored(rel, patterns):
                    continue
                target = dest / f.name if (ROOT / src).is_file() else dest / f.relative_to(ROOT / src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, target)
    r = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-q", "--no-deps",
                        "-w", str(tmp_path / "dist"), str(app)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("statestream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "statestream/v1/statestream_pb2_grpc.py" in names and "statestream/server/app/main.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "statestream-server = statestream.server.app.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert (app / "models" / "demo.onnx").is_file()
