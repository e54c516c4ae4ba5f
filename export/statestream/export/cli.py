"""statestream-export: Keras model (or `demo`) -> one proven streaming ONNX file."""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_FAILED = 0, 1  # usage errors exit 2 (argparse); refusals 3 and parity failures 4 (errors.py)

DESCRIPTION = """\
Export a Keras recurrent model (LSTM, GRU, SimpleRNN, stacked, with Dense heads) to one ONNX file that a
statestream server streams one timestep at a time. The file carries its states as explicit inputs and
outputs and a manifest in its metadata; before it is written, it is proven equal to Keras (random
sequences, random non-zero initial states, whole sequence and one step at a time, max abs error <= 1e-5).
"""

EPILOG = """\
examples:
  statestream-export model.keras --out models/sensor.onnx      # also .h5 and a SavedModel directory
  statestream-export adopt model.onnx --out models/vad.onnx    # an existing stateful ONNX file: adopt --help
  statestream-export torch module.pt --out models/m.onnx       # a PyTorch nn.LSTM/GRU/RNN module: torch --help
  statestream-export demo --out models/demo.onnx               # train and export the bundled demo model
  statestream-export model.h5 --out m.onnx --name sensor-v2 --json
  statestream-export model.keras --out models/sensor.onnx --triton-config triton_models   # + a Triton entry
  statestream-export models/sensor.onnx --triton-config triton_models     # Triton entry for an exported file

graph of the written file (B = batch, T = time, both dynamic):
  inputs   input [B,T,features], state_in.<layer>.h [B,units], state_in.<layer>.c [B,units] (LSTM only)
  outputs  output [B,T,outputs], state_out.<layer>.h, state_out.<layer>.c
  metadata statestream.manifest (JSON: name, features, output size, layers, versions, parity error)

supported: Sequential or functional chains of LSTM / GRU / SimpleRNN (stateful=True too) with Dense,
TimeDistributed(Dense), Activation and Dropout layers. Refused (nothing written): Bidirectional,
go_backwards=True, Masking, convolution / pooling / attention across time, other layers.

--triton-config DIR writes DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx, a Triton model repository
entry: every state an implicit state (initial_state zero_data), a sequence_batching section; the same
configuration a statestream server reports over Triton's ModelConfig RPC.

exit status: 0 written, 1 failed (load/convert), 2 usage, 3 refused, 4 parity check failed.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="statestream-export", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a .keras or .h5 file, a SavedModel directory, the word 'demo', or an exported "
                                 ".onnx file (with --triton-config only)")
    p.add_argument("--out", "-o", help="the .onnx file to write (replaced atomically); required unless the model "
                                       "is an exported .onnx file")
    p.add_argument("--triton-config", metavar="DIR",
                   help="also write a Triton model repository entry DIR/<name>/ (config.pbtxt, 1/model.onnx)")
    p.add_argument("--name", help="the model's name on the server (default: the --out file's stem)")
    p.add_argument("--seed", type=int, default=None, help="seed of the parity check's random data")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    return p


INSTALL_HINT = 'install the exporter from a statestream checkout: pip install ".[export]"'


def _quiet_import() -> str | None:
    """Import TensorFlow with stderr closed at the fd level: its C++ start-up banner is noise here.
    Returns what failed to import, or None."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                import keras  # noqa: F401
                import tensorflow  # noqa: F401
                import tf2onnx  # noqa: F401
            except ImportError as e:
                return str(e)  # reported by the caller, once stderr is back
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return None


def _report_json(report) -> str:
    m = report.manifest
    return json.dumps({
        "path": report.path, "manifest": json.loads(m.to_json()), "op_counts": report.op_counts,
        "parity": {"max_abs_error": report.parity.max_abs_error,
                   "original_vs_twin": report.parity.original_vs_twin,
                   "keras_vs_ort_sequence": report.parity.keras_vs_ort_sequence,
                   "keras_vs_ort_steps": report.parity.keras_vs_ort_steps,
                   "tolerance": report.parity.tolerance},
        "size_bytes": report.size_bytes, "seconds": report.seconds, "notes": report.notes,
    }, indent=2)


def _triton_only(args) -> int:
    """An exported .onnx file in, a Triton repository entry out: no TensorFlow needed."""
    from .errors import ExportError
    from .triton import write_triton_entry

    try:
        entry = write_triton_entry(args.model, args.triton_config, args.name)
    except ExportError as e:
        print(f"statestream-export: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote Triton model repository entry {entry}/ (config.pbtxt, 1/model.onnx)")
    return EXIT_OK


