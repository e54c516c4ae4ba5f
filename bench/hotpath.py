"""The server's own CPU per request, in-process (no gRPC): parse the request bytes, run the handler, serialize.

Less noisy than ghz on a shared machine: it times exactly the work the server adds on top of the transport,
for unary Step (raw and repeated floats), a stream of 100 steps, 16 streams at once (their steps share model runs,
as under ghz -c 16), StepFrame and StepGroup of N, with the demo model. Printed as
microseconds of the event loop thread's CPU time per call (the best of 7 short repeats, which is what
neighbours on a shared machine disturb least) and session-steps per second of server CPU, on the event loop the
server runs on (--loop, auto: uvloop when installed).

    python -m bench.hotpath                 # Step, frames and groups of 256 and 1024
    python -m bench.hotpath --profile frame256   # cProfile of one scenario, top functions
    python -m bench.hotpath --only group256 --seconds 10   # one scenario (to sample it with py-spy)
    python -m bench.hotpath --floor         # beside the floor server's handlers (bench.floor_server): the engine's cost
    python -m bench.hotpath --floor --evict 8192   # each call on cold caches (8 MB of other memory touched before it)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import mmap
import pstats
import sys
import time
from pathlib import Path

import numpy as np

from statestream.server.app import loops
from statestream.v1 import statestream_pb2 as pb

from .procs import ROOT

MODEL = ROOT / "models" / "demo.onnx"


class _Context:
    """Stands in for grpc.aio's context: no metadata, abort raises."""

    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return None  # the caller set no deadline

    async def abort(self, code, message):
        raise RuntimeError(f"{code}: {message}")


async def _app(path: Path):
    from statestream.server.app.config import Config
    from statestream.server.app.server import create_server

    cfg = Config(models=[str(path)], host="127.0.0.1", port=0, metrics_port=0, max_sessions=200_000)
    app, _ = await create_server(cfg)
    return app


def _requests(model: str, features: int, sizes: list[int]) -> dict[str, tuple[str, bytes, int]]:
    """name -> (method, serialized request, session-steps per call)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, features).astype(np.float32)
    out = {
        "step-raw": ("Step", pb.StepRequest(session_id="hp-raw", input_raw=x.tobytes(), raw_output=True, model=model,
                                            open_if_missing=True).SerializeToString(), 1),
        "step-floats": ("Step", pb.StepRequest(session_id="hp-rep", input=x, model=model,
                                               open_if_missing=True).SerializeToString(), 1),
        "stream100": ("StreamSteps", pb.StreamStepsRequest(step=pb.StepRequest(
            session_id="hp-stream", input_raw=x.tobytes(), raw_output=True, model=model,
            open_if_missing=True)).SerializeToString(), 100),
        # 16 streams of 100 steps at once, a message of each per loop turn: their steps share model runs
        "streams16": ("StreamSteps", [pb.StreamStepsRequest(step=pb.StepRequest(
            session_id=f"hp-streams-{k}", input_raw=x.tobytes(), raw_output=True, model=model,
            open_if_missing=True)).SerializeToString() for k in range(16)], 1600),
    }
    for n in sizes:
        xs = rng.uniform(-1, 1, (n, features)).astype(np.float32)
        out[f"frame{n}"] = ("StepFrame", pb.StepFrameRequest(
            model=model, session_ids=[f"hp-f{n}-{i}" for i in range(n)], inputs_raw=xs.tobytes(), raw_output=True,
            open_if_missing=True).SerializeToString(), n)
        out[f"frame{n}-floats"] = ("StepFrame", pb.StepFrameRequest(
            model=model, session_ids=[f"hp-f{n}-{i}" for i in range(n)], inputs=xs.ravel(),
            open_if_missing=True).SerializeToString(), n)
        out[f"group{n}"] = ("StepGroup", pb.StepGroupRequest(
            group_id=f"hp-g{n}", inputs_raw=xs.tobytes(), raw_output=True).SerializeToString(), n)
    return out


def _unary_call(handler, parse, data: bytes, ctx):
    async def call():
        (await handler(parse(data), ctx)).SerializeToString()

    return call


def _stream_call(handler, parse, data: bytes | list[bytes], n: int, ctx):
    """One stream of n steps: parse, step and serialize each message. A list of messages: one stream each, all at
    once, n steps in all; each stream's next message arrives one loop turn after its previous one."""
    streams = data if isinstance(data, list) else [data]
    per_stream = n // len(streams)

    async def requests(message: bytes):
        for _ in range(per_stream):
            yield parse(message)
            if len(streams) > 1:
                await asyncio.sleep(0)

    async def one(message: bytes):
        async for reply in handler(requests(message), ctx):
            reply.SerializeToString()

    async def call():
        if len(streams) == 1:
            await one(streams[0])
        else:
            await asyncio.gather(*(one(m) for m in streams))

    return call


