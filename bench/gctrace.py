"""Run a server module with its garbage collections timed: SIGUSR1 prints one `gctrace {...}` line of totals so far.

    python -m bench.gctrace statestream.server.app.main --models models/demo.onnx --port 0
    python -m bench.gctrace --no-freeze statestream.server.app.main ...   # the server without its gc.freeze()
    python -m bench.gctrace --switch-interval 0.0005 statestream.server.app.main ...   # sys.setswitchinterval first
    python -m bench.gctrace bench.null_server --port 0 --responses ...

    python -m bench.gctrace --full-collection models/demo.onnx   # a full collection's cost, before and after freeze

The line holds, per generation, the number of collections, their total and their longest pause in ms (wall
time between gc's start and stop callbacks), and the objects gc.freeze() holds; bench.latency reads it before
and after every run.
"""

from __future__ import annotations

import gc
import json
import runpy
import signal
import sys
import threading
import time

_totals = {g: [0, 0.0, 0.0] for g in range(3)}  # generation -> [collections, total ms, longest ms]
_started = [0.0]


def _callback(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _started[0]) * 1e3
    t = _totals[info["generation"]]
    t[0] += 1
    t[1] += ms
    t[2] = max(t[2], ms)


def _reporter() -> None:
    """A thread that answers every SIGUSR1 (blocked in every thread, so only sigwait sees it), whatever the loop does."""
    while True:
        signal.sigwait({signal.SIGUSR1})
        print("gctrace " + json.dumps({"gen": {g: {"n": t[0], "ms": round(t[1], 3), "max_ms": round(t[2], 3)}
                                               for g, t in _totals.items()},
                                       "frozen": gc.get_freeze_count()}), flush=True)


def full_collection(model: str, repeats: int = 7) -> dict:
    """CPU ms (this thread's: descheduling does not count) of one gc.collect() in a started server (create_server,
    in this process), the median of `repeats`: with nothing frozen, then in a second server started after
    gc.freeze() as `statestream-server` does (everything imported frozen, what start-up made not)."""
    import asyncio
    import statistics

    from statestream.server.app.config import Config
    from statestream.server.app.server import create_server

    def timed() -> float:
        times = []
        for _ in range(repeats):
            t = time.thread_time()
            gc.collect()
            times.append((time.thread_time() - t) * 1e3)
        return statistics.median(times)

    async def one(freeze: bool) -> dict:
        gc.collect()
        if freeze:
            gc.freeze()
        app, _ = await create_server(Config(models=[model], port=0, host="127.0.0.1"))
        try:
            return {"tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count(), "full_ms": timed()}
        finally:
            await app.stop(0)

    return {"nothing frozen": asyncio.run(one(False)), "frozen before start": asyncio.run(one(True))}


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--full-collection"]:
        print(json.dumps(full_collection(args[1])))
        return
    if args and args[0] == "--no-freeze":
        gc.freeze = lambda: None  # the server's start-up freeze becomes a no-op: the A/B of that change
        args = args[1:]
    if args and args[0] == "--switch-interval":  # how long a thread waiting for the GIL waits at most (default 5 ms)
        sys.setswitchinterval(float(args[1]))
        args = args[2:]
    if not args:
        sys.exit(__doc__)
    gc.callbacks.append(_callback)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # threads started from now on inherit the mask
    threading.Thread(target=_reporter, name="gctrace", daemon=True).start()
    sys.argv = [args[0], *args[1:]]
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
