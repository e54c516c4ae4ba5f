"""tritonclient drivers for the Triton protocol tests; run with .venv-triton's python, print one JSON object.

    .venv-triton/bin/python tests/triton_client/driver.py sequence 127.0.0.1:50051 demo '[[0.1, 0.2, 0.3]]'

Each subcommand uses only `tritonclient.grpc` (2.73.0), the way a Triton user would.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException


def _input(x, datatype: str = "FP32", shape=None) -> tg.InferInput:
    x = np.asarray(x, dtype=np.float64 if datatype == "FP64" else np.float32)
    shape = list(x.shape) if shape is None else shape
    inp = tg.InferInput("input", shape, datatype)
    if int(np.prod(shape)) == x.size:
        inp.set_data_from_numpy(x.reshape(shape))
    else:  # a shape that does not match the data: bypass the client's own check
        inp._raw_content = x.tobytes()
        inp._input.ClearField("contents")
    return inp


def _error(e: InferenceServerException) -> dict:
    return {"code": str(e.status()).removeprefix("StatusCode."), "message": e.message()}


def _result(r, outputs) -> dict:
    resp = r.get_response()
    params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in resp.parameters.items()}
    return {"id": resp.id, "outputs": {n: r.as_numpy(n).tolist() for n in outputs}, "parameters": params,
            "shapes": {o.name: list(o.shape) for o in resp.outputs}}


def sequence(client, model: str, steps: list, outputs: list[str], seq_id, start: bool = True,
             end: bool = True) -> list:
    """One timestep per request: the first starts the sequence (unless not `start`), the last ends it (unless
    not `end`)."""
    out = []
    for t, x in enumerate(steps):
        r = client.infer(model, [_input(np.asarray(x, np.float32)[None, None, :])], sequence_id=seq_id,
                         sequence_start=start and t == 0, sequence_end=end and t == len(steps) - 1,
                         request_id=f"req-{t}",
                         outputs=[tg.InferRequestedOutput(n) for n in outputs] if outputs else None)
        out.append(_result(r, outputs or ["output"]))
    return out


def cmd_sequence(client, a) -> dict:
    outputs = a.outputs.split(",") if a.outputs else []
    return {"steps": sequence(client, a.model, json.loads(a.data), outputs, a.sequence_id, start=not a.no_start,
                              end=not a.no_end)}


def cmd_stream(client, a) -> dict:
    """n sequences of T timesteps over one async_stream_infer stream, interleaved in a shuffled order."""
    xs = np.load(a.data)  # (n, T, F)
    n, T, _ = xs.shape
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    rng = np.random.default_rng(a.seed)
    for t in range(T):
        for i in rng.permutation(n):
            client.async_stream_infer(a.model, [_input(xs[i, t][None, None, :])], sequence_id=a.first_id + int(i),
                                      sequence_start=t == 0, sequence_end=t == T - 1, request_id=f"{i}:{t}")
    got = np.full((n, T, a.output_size), np.nan)
    errors = []
    for _ in range(n * T):
        result, error = results.get(timeout=60)
        if error is not None:
            errors.append(str(error))
            continue
        i, t = map(int, result.get_response().id.split(":"))
        got[i, t] = result.as_numpy("output").reshape(-1)
    client.stop_stream()
    return {"outputs": got.tolist(), "errors": errors}


def cmd_metadata(client, a) -> dict:
    return {"live": client.is_server_live(), "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(a.model), "unknown_model_ready": client.is_model_ready("nope"),
            "server": client.get_server_metadata(as_json=True), "model": client.get_model_metadata(a.model, as_json=True),
            "config": client.get_model_config(a.model, as_json=True)["config"]}


def cmd_errors(client, a) -> dict:
    """Bad requests, each answered with a status code; then the same mistakes on one stream, in-band."""
    F, m = a.features, a.model
    x = np.full((1, 1, F), 0.5, np.float32)
    cases = {
        "wrong_shape": lambda: client.infer(m, [_input(np.ones(F + 1), shape=[1, 1, F + 1])], sequence_id=1,
                                            sequence_start=True),
        "shape_data_mismatch": lambda: client.infer(m, [_input(np.ones(F), shape=[1, 2, F])], sequence_id=1,
                                                    sequence_start=True),
        "batch_of_two": lambda: client.infer(m, [_input(np.ones((2, 1, F)))], sequence_id=1, sequence_start=True),
        "wrong_dtype": lambda: client.infer(m, [_input(x, "FP64")], sequence_id=1, sequence_start=True),
        "nan": lambda: client.infer(m, [_input(np.full((1, 1, F), np.nan))], sequence_id=1, sequence_start=True),
        "unknown_model": lambda: client.infer("nope", [_input(x)], sequence_id=1, sequence_start=True),
        "unknown_version": lambda: client.infer(m, [_input(x)], model_version="7", sequence_id=1, sequence_start=True),
        "unknown_output": lambda: client.infer(m, [_input(x)], sequence_id=1, sequence_start=True,
                                               outputs=[tg.InferRequestedOutput("nope")]),
        "no_sequence_id": lambda: client.infer(m, [_input(x)]),
        "no_start_unknown_id": lambda: client.infer(m, [_input(x)], sequence_id=987654321),
        "unknown_model_metadata": lambda: client.get_model_metadata("nope"),
        "unknown_model_config": lambda: client.get_model_config("nope"),
        "refused_start_opened_nothing": lambda: client.infer(m, [_input(x)], sequence_id=1),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = {"code": "OK", "message": ""}
        except InferenceServerException as e:
            out[name] = _error(e)
    # On a stream the same mistakes come back in-band, and the stream goes on.
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(m, [_input(x)], sequence_id=987654321, request_id="bad")
    client.async_stream_infer(m, [_input(x)], sequence_id=55, sequence_start=True, sequence_end=True, request_id="ok")
    stream = []
    for _ in range(2):
        result, error = results.get(timeout=30)
        stream.append({"error": str(error) if error else None,
                       "id": result.get_response().id if result is not None else None})
    client.stop_stream()
    out["stream"] = stream
    return out


def cmd_retry(client, a) -> dict:
    """A sequence with sequence numbers; the middle and the end request are each sent twice (a retry)."""
    x = np.asarray(json.loads(a.data), np.float32)  # (3, F)
    send = lambda t, start, end: _result(client.infer(  # noqa: E731
        a.model, [_input(x[t][None, None, :])], sequence_id=a.sequence_id, sequence_start=start, sequence_end=end,
        request_id=f"try-{t}", parameters={"sequence_number": t + 1}), ["output"])
    first = send(0, True, False)
    return {"start": first, "start_retry": send(0, True, False), "middle": send(1, False, False),
            "middle_retry": send(1, False, False), "end": send(2, False, True), "end_retry": send(2, False, True)}


def cmd_expire(client, a) -> dict:
    """Start a sequence, print "started", stay idle until a line comes on stdin (the test lets the idle timeout
    pass on the server's clock meanwhile), send its next request: the session expired."""
    x = np.full((1, 1, a.features), 0.5, np.float32)
    client.infer(a.model, [_input(x)], sequence_id=a.sequence_id, sequence_start=True)
    print("started", flush=True)
    sys.stdin.readline()
    try:
        client.infer(a.model, [_input(x)], sequence_id=a.sequence_id)
    except InferenceServerException as e:
        return _error(e)
    return {"code": "OK", "message": ""}


def cmd_tenants(client, a) -> dict:
    """Bearer tokens (--tokens A,B): sequence ids are per token, no token is refused, streams carry the token."""
    a_hdr, b_hdr = ({"authorization": f"Bearer {t}"} for t in a.tokens.split(","))
    x = _input(np.full((1, 1, a.features), 0.5, np.float32))
    out = {}

    def call(name, **kw):
        try:
            out[name] = {"code": "OK", "step_count": client.infer(a.model, [x], sequence_id=9, **kw)
                         .get_response().parameters["step_count"].int64_param}
        except InferenceServerException as e:
            out[name] = _error(e)

    call("no_token", sequence_start=True)
    call("start_a", sequence_start=True, headers=a_hdr)
    call("step_b", headers=b_hdr)
    call("end_a", sequence_end=True, headers=a_hdr)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)), headers=b_hdr)
    client.async_stream_infer(a.model, [x], sequence_id=9, sequence_start=True, sequence_end=True)
    result, error = results.get(timeout=30)
    client.stop_stream()
    out["stream_b"] = {"error": str(error) if error else None}
    return out


