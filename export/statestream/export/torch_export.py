"""export_torch: a PyTorch nn.LSTM / nn.GRU / nn.RNN (stacked) with Linear heads -> one proven streaming ONNX file.

torch is imported here only, inside the functions (the torch extra: docs/models.md). The written file has the same
graph and manifest as a Keras export: `input [B,T,F]`, `state_in.<layer>.h|c [B,hidden]` per layer of the stack,
`output [B,T,O]`, `state_out.<layer>.h|c`; one native ONNX LSTM/GRU/RNN op per layer, no Loop.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from statestream.contract.manifest import Layer, Manifest, state_in_name, state_out_name

from .adopt import CHUNKS, SEED, SESSIONS, TOLERANCE, prove
from .errors import ExportError, ExportRefused, ParityError

OPSET = 17
CELLS = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "SimpleRNN"}  # torch class -> manifest cell (and ONNX op: the key)
HEADS = ("Linear", "ReLU", "Tanh", "Sigmoid", "GELU", "Identity", "Dropout")  # applied per timestep, in order
INSTALL_HINT = ('the torch route needs PyTorch: install the torch extra (pip install ".[torch]", about 5 GB with CUDA; '
                "make install-torch)")


def import_torch():
    """torch, or ExportError naming the extra to install."""
    try:
        import torch
    except ImportError as e:
        raise ExportError(f"{INSTALL_HINT} ({e})") from None
    return torch


@dataclass
class Chain:
    """What the module is, as statestream streams it: one recurrent module, then heads applied per timestep."""

    rnn: object
    heads: list
    layers: tuple[Layer, ...]

    @property
    def lstm(self) -> bool:
        return type(self.rnn).__name__ == "LSTM"


def _refuse(name: str, module, reason: str) -> ExportRefused:
    return ExportRefused(f"module {name or '(root)'!r} ({type(module).__name__}): {reason}")


def inspect_module(module) -> Chain:
    """The module's chain, or ExportRefused with a one-line reason."""
    torch = import_torch()
    nn = torch.nn
    if isinstance(module, torch.jit.ScriptModule):
        raise ExportRefused("a TorchScript module is compiled code, not nn.LSTM/GRU/RNN to check and rebuild: "
                            "save the module itself (torch.save(module, path)) and export that")
    if not isinstance(module, nn.Module):
        raise ExportRefused(f"{type(module).__name__} is not a torch.nn.Module")
    leaves = [(n, m) for n, m in module.named_modules() if not list(m.children())]
    rnn_names = [n for n, m in leaves if type(m) in (nn.LSTM, nn.GRU, nn.RNN)]
    if len(rnn_names) != 1:
        found = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in leaves if n in rnn_names) or "none"
        raise ExportRefused(f"one nn.LSTM, nn.GRU or nn.RNN (stacked with num_layers) is supported, found {found}")
    rnn_name = rnn_names[0]
    index = [n for n, _ in leaves].index(rnn_name)
    if index:
        raise _refuse(*leaves[0], "a module before the recurrent one; supported: nn.LSTM/GRU/RNN first, then "
                                  f"{', '.join(HEADS)} per timestep")
    rnn = leaves[index][1]
    if rnn.bidirectional:
        raise _refuse(rnn_name, rnn, "bidirectional=True reads each sequence backwards too: a stream cannot")
    if getattr(rnn, "proj_size", 0):
        raise _refuse(rnn_name, rnn, f"proj_size={rnn.proj_size}: an ONNX LSTM has no projection")
    if rnn.dropout and rnn.training:
        raise _refuse(rnn_name, rnn, f"dropout={rnn.dropout} between layers in training mode: call module.eval()")
    heads = []
    for name, m in leaves[index + 1:]:
        kind = type(m).__name__
        if type(m).__module__.split(".")[:2] != ["torch", "nn"] or kind not in HEADS:
            raise _refuse(name, m, f"not a per-timestep head; supported after the recurrent module: {', '.join(HEADS)}")
        if kind == "Dropout" and m.training and m.p:
            raise _refuse(name, m, f"p={m.p} in training mode: call module.eval()")
        heads.append(m)
    cell = CELLS[type(rnn).__name__]
    prefix = rnn_name.replace(".", "_") or type(rnn).__name__.lower()
    layers = tuple(Layer(f"{prefix}_l{k}", cell, rnn.hidden_size) for k in range(rnn.num_layers))
    return Chain(rnn, heads, layers)


