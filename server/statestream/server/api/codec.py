"""Conversions between protobuf messages and numpy arrays, with input validation."""

from __future__ import annotations

import numpy as np

from statestream.contract.errors import InvalidArgument
from statestream.server.engine.model import ModelRunner
from statestream.v1 import statestream_pb2 as pb

# An adopted graph's state tensors and context window have no cell type: CELL_TYPE_UNSPECIFIED, state name "h".
CELLS = {"LSTM": pb.CELL_TYPE_LSTM, "GRU": pb.CELL_TYPE_GRU, "SimpleRNN": pb.CELL_TYPE_SIMPLE_RNN}


def model_info(runner: ModelRunner, max_timesteps: int) -> pb.ModelInfo:
    m = runner.manifest
    return pb.ModelInfo(
        name=runner.name,
        features=m.features,
        output_size=m.output_size,
        layers=[pb.LayerInfo(name=l.name, cell=CELLS.get(l.cell, pb.CELL_TYPE_UNSPECIFIED), units=l.units,
                             state_names=l.state_names)
                for l in m.layers],
        max_timesteps=max_timesteps,
        sha256=runner.sha256,
        version=runner.version,
        exported_with={k: str(v) for k, v in m.versions.items()},
        parity_max_abs_error=m.parity_max_abs_error,
    )


F32 = np.dtype("<f4")  # the raw wire format: little-endian float32, like KServe's raw contents


def raw_floats(data: bytes, what: str) -> np.ndarray:
    """Raw bytes as a read-only float32 view (no copy, no per-element work); the size must be a multiple of 4."""
    if len(data) % 4:
        raise InvalidArgument(f"{what} has {len(data)} bytes; expected a multiple of 4 (little-endian float32)")
    return np.frombuffer(data, dtype=F32)


def one_of(values, data: bytes, name: str) -> tuple[object, bool]:
    """(the values a request carries, raw?): exactly one of `name` (repeated float) and `name`_raw (bytes)."""
    if data:
        if len(values):
            raise InvalidArgument(f"both {name} ({len(values)} floats) and {name}_raw ({len(data)} bytes) are set; "
                                  "send exactly one")
        return data, True
    return values, False


