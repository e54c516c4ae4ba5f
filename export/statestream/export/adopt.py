"""adopt_model: an existing stateful ONNX file -> a copy with a manifest, proven equal to the model's own loop."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from statestream.contract.layout import StepLayout
from statestream.contract.manifest import (
    FORMAT_ADOPTED,
    LAYOUTS,
    Constant,
    Manifest,
    ManifestError,
    StateTensor,
    adopted_layers,
)

from .errors import ExportError, ExportRefused

TOLERANCE = 1e-5
SESSIONS, CHUNKS, SEED = 3, 8, 20240611
#: Constant inputs whose value is guessed when not given: a sample rate (Silero's `sr`).
GUESSED_CONSTANTS = {"sr": 16000, "sample_rate": 16000, "sampling_rate": 16000}
_FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass
class AdoptSpec:
    """What the graph cannot say about itself; every field left None is guessed (and the guess reported)."""

    input: str | None = None          # the step input
    layout: str | None = None         # BTF, TBF or BF (one step per graph call)
    features: int | None = None       # values per step (BF: samples per chunk, without the context)
    context: int = 0                  # values of the step input kept and prepended to the next step
    output: str | None = None         # the step output
    states: list[tuple[str, str, int | None]] | None = None   # (input, output, batch axis or None)
    constants: dict[str, object] = field(default_factory=dict)   # name -> value (dtype from the graph)

    @classmethod
    def from_dict(cls, d: dict) -> "AdoptSpec":
        """A spec file's JSON: {"input", "layout", "features", "context", "output", "states": [{"input", "output",
        "batch_axis"}], "constants": {"sr": 16000}}; unknown keys are an error."""
        known = {"input", "layout", "features", "context", "output", "states", "constants"}
        if set(d) - known:
            raise ExportError(f"spec has unknown keys {sorted(set(d) - known)}; known: {sorted(known)}")
        states = None
        if d.get("states") is not None:
            try:
                states = [(s["input"], s["output"], s.get("batch_axis")) for s in d["states"]]
            except (KeyError, TypeError):
                raise ExportError('spec "states" must be a list of {"input", "output", "batch_axis"}') from None
        return cls(d.get("input"), d.get("layout"), d.get("features"), int(d.get("context", 0)), d.get("output"),
                   states, dict(d.get("constants", {})))

    @classmethod
    def from_file(cls, path) -> "AdoptSpec":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ExportError(f"cannot read spec {path}: {e}") from None


@dataclass
class AdoptReport:
    """What an adoption wrote, guessed and proved."""

    path: str
    manifest: Manifest
    guesses: list[str]
    max_abs_error: float
    sessions: int
    chunks: int
    size_bytes: int
    seconds: float
    tolerance: float = TOLERANCE

    def __str__(self) -> str:
        m = self.manifest
        states = ", ".join(f"{s.input}->{s.output} {list(s.shape)} batch axis {s.batch_axis}" for s in m.states)
        lines = [
            f"wrote {self.path} ({self.size_bytes} bytes, {self.seconds:.1f} s): model {m.name!r}, step input "
            f"{m.input!r} layout {m.layout}, {m.features} values per step, output {m.output!r} size {m.output_size}",
            f"states: {states}" + (f"; context window {m.context} values" if m.context else ""),
            "constants: " + (", ".join(f"{c.name}={list(c.values) if c.shape else c.values[0]} ({c.dtype})"
                                       for c in m.constants) or "none"),
            f"parity: max abs error {self.max_abs_error:.3g} (tolerance {self.tolerance:g}): {self.sessions} "
            f"sessions x {self.chunks} steps through the server's step layout, one at a time and all at once, "
            "vs the graph's own loop per session (zero and random initial states)",
        ]
        return "\n".join(lines + [f"guessed: {g}" for g in self.guesses])


def _dims(vi) -> list:
    """A value's dims: an int where static, None where dynamic (named or unknown)."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]


_PAIR_RULES = [(r"^(.*?)_?0$", ["{}n", "{}N", "{}_n", "{}_out"]), (r"^(.*?)_?in$", ["{}_out", "{}out"]),
               (r"^(.*)$", ["{}N", "{}n", "{}_out", "{}_new", "new_{}", "next_{}", "{}_next"])]


def guess_output(name: str, outputs: list[str]) -> str | None:
    """The output a state input pairs with, by name: state->stateN, h0->hn, c0->cn, x_in->x_out, state_in.x->
    state_out.x, past->present."""
    for a, b in (("state_in.", "state_out."), ("past", "present"), ("_in_", "_out_"), (".in.", ".out.")):
        if a in name and name.replace(a, b) in outputs:
            return name.replace(a, b)
    for pattern, forms in _PAIR_RULES:
        m = re.match(pattern, name)
        if m and m.group(1):
            for form in forms:
                if form.format(m.group(1)) in outputs:
                    return form.format(m.group(1))
    return None


