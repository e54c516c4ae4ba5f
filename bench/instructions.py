"""Run N calls of one `bench.hotpath` scenario in-process, for deterministic counts on a noisy machine.

Instructions (valgrind; the event loop's thread is file `-01`; the difference of two N cancels start-up):

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/a.cg \\
        python -m bench.instructions step-raw 100
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/b.cg \\
        python -m bench.instructions step-raw 600
    # instructions per call: (the `summary:` of /tmp/b.cg-01 - that of /tmp/a.cg-01) / 500

Python bytecodes per call, by function (sys.settrace's opcode events; slow, but exact):

    python -m bench.instructions step-raw 200 --bytecodes

Scenarios: step-raw, step-floats, stream100, streams16, frame256, frame256-floats, group256, frame1024, group1024
(bench.hotpath's requests).
Time-dependent paths (streams: BatchPolicy's solo window) count differently under valgrind's slowdown.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

from statestream.v1 import statestream_pb2 as pb

from .hotpath import MODEL, _app, _Context, _requests, _stream_call, _unary_call


class _Bytecodes:
    """Counts every bytecode executed while on, by function (file:qualified name)."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()

    def _trace(self, frame, event, arg):
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        code = frame.f_code
        key = f"{code.co_filename.split('site-packages/')[-1]}:{code.co_qualname}"
        counts = self.counts

        def local(frame, event, arg):
            if event == "opcode":
                counts[key] += 1
            return local
        return local

    def __enter__(self):
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)


async def _run(scenario: str, n: int, bytecodes: bool) -> None:
    app = await _app(MODEL)
    try:
        runner = next(iter(app.table.runners.values()))
        method, data, size = _requests(runner.name, runner.features, [256, 1024])[scenario]
        svc, ctx = app.service, _Context()
        if method == "StepGroup":
            await svc.OpenGroup(pb.OpenGroupRequest(model=runner.name, size=size, group_id=f"hp-g{size}"), ctx)
        parse = getattr(pb, f"{method}Request").FromString
        call = _stream_call(svc.StreamSteps, parse, data, size, ctx) if method == "StreamSteps" else \
            _unary_call(getattr(svc, method), parse, data, ctx)
        for _ in range(50):  # warm: sessions opened, bindings made
            await call()
        if bytecodes:
            with _Bytecodes() as b:
                for _ in range(n):
                    await call()
            print(f"{scenario}: {sum(b.counts.values()) / n:.0f} bytecodes per call")
            for key, count in b.counts.most_common(40):
                print(f"{count / n:9.1f}  {key}")
            return
        t0 = time.thread_time()
        for _ in range(n):
            await call()
        print(f"{scenario}: {n} calls, {(time.thread_time() - t0) / max(n, 1) * 1e6:.1f} us of loop-thread CPU each")
    finally:
        await app.stop(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario")
    p.add_argument("n", type=int, help="calls after 50 warm-up calls")
    p.add_argument("--bytecodes", action="store_true", help="count Python bytecodes per function")
    a = p.parse_args(argv)
    asyncio.run(_run(a.scenario, a.n, a.bytecodes))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