async def _measure(svc, model: str, reqs, seconds: float, only: str | None, profile: bool,
                   repeats: int = 7, open_groups: bool = True, evict: int = 0) -> list[tuple[str, float, float]]:
    """Each scenario's best thread CPU per call through the service `svc` (the server's, or the floor's, which opens
    groups on their first step: open_groups False). `evict` KB: before each call, read and write that much other
    memory (untimed), as the transport, the kernel and the load generator do between two calls at the wire."""
    junk = np.frombuffer(mmap.mmap(-1, evict * 1024), np.float32) if evict else None  # 4 KB pages, as most memory
    ctx = _Context()
    for name, (method, _, n) in reqs.items():
        if method == "StepGroup" and open_groups:
            await svc.OpenGroup(pb.OpenGroupRequest(model=model, size=n, group_id=f"hp-g{n}"), ctx)
    rows = []
    for name, (method, data, n) in reqs.items():
        if only and name != only:
            continue
        parse = getattr(pb, f"{method}Request").FromString
        handler = getattr(svc, method)

        call = _stream_call(handler, parse, data, n, ctx) if method == "StreamSteps" else \
            _unary_call(handler, parse, data, ctx)

        for _ in range(20):
            await call()
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        best = float("inf")
        for _ in range(repeats):  # the best of short repeats, in this thread's CPU time: least hurt by neighbours
            calls, t0, deadline = 0, time.thread_time(), time.perf_counter() + seconds / repeats
            if junk is None:
                while time.perf_counter() < deadline or calls < 3:
                    await call()
                    calls += 1
                best = min(best, (time.thread_time() - t0) / calls)
                continue
            spent = 0
            while time.perf_counter() < deadline or calls < 3:
                junk += 1.0
                t = time.thread_time_ns()
                await call()
                spent += time.thread_time_ns() - t
                calls += 1
            best = min(best, spent / 1e9 / calls)
        if prof:
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
            print(buf.getvalue())
        us = best * 1e6
        rows.append((name, us, n / us * 1e6))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=MODEL, help="an exported .onnx (default the demo)")
    p.add_argument("--sizes", default="256,1024")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--profile", metavar="SCENARIO", help="cProfile one scenario (e.g. frame256)")
    p.add_argument("--only", metavar="SCENARIO", help="time one scenario (e.g. under py-spy)")
    p.add_argument("--floor", action="store_true", help="also time the floor server's handlers, interleaved")
    p.add_argument("--evict", type=int, default=0, metavar="KB",
                   help="before each call, read and write KB of other memory (untimed): the calls run on cold caches, "
                        "as at the wire at low concurrency")
    p.add_argument("--loop", choices=loops.LOOPS, default="auto",
                   help="the event loop, as statestream-server's --loop (auto: uvloop when installed, as the server)")
    a = p.parse_args(argv)

    async def run():
        print(f"event loop: {loops.running()}")
        app = await _app(a.model)
        try:
            runner = next(iter(app.table.runners.values()))
            reqs = _requests(runner.name, runner.features, [int(s) for s in a.sizes.split(",")])
            only = a.profile or a.only
            rows = await _measure(app.service, runner.name, reqs, a.seconds, only, bool(a.profile), evict=a.evict)
            if not a.floor:
                return [(*r, None) for r in rows]
            from .floor_server import FloorService

            floor = await _measure(FloorService(runner), runner.name, reqs, a.seconds, only, False, open_groups=False,
                                   evict=a.evict)
            return [(*r, f[1]) for r, f in zip(rows, floor)]
        finally:
            await app.stop(0)

    for name, us, steps, floor_us in loops.run(run(), a.loop):
        beside = "" if floor_us is None else f"   floor {floor_us:9.1f} us/call, server / floor {floor_us / us:.2f}x"
        print(f"{name:12s} {us:9.1f} us/call  {steps:12,.0f} session-steps/s of server CPU{beside}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