def _layer_name(name: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "state"
    out, i = base, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


def resolve(graph, spec: AdoptSpec, name: str) -> tuple[Manifest, list[str]]:
    """The manifest (output size still 0) of `graph` under `spec`, and what was guessed."""
    import onnx

    guesses: list[str] = []
    initializers = {t.name for t in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    outputs = {o.name: o for o in graph.output}
    elem = {n: vi.type.tensor_type.elem_type for n, vi in {**inputs, **outputs}.items()}

    def dtype_name(n):
        return onnx.helper.tensor_dtype_to_np_dtype(elem[n]).name if elem[n] else "undefined"

    for n in [spec.input, *[s[0] for s in spec.states or []], *spec.constants]:
        if n is not None and n not in inputs:
            raise ExportRefused(f"the graph has no input {n!r}; inputs are {sorted(inputs)}")
    for n in [*[s[1] for s in spec.states or []]] + ([spec.output] if spec.output else []):
        if n not in outputs:
            raise ExportRefused(f"the graph has no output {n!r}; outputs are {sorted(outputs)}")

    # constants: given, or a sample rate guessed
    consts: dict[str, object] = dict(spec.constants)
    for n, vi in inputs.items():
        if n in consts or n == spec.input or elem[n] == _FLOAT:
            continue
        if n in GUESSED_CONSTANTS and _dims(vi) in ([], [1]):
            consts[n] = GUESSED_CONSTANTS[n]
            guesses.append(f"constant {n}={consts[n]} ({dtype_name(n)}), from its name; give --const {n}=VALUE "
                           "if the model runs at another rate")
        else:
            raise ExportRefused(f"input {n!r} ({dtype_name(n)} {_dims(vi)}) is not float32, so not the step input nor "
                                f"a state: give its value with --const {n}=VALUE")
    constants = []
    for n, value in consts.items():
        dims = _dims(inputs[n])
        arr = np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem[n]))
        if None in dims or arr.size != int(np.prod(dims)):
            raise ExportRefused(f"constant {n!r}: {arr.size} values given for an input of shape {dims}")
        constants.append(Constant(n, arr.dtype.name, tuple(dims), tuple(arr.ravel().tolist())))

    # state pairs: given, or paired by name
    pairs = spec.states
    if pairs is None:
        pairs = []
        for n in inputs:
            if n in consts or n == spec.input:
                continue
            out = guess_output(n, [o for o in outputs if o != spec.output])
            if out:
                pairs.append((n, out, None))
        if not pairs:
            raise ExportRefused(f"no state input pairs with an output by name (inputs {sorted(inputs)}, outputs "
                                f"{sorted(outputs)}): give --state INPUT:OUTPUT[:BATCH_AXIS]")
        guesses.append("states " + ", ".join(f"{i}->{o}" for i, o, _ in pairs) + ", paired by name")
    states, taken = [], set()
    for i, o, axis in pairs:
        for n in (i, o):
            if elem[n] != _FLOAT:
                raise ExportRefused(f"state {n!r} is {dtype_name(n)}; statestream keeps float32 states")
        dims = _dims(inputs[i])
        if axis is None:
            dynamic = [k for k, d in enumerate(dims) if d is None]
            if len(dynamic) != 1:
                raise ExportRefused(f"state {i!r} has shape {dims}: cannot tell its batch axis; give "
                                    f"--state {i}:{o}:AXIS")
            axis = dynamic[0]
            guesses.append(f"state {i!r} {dims}: batch axis {axis}, its one dynamic dimension")
        if not 0 <= axis < len(dims):
            raise ExportRefused(f"state {i!r} has {len(dims)} dimensions; batch axis {axis} is out of range")
        shape = tuple(d for k, d in enumerate(dims) if k != axis)
        if None in shape:
            raise ExportRefused(f"state {i!r} has shape {dims}: only its batch axis ({axis}) may be dynamic")
        states.append(StateTensor(_layer_name(i, taken), "h", i, o, shape, axis))

    used_in = {s.input for s in states} | set(consts)
    step_in = spec.input
    if step_in is None:
        rest = [n for n in inputs if n not in used_in]
        if len(rest) != 1:
            raise ExportRefused(f"cannot tell the step input among {rest}: give --input NAME")
        step_in = rest[0]
        guesses.append(f"step input {step_in!r}, the one input that is no state and no constant")
    if elem[step_in] != _FLOAT:
        raise ExportRefused(f"step input {step_in!r} is {dtype_name(step_in)}; statestream steps float32 inputs")
    unused = sorted(set(inputs) - used_in - {step_in})
    if unused:
        raise ExportRefused(f"inputs {unused} are neither the step input, a state nor a constant: give --state or "
                            "--const for them")
    out_name = spec.output
    if out_name is None:
        rest = [n for n in outputs if n not in {s.output for s in states}]
        if len(rest) != 1:
            raise ExportRefused(f"cannot tell the step output among {rest}: give --output NAME")
        out_name = rest[0]
        guesses.append(f"step output {out_name!r}, the one output that is no state")

    dims = _dims(inputs[step_in])
    layout = spec.layout
    if layout is None:
        layout = {2: "BF", 3: "BTF"}.get(len(dims))
        if layout is None:
            raise ExportRefused(f"step input {step_in!r} has {len(dims)} dimensions: give --layout "
                                f"({', '.join(LAYOUTS)})")
        guesses.append(f"layout {layout} from the step input's {len(dims)} dimensions"
                       + (" (give --layout TBF if time comes first)" if layout == "BTF" else ""))
    if layout not in LAYOUTS or len(dims) != len(layout):
        raise ExportRefused(f"layout {layout!r} does not fit step input {step_in!r} of shape {dims}")
    if spec.context and layout != "BF":
        raise ExportRefused("a context window needs the BF layout (one step per graph call)")
    features = spec.features
    if features is None:
        if dims[-1] is None:
            raise ExportRefused(f"step input {step_in!r} has shape {dims}: give --features N (values per step"
                                + (", without the context window)" if spec.context else ")"))
        features = dims[-1] - spec.context
        guesses.append(f"{features} values per step from the step input's last dimension")
    elif dims[-1] is not None and dims[-1] != features + spec.context:
        raise ExportRefused(f"step input {step_in!r} has {dims[-1]} values per step; --features {features} "
                            f"+ --context {spec.context} = {features + spec.context}")
    if features < 1 or spec.context < 0:
        raise ExportRefused(f"--features ({features}) must be >= 1 and --context ({spec.context}) >= 0")
    manifest = Manifest(
        name=name, features=features, output_size=1, layers=adopted_layers(states, spec.context),
        format=FORMAT_ADOPTED, input=step_in, output=out_name, layout=layout, states=tuple(states),
        constants=tuple(constants), context=spec.context)
    try:
        manifest.validate()
    except ManifestError as e:
        raise ExportRefused(str(e)) from None
    return manifest, guesses


