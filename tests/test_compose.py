"""docker-compose.yml (3 replicas on Redis behind HAProxy): every command parses, every health check works for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from haproxyproc import CONFIG, HAProxy
from serverproc import DEMO_MODEL, ROOT, ServerProcess

from statestream.server.app.config import build_parser

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
REPLICAS = sorted(name for name in SERVICES if name.startswith("statestream-"))


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
