"""export_model: Keras model -> one proven, self-describing streaming ONNX file."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from statestream.contract.manifest import MANIFEST_KEY, Layer, Manifest, read_manifest

from .errors import ExportError, ParityError
from .files import NAME_RE, versions, write_atomically
from .parity import SEED, ParityResult


@dataclass
class ExportReport:
    """What an export wrote and proved."""

    path: str
    manifest: Manifest
    op_counts: dict[str, int]
    parity: ParityResult
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.manifest.layers

    @property
    def state_inputs(self) -> list[str]:
        return [p[2] for p in self.manifest.state_pairs()]

    @property
    def state_outputs(self) -> list[str]:
        return [p[3] for p in self.manifest.state_pairs()]

    @property
    def parity_max_abs_error(self) -> float:
        return self.parity.max_abs_error

    def __str__(self) -> str:
        m = self.manifest
        lines = [
            f"wrote {self.path} ({self.size_bytes} bytes, {self.seconds:.1f} s): model {m.name!r}, "
            f"{m.features} features in, output size {m.output_size} per step, opset {m.opset}",
            "layers: " + ", ".join(f"{l.name} {l.cell}({l.units})" for l in m.layers),
            f"graph inputs: input [batch, time, {m.features}], "
            + ", ".join(f"{i} [batch, {u}]" for _, _, i, _, u in m.state_pairs()),
            f"graph outputs: output [batch, time, {m.output_size}], "
            + ", ".join(f"{o} [batch, {u}]" for _, _, _, o, u in m.state_pairs()),
            "ops: " + ", ".join(f"{k} {v}" for k, v in self.op_counts.items()),
            f"parity: {self.parity.summary()}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _notes(layers, counts) -> list[str]:
    notes = []
    n_lstm = sum(l.cell == "LSTM" for l in layers)
    if counts["LSTM"] < n_lstm:
        notes.append(f"{n_lstm - counts['LSTM']} of {n_lstm} LSTM layers did not become a native ONNX LSTM op "
                     "(tf2onnx fell back to Loop): correct, slower")
    others = [l for l in layers if l.cell != "LSTM"]
    if others and counts["Loop"]:
        notes.append(", ".join(f"{l.cell} {l.name!r}" for l in others) + " converted to an ONNX Loop "
                     "(a layer or activation the native builder does not map, so tf2onnx converted the chain): "
                     "proven correct, slower than native ops")
    return notes


def export_model(model_or_path, out_path, name: str | None = None, *, seed: int = SEED,
                 native: bool = True) -> ExportReport:
    """Export a Keras recurrent model to one streaming ONNX file at `out_path`, proven equal to Keras.

    `model_or_path` is a `keras.Model` or a path to a `.keras`/`.h5` file or a SavedModel directory.
    `name` (the model's name on the server) defaults to the output file's stem. Raises `ExportRefused`
    for models that cannot stream causally, `ParityError` if the file does not compute what Keras
    computes (max abs error > 1e-5), `ExportError` for anything else; nothing is written then.
    `native=False` leaves GRU/SimpleRNN to tf2onnx (an ONNX Loop), for comparison.
    """
    import onnx

    from .convert import op_counts, to_onnx
    from .load import load_model, sha256_of_model, sha256_of_path
    from .parity import check
    from .twin import build_twin

    t0 = time.perf_counter()
    out = Path(out_path)
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file path like {out / 'model.onnx'}")
    name = name or out.stem
    if not NAME_RE.match(name):
        raise ExportError(f"model name {name!r} must be 1-128 characters of letters, digits, '.', '_', '-', "
                          "starting with a letter or digit")
    if isinstance(model_or_path, (str, os.PathLike)):
        source_sha = sha256_of_path(model_or_path)
        model = load_model(model_or_path)
    else:
        model = model_or_path
        source_sha = sha256_of_model(model)

    twin = build_twin(model)
    proto = to_onnx(twin, native=native)
    counts = op_counts(proto)
    result = check(twin, proto.SerializeToString(), seed=seed)
    if not result.ok:
        raise ParityError(result)

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    manifest = Manifest(
        name=name, features=twin.features, output_size=twin.output_size, layers=twin.layers, opset=opset,
        versions=versions(), parity_max_abs_error=result.max_abs_error, source_sha256=source_sha,
    )
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {MANIFEST_KEY: manifest.to_json()})
    proto.doc_string = f"statestream streaming model {name!r}: {', '.join(f'{l.cell}({l.units})' for l in twin.layers)}"
    onnx.checker.check_model(proto)
    if read_manifest(proto) != manifest:
        raise ExportError("manifest did not survive a round trip through the ONNX file")
    data = proto.SerializeToString()
    write_atomically(data, out)
    return ExportReport(str(out), manifest, counts, result, len(data), time.perf_counter() - t0,
                        _notes(twin.layers, counts))
