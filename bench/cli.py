"""Command-line parsers shared by the bench's entry points."""

from __future__ import annotations

import argparse
import json
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


def publish(out: Path, name: str, res: dict, md: str) -> int:
    """Write a bench's results as out/name.json and its report as out/name.md, print the report; exit status 0."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    (out / f"{name}.md").write_text(md)
    print(md)
    return 0
