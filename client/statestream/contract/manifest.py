"""The manifest: what an exported ONNX file says about itself in `metadata_props`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

MANIFEST_KEY = "statestream.manifest"
FORMAT = "statestream.manifest/1"
#: Adopted graphs (any step input layout, states of any shape, constants, a context window).
FORMAT_ADOPTED = "statestream.manifest/2"
FORMATS = (FORMAT, FORMAT_ADOPTED)

INPUT_NAME = "input"
OUTPUT_NAME = "output"

#: Cells and their state kinds. An adopted graph's state tensor is a `Tensor` layer with one vector `h` (the
#: tensor for one session, batch axis removed, C order); its input context window is the `Context` layer.
CELL_STATES = {"LSTM": ("h", "c"), "GRU": ("h",), "SimpleRNN": ("h",), "Tensor": ("h",), "Context": ("h",)}
#: Step input layouts: B batch, T time, F features. BF is one step per graph call (the runner loops over T).
LAYOUTS = ("BTF", "TBF", "BF")
CONTEXT_LAYER = "context"


def state_in_name(layer: str, kind: str) -> str:
    """Canonical graph input name of one state tensor, e.g. `state_in.lstm.h`."""
    return f"state_in.{layer}.{kind}"


def state_out_name(layer: str, kind: str) -> str:
    """Canonical graph output name of one state tensor, e.g. `state_out.lstm.c`."""
    return f"state_out.{layer}.{kind}"


class ManifestError(ValueError):
    """The file carries no manifest, or one this version cannot read."""


@dataclass(frozen=True)
class Layer:
    """One recurrent layer: Keras name, cell type (LSTM/GRU/SimpleRNN), units."""

    name: str
    cell: str
    units: int

    @property
    def state_names(self) -> tuple[str, ...]:
        return CELL_STATES[self.cell]


@dataclass(frozen=True)
class StateTensor:
    """One state tensor of the graph: its layer/kind as clients name it, the graph input and output that carry
    it, its shape for one session (batch axis removed) and where the graph puts the batch axis."""

    layer: str
    kind: str
    input: str
    output: str
    shape: tuple[int, ...]
    batch_axis: int = 0

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Constant:
    """A graph input fed the same value on every run (e.g. Silero's `sr` = 16000, int64)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    values: tuple


@dataclass(frozen=True)
class Manifest:
    """Everything a server needs to stream a model; stored as JSON in the ONNX file."""

    name: str
    features: int
    output_size: int
    layers: tuple[Layer, ...]
    opset: int = 0
    versions: dict = field(default_factory=dict)
    parity_max_abs_error: float = 0.0
    source_sha256: str = ""
    format: str = FORMAT
    # Adopted graphs (format 2); the defaults describe an exported Keras model.
    input: str = INPUT_NAME
    output: str = OUTPUT_NAME
    layout: str = "BTF"
    states: tuple[StateTensor, ...] = ()  # empty: the canonical state_in/state_out pairs of `layers`
    constants: tuple[Constant, ...] = ()
    context: int = 0  # values of the step input kept and prepended to the next step (BF layout)

    def graph_states(self) -> tuple[StateTensor, ...]:
        """Every state tensor the graph takes and returns, in slab order (the context window, if any, follows)."""
        if self.states:
            return self.states
        return tuple(StateTensor(l.name, k, state_in_name(l.name, k), state_out_name(l.name, k), (l.units,))
                     for l in self.layers for k in l.state_names)

    def state_pairs(self) -> list[tuple[str, str, str, str, int]]:
        """(layer, kind, input name, output name, size) for every graph state tensor, in slab order."""
        return [(s.layer, s.kind, s.input, s.output, s.size) for s in self.graph_states()]

    @property
    def state_width(self) -> int:
        """Floats of state one session holds (all layers, h and c, and the context window)."""
        return sum(p[4] for p in self.state_pairs()) + self.context

    def to_json(self) -> str:
        d = asdict(self)
        if self.format == FORMAT:  # a Keras export's manifest stays readable by servers that know format 1
            for k in ("input", "output", "layout", "states", "constants", "context"):
                d.pop(k)
        d["state_pairs"] = [
            {"layer": l, "kind": k, "input": i, "output": o, "size": u}
            for l, k, i, o, u in self.state_pairs()
        ]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"manifest is not JSON: {e}") from None
        if d.get("format") not in FORMATS:
            raise ManifestError(f"manifest format {d.get('format')!r}; this server reads {' or '.join(FORMATS)}")
        try:
            layers = tuple(Layer(l["name"], l["cell"], int(l["units"])) for l in d["layers"])
            for l in layers:
                if l.cell not in CELL_STATES:
                    raise ManifestError(f"layer {l.name!r}: unknown cell {l.cell!r}")
            m = cls(
                name=d["name"],
                features=int(d["features"]),
                output_size=int(d["output_size"]),
                layers=layers,
                opset=int(d.get("opset", 0)),
                versions=dict(d.get("versions", {})),
                parity_max_abs_error=float(d.get("parity_max_abs_error", 0.0)),
                source_sha256=d.get("source_sha256", ""),
                format=d["format"],
                input=d.get("input", INPUT_NAME),
                output=d.get("output", OUTPUT_NAME),
                layout=d.get("layout", "BTF"),
                states=tuple(StateTensor(s["layer"], s["kind"], s["input"], s["output"],
                                         tuple(int(n) for n in s["shape"]), int(s["batch_axis"]))
                             for s in d.get("states", ())),
                constants=tuple(Constant(c["name"], c["dtype"], tuple(int(n) for n in c["shape"]), tuple(c["values"]))
                                for c in d.get("constants", ())),
                context=int(d.get("context", 0)),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"manifest is missing or has a bad field: {e}") from None
        m.validate()
        return m

    def validate(self) -> None:
        """ManifestError unless the adopted-graph fields describe something a runner can run."""
        if self.layout not in LAYOUTS:
            raise ManifestError(f"layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.context < 0 or (self.context and self.layout != "BF"):
            raise ManifestError(f"a context window ({self.context}) needs the BF layout (one step per graph call)")
        for s in self.states:
            if not 0 <= s.batch_axis <= len(s.shape) or s.size < 1:
                raise ManifestError(f"state {s.input!r}: batch axis {s.batch_axis} or shape {s.shape} is out of range")
        if self.features < 1 or self.output_size < 1:
            raise ManifestError(f"features ({self.features}) and output size ({self.output_size}) must be >= 1")
        layers = [(l.name, l.units) for l in self.layers]
        want = [(s.layer, s.size) for s in self.states] + ([(CONTEXT_LAYER, self.context)] if self.context else [])
        if self.states and layers != want:
            raise ManifestError(f"layers {layers} do not describe the states {want}")


def read_manifest(onnx_model) -> Manifest:
    """Manifest of a loaded `onnx.ModelProto` (or an onnxruntime ModelMetadata)."""
    props = getattr(onnx_model, "custom_metadata_map", None)
    if props is None:
        props = {p.key: p.value for p in onnx_model.metadata_props}
    if MANIFEST_KEY not in props:
        raise ManifestError(f"no {MANIFEST_KEY!r} in the model's metadata; export it with statestream-export "
                            "(or adopt a stateful ONNX file with statestream-export adopt)")
    return Manifest.from_json(props[MANIFEST_KEY])


def adopted_layers(states, context: int) -> tuple[Layer, ...]:
    """The layers clients see for an adopted graph: one `Tensor` layer per state, then the `Context` window."""
    return tuple(Layer(s.layer, "Tensor", s.size) for s in states) + \
        ((Layer(CONTEXT_LAYER, "Context", context),) if context else ())
