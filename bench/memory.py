"""Memory of idle sessions: server RSS empty, then with 100k and 1M sessions opened by frames."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

from .procs import statestream_server

FRAME = 1024


async def open_sessions(target: str, model: str, features: int, start: int, stop: int, in_flight: int = 4) -> int:
    """Open sessions m{start}..m{stop-1} with StepFrame(open_if_missing) frames of 1,024; returns errors seen."""
    x = np.zeros(FRAME * features, dtype=np.float32).tolist()
    errors = 0
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                          ("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        queue = list(range(start, stop, FRAME))

        async def worker():
            nonlocal errors
            while queue:
                lo = queue.pop(0)
                ids = [f"m{i}" for i in range(lo, min(lo + FRAME, stop))]
                req = pb.StepFrameRequest(model=model, session_ids=ids, inputs=x[:len(ids) * features],
                                          timesteps=1, open_if_missing=True)
                resp = await stub.StepFrame(req, timeout=120)
                errors += len(resp.errors)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return errors


def measure(model: Path, name: str, features: int, counts: tuple[int, ...] = (100_000, 1_000_000)) -> dict:
    """RSS of a fresh server empty and after opening each count of sessions (cumulative)."""
    with statestream_server(model, "--max-sessions", str(max(counts) + FRAME)) as srv:
        time.sleep(0.5)
        empty = srv.rss_bytes()
        points = [{"sessions": 0, "rss_bytes": empty, "open_seconds": 0.0}]
        opened = 0
        for n in counts:
            t0 = time.perf_counter()
            errors = asyncio.run(open_sessions(srv.target, name, features, opened, n))
            dt = time.perf_counter() - t0
            opened = n
            time.sleep(0.5)
            rss = srv.rss_bytes()
            points.append({"sessions": n, "rss_bytes": rss, "open_seconds": dt, "entry_errors": errors,
                           "bytes_per_session": (rss - empty) / n})
    return {"method": f"fresh server, --max-sessions {max(counts) + FRAME}; sessions opened by StepFrame "
                      f"frames of {FRAME} with open_if_missing (one step each), then idle; VmRSS from /proc",
            "points": points}