def streaming_module(chain: Chain):
    """An nn.Module: (input [B,T,F], h and c of each layer [B,hidden]) -> (output [B,T,O], h and c of each layer):
    the chain with its states as explicit inputs and outputs, batch first whatever the recurrent module's layout."""
    torch = import_torch()

    class Streaming(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = chain.rnn
            self.heads = torch.nn.Sequential(*chain.heads)

        def forward(self, x, *states):
            seq = x if self.rnn.batch_first else x.transpose(0, 1)
            layers = range(self.rnn.num_layers)
            if chain.lstm:
                y, (h, c) = self.rnn(seq, (torch.stack(states[0::2]), torch.stack(states[1::2])))
                out = [t for k in layers for t in (h[k], c[k])]
            else:
                y, h = self.rnn(seq, torch.stack(states))
                out = [h[k] for k in layers]
            y = y if self.rnn.batch_first else y.transpose(0, 1)
            return (self.heads(y), *out)

    return Streaming()  # torch.onnx.export runs it in eval mode; no train-mode dropout is left (inspect_module)


def state_names(chain: Chain) -> tuple[list[str], list[str]]:
    kinds = [(l.name, k) for l in chain.layers for k in l.state_names]
    return [state_in_name(n, k) for n, k in kinds], [state_out_name(n, k) for n, k in kinds]


def to_onnx(chain: Chain, features: int):
    """The streaming module through torch.onnx (TorchScript-based, opset 17, dynamic batch and time); checked to
    hold one native op per layer of the stack and no Loop or Scan."""
    import onnx

    torch = import_torch()
    ins, outs = state_names(chain)
    streaming = streaming_module(chain)
    x = torch.zeros(2, 3, features)
    states = [torch.zeros(2, chain.rnn.hidden_size) for _ in ins]
    dynamic = {"input": {0: "batch", 1: "time"}, "output": {0: "batch", 1: "time"}}
    dynamic.update({n: {0: "batch"} for n in ins + outs})
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # its GRU/RNN warning (export with batch 1 or states as inputs) does not apply: states are inputs, and the
        # proof runs other batch sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(streaming, (x, *states), buf, input_names=["input", *ins], output_names=["output", *outs],
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    counts = Counter(n.op_type for n in proto.graph.node)
    op = type(chain.rnn).__name__
    if counts[op] != len(chain.layers) or counts["Loop"] or counts["Scan"]:
        raise ExportError(f"torch.onnx made {counts[op]} {op} ops for {len(chain.layers)} layers "
                          f"(Loop {counts['Loop']}, Scan {counts['Scan']}): expected one native op per layer")
    return proto, dict(counts)


def torch_reference(chain: Chain):
    """One session's loop in PyTorch: the recurrent module stepped one timestep at a time with its own (h, c),
    the heads on each timestep's output; `prove`'s reference (states as the graph takes them, batch 1)."""
    torch = import_torch()

    def step_all(x, states, context):
        cur = [torch.from_numpy(np.ascontiguousarray(s)) for s in states]  # each [1, hidden]
        ys = []
        with torch.no_grad():
            for t in range(x.shape[0]):
                xt = torch.from_numpy(np.ascontiguousarray(x[t]))[None, None]  # [1, 1, F]: batch-first or not alike
                if chain.lstm:
                    y, (h, c) = chain.rnn(xt, (torch.stack(cur[0::2]), torch.stack(cur[1::2])))
                    cur = [v for k in range(h.shape[0]) for v in (h[k], c[k])]
                else:
                    y, h = chain.rnn(xt, torch.stack(cur))
                    cur = list(h)
                for head in chain.heads:
                    y = head(y)
                ys.append(y.reshape(-1).numpy())
        return np.stack(ys), [v.numpy() for v in cur], context

    return step_all


def module_vs_chain(module, chain: Chain, example) -> float:
    """The user's own forward on `example` (its layout, zero states) against the chain read from its modules:
    its output per timestep, or at the last timestep only. ExportRefused when it is neither."""
    torch = import_torch()
    streaming = streaming_module(chain)
    x = torch.as_tensor(np.asarray(example, np.float32))
    if x.ndim != 3 or x.shape[-1] != chain.rnn.input_size:
        raise ExportError(f"the example input has shape {list(x.shape)}; expected 3 dimensions with "
                            f"{chain.rnn.input_size} features last ({'batch' if chain.rnn.batch_first else 'time'} "
                            "first, as the recurrent module takes it)")
    with torch.no_grad():
        try:
            got = module(x)
        except Exception as e:
            raise ExportRefused(f"module(example) failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                "; its forward must take the input alone (states starting at zero)") from None
        while isinstance(got, (tuple, list)):
            got = got[0]
        seq = x if chain.rnn.batch_first else x.transpose(0, 1)
        zeros = [torch.zeros(seq.shape[0], chain.rnn.hidden_size) for _ in state_names(chain)[0]]
        want = streaming(seq, *zeros)[0]  # [B, T, O]
        want = want if chain.rnn.batch_first else want.transpose(0, 1)
    got = np.asarray(got, np.float64)
    for ref in (want, want[:, -1] if chain.rnn.batch_first else want[-1]):
        ref = np.asarray(ref, np.float64)
        if ref.shape == got.shape:
            err = float(np.max(np.abs(ref - got))) if got.size else 0.0
            if err <= TOLERANCE:
                return err
    raise ExportRefused(f"the module's forward returns {list(got.shape)}, not what its modules compute in order "
                        f"({type(chain.rnn).__name__}, then {', '.join(type(h).__name__ for h in chain.heads) or 'no head'}"
                        " per timestep), at every timestep or the last")


@dataclass
class TorchReport:
    """What a PyTorch export wrote and proved."""

    path: str
    manifest: Manifest
    op_counts: dict[str, int]
    module_vs_chain: float  # the module's own forward vs the chain read from its modules
    max_abs_error: float    # the server's step layout vs PyTorch stepping the module with its own states
    size_bytes: int
    seconds: float

    def __str__(self) -> str:
        m = self.manifest
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items()) if k in ("LSTM", "GRU", "RNN"))
        return "\n".join([
            f"wrote {self.path} ({self.size_bytes} bytes, {self.seconds:.1f} s): model {m.name!r}, {m.features} "
            f"features in, output size {m.output_size} per step, opset {m.opset}",
            "layers: " + ", ".join(f"{l.name} {l.cell}({l.units})" for l in m.layers) + f" (native ops: {ops})",
            f"parity: max abs error {self.max_abs_error:.3g} (tolerance {TOLERANCE:g}): {SESSIONS} sessions x "
            f"{CHUNKS} steps through the server's step layout, one at a time and all at once, vs PyTorch stepping "
            f"the module one timestep at a time with its own states (zero and random initial states); the module's "
            f"forward vs its modules in order {self.module_vs_chain:.3g}",
        ])


