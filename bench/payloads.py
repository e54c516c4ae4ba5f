"""ghz call data (JSON files): one step per worker session, streams, and frames of N sessions.

    python -m bench.payloads frame --size 256 --frames 8 --out frame256.json   # for a ghz --data-file
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from statestream.v1 import statestream_pb2 as pb

SEED = 4


def _floats(rng: np.random.Generator, n: int) -> list[float]:
    return [round(float(v), 4) for v in rng.uniform(-1, 1, n)]


def tensor(name: str, values: list[float], raw: bool) -> dict:
    """A request's tensor field in ghz's JSON: `name`_raw as base64 little-endian float32 (and raw_output), or floats."""
    if raw:
        return {f"{name}_raw": base64.b64encode(np.asarray(values, "<f4").tobytes()).decode(), "raw_output": True}
    return {name: values}


def step_request(model: str, features: int, session_id: str, raw: bool = True) -> dict:
    """A one-timestep StepRequest that opens its session on first use."""
    rng = np.random.default_rng(SEED)
    return {"session_id": session_id, **tensor("input", _floats(rng, features), raw), "model": model,
            "open_if_missing": True}


def write_step(path: Path, model: str, features: int, raw: bool = True) -> Path:
    """Unary Step: every ghz worker steps its own session, ghz-{{.WorkerID}}."""
    path.write_text(json.dumps(step_request(model, features, "ghz-{{.WorkerID}}", raw)))
    return path


def write_stream(path: Path, model: str, features: int, raw: bool = True) -> Path:
    """StreamSteps: each ghz worker's streams step its own session (ghz sends it --stream-call-count times)."""
    path.write_text(json.dumps([{"step": step_request(model, features, "ghzs-{{.WorkerID}}", raw)}]))
    return path


def write_frames(path: Path, model: str, features: int, size: int, frames: int, raw: bool = True) -> Path:
    """StepFrame: `frames` distinct frames of `size` sessions each, as a JSON array.

    ghz sends array element (request number mod len), so with `frames` >= 2 x concurrency the frames in
    flight at once carry disjoint sessions, as gateways with their own devices would. The array is not a
    template, so ghz builds each message once (a templated 1,024-entry frame would cost the client
    more than the server).
    """
    rng = np.random.default_rng(SEED + size)
    data = [{"model": model, "session_ids": [f"f{size}-{k}-{i}" for i in range(size)],
             **tensor("inputs", _floats(rng, size * features), raw), "timesteps": 1, "open_if_missing": True}
            for k in range(frames)]
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def write_groups(path: Path, features: int, size: int, groups: int) -> Path:
    """StepGroup: one step of each of `groups` groups of `size` members (ids g{size}-{k}, opened beforehand by
    `Plan.open_groups`), as a JSON array: ghz cycles through them, so calls in flight step distinct groups."""
    rng = np.random.default_rng(SEED + size)
    data = [{"group_id": group_id(size, k), **tensor("inputs", _floats(rng, size * features), True), "timesteps": 1}
            for k in range(groups)]
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def group_id(size: int, k: int) -> str:
    return f"g{size}-{k}"


METHODS = {"unary": ("Step", pb.StepRequest), "stream": ("StreamSteps", pb.StreamStepsRequest)}


def _floats_out(msg, name: str, n: int, raw: bool) -> None:
    if raw:
        setattr(msg, f"{name}_raw", bytes(4 * n))
    else:
        getattr(msg, name).extend([0.0] * n)


def response_for(method: str, req, features: int, output_size: int):
    """The response the real server gives to `req` (zeros for values), as a message of the same shape."""
    if method == "StreamSteps":
        return pb.StreamStepsResponse(step=response_for("Step", req.step, features, output_size),
                                      session_id=req.step.session_id)
    if method == "StreamFrames":
        return pb.StreamFramesResponse(frame=response_for("StepFrame", req.frame, features, output_size))
    if method == "Step":
        T = max(1, (len(req.input) or len(req.input_raw) // 4) // features)
        rows = T if req.return_sequences else 1
        r = pb.StepResponse(session_id=req.session_id, rows=rows, step_count=1000)
        _floats_out(r, "output", rows * output_size, req.raw_output)
        return r
    if method == "StepFrame":
        n, T = len(req.session_ids), req.timesteps or 1
        rows = T if req.return_sequences else 1
        r = pb.StepFrameResponse(rows=rows, step_counts=[1000] * n)
        _floats_out(r, "outputs", n * rows * output_size, req.raw_output)
        return r
    if method == "StepGroup":
        n = (len(req.inputs) or len(req.inputs_raw) // 4) // features // (req.timesteps or 1)
        rows = (req.timesteps or 1) if req.return_sequences else 1
        r = pb.StepGroupResponse(group_id=req.group_id, rows=rows, step_count=1000)
        _floats_out(r, "outputs", n * rows * output_size, req.raw_output)
        return r
    raise ValueError(f"no response shape for {method}")


def null_responses(data: dict[str, Path], features: int, output_size: int, out: Path) -> Path:
    """For bench.null_server: per method, [typical request length, base64 response bytes] of every data file."""
    table: dict[str, list] = {}
    for key, path in data.items():
        method, cls = METHODS.get(key) or (("StepGroup", pb.StepGroupRequest) if key.startswith("group")
                                          else ("StepFrame", pb.StepFrameRequest))
        first = json.loads(path.read_text().replace("{{.WorkerID}}", "0"))
        first = first[0] if isinstance(first, list) else first
        req = json_format.ParseDict(first, cls())
        resp = response_for(method, req, features, output_size)
        table.setdefault(method, []).append([req.ByteSize(), base64.b64encode(resp.SerializeToString()).decode()])
    out.write_text(json.dumps(table))
    return out


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
