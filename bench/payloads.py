"""ghz call data (JSON files): one step per worker session, streams, and frames of N sessions.

    python -m bench.payloads frame --size 256 --frames 8 --out frame256.json   # for a ghz --data-file
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SEED = 4


def _floats(rng: np.random.Generator, n: int) -> list[float]:
    return [round(float(v), 4) for v in rng.uniform(-1, 1, n)]


def step_request(model: str, features: int, session_id: str) -> dict:
    """A one-timestep StepRequest that opens its session on first use."""
    rng = np.random.default_rng(SEED)
    return {"session_id": session_id, "input": _floats(rng, features), "model": model, "open_if_missing": True}


def write_step(path: Path, model: str, features: int) -> Path:
    """Unary Step: every ghz worker steps its own session, ghz-{{.WorkerID}}."""
    path.write_text(json.dumps(step_request(model, features, "ghz-{{.WorkerID}}")))
    return path


def write_stream(path: Path, model: str, features: int) -> Path:
    """StreamSteps: each ghz worker's streams step its own session (ghz sends it --stream-call-count times)."""
    path.write_text(json.dumps([{"step": step_request(model, features, "ghzs-{{.WorkerID}}")}]))
    return path


def write_frames(path: Path, model: str, features: int, size: int, frames: int) -> Path:
    """StepFrame: `frames` distinct frames of `size` sessions each, as a JSON array.

    ghz sends array element (request number mod len), so with `frames` >= 2 x concurrency the frames in
    flight at once carry disjoint sessions, as gateways with their own devices would. The array is not a
    template, so ghz builds each message once (a templated 1,024-entry frame would cost the client
    more than the server).
    """
    rng = np.random.default_rng(SEED + size)
    data = [{"model": model, "session_ids": [f"f{size}-{k}-{i}" for i in range(size)],
             "inputs": _floats(rng, size * features), "timesteps": 1, "open_if_missing": True}
            for k in range(frames)]
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.payloads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("step", "stream", "frame"))
    p.add_argument("--model", default="demo")
    p.add_argument("--features", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="sessions per frame")
    p.add_argument("--frames", type=int, default=8, help="distinct frames (>= 2 x ghz concurrency)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.kind == "step":
        write_step(a.out, a.model, a.features)
    elif a.kind == "stream":
        write_stream(a.out, a.model, a.features)
    else:
        write_frames(a.out, a.model, a.features, a.size, a.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