def export_torch(module_or_path, out_path, *, example_input=None, name: str | None = None,
                 seed: int = SEED) -> TorchReport:
    """Export a PyTorch module (or a file of one saved with torch.save(module, path)) to one streaming ONNX file
    at `out_path`, proven equal to PyTorch. Supported: one nn.LSTM / nn.GRU / nn.RNN (stacked, batch_first either
    way), then Linear layers and activations applied per timestep.

    The features come from the recurrent module (`input_size`). `example_input` (a tensor or array in the module's
    own layout, [B,T,F] if batch_first else [T,B,F]; random if None) is run through the module's own forward,
    which must compute the recurrent module then its heads, at every timestep or at the last. Raises
    `ExportRefused` (bidirectional, proj_size, dropout in training mode, other modules), `ParityError` if the file
    stepped as the server steps it differs from PyTorch by more than 1e-5; nothing is written then.
    """
    import onnxruntime as ort

    from .files import NAME_RE, set_manifest, sha256_file, versions, write_atomically

    t0 = time.perf_counter()
    torch = import_torch()
    out = Path(out_path)
    name = name or out.stem
    if not NAME_RE.match(name):
        raise ExportError(f"model name {name!r} must be 1-128 characters of letters, digits, '.', '_', '-'")
    if isinstance(module_or_path, (str, os.PathLike)):
        module, source_sha256 = load_module(module_or_path), sha256_file(module_or_path)
    else:
        module, source_sha256 = module_or_path, _state_sha256(module_or_path)
    chain = inspect_module(module)
    features = chain.rnn.input_size
    if example_input is None:
        g = torch.Generator().manual_seed(seed)
        example_input = torch.randn((2, 5, features) if chain.rnn.batch_first else (5, 2, features), generator=g)
    if isinstance(example_input, torch.Tensor):
        example_input = example_input.detach().cpu().numpy()
    e0 = module_vs_chain(module, chain, example_input)
    proto, counts = to_onnx(chain, features)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    manifest = Manifest(name=name, features=features, output_size=1, layers=chain.layers)
    y = sess.run(["output"], {"input": np.zeros((1, 1, features), np.float32),
                              **{n: np.zeros((1, chain.rnn.hidden_size), np.float32) for n in state_names(chain)[0]}})
    manifest = replace(manifest, output_size=int(y[0].shape[-1]))
    err = prove(sess.run, manifest, seed=seed, reference=torch_reference(chain))
    if not err <= TOLERANCE:
        raise ParityError(_Failed(err))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    manifest = replace(manifest, opset=opset, parity_max_abs_error=err,
                        versions=versions(("torch", "onnx", "onnxruntime", "numpy", "statestream")),
                        source_sha256=source_sha256)
    proto.doc_string = f"statestream streaming model {name!r} from PyTorch: " + \
        ", ".join(f"{l.cell}({l.units})" for l in chain.layers)
    data = set_manifest(proto, manifest)
    write_atomically(data, out)
    return TorchReport(str(out), manifest, counts, e0, err, len(data), time.perf_counter() - t0)


def load_module(path):
    """A module saved whole with torch.save (a pickle: load only files you trust; its class must be importable)."""
    torch = import_torch()
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"no such file: {p}")
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if any(n.split("/")[1:2] == ["code"] for n in z.namelist()):  # torch.jit.save's archive has code/
                raise ExportRefused(f"{p} is TorchScript (torch.jit.save): compiled code, not nn.LSTM/GRU/RNN to "
                                    "check and rebuild; save the module itself (torch.save(module, path))")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=False)
    except Exception as e:
        raise ExportError(f"cannot load {p} as a module saved with torch.save: "
                          f"{(str(e).splitlines() or [type(e).__name__])[0]} (its class must be importable: run "
                          "from the folder of the code that defines it, or set PYTHONPATH)") from None


def _state_sha256(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Failed:
    max_abs_error: float

    def summary(self) -> str:
        return (f"max abs error {self.max_abs_error:.3g} > {TOLERANCE:g}: the file stepped as the server steps it "
                f"differs from PyTorch stepping the module with its own states ({CHUNKS} steps)")