def reference_loop(run, m: Manifest, x: np.ndarray, states: list[np.ndarray], context: np.ndarray):
    """The graph's own streaming loop for ONE session, written from the graph's point of view (no rows):
    x [T, F]; states in the graph's shapes with batch 1; context [K]. Each step feeds the step input (the
    context window prepended: the last K values of the previous step's input), the states and the constants,
    and carries the state outputs to the next step. Returns (y [T, O], final states, final context)."""
    consts = {c.name: np.array(c.values, dtype=c.dtype).reshape(c.shape) for c in m.constants}
    graph_states = m.graph_states()
    names = [m.output] + [s.output for s in graph_states]
    ys = []
    for t in range(x.shape[0]):
        if m.layout == "BF":
            inp = np.concatenate([context, x[t]])[None]
            context = inp[0, inp.shape[1] - m.context:] if m.context else context
        else:
            inp = x[None, t:t + 1] if m.layout == "BTF" else x[t:t + 1, None]
        feeds = {m.input: inp, **consts, **{s.input: v for s, v in zip(graph_states, states)}}
        y, *states = run(names, feeds)
        ys.append(np.asarray(y).reshape(-1))
    return np.stack(ys), states, context


def prove(session_run, m: Manifest, seed: int = SEED, sessions: int = SESSIONS, chunks: int = CHUNKS,
          reference=None) -> float:
    """Max abs error of the server's step layout (one step at a time, and all steps in one run) against
    `reference` per session, from zero and from random initial states (outputs and final states).

    `reference(x [T, F], states, context) -> (y [T, O], states, context)` is one session's own loop, states in the
    graph's shapes with batch 1; by default `reference_loop`, the graph's own (PyTorch's, for the torch route)."""
    if reference is None:
        def reference(x, st, c):
            return reference_loop(session_run, m, x, st, c)
    rng = np.random.default_rng(seed)
    layout = StepLayout(m)
    graph_states = m.graph_states()
    err = 0.0
    for scale in (0.0, 0.5):
        x = (0.5 * rng.standard_normal((sessions, chunks, m.features))).astype(np.float32)
        native = [[(scale * rng.standard_normal(s.shape)).astype(np.float32) for s in graph_states]
                  for _ in range(sessions)]
        ctx = (scale * rng.standard_normal((sessions, m.context))).astype(np.float32)
        rows = np.stack([np.concatenate([v.ravel() for v in native[b]] + [ctx[b]]) for b in range(sessions)])
        want_y, want_rows = [], []
        for b in range(sessions):
            st = [np.expand_dims(v, s.batch_axis) for s, v in zip(graph_states, native[b])]
            y, st, c = reference(x[b], st, ctx[b])
            want_y.append(y)
            want_rows.append(np.concatenate([np.squeeze(np.asarray(v), s.batch_axis).ravel()
                                             for s, v in zip(graph_states, st)] + [c]))
        want_y, want_rows = np.stack(want_y), np.stack(want_rows)
        whole_y, whole_rows = layout.run(session_run, x, rows)
        cur, ys = rows, []
        for t in range(chunks):
            y, cur = layout.run(session_run, x[:, t:t + 1], cur)
            ys.append(y)
        for got, want in ((whole_y, want_y), (np.concatenate(ys, axis=1), want_y), (whole_rows, want_rows),
                          (cur, want_rows)):
            got = np.asarray(got, np.float64).reshape(want.shape) if got.size == want.size else None
            if got is None or not np.isfinite(got).all():
                return float("inf")
            err = max(err, float(np.max(np.abs(got - want))))
    return err