ADOPT_DESCRIPTION = """\
Adopt an existing stateful ONNX file (its states already graph inputs and outputs, e.g. Silero VAD): write a
copy with a statestream manifest, so a statestream server keeps its states per session. What the flags (or
--spec FILE, JSON with the same keys) leave out is guessed from the graph and the guesses are printed: state
pairs by name (state->stateN, h0->hn, c0->cn, x_in->x_out), each state's batch axis (its one dynamic
dimension), the step input and output (the ones left), the layout (2 dimensions: BF, 3: BTF), a sample rate
constant named sr (16000). Before writing, N steps through the server's step layout, one at a time and all
at once, must equal the graph's own loop per session within 1e-5 (exit 4 otherwise; nothing written).
"""

ADOPT_EPILOG = """\
examples:
  statestream-export adopt silero_vad.onnx --out models/vad.onnx --features 512 --context 64
  statestream-export adopt model.onnx --out models/m.onnx --state h0:hn:1 --state c0:cn:1 --layout TBF
  statestream-export adopt model.onnx --out models/m.onnx --spec spec.json
      spec.json: {"input": "x", "layout": "BF", "features": 512, "context": 64, "output": "prob",
                  "states": [{"input": "state", "output": "stateN", "batch_axis": 1}], "constants": {"sr": 16000}}

layouts: BTF [batch, time, features] (one call per request), TBF [time, batch, features], BF [batch, features]
(one graph call per step; --context K keeps the last K values of each step's input, prepended to the next).
Refused (exit 3): non-float32 states or step input, states whose other dimensions are dynamic, inputs that
are neither step input, state nor constant, a graph onnxruntime cannot run as described.
"""


def _route_parser(route: str, description: str, epilog: str, model_help: str) -> argparse.ArgumentParser:
    """A route's parser (adopt, torch) with what every route takes: the model file, --out and --name."""
    p = argparse.ArgumentParser(prog=f"statestream-export {route}", description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=model_help)
    p.add_argument("--out", "-o", required=True, help="the .onnx file to write (replaced atomically)")
    p.add_argument("--name", help="the model's name on the server (default: the --out file's stem)")
    return p


def _adopt_parser() -> argparse.ArgumentParser:
    p = _route_parser("adopt", ADOPT_DESCRIPTION, ADOPT_EPILOG, "a stateful .onnx file")
    p.add_argument("--spec", help="a JSON file with any of the keys below; flags override it")
    p.add_argument("--input", help="the step input")
    p.add_argument("--layout", choices=["BTF", "TBF", "BF"], help="the step input's layout")
    p.add_argument("--features", type=int, help="values per step (BF: samples per chunk, without the context)")
    p.add_argument("--context", type=int, help="values of each step's input kept and prepended to the next (BF)")
    p.add_argument("--output", help="the step output")
    p.add_argument("--state", action="append", metavar="IN:OUT[:AXIS]",
                   help="a state input, the output that returns it, its batch axis (repeat per state)")
    p.add_argument("--const", action="append", metavar="NAME=VALUE", help="a constant input (repeat)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _adopt(argv: list[str]) -> int:
    parser = _adopt_parser()
    args = parser.parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        print(f"statestream-export: {e}; {INSTALL_HINT}", file=sys.stderr)
        return EXIT_FAILED
    from .adopt import AdoptSpec, adopt_model
    from .errors import ExportError

    try:
        spec = AdoptSpec.from_file(args.spec) if args.spec else AdoptSpec()
        for key in ("input", "layout", "features", "context", "output"):
            if getattr(args, key) is not None:
                setattr(spec, key, getattr(args, key))
        if args.state:
            spec.states = []
            for s in args.state:
                parts = s.split(":")
                if len(parts) not in (2, 3) or not all(parts[:2]) or (len(parts) == 3 and not parts[2].isdigit()):
                    parser.error(f"--state {s!r}: expected INPUT:OUTPUT or INPUT:OUTPUT:AXIS")
                spec.states.append((parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None))
        for c in args.const or []:
            name, sep, value = c.partition("=")
            if not sep or not name:
                parser.error(f"--const {c!r}: expected NAME=VALUE")
            try:
                spec.constants[name] = json.loads(value)
            except json.JSONDecodeError:
                parser.error(f"--const {c!r}: the value must be a number or a JSON list")
        report = adopt_model(args.model, args.out, name=args.name, spec=spec)
    except ExportError as e:
        print(f"statestream-export: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps({"path": report.path, "manifest": json.loads(report.manifest.to_json()),
                          "guesses": report.guesses, "parity_max_abs_error": report.max_abs_error,
                          "size_bytes": report.size_bytes, "seconds": report.seconds}, indent=2))
    else:
        print(report)
    return EXIT_OK


