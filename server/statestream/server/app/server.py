"""Server assembly: create_server() for tests, serve() with graceful SIGTERM for production."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from statestream.inference import grpc_service_pb2 as ipb
from statestream.server.api.auth import Auth
from statestream.server.api.kserve import TritonService
from statestream.server.api.v1 import StateStreamService
from statestream.server.api.wire import add_service
from statestream.server.app import loops
from statestream.server.app.config import Config
from statestream.server.app.metrics import Metrics
from statestream.server.app.ports import BindError, in_use_message
from statestream.server.app.probes import add_health, add_reflection
from statestream.server.engine.batcher import Batcher
from statestream.server.engine.directory import Directory
from statestream.server.engine.engine import Engine
from statestream.server.engine.groups import Groups
from statestream.server.engine.model import ModelRunner
from statestream.server.engine.policy import BatchPolicy
from statestream.server.engine.repository import Repository
from statestream.server.engine.table import SessionTable
from statestream.server.engine.units import PendingCounter
from statestream.server.store.base import StoreUnreadable
from statestream.server.store.persistence import Persistence
from statestream.server.store.spec import open_store
from statestream.v1 import statestream_pb2 as pb

log = logging.getLogger("statestream.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StateStreamService"].full_name
TRITON_SERVICE = ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_STORE_CHECK_SECONDS = 1.0  # how often health asks the store whether it can take writes


class App:
    """One running server: gRPC server, service, batchers, health, the expiry sweeper."""

    def __init__(self, cfg: Config, store=None, clock=time.monotonic):
        self.cfg = cfg
        self.store_override = store  # tests: a StateStore object instead of --state-store
        self.clock = clock           # idle expiry's clock (tests: a fake one, then `sweep()`)
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
        auth = Auth.from_file(cfg.auth_token_file)
        self.service = StateStreamService(cfg.max_timesteps, auth, self.metrics)
        add_service(self.service, self.server)
        # Triton's protocol on the same port (KServe v2 `inference.GRPCInferenceService`).
        self.triton = TritonService(auth, self.metrics, max_batch_size=cfg.max_batch_size,
                                    idle_seconds=cfg.idle_timeout)
        add_service(self.triton, self.server, TRITON_SERVICE, ipb)
        add_health(self.health, self.server)
        add_reflection((SERVICE_NAME, TRITON_SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME),
                       self.server)
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
        store = self.store_override or open_store(cfg.state_store, shared=cfg.workers > 1, timeout=cfg.store_timeout)
        self.table = SessionTable(runners, cfg.max_sessions, cfg.idle_timeout, cfg.max_idle_timeout,
                                  clock=self.clock, shared=getattr(store, "shared", False),
                                  frame_index=cfg.frame_index)
        try:
            records = await loop.run_in_executor(None, store.load)
        except StoreUnreadable:
            store.close()
            raise
        self.store = store
        restored = self.table.restore(records)
        log.info("state store %s: restored %d of %d stored sessions", self.store.description, restored, len(records))
        for rec, why in list(self.table.stranded.values())[:10]:
            log.warning("stored session %r is not restored: %s", rec.id, why)
        persistence = Persistence(self.store)
        self.executor = ThreadPoolExecutor(max_workers=max(2, len(runners)), thread_name_prefix="ort")
        pending = PendingCounter(cfg.max_pending)
        policy = BatchPolicy(cfg.max_batch_size, cfg.max_queue_delay, inline_max_batch=cfg.inline_max_batch)
        self.batchers = {}  # one per loaded model version, keyed (name, version)

        def add_batcher(r: ModelRunner) -> None:
            b = self.batchers[r.key] = Batcher(r, self.table, self.executor, pending=pending, persistence=persistence,
                                               metrics=self.metrics, policy=policy)
            b.start()

        async def drop_batcher(key) -> None:
            b = self.batchers.pop(key)
            await b.drained()
            await b.stop()

        for r in runners.values():
            add_batcher(r)
        self.metrics.watch(self.table)
        self.engine = Engine(self.table, Directory(self.table, persistence, self.batchers), self.batchers,
                             Groups(cfg.max_groups, cfg.max_entries), max_timesteps=cfg.max_timesteps,
                             max_entries=cfg.max_entries, max_request_timesteps=cfg.max_request_timesteps,
                             max_pending_per_session=cfg.max_pending_per_session)
        self.repository = Repository(self.engine, cfg.model_files, partial(_load_model, cfg), add_batcher,
                                     drop_batcher)
        for r in runners.values():
            self.repository.loaded(r)
        self.engine.repository = self.repository
        self.service.attach(self.engine)
        self.triton.attach(self.engine)
        self._tasks.append(loop.create_task(self._sweep()))
        self._tasks.append(loop.create_task(self._watch_store()))
        if cfg.repository_poll > 0:
            self._tasks.append(loop.create_task(self._poll_repository()))
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s:%d", [f"{n}:{v}" for n, v in sorted(runners)], cfg.host, self.port)
        return self.port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Expire idle sessions now (the sweeper calls this every --sweep-interval; tests with a fake clock too),
        then free the unloaded model versions left without sessions."""
        try:
            n = await self.engine.sweep()
        except Exception as e:  # the rows stay; they expire again on the next start
            log.warning("could not delete expired sessions from the store: %s", e)
            return 0
        finally:
            await self.repository.reap()
        if n:
            log.debug("expired %d idle sessions", n)
        return n

    async def _poll_repository(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.repository_poll)
            await self.reload()

    async def reload(self) -> dict:
        """Rescan the model repository now (the poller, SIGHUP): load new versions, unload removed ones; the load
        errors by (model, version)."""
        try:
            return await self.repository.sync()
        except Exception as e:  # a reload never takes the server down
            log.exception("model repository reload failed: %s", e)
            return {("", 0): str(e)}

    async def _watch_store(self) -> None:
        """Health follows the store: NOT_SERVING while it cannot take writes, SERVING again when it can (a
        sqlite store whose file was removed stays NOT_SERVING until a restart; a Redis that answers again
        recovers)."""
        failing: str | None = None
        while True:
            await asyncio.sleep(_STORE_CHECK_SECONDS)
            try:
                problem = await self.store.check()
            except Exception as e:  # a check that fails is a store that cannot be trusted to write
                problem = f"the state store's check failed ({type(e).__name__}: {e})"
            if (problem is None) == (failing is None):
                continue
            failing = problem
            status = health_pb2.HealthCheckResponse.NOT_SERVING if problem else health_pb2.HealthCheckResponse.SERVING
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)
            if problem:
                log.error("health NOT_SERVING: %s", problem)
            else:
                log.info("health SERVING: the state store %s answers again", self.store.description)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new steps, finish in-flight calls within the grace period."""
        grace = self.cfg.grace if grace is None else grace
        if hasattr(self, "health"):
            await self.health.enter_graceful_shutdown()
        if hasattr(self, "engine"):
            self.engine.draining = True
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


def _load_model(cfg: Config, path, name: str, version: int) -> ModelRunner:
    r = ModelRunner(path, name, intra_op_threads=cfg.intra_op_threads, version=version,
                    spinning=bool(cfg.intra_op_spinning))
    m = r.manifest
    log.info("model %r version %d from %s (sha256 %s): %d features -> %d outputs, layers %s, state %d floats/session",
             r.name, version, path, r.sha256[:16], m.features, m.output_size,
             [(ly.name, ly.cell, ly.units) for ly in m.layers], m.state_width)
    return r


def _load_models(cfg: Config) -> dict:
    runners = {}
    for path, name, version in cfg.model_files():
        r = _load_model(cfg, path, name, version)
        runners[r.key] = r
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


async def create_server(cfg: Config, store=None, clock=time.monotonic) -> tuple[App, int]:
    """Start a server for `cfg` (port 0 picks a free port); returns (app, port). `store`: a StateStore object
    to use instead of cfg.state_store; `clock`: the idle-expiry clock."""
    app = App(cfg, store, clock)
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
    faulthandler.enable()  # a fatal signal (SIGBUS from a damaged memory-mapped file) leaves a line in the log
    # What the imports made (modules, protobuf descriptors: ~40,000 objects) lives as long as the process: frozen,
    # a full collection no longer walks it (~20 ms of CPU less per full collection on this machine; `python -m
    # bench.gctrace --full-collection`). Models and sessions come later and stay collectable (a model version
    # unloaded by a reload is freed).
    gc.collect()
    gc.freeze()
    app = App(cfg)
    try:
        await app.start()
    except StoreUnreadable as e:
        log.error("%s", e)
        await app.stop(0)
        raise SystemExit(2) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()

    def reload() -> None:  # SIGHUP: rescan the model repository
        task = loop.create_task(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("event loop: %s (--loop %s); %d objects of the imports frozen out of the garbage collector",
             loops.running(), cfg.loop, gc.get_freeze_count())
    if ready is None:
        print(f"statestream-server listening on {cfg.host}:{app.port} (event loop: {loops.running()})", flush=True)
        print(started_hint(cfg.host), flush=True)
    else:
        log.info("worker %d (pid %d) serving on %s:%d, metrics port %d", worker, os.getpid(), cfg.host, app.port,
                 app.metrics_port)
        ready.set()
    await stop.wait()
    log.info("signal received: draining (grace %.1f s)", cfg.grace)
    await app.stop()