def adopt_model(src, out_path, name: str | None = None, spec: AdoptSpec | None = None, *, seed: int = SEED,
                chunks: int = CHUNKS) -> AdoptReport:
    """Write a copy of the stateful ONNX file `src` with a manifest at `out_path`, once proven.

    `spec` says what the graph cannot (see AdoptSpec); the rest is guessed and the report says what. Raises
    `ExportRefused` for graphs statestream cannot serve, `ParityError` if stepping the graph through the server's
    step layout differs from the graph's own loop by more than 1e-5; nothing is written then.
    """
    import onnx
    import onnxruntime as ort

    from .errors import ParityError
    from .files import NAME_RE, set_manifest, sha256_file, versions, write_atomically

    t0 = time.perf_counter()
    out = Path(out_path)
    name = name or out.stem
    if not NAME_RE.match(name):
        raise ExportError(f"model name {name!r} must be 1-128 characters of letters, digits, '.', '_', '-'")
    try:
        proto = onnx.load(str(src))
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise ExportError(f"cannot read {src} as ONNX: {e}".splitlines()[0]) from None
    manifest, guesses = resolve(proto.graph, spec or AdoptSpec(), name)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        probe = np.zeros((2, 1, manifest.features), np.float32)
        y, _ = StepLayout(manifest).run(sess.run, probe, np.zeros((2, manifest.state_width), np.float32))
        manifest = _replace(manifest, output_size=int(y.shape[-1]))
        err = prove(sess.run, manifest, seed=seed, chunks=chunks)
    except (ExportError, ManifestError):
        raise
    except Exception as e:  # onnxruntime's errors are long; the user needs the first line
        hint = "; the layout was guessed: give --layout TBF if time comes first" \
            if any(g.startswith("layout BTF") for g in guesses) else ""
        raise ExportRefused(f"onnxruntime cannot run the graph as described ({manifest.layout}, "
                            f"{manifest.features} values per step): {str(e).splitlines()[0]}{hint}") from e
    if not err <= TOLERANCE:
        raise ParityError(_Failed(err, chunks))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    manifest = _replace(manifest, opset=opset, versions=versions(("onnx", "onnxruntime", "numpy", "statestream")),
                        parity_max_abs_error=err,
                        source_sha256=sha256_file(src))
    data = set_manifest(proto, manifest)
    write_atomically(data, out)
    return AdoptReport(str(out), manifest, guesses, err, SESSIONS, chunks, len(data), time.perf_counter() - t0)


def _replace(m: Manifest, **kw) -> Manifest:
    from dataclasses import replace

    return replace(m, **kw)


@dataclass(frozen=True)
class _Failed:
    max_abs_error: float
    chunks: int

    def summary(self) -> str:
        return (f"max abs error {self.max_abs_error:.3g} > {TOLERANCE:g}: stepping the graph through the server's "
                f"step layout differs from its own loop ({self.chunks} steps); check --layout, the batch axes "
                "and --context")
