"""A realistic model in the bench: 2 x LSTM(256) on 32 features with a Dense head, compute-bound.

The model is built with seeded weights and exported by the project's own exporter
(`statestream.export.export_model`, parity-checked against Keras) into `bench/.cache/` (not committed;
exported once, in its own process, ~1 minute with TensorFlow). Then, per intra-op thread count
(1, and 2 = `--intra-op-threads 2`), the server's throughput at batch 1 (unary Step, ghz c=4),
64 and 256 (StepFrame of that many sessions, and StepGroup of a group that size; ghz c=2) is set
against onnxruntime in-process at the same batch size and thread count.

    python -m bench.realistic export --out bench/.cache/realistic.onnx   # what the bench runs once
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import compute, scenarios
from .procs import ROOT, free_port, statestream_server

FEATURES, UNITS, OUTPUTS, SEED = 32, 256, 8, 11
NAME = f"lstm{UNITS}x2"
CACHE = ROOT / "bench" / ".cache" / f"f{FEATURES}-o{OUTPUTS}" / f"{NAME}.onnx"  # the server names a model by its file stem


def cache_path(units: int = UNITS) -> Path:
    """Where the 2 x LSTM(units) variant is cached (the bench's second size, bench.serial, uses LSTM(128))."""
    return CACHE.with_name(f"lstm{units}x2.onnx")
BATCHES = (1, 64, 256)
THREADS = (1, 2)


def build_model(units: int = UNITS):
    """Input(None, 32) -> LSTM(units) -> LSTM(units) -> Dense(8), seeded (the exporter needs functional Keras)."""
    import keras

    init = keras.initializers
    x = keras.Input(shape=(None, FEATURES), name="features")
    h = x
    for i in (1, 2):
        h = keras.layers.LSTM(units, return_sequences=True, name=f"lstm{i}", kernel_initializer=init.GlorotUniform(SEED + i),
                              recurrent_initializer=init.Orthogonal(seed=SEED + i))(h)
    y = keras.layers.Dense(OUTPUTS, name="head", kernel_initializer=init.GlorotUniform(SEED))(h)
    return keras.Model(x, y, name=f"lstm{units}x2")


def export(out: Path, units: int = UNITS) -> Path:
    from statestream.export import export_model

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    export_model(build_model(units), tmp, name=f"lstm{units}x2")
    tmp.replace(out)
    return out


def ensure_model(path: Path = CACHE, log=print, units: int = UNITS) -> Path:
    """The cached ONNX file, exported now (in a subprocess: TensorFlow stays out of the bench) if absent."""
    if path.exists():
        return path
    log(f"realistic model: exporting lstm{units}x2 with statestream.export.export_model into {path.relative_to(ROOT)}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "bench.realistic", "export", "--out", str(path), "--units", str(units)],
                       cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not path.exists():
        raise RuntimeError(f"export of the realistic model failed: {r.stderr[-1500:]}")
    return path


def measure(raw: Path, duration: float, ghz_cpus: int, log, threads=THREADS, batches=BATCHES) -> dict:
    """Server vs in-process ORT, per thread count and batch size; rows with ratio_ort."""
    path = ensure_model(log=log)
    _, man = compute.load(path)
    out_dir = raw / "realistic"
    frames = [b for b in batches if b > 1]
    plan = scenarios.Plan(model=man.name, features=man.features, concurrencies=[2], frame_sizes=frames,
                          duration=duration, stream_count=1, ghz_cpus=ghz_cpus, raw=out_dir, group_sizes=frames,
                          group_concurrencies=[2])
    plan.write_data()
    shape = f"{man.features} features -> " + " -> ".join(f"{l.cell}({l.units})" for l in man.layers) + \
            f" -> Dense({man.output_size})"
    rows = []
    for t in threads:
        mport = free_port()
        args = ["--intra-op-threads", str(t), "--max-sessions", str(plan.sessions_needed() + 1000)]
        with statestream_server(path, *args, metrics_port=mport) as srv:
            plan.open_groups(srv)
            for b, key, c in [(1, "unary", 4)] + [(b, f"{kind}{b}", 2) for b in frames for kind in ("frame", "group")]:
                if b not in batches:
                    continue
                scenarios.warm(plan, srv, f"server-t{t}", key)
                # ORT just before and just after the server's run (the better of the two): back to back, so a
                # neighbour's load hits both sides of the ratio alike
                before = compute.ort_ceiling(path, [b], seconds=0.5, threads=t)[0]
                s = scenarios.run_one(plan, srv, f"server-t{t}", key, c, mport)
                after = compute.ort_ceiling(path, [b], seconds=0.5, threads=t)[0]
                steps = s["msgs_per_s"] if b == 1 else s["session_steps_per_s"]
                o = max(before, after, key=lambda r: r.session_steps_per_s)
                row = {"threads": t, "batch": b, "rpc": {"unary": "Step"}.get(key, "StepFrame" if key.startswith("frame")
                                                                         else "StepGroup"),
                       "concurrency": c, "server": s, "server_session_steps_per_s": steps,
                       "ort_session_steps_per_s": o.session_steps_per_s, "ort_us_per_run": o.us_per_run,
                       "ratio_ort": steps / o.session_steps_per_s}
                rows.append(row)
                log(f"realistic t={t} B={b:<4d} {row['rpc']:9s} server {steps:10,.0f} session-steps/s (batch "
                    f"{s.get('mean_batch') or 0:.0f}, p99 {s['p99_ms']:.1f} ms) | ORT {o.session_steps_per_s:10,.0f} "
                    f"({o.us_per_run:,.0f} us/run) | {row['ratio_ort']:.2f}x | errors {s['errors']}")
    return {"model": str(path.relative_to(ROOT)), "shape": shape, "rows": rows,
            "how": "batch 1: unary Step, ghz c=4; batch N: StepFrame of N sessions and StepGroup of an N-member group, "
                   "ghz c=2; ORT: in-process, one timestep for B sessions per run, same intra-op threads, measured just "
                   "before and just after each server run (the better of the two)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.realistic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=("export",))
    p.add_argument("--out", type=Path, default=None, help="default bench/.cache/f32-o8/lstm<units>x2.onnx")
    p.add_argument("--units", type=int, default=UNITS)
    a = p.parse_args(argv)
    print(export(a.out or cache_path(a.units), a.units))
    return 0


if __name__ == "__main__":
    sys.exit(main())
