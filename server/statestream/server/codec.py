"""Conversions between protobuf messages and numpy arrays, with input validation."""

from __future__ import annotations

import numpy as np

from statestream.v1 import statestream_pb2 as pb

from .errors import InvalidArgument
from .model import ModelRunner
from .sessions import StepResult

CELLS = {"LSTM": pb.CELL_TYPE_LSTM, "GRU": pb.CELL_TYPE_GRU, "SimpleRNN": pb.CELL_TYPE_SIMPLE_RNN}


def model_info(runner: ModelRunner, max_timesteps: int) -> pb.ModelInfo:
    m = runner.manifest
    return pb.ModelInfo(
        name=runner.name,
        features=m.features,
        output_size=m.output_size,
        layers=[pb.LayerInfo(name=l.name, cell=CELLS[l.cell], units=l.units, state_names=l.state_names)
                for l in m.layers],
        max_timesteps=max_timesteps,
        sha256=runner.sha256,
        exported_with={k: str(v) for k, v in m.versions.items()},
        parity_max_abs_error=m.parity_max_abs_error,
    )


def parse_input(runner: ModelRunner, values, max_timesteps: int, what: str = "input") -> np.ndarray:
    """Request floats as float32 [T, F]; INVALID_ARGUMENT names expected vs got."""
    x = np.array(values[:] if len(values) < 64 else values, dtype=np.float32)  # a list converts 2x faster when short
    F = runner.features
    n = x.size
    if n == 0 or n % F:
        raise InvalidArgument(f"{what} has {n} values; model {runner.name!r} expects T x {F} (T >= 1)")
    T = n // F
    if T > max_timesteps:
        raise InvalidArgument(f"{what} has T={T} timesteps; the limit is {max_timesteps} (--max-timesteps)")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise InvalidArgument(f"{what} value {bad} is {x[bad]}; NaN and Inf are refused")
    return x.reshape(T, F)


def layer_states(runner: ModelRunner, rows: np.ndarray) -> list[pb.LayerState]:
    """A state row [W] (or N rows [N,W], then N x units values each) as one LayerState per layer."""
    parts = iter(runner.split_state(rows))
    out = []
    for layer in runner.manifest.layers:
        msg = pb.LayerState(layer=layer.name, h=next(parts).ravel().tolist())
        if len(layer.state_names) == 2:
            msg.c.extend(next(parts).ravel().tolist())
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
            values = getattr(msg, kind)
            if kind in layer.state_names:
                if len(values) != layer.units:
                    raise InvalidArgument(
                        f"layer {layer.name!r} {kind} has {len(values)} values; expected {layer.units}")
                parts.append(np.asarray(values, dtype=np.float32))
            elif len(values):
                raise InvalidArgument(f"layer {layer.name!r} is {layer.cell}: it has no {kind} state")
    row = np.concatenate(parts)
    if not np.isfinite(row).all():
        raise InvalidArgument("states contain NaN or Inf")
    return row


def step_response(runner: ModelRunner, sid: str, res: StepResult, return_sequences: bool, return_state: bool,
                  replayed: bool = False) -> pb.StepResponse:
    out = res.output if return_sequences else res.output[-1:]
    msg = pb.StepResponse(session_id=sid, output=out.ravel().tolist(), rows=out.shape[0], step_count=res.step_count,
                          replayed=replayed)
    if res.sequence_number is not None:
        msg.sequence_number = res.sequence_number
    if return_state:
        msg.states.extend(layer_states(runner, res.state))
    return msg


def session_state(runner: ModelRunner, s, row: np.ndarray) -> pb.SessionState:
    return pb.SessionState(session_id=s.id, model=s.model, layers=layer_states(runner, row),
                           step_count=s.step_count, last_sequence_number=s.last_seq)
