"""A server made by create_server, in this process, on its own event-loop thread: fast tests of logic."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
from serverproc import DEMO_MODEL

from statestream.server.app.config import Config, parse_config
from statestream.server.app.server import create_server
from statestream.server.store.sqlite import SqliteStore
from statestream.v1 import statestream_pb2_grpc as pb_grpc


class InProcessServer:
    """create_server(Config(...)) on a loopback port 0; `call` runs a coroutine on the server's loop.

    srv = InProcessServer(max_queue_delay=0.01); srv.stub.Step(...); srv.stop()
    """

    def __init__(self, store=None, cfg: Config | None = None, clock=time.monotonic, **overrides):
        self.clock = clock  # idle expiry's clock: a FakeClock lets a test expire sessions with `expire()`
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="inproc-server", daemon=True)
        self._thread.start()
        cfg = cfg or Config(models=[str(DEMO_MODEL)], port=0, host="127.0.0.1", **overrides)
        self.app, self.port = self.call(create_server(cfg, store, clock))
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.StateStreamServiceStub(self.channel)

    @classmethod
    def from_args(cls, models, *args: str, store=None, clock=time.monotonic) -> "InProcessServer":
        """The same flags as ServerProcess(models, *args), parsed by the server's own parser."""
        models = [str(m) for m in (models if isinstance(models, (list, tuple)) else [models])]
        return cls(store, parse_config(["--models", *models, "--port", "0", "--host", "127.0.0.1", *args]), clock)

    def __enter__(self) -> "InProcessServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn, *args):
        """Run a plain function on the server's loop (where the table and batchers live); its result."""
        async def wrapper():
            return fn(*args)
        return self.call(wrapper())

    def session(self, sid: str, owner=None):
        return self.run(self.app.table.find, sid, owner)

    def expire(self, seconds: float) -> int:
        """Let `seconds` pass on the server's FakeClock, then sweep: how many idle sessions expired."""
        self.clock.advance(seconds)
        return self.call(self.app.sweep())

    def wait_until(self, pred, timeout: float = 10.0) -> None:
        """Poll `pred()` on the server's loop (where the table lives) until it is true; fail after `timeout`."""
        wait_until(lambda: self.run(pred), timeout)

    async def until(self, pred, timeout: float = 10.0) -> None:
        """`wait_until` for a test's own event loop: polls without blocking it (its calls must get sent)."""
        end = time.monotonic() + timeout
        while not self.run(pred):
            if time.monotonic() > end:
                raise AssertionError(f"condition not reached within {timeout} s")
            await asyncio.sleep(0.002)  # polling with a bound, not synchronisation by time

    def stop(self, grace: float = 2.0) -> None:
        self.channel.close()
        self.call(self.app.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class FakeClock:
    """A monotonic clock that moves only when told: `InProcessServer(clock=FakeClock())`, then `srv.expire(s)`."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(pred, timeout: float = 10.0, interval: float = 0.002) -> None:
    """Poll `pred()` until it is true; fail after `timeout` s. For conditions no event signals (a step queued
    in the server, a row gone from a store): polling with a bound, never a fixed sleep."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(interval)


class Gate:
    """An asyncio gate on the server's loop: `wait()` blocks while closed; counts who waits."""

    def __init__(self, srv: InProcessServer):
        self.srv = srv
        self.event = srv.call(_make_event())
        self.waiting = 0

    async def wait(self) -> None:
        self.waiting += 1
        try:
            await self.event.wait()
        finally:
            self.waiting -= 1

    def open(self) -> None:
        self.srv.loop.call_soon_threadsafe(self.event.set)

    def close(self) -> None:
        self.srv.loop.call_soon_threadsafe(self.event.clear)


async def _make_event() -> asyncio.Event:
    e = asyncio.Event()
    e.set()
    return e


class GatedSqliteStore(SqliteStore):
    """The real sqlite store whose batch commits wait at a gate: a test holds a step inside its commit."""

    gate: Gate | None = None

    async def commit(self, records, **kwargs):
        if self.gate is not None:
            await self.gate.wait()
        return await super().commit(records, **kwargs)
