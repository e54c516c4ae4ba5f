"""Triton requests and responses <-> statestream steps: sequence parameters, input tensor, output tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from statestream.contract.errors import InvalidArgument
from statestream.contract.manifest import INPUT_NAME, OUTPUT_NAME
from statestream.contract.triton_config import DATATYPE
from statestream.inference import grpc_service_pb2 as ipb
from statestream.server.api import codec
from statestream.server.engine.model import ModelRunner

SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"
SEQUENCE_NUMBER = "sequence_number"  # statestream's exactly-once number (int64), optional


@dataclass(frozen=True)
class Sequence:
    """A request's sequence parameters; `sid` is the session id the sequence id maps to."""

    sid: str
    start: bool
    end: bool
    number: int | None


def _param(params, name: str, kinds: tuple[str, ...]):
    if name not in params:
        return None
    p = params[name]
    kind = p.WhichOneof("parameter_choice")
    if kind not in kinds:
        raise InvalidArgument(f"parameter {name!r} must be {' or '.join(k.removesuffix('_param') for k in kinds)}, "
                              f"got {kind.removesuffix('_param') if kind else 'no value'}")
    return getattr(p, kind)


def session_id(value) -> str:
    """The session id of a Triton sequence id: an integer as its decimal digits, a string as itself."""
    return str(value)


def sequence(req: ipb.ModelInferRequest) -> Sequence:
    """The sequence parameters of a request; INVALID_ARGUMENT when missing or of the wrong type."""
    params = req.parameters
    sid = _param(params, SEQUENCE_ID, ("int64_param", "uint64_param", "string_param"))
    if sid in (None, 0, ""):
        raise InvalidArgument(f"inference request to model {req.model_name!r} must specify a non-zero or non-empty "
                              f"{SEQUENCE_ID} (correlation id): statestream models are stateful sequence models")
    number = _param(params, SEQUENCE_NUMBER, ("int64_param", "uint64_param"))
    return Sequence(session_id(sid), bool(_param(params, SEQUENCE_START, ("bool_param",))),
                    bool(_param(params, SEQUENCE_END, ("bool_param",))), number)


def ordering_key(req: ipb.ModelInferRequest) -> str | None:
    """The session a stream request belongs to (requests of one sequence run in order), None when it has none."""
    p = req.parameters.get(SEQUENCE_ID)
    kind = p.WhichOneof("parameter_choice") if p is not None else None
    return session_id(getattr(p, kind)) if kind else None


def input_values(req: ipb.ModelInferRequest, runner: ModelRunner) -> np.ndarray:
    """The request's one input `input` FP32 [1, T, features] as float32 [T, F]; INVALID_ARGUMENT says what is off."""
    names = [t.name for t in req.inputs]
    if names != [INPUT_NAME]:
        raise InvalidArgument(f"model {runner.name!r} takes exactly one input {INPUT_NAME!r} "
                              f"(FP32 [1, T, {runner.features}]); got inputs {names}")
    tensor = req.inputs[0]
    if tensor.datatype != DATATYPE:
        raise InvalidArgument(f"input {INPUT_NAME!r} must be {DATATYPE}; got {tensor.datatype or 'no datatype'}")
    shape = list(tensor.shape)
    if len(shape) != 3 or shape[0] != 1 or shape[2] != runner.features or shape[1] < 1:
        raise InvalidArgument(f"input {INPUT_NAME!r} must have shape [1, T, {runner.features}] (one sequence, "
                              f"T >= 1 timesteps); got {shape}")
    if req.raw_input_contents:
        if tensor.HasField("contents"):
            raise InvalidArgument(f"input {INPUT_NAME!r} has both raw_input_contents and typed contents; send one")
        if len(req.raw_input_contents) != 1:
            raise InvalidArgument(f"raw_input_contents has {len(req.raw_input_contents)} entries; expected 1")
        raw = req.raw_input_contents[0]
        if len(raw) != 4 * shape[1] * shape[2]:
            raise InvalidArgument(f"input {INPUT_NAME!r} of shape {shape} needs {4 * shape[1] * shape[2]} bytes "
                                  f"of FP32; raw_input_contents has {len(raw)}")
        values = np.frombuffer(raw, dtype="<f4")
    else:
        values = tensor.contents.fp32_contents
        if len(values) != shape[1] * shape[2]:
            raise InvalidArgument(f"input {INPUT_NAME!r} of shape {shape} needs {shape[1] * shape[2]} values; "
                                  f"contents.fp32_contents has {len(values)}")
    return codec.parse_input(runner, values, what=f"input {INPUT_NAME!r}")


def requested_outputs(req: ipb.ModelInferRequest, runner: ModelRunner) -> list[str]:
    """Names of the outputs to send: those asked for (`output` and/or state outputs), or `output` alone."""
    if not req.outputs:
        return [OUTPUT_NAME]
    names = [o.name for o in req.outputs]
    known = [OUTPUT_NAME] + [p[3] for p in runner.manifest.state_pairs()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgument(f"model {runner.name!r} has no output {unknown[0]!r}; outputs are {known}")
    return names


def infer_response(req: ipb.ModelInferRequest, runner: ModelRunner, output: np.ndarray, state: np.ndarray,
                   step_count: int, replayed: bool, outputs: list[str]) -> ipb.ModelInferResponse:
    """The step (output [T, O], states [W]) as a ModelInferResponse: outputs in raw_output_contents, id echoed."""
    resp = ipb.ModelInferResponse(model_name=runner.name, model_version=str(runner.version), id=req.id)
    resp.parameters["step_count"].int64_param = step_count
    if replayed:
        resp.parameters["replayed"].bool_param = True
    states = {}
    if len(outputs) > 1 or outputs[0] != OUTPUT_NAME:
        # the graph's state outputs, by name (an adopted graph's context window has none)
        states = {p[3]: part for p, part in zip(runner.manifest.state_pairs(), runner.split_state(state))}
    for name in outputs:
        if name == OUTPUT_NAME:
            values, shape = output, [1, output.shape[0], runner.output_size]
        else:
            values = states[name]
            shape = [1, len(values)]
        resp.outputs.add(name=name, datatype=DATATYPE, shape=shape)
        resp.raw_output_contents.append(np.asarray(values, dtype="<f4").tobytes())
    return resp

