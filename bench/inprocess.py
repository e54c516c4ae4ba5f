"""The model's share of a compute-bound group step, in-process (no gRPC): onnxruntime and ModelRunner at batch B.

Process CPU per run, pinned to one core where it says so; `bench.serial` uses these beside its ghz runs.

    python -m bench.serial --skip wire          # these parts only, for the realistic model at two sizes
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

GROUP = 256


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def _cpu() -> float:
    return time.process_time()


def _feeds(sess, man, b: int, seed: int = 0) -> tuple[list[str], dict]:
    pairs = man.state_pairs()
    rng = np.random.default_rng(seed)
    feeds = {man.input: rng.uniform(-1, 1, (b, 1, man.features)).astype(np.float32)}
    for _, _, name, _, units in pairs:
        feeds[name] = rng.uniform(-0.1, 0.1, (b, units)).astype(np.float32)
    return [man.output] + [p[3] for p in pairs], feeds


def tensor_session(path: Path, intra_op_threads: int = 1, spinning: bool = False):
    """onnxruntime on the model file as exported, its state tensors fed one by one (ModelRunner serves a plain
    graph as a rows graph: engine/rowgraph.py), with the server's session options: onnxruntime alone."""
    import onnxruntime as ort

    from statestream.server.engine.model import session_options

    return ort.InferenceSession(str(path), session_options(intra_op_threads, spinning),
                                providers=["CPUExecutionProvider"])


def _timed(fn, per_call: int, seconds: float) -> dict:
    """Call fn until `seconds` passed: wall and process-CPU microseconds per batch of GROUP (fn runs per_call)."""
    for _ in range(3):
        fn()
    calls, c0, t0 = 0, _cpu(), time.perf_counter()
    while True:
        fn()
        calls += 1
        t = time.perf_counter()
        if t - t0 >= seconds and calls >= 3:
            break
    runs = calls * per_call
    return {"wall_us": (t - t0) / runs * 1e6, "cpu_us": (_cpu() - c0) / runs * 1e6,
            "session_steps_per_s": GROUP * runs / (t - t0)}


def inprocess(path: Path, seconds: float, rounds: int = 7) -> dict:
    """onnxruntime and ModelRunner at batch GROUP: 1 thread, intra-op 2 (spinning or not), 2 runs at once (two
    batches on an executor of 2 threads: onnxruntime releases the GIL). Interleaved short rounds; each keeps its
    best round (least wall time per batch): on a shared machine, the moments the neighbours left it alone."""
    from statestream.server.engine.model import ModelRunner

    sessions = {t: tensor_session(path, *t) for t in ((1, False), (2, False), (2, True))}
    one, ort1 = ModelRunner(path), sessions[(1, False)]
    names, feeds = _feeds(ort1, one.manifest, GROUP)
    other = _feeds(ort1, one.manifest, GROUP, seed=1)[1]
    rows = np.concatenate([feeds[n] for n in one.layout.input_names[1:]], axis=1)
    x = feeds[one.manifest.input]
    with ThreadPoolExecutor(2) as pool:
        def two():
            f = pool.submit(ort1.run, names, other)
            ort1.run(names, feeds)
            f.result()

        cases = {"ORT, 1 thread": (lambda: ort1.run(names, feeds), 1),
                 "ORT, intra-op 2": (lambda: sessions[(2, False)].run(names, feeds), 1),
                 "ORT, intra-op 2, spinning": (lambda: sessions[(2, True)].run(names, feeds), 1),
                 "ORT, 2 batches at once (executor of 2)": (two, 2),
                 "ModelRunner.run, 1 thread": (lambda: one.run(x, rows), 1)}
        best: dict[str, dict] = {}
        for _ in range(rounds):
            for name, (fn, per_call) in cases.items():
                r = _timed(fn, per_call, seconds / rounds)
                if name not in best or r["wall_us"] < best[name]["wall_us"]:
                    best[name] = r
    return best


