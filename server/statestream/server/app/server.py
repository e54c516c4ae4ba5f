"""Server assembly: create_server() for tests, serve() with graceful SIGTERM for production."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from statestream.inference import grpc_service_pb2 as ipb
from statestream.server.api.auth import Auth
from statestream.server.api.kserve import TritonService
from statestream.server.api.v1 import StateStreamService
from statestream.server.api.wire import add_service
from statestream.server.app.config import Config
from statestream.server.app.metrics import Metrics
from statestream.server.app.ports import BindError, in_use_message
from statestream.server.engine.batcher import Batcher
from statestream.server.engine.directory import Directory
from statestream.server.engine.model import ModelRunner
from statestream.server.engine.policy import BatchPolicy
from statestream.server.engine.table import SessionTable
from statestream.server.engine.units import PendingCounter
from statestream.server.store.base import open_store
from statestream.server.store.persistence import Persistence
from statestream.v1 import statestream_pb2 as pb

log = logging.getLogger("statestream.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StateStreamService"].full_name
TRITON_SERVICE = ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class App:
    """One running server: gRPC server, service, batchers, health, the expiry sweeper."""

    def __init__(self, cfg: Config, store=None):
        self.cfg = cfg
        self.store_override = store  # tests: a StateStore object instead of --state-store
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> int:
        cfg = self.cfg
        self.health = health.aio.HealthServicer()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        opts = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", max(cfg.max_message_bytes, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0)]  # --workers: N processes share the port
        self.server = grpc.aio.server(options=opts)
        self.metrics = Metrics()
        self.service = StateStreamService(cfg.max_timesteps, Auth.from_file(cfg.auth_token_file), self.metrics)
        add_service(self.service, self.server)
        # Triton's protocol on the same port (KServe v2 `inference.GRPCInferenceService`).
        self.triton = TritonService(self.service, max_batch_size=cfg.max_batch_size, idle_seconds=cfg.idle_timeout)
        add_service(self.triton, self.server, TRITON_SERVICE, ipb)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, TRITON_SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            self.port = self.server.add_secure_port(address, _credentials(cfg)) if cfg.tls_cert \
                else self.server.add_insecure_port(address)
        except RuntimeError:  # grpc: "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            await self.server.stop(None)  # a server left to the garbage collector logs "Event loop is closed"
            raise BindError(in_use_message(cfg.host, cfg.port) if cfg.port else f"cannot bind {address}")
        await self.server.start()
        log.info("bound %s:%d; loading models (health NOT_SERVING until they are loaded)", cfg.host, self.port)

        # Models load after the port is up, so health answers NOT_SERVING meanwhile.
        if cfg.metrics_port != 0:
            self.metrics_port = self.metrics.serve(cfg.metrics_port if cfg.metrics_port > 0 else 0, cfg.host)
            log.info("Prometheus metrics on :%d/metrics", self.metrics_port)
        loop = asyncio.get_running_loop()
        runners = await loop.run_in_executor(None, _load_models, cfg)
        self.table = SessionTable(runners, cfg.max_sessions, cfg.idle_timeout, cfg.max_idle_timeout)
        self.store = self.store_override or open_store(cfg.state_store, shared=cfg.workers > 1)
        records = await loop.run_in_executor(None, self.store.load)
        restored = sum(self.table.adopt(r) is not None for r in records)
        log.info("state store %s: restored %d of %d stored sessions", self.store.description, restored, len(records))
        self.persistence = Persistence(self.store, self.table)
        self.executor = ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix="ort")
        pending = PendingCounter(cfg.max_pending)
        self.batchers = {
            name: Batcher(r, self.table, self.executor,
                          policy=BatchPolicy(cfg.max_batch_size, cfg.max_queue_delay),
                          max_pending_per_session=cfg.max_pending_per_session, pending=pending,
                          persistence=self.persistence, inline_max_batch=cfg.inline_max_batch, metrics=self.metrics)
            for name, r in runners.items()
        }
        for b in self.batchers.values():
            b.start()
        self.metrics.watch(self.table)
        self.service.attach(self.table, self.batchers, Directory(self.table, self.persistence, self.batchers))
        self._tasks.append(loop.create_task(self._sweep()))
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s:%d", sorted(runners), cfg.host, self.port)
        return self.port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_interval)
            gone = self.table.expire()
            if gone:
                log.debug("expired %d idle sessions", len(gone))
                try:
                    await self.persistence.expired(gone)
                except Exception as e:  # the rows stay; they expire again on the next start
                    log.warning("could not delete expired sessions from the store: %s", e)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new steps, finish in-flight calls within the grace period."""
        grace = self.cfg.grace if grace is None else grace
        if hasattr(self, "health"):
            await self.health.enter_graceful_shutdown()
        if hasattr(self, "service"):
            self.service.draining = True
        if self.server is not None:
            await self.server.stop(grace)
        for b in getattr(self, "batchers", {}).values():
            await b.drained()
            await b.stop()
        for t in self._tasks:
            t.cancel()
        if hasattr(self, "store"):
            if self.store.durable:  # every change was written through when it was answered
                log.info("persisted %d sessions to %s (written through)", len(self.table), self.store.description)
            closing = getattr(self.store, "aclose", None)  # a store with connections closes them on this loop
            await closing() if closing else self.store.close()
        if hasattr(self, "executor"):
            self.executor.shutdown(wait=True)
        log.info("stopped")


def _load_models(cfg: Config) -> dict[str, ModelRunner]:
    runners = {}
    for path in cfg.model_files():
        r = ModelRunner(path, intra_op_threads=cfg.intra_op_threads)
        runners[r.name] = r
        m = r.manifest
        log.info("model %r from %s: %d features -> %d outputs, layers %s, state %d floats/session",
                 r.name, path, m.features, m.output_size, [(layer.name, layer.cell, layer.units) for layer in m.layers], m.state_width)
    return runners


def _credentials(cfg: Config) -> grpc.ServerCredentials:
    with open(cfg.tls_key, "rb") as f:
        key = f.read()
    with open(cfg.tls_cert, "rb") as f:
        cert = f.read()
    ca = None
    if cfg.tls_client_ca:
        with open(cfg.tls_client_ca, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


async def create_server(cfg: Config, store=None) -> tuple[App, int]:
    """Start a server for `cfg` (port 0 picks a free port); returns (app, port). `store`: a StateStore object
    to use instead of cfg.state_store."""
    app = App(cfg, store)
    port = await app.start()
    return app, port


def started_hint(host: str) -> str:
    """What a person who just started the server needs next: how to stop it, who can reach it."""
    stop = "  stop: Ctrl-C (or SIGTERM: in-flight calls drain, then it exits 0)"
    if host in ("127.0.0.1", "localhost", "::1"):
        return stop + "\n  only this machine can connect: --host 0.0.0.0 listens on every interface"
    return stop


async def serve(cfg: Config, ready=None, worker: int | None = None) -> None:
    """Start, wait for SIGTERM/SIGINT, drain gracefully. A worker of --workers sets `ready` instead of printing."""
    log.info("config: %s (every other setting at its default: statestream-server --help)", cfg.as_flags())
    app, _ = await create_server(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is None:
        print(f"statestream-server listening on {cfg.host}:{app.port}", flush=True)
        print(started_hint(cfg.host), flush=True)
    else:
        log.info("worker %d (pid %d) serving on %s:%d, metrics port %d", worker, os.getpid(), cfg.host, app.port,
                 app.metrics_port)
        ready.set()
    await stop.wait()
    log.info("signal received: draining (grace %.1f s)", cfg.grace)
    await app.stop()
