"""`statestream` CLI: list models, stream a CSV or a synthetic signal through a session."""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from statestream.contract import demo
from statestream.contract.errors import StatestreamError, Unavailable
from statestream.v1 import statestream_pb2 as pb

from . import plot
from .client import Client

USAGE = """\
Talk to a statestream server from the shell.

examples:
  statestream models                                   # what the server serves (every version)
  statestream load sensor                              # new versions in the server's --models folder
  statestream unload sensor --version 1 [--force]      # no new sessions on it (--force: close them now)
  statestream migrate sensor --to 2                    # move every open session, states carried over
  statestream stream --model demo --synthetic 200      # a synthetic sensor signal, one line per timestep
  statestream stream --model demo --csv readings.csv --plot out.png
  statestream --target host:50051 --token-file tok stream --model demo --csv -   # CSV from stdin
  statestream --target haproxy:50051 --timeout 30 stream --model demo --csv - --exactly-once   # survives a failover

A CSV has one row per timestep and one column per feature (a header row is skipped
if it is not numeric). Each output line is: timestep, then the model's outputs.
"""


def synthetic_input(model: str, n: int, features: int) -> tuple[np.ndarray, np.ndarray | None]:
    """`--synthetic N`: (x [N, F], target [N, O] or None). The demo gets the kind of signal it was trained on
    (held-out seed) and its target, the next reading of channel 0; other models a generic sensor-like mix."""
    if model == demo.NAME and features == demo.FEATURES:
        x, target = demo.synthetic_signal(1, n, seed=0)
        return x[0], target[0]
    return synthetic_signal(n, features), None


def synthetic_signal(n: int, features: int, seed: int = 0) -> np.ndarray:
    """A noisy multi-channel sine mix, (n, features) float32: what a sensor might send."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)[:, None]
    phase = np.arange(features)[None, :] * 0.7
    x = np.sin(0.1 * t + phase) + 0.5 * np.sin(0.023 * t * (1 + np.arange(features)[None, :])) \
        + 0.05 * rng.standard_normal((n, features))
    return x.astype(np.float32)


def read_csv(path: str, features: int) -> np.ndarray:
    f = sys.stdin if path == "-" else open(path, newline="")
    rows = []
    with f:
        for i, row in enumerate(csv.reader(f)):
            if not row:
                continue
            try:
                rows.append([float(v) for v in row])
            except ValueError:
                if i == 0:
                    continue  # header
                raise SystemExit(f"{path}: row {i + 1} is not numeric: {row}")
            if len(rows[-1]) != features:
                raise SystemExit(f"{path}: row {i + 1} has {len(rows[-1])} columns; the model expects {features}")
    return np.array(rows, dtype=np.float32).reshape(-1, features)


def cmd_models(client: Client, args) -> int:
    try:
        states = {(name, version): (state, reason) for name, version, state, reason in client.repository()}
    except StatestreamError:  # a server without the repository API
        states = {}
    for m in client.models():
        # an adopted graph's state tensors (and context window) have no cell type: name(size)
        layers = ", ".join(f"{layer.name}:{pb.CellType.Name(layer.cell).removeprefix('CELL_TYPE_')}({layer.units})"
                           if layer.cell else f"{layer.name}({layer.units})" for layer in m.layers)
        state = states.pop((m.name, m.version), ("READY", ""))[0]
        print(f"{m.name}\tfeatures={m.features}\toutputs={m.output_size}\tlayers=[{layers}]\tversion={m.version}"
              f"{' (default)' if m.is_default else ''}\t{state}")
    for (name, version), (state, reason) in sorted(states.items()):  # failed to load
        print(f"{name}\tversion={version}\t{state}\t{reason}")
    return 0


def cmd_load(client: Client, args) -> int:
    client.load_model(args.model)
    return cmd_models(client, args)


def cmd_unload(client: Client, args) -> int:
    client.unload_model(args.model, args.version, force=args.force)
    return cmd_models(client, args)


def cmd_migrate(client: Client, args) -> int:
    report = client.migrate(args.model, args.to, from_version=getattr(args, "from"))
    for sid, before in report.moved.items():
        print(f"{sid}\tmoved from version {before} to {report.version}")
    for sid in report.unchanged:
        print(f"{sid}\talready on version {report.version}")
    for sid, why in report.refused.items():
        print(f"{sid}\trefused: {why}")
    print(f"{len(report.moved)} moved, {len(report.unchanged)} already there, {len(report.refused)} refused",
          file=sys.stderr)
    return 1 if report.refused else 0


def cmd_stream(client: Client, args) -> int:
    info = client.model(args.model)
    x, target = (read_csv(args.csv, info.features), None) if args.csv else \
        synthetic_input(args.model, args.synthetic, info.features)
    outputs = []
    with client.session(args.model, exactly_once=args.exactly_once) as s:
        for t, y in enumerate(s.stream(x)):
            outputs.append(y)
            print(t, *(f"{v:.6g}" for v in y), flush=True)
    if args.plot:
        plot.save(args.plot, x, np.array(outputs), args.model, target)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="statestream", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:50051", help="server address (default localhost:50051)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    p.add_argument("--token-file", help="file holding a bearer token")
    p.add_argument("--ca", help="PEM CA certificate: connect with TLS")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the served models")
    st = sub.add_parser("stream", help="stream timesteps through a new session, print each output")
    st.add_argument("--model", required=True)
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV file (or - for stdin), one row per timestep")
    src.add_argument("--synthetic", type=int, metavar="N", help="N timesteps of a synthetic sensor signal")
    st.add_argument("--plot", metavar="PNG", help='also plot input, output (and the demo\'s target) to this PNG; '
                    'needs the plot extra: pip install ".[plot]"')
    st.add_argument("--exactly-once", action="store_true",
                    help="number the steps and resume through a failover (one step in flight: slower)")
    ld = sub.add_parser("load", help="load the new versions of a model from the server's --models folder")
    ld.add_argument("model")
    un = sub.add_parser("unload", help="unload a model's versions: no new sessions, open ones run on")
    un.add_argument("model")
    un.add_argument("--version", type=int, default=0, help="only this version (default: every version)")
    un.add_argument("--force", action="store_true", help="close the version's open sessions now")
    mg = sub.add_parser("migrate", help="move every open session of a model to another version (same state "
                        "layout), with a report")
    mg.add_argument("model")
    mg.add_argument("--to", type=int, default=0, help="the target version (default: the server's default)")
    mg.add_argument("--from", type=int, default=0, help="only sessions on this version (default: every version)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = getattr(args, "plot", None) and plot.require_matplotlib()
    if missing:  # before connecting or streaming anything
        print(f"statestream: {missing}", file=sys.stderr)
        return 2
    creds = None
    if args.ca:
        import grpc

        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(f.read())
    token = open(args.token_file).read().strip() if args.token_file else None
    try:
        with Client(args.target, timeout=args.timeout, credentials=creds, token=token) as client:
            return {"models": cmd_models, "stream": cmd_stream, "load": cmd_load, "unload": cmd_unload,
                    "migrate": cmd_migrate}[args.command](client, args)
    except Unavailable as e:
        print(f"statestream: the server at {args.target} went away or cannot be reached ({e})", file=sys.stderr)
        return 1
    except StatestreamError as e:
        print(f"statestream: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("statestream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
