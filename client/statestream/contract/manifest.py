"""The manifest: what an exported ONNX file says about itself in `metadata_props`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

MANIFEST_KEY = "statestream.manifest"
FORMAT = "statestream.manifest/1"

INPUT_NAME = "input"
OUTPUT_NAME = "output"

CELL_STATES = {"LSTM": ("h", "c"), "GRU": ("h",), "SimpleRNN": ("h",)}


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

    def state_pairs(self) -> list[tuple[str, str, str, str, int]]:
        """(layer, kind, input name, output name, units) for every state, in slab order."""
        return [
            (l.name, k, state_in_name(l.name, k), state_out_name(l.name, k), l.units)
            for l in self.layers
            for k in l.state_names
        ]

    @property
    def state_width(self) -> int:
        """Floats of state one session holds (all layers, h and c)."""
        return sum(p[4] for p in self.state_pairs())

    def to_json(self) -> str:
        d = asdict(self)
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
        if d.get("format") != FORMAT:
            raise ManifestError(f"manifest format {d.get('format')!r}; this server reads {FORMAT!r}")
        try:
            layers = tuple(Layer(l["name"], l["cell"], int(l["units"])) for l in d["layers"])
            for l in layers:
                if l.cell not in CELL_STATES:
                    raise ManifestError(f"layer {l.name!r}: unknown cell {l.cell!r}")
            return cls(
                name=d["name"],
                features=int(d["features"]),
                output_size=int(d["output_size"]),
                layers=layers,
                opset=int(d.get("opset", 0)),
                versions=dict(d.get("versions", {})),
                parity_max_abs_error=float(d.get("parity_max_abs_error", 0.0)),
                source_sha256=d.get("source_sha256", ""),
            )
        except (KeyError, TypeError) as e:
            raise ManifestError(f"manifest is missing or has a bad field: {e}") from None


def read_manifest(onnx_model) -> Manifest:
    """Manifest of a loaded `onnx.ModelProto` (or an onnxruntime ModelMetadata)."""
    props = getattr(onnx_model, "custom_metadata_map", None)
    if props is None:
        props = {p.key: p.value for p in onnx_model.metadata_props}
    if MANIFEST_KEY not in props:
        raise ManifestError(f"no {MANIFEST_KEY!r} in the model's metadata; export it with statestream-export")
    return Manifest.from_json(props[MANIFEST_KEY])