def parse_input(runner: ModelRunner, values, what: str = "input", raw: bytes = b"") -> np.ndarray:
    """Request floats (or raw float32 bytes) as float32 [T, F]; INVALID_ARGUMENT names expected vs got. (Limits and
    NaN/Inf are the engine's to check, once for every protocol.)"""
    values, is_raw = one_of(values, raw, what)
    F = runner.features
    if is_raw:
        if len(values) % (4 * F):
            raise InvalidArgument(f"{what}_raw has {len(values)} bytes ({len(values) / 4:g} values); model "
                                  f"{runner.name!r} expects T x {F} float32 = a multiple of {4 * F} bytes (T >= 1)")
        x = raw_floats(values, f"{what}_raw")
    else:
        x = np.array(values[:] if len(values) < 64 else values, dtype=np.float32)  # a list converts 2x faster when short
    n = x.size
    if n == 0 or n % F:
        got = f"{what}_raw has {n} values ({4 * n} bytes)" if is_raw else f"{what} has {n} values"
        raise InvalidArgument(f"{got}; model {runner.name!r} expects T x {F} (T >= 1)")
    return x.reshape(n // F, F)


def parse_block(runner: ModelRunner, values, raw: bytes, n: int, T: int, what: str = "inputs") -> np.ndarray:
    """An N x T x F block from repeated floats or raw bytes (exactly one) as float32 [N, T, F]; not checked for NaN."""
    values, is_raw = one_of(values, raw, what)
    F = runner.features
    want = n * T * F
    if is_raw:
        if len(values) != 4 * want:
            raise InvalidArgument(f"{what}_raw has {len(values)} bytes; model {runner.name!r} expects "
                                  f"N x T x F x 4 = {n} x {T} x {F} x 4 = {4 * want} bytes")
        x = raw_floats(values, f"{what}_raw")
    else:
        x = np.asarray(values, dtype=np.float32)
        if x.size != want:
            raise InvalidArgument(
                f"{what} has {x.size} values; model {runner.name!r} expects N x T x F = {n} x {T} x {F} = {want}")
    return x.reshape(n, T, F)


def put_floats(msg, name: str, values: np.ndarray, raw: bool) -> None:
    """Fill msg.`name` (repeated float) or, raw, msg.`name`_raw (bytes) with float32 values."""
    if raw:
        setattr(msg, f"{name}_raw", np.ascontiguousarray(values, dtype=F32).tobytes())
    else:
        getattr(msg, name).extend(values.ravel().tolist())


def layer_states(runner: ModelRunner, rows: np.ndarray, raw: bool = False) -> list[pb.LayerState]:
    """A state row [W] (or N rows [N,W], then N x units values each) as one LayerState per layer."""
    parts = iter(runner.split_state(rows))
    out = []
    for layer in runner.manifest.layers:
        msg = pb.LayerState(layer=layer.name)
        put_floats(msg, "h", next(parts), raw)
        if len(layer.state_names) == 2:
            put_floats(msg, "c", next(parts), raw)
        out.append(msg)
    return out


def parse_layer_states(runner: ModelRunner, layers) -> np.ndarray:
    """Every layer's states from LayerState messages as one row [W]; names and sizes checked."""
    by_name = {}
    for msg in layers:
        if msg.layer in by_name:
            raise InvalidArgument(f"layer {msg.layer!r} is given twice")
        by_name[msg.layer] = msg
    expected = [l.name for l in runner.manifest.layers]
    unknown = sorted(set(by_name) - set(expected))
    missing = [n for n in expected if n not in by_name]
    if unknown or missing:
        raise InvalidArgument(
            f"states must name every layer of model {runner.name!r}: {expected}; "
            + (f"unknown {unknown} " if unknown else "") + (f"missing {missing}" if missing else ""))
    parts = []
    for layer in runner.manifest.layers:
        msg = by_name[layer.name]
        for kind in ("h", "c"):
            values, is_raw = one_of(getattr(msg, kind), getattr(msg, f"{kind}_raw"), f"layer {layer.name!r} {kind}")
            if is_raw:
                values = raw_floats(values, f"layer {layer.name!r} {kind}_raw")
            if kind in layer.state_names:
                if len(values) != layer.units:
                    raise InvalidArgument(
                        f"layer {layer.name!r} {kind}{'_raw' if is_raw else ''} has {len(values)} values"
                        + (f" ({len(values) * 4} bytes)" if is_raw else "") + f"; expected {layer.units}")
                parts.append(np.asarray(values, dtype=np.float32))
            elif len(values):
                raise InvalidArgument(f"layer {layer.name!r} is {layer.cell}: it has no {kind} state")
    row = np.concatenate(parts)
    if not np.isfinite(row).all():
        raise InvalidArgument("states contain NaN or Inf")
    return row


def step_response(runner: ModelRunner, sid: str, output: np.ndarray, state: np.ndarray, step_count: int,
                  seq: int | None, replayed: bool, req, into: pb.StepResponse | None = None) -> pb.StepResponse:
    """One step's answer (output [T, O], states [W]) as the StepRequest `req` asked for it; filled into `into` (a
    stream reply's own field: no copy of the message into it) or a new message."""
    raw = req.raw_output
    out = output if req.return_sequences else output[-1:]
    if into is None:
        msg = pb.StepResponse(session_id=sid, rows=out.shape[0], step_count=step_count, replayed=replayed)
    else:
        msg = into
        msg.session_id, msg.rows, msg.step_count, msg.replayed = sid, out.shape[0], step_count, replayed
    put_floats(msg, "output", out, raw)
    if seq is not None:
        msg.sequence_number = seq
    if req.return_state:
        msg.states.extend(layer_states(runner, state, raw))
    return msg


def session_state(runner: ModelRunner, s, row: np.ndarray, raw: bool = False) -> pb.SessionState:
    return pb.SessionState(session_id=s.id, model=s.model, layers=layer_states(runner, row, raw),
                           step_count=s.step_count, last_sequence_number=s.last_seq, model_version=runner.version,
                           model_sha256=runner.sha256)