TORCH_DESCRIPTION = """\
Export a PyTorch module saved whole with torch.save(module, path): one nn.LSTM, nn.GRU or nn.RNN (stacked with
num_layers, batch_first either way) followed by Linear layers and activations applied per timestep. The file
has the same graph and manifest as a Keras export: input [B,T,F] (batch first whatever the module's layout),
state_in.<rnn>_l<k>.h|c [B,hidden] per layer of the stack, output [B,T,O], state_out.*; one native ONNX op per
layer. The features come from the recurrent module's input_size. Before writing, the module's own forward is
checked to compute its modules in order (at every timestep or the last), then 3 sessions x 8 steps through the
server's step layout, one at a time and all at once, from zero and random initial states, must equal PyTorch
stepping the module one timestep at a time with its own (h, c) within 1e-5 (exit 4 otherwise; nothing written).
"""

TORCH_EPILOG = """\
examples:
  python -c "import torch; from mymodel import Net; torch.save(Net().eval(), 'net.pt')"
  statestream-export torch net.pt --out models/net.onnx         # run where `mymodel` imports (or set PYTHONPATH)
  statestream-export torch net.pt --out models/net.onnx --example x.npy   # check forward on your own input

The file is a pickle: torch.load(weights_only=False) runs code from it, so export only files you trust. From
Python: statestream.export.torch_export.export_torch(module, "models/net.onnx", example_input=x).
Refused (exit 3, one line, nothing written): bidirectional=True, proj_size, dropout in training mode, a
TorchScript file, modules before the recurrent one or other than Linear/ReLU/Tanh/Sigmoid/GELU/Identity/Dropout
after it, more than one recurrent module, a forward that computes something else.
Needs the torch extra: pip install ".[torch]" (about 5 GB with CUDA; make install-torch).
"""


def _torch_parser() -> argparse.ArgumentParser:
    p = _route_parser("torch", TORCH_DESCRIPTION, TORCH_EPILOG, "a module saved with torch.save(module, path)")
    p.add_argument("--example", help="a .npy input for the module's forward, in its layout (default: random)")
    p.add_argument("--seed", type=int, default=None, help="seed of the parity check's random data")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _torch(argv: list[str]) -> int:
    args = _torch_parser().parse_args(argv)
    from .errors import ExportError

    try:
        import numpy as np

        from .torch_export import export_torch, import_torch

        import_torch()
        sys.path.insert(0, os.getcwd())  # the module's class, as `python -c` would find it
        example = None if args.example is None else np.load(args.example)
        kwargs = {} if args.seed is None else {"seed": args.seed}
        report = export_torch(args.model, args.out, example_input=example, name=args.name, **kwargs)
    except ImportError as e:  # onnx or onnxruntime
        print(f"statestream-export: {e}; install the torch extra: pip install \".[torch]\"", file=sys.stderr)
        return EXIT_FAILED
    except (ExportError, OSError, ValueError) as e:
        print(f"statestream-export: {e}".splitlines()[0], file=sys.stderr)
        return getattr(e, "exit_code", EXIT_FAILED)
    if args.json:
        print(json.dumps({"path": report.path, "manifest": json.loads(report.manifest.to_json()),
                          "op_counts": report.op_counts, "module_vs_chain": report.module_vs_chain,
                          "parity_max_abs_error": report.max_abs_error, "size_bytes": report.size_bytes,
                          "seconds": report.seconds}, indent=2))
    else:
        print(report)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["adopt"]:
        return _adopt(argv[1:])
    if argv[:1] == ["torch"]:
        return _torch(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.model.endswith(".onnx"):
        if args.out or not args.triton_config:
            parser.error("an .onnx model is already exported: give --triton-config DIR (and no --out)")
        return _triton_only(args)
    if not args.out:
        parser.error("--out is required")
    missing = _quiet_import()
    if missing:
        print(f"statestream-export: {missing}; {INSTALL_HINT}", file=sys.stderr)
        return EXIT_FAILED
    from .api import export_model
    from .errors import ExportError

    kwargs = {} if args.seed is None else {"seed": args.seed}
    try:
        if args.model == "demo":
            from .demo import NAME, train_demo_model

            model, fit = train_demo_model()
            if not args.json:
                print(fit)
            report = export_model(model, args.out, name=args.name or NAME, **kwargs)
        else:
            report = export_model(args.model, args.out, name=args.name, **kwargs)
    except ExportError as e:
        print(f"statestream-export: {e}", file=sys.stderr)
        return e.exit_code
    print(_report_json(report) if args.json else report)
    if args.triton_config:
        from .triton import write_triton_entry

        try:
            entry = write_triton_entry(args.out, args.triton_config, report.manifest.name)
        except ExportError as e:
            print(f"statestream-export: {e}", file=sys.stderr)
            return e.exit_code
        if not args.json:
            print(f"wrote Triton model repository entry {entry}/ (config.pbtxt, 1/model.onnx)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