def cmd_repository(client, a) -> dict:
    """Index, load (the version the test put in the repository), infer on the default, read statistics, unload,
    load again: the model repository API as a Triton user drives it."""
    def index():
        return [(m["name"], m.get("version", ""), m.get("state", "")) for m in
                client.get_model_repository_index(as_json=True).get("models", [])]

    def stats():
        return {s["version"]: {k: s.get(k, "0") for k in ("inference_count", "execution_count")}
                | {"success": s.get("inference_stats", {}).get("success", {}).get("count", "0")}
                for s in client.get_inference_statistics(a.model, as_json=True).get("model_stats", [])}

    out = {"before": index()}
    client.load_model(a.model)
    out["loaded"] = index()
    x = _input(np.full((1, 1, a.features), 0.5, np.float32))
    r = client.infer(a.model, [x], sequence_id=77, sequence_start=True)
    out["infer_version"] = r.get_response().model_version
    client.infer(a.model, [x], sequence_id=77, sequence_end=True)
    out["stats"] = stats()
    try:
        client.infer(a.model, [x], model_version="9", sequence_id=78, sequence_start=True)
    except InferenceServerException as e:
        out["missing_version"] = _error(e)
    client.unload_model(a.model)
    out["unloaded"] = index()
    out["ready_after_unload"] = client.is_model_ready(a.model)
    client.load_model(a.model)
    out["reloaded"] = index()
    return out


def cmd_descriptors(client, a) -> dict:
    """Every message of tritonclient's own grpc_service.proto and model_config.proto: fields and numbers."""
    from descriptors import describe
    from tritonclient.grpc import model_config_pb2, service_pb2

    return describe([service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("sequence", "stream", "metadata", "errors", "retry", "expire", "tenants", "repository",
                 "descriptors"):
        s = sub.add_parser(name)
        s.add_argument("target", nargs="?", default="")
        s.add_argument("model", nargs="?", default="")
        s.add_argument("data", nargs="?", default="")
        s.add_argument("--outputs", default="")
        s.add_argument("--sequence-id", type=lambda v: int(v) if v.lstrip("-").isdigit() else v, default=1)
        s.add_argument("--features", type=int, default=3)
        s.add_argument("--output-size", type=int, default=1)
        s.add_argument("--first-id", type=int, default=1000)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--tokens", default="")
        s.add_argument("--no-start", action="store_true", help="sequence: the first request does not start it")
        s.add_argument("--no-end", action="store_true", help="sequence: the last request does not end it")
    a = p.parse_args(argv)
    client = tg.InferenceServerClient(a.target) if a.target else None
    try:
        print(json.dumps(globals()[f"cmd_{a.cmd}"](client, a)))
    finally:
        if client is not None:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