def runner_variants(path: Path, batch: int, rounds: int = 15, seconds: float = 0.02) -> dict:
    """ModelRunner.run (the rows graph) against the ways the states were fed before it (issue 18, target 3's session
    options): the plain ORT run on contiguous feeds (the floor), StepLayout.run on InferenceSession.run
    (ModelRunner.run before 9385918 and before it bound small batches) and on the session's pybind `run` directly
    (ModelRunner's path above BIND_MAX from 9385918 until the rows graph), I/O binding to buffers bound once (inputs
    copied in, outputs written by ORT into preallocated OrtValues, then one copy out), and run_with_ort_values on
    OrtValues made once.
    Process CPU us per run, pinned to core 0; medians over interleaved rounds, and each variant's median paired
    difference to ModelRunner.run in the same round (< 0: cheaper)."""
    import onnxruntime as ort

    from statestream.server.engine.model import ModelRunner

    def go():
        r = ModelRunner(path)
        lay, sess = r.layout, tensor_session(path)
        names, feeds = _feeds(sess, r.manifest, batch)
        x = feeds[r.manifest.input]
        slab = np.zeros((batch + 2048, r.state_width), np.float32)
        rows = slab[1024:1024 + batch]
        rows[:] = np.concatenate([feeds[n] for n in lay.input_names[1:]], axis=1)
        ins = [np.empty((batch, s.size), np.float32) for s in lay.states]
        xbuf = np.empty_like(x)
        outs = [ort.OrtValue.ortvalue_from_shape_and_type([batch, 1, r.output_size], np.float32)] + \
               [ort.OrtValue.ortvalue_from_shape_and_type([batch, s.size], np.float32) for s in lay.states]
        arrays = [o.numpy() for o in outs]  # views of the OrtValues' memory
        io = sess.io_binding()
        io.bind_cpu_input(r.manifest.input, xbuf)
        for s, buf in zip(lay.states, ins):
            io.bind_cpu_input(s.input, buf)
        for n, o in zip(lay.out_names, outs):
            io.bind_ortvalue_output(n, o)

        def copy_in():
            np.copyto(xbuf, x)
            for block, buf in zip(lay.blocks, ins):
                np.copyto(buf, rows[:, block])

        def bound():
            copy_in()
            sess.run_with_iobinding(io)
            return arrays[0].copy(), np.concatenate(arrays[1:], axis=1)

        values = {n: ort.OrtValue.ortvalue_from_numpy(a)._ortvalue for n, a in zip(lay.input_names, [xbuf] + ins)}
        options = ort.RunOptions()

        def ortvalues():
            copy_in()
            y, *new = [v.numpy() for v in sess._sess.run_with_ort_values(values, lay.out_names, options)]
            return y, np.concatenate(new, axis=1)

        want = r.run(x, rows)
        for f in (bound, ortvalues):
            got = f()
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), f.__name__
        variants = {"ORT run, contiguous feeds (floor)": lambda: sess.run(names, feeds),
                    "ModelRunner.run": lambda: r.run(x, rows),
                    "StepLayout.run on InferenceSession.run": lambda: lay.run(sess.run, x, rows),
                    "StepLayout.run on InferenceSession._sess.run (ModelRunner above BIND_MAX before the rows graph)":
                        lambda: lay.run(lambda names_, feeds_: sess._sess.run(names_, feeds_, None), x, rows),
                    "I/O binding, bound once": bound,
                    "run_with_ort_values, OrtValues made once": ortvalues}
        per_round: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for k, f in variants.items():
                per_round[k].append(_timed(f, 1, seconds)["cpu_us"])
        base = np.array(per_round["ModelRunner.run"])
        return {k: {"cpu_us": median(v), "paired_diff_us": float(np.median(np.array(v) - base))}
                for k, v in per_round.items()}

    return pinned_to_core0(go)


def pinned_to_core0(fn):
    """Run fn() with this process pinned to core 0 (where the 1-core server runs), then unpin."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, before)


def handler_cpu(path: Path, seconds: float) -> float:
    """The server's StepGroup handler in-process (bench.hotpath: parse, engine, model, serialize; no gRPC), CPU us
    per call of this thread, the best of 5 repeats."""
    import asyncio

    from . import hotpath

    async def go():
        app = await hotpath._app(path)
        try:
            runner = next(iter(app.table.runners.values()))
            reqs = {k: v for k, v in hotpath._requests(runner.name, runner.features, [GROUP]).items()
                    if k == f"group{GROUP}"}
            return await hotpath._measure(app.service, runner.name, reqs, seconds, None, False, repeats=5)
        finally:
            await app.stop(0)

    return asyncio.run(go())[0][1]


def parts_inprocess(path: Path, seconds: float) -> dict:
    """CPU us per batch of GROUP, pinned to core 0: onnxruntime's run, ModelRunner.run (+ the rows graph's split and
    concat), the whole StepGroup handler (+ parse, engine, isfinite checks, slab write, serialize); and ORT's rate."""
    from statestream.server.engine.model import ModelRunner

    def go():
        runner, sess = ModelRunner(path), tensor_session(path)
        names, feeds = _feeds(sess, runner.manifest, GROUP)
        rows = np.concatenate([feeds[n] for n in runner.layout.input_names[1:]], axis=1)
        x = feeds[runner.manifest.input]
        ort_ = _timed(lambda: sess.run(names, feeds), 1, seconds)
        run = _timed(lambda: runner.run(x, rows), 1, seconds)
        return {"ort_cpu_us": ort_["cpu_us"], "ort_session_steps_per_s": ort_["session_steps_per_s"],
                "runner_cpu_us": run["cpu_us"], "handler_cpu_us": handler_cpu(path, seconds)}

    return pinned_to_core0(go)
