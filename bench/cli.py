"""Command-line parsers shared by the bench's entry points."""

from __future__ import annotations

import argparse
from pathlib import Path

from .procs import ROOT


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """`python -m bench.<module>` with the module docstring as its usage guide."""
    return argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def ghz_parser(module: str, doc: str | None, quick_help: str = "1.5 s runs") -> argparse.ArgumentParser:
    """A bench that drives a served model with ghz: --model, --out, --duration, --quick."""
    p = parser(module, doc)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per ghz run")
    p.add_argument("--quick", action="store_true", help=quick_help)
    return p
