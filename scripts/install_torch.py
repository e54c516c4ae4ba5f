"""Installs the `torch` extra for `statestream-export torch` and its tests, in two parts (make install-torch).

PyPI's Linux torch is the CUDA build, about 5 GB with its nvidia-* packages, so it stays out of .venv and out of
every other install. Part one, the heavy part, is a venv of the extra's third-party packages in a cache outside
the clone, keyed by a hash of the Python version and the pinned requirements read from pyproject.toml:

    ${STATESTREAM_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/statestream}/venv-torch-<key>

built in a `.partial-<pid>` folder and renamed when complete, so a second clone on the same machine (or a CI
machine that keeps its home cache) reuses it, and an interrupted install is never taken for a finished one.
Part two, per clone, is a small venv (.venv-torch) whose site-packages adds the cached one (a .pth file) and holds
an editable install of this clone (`pip install --no-deps -e .`, which gives `statestream-export`). Two clones
share the 5 GB and each runs its own code. Changing a pin in pyproject's torch extra changes the key: a new cache
venv is built, the old one stays until removed (`rm -rf` the folder printed below).

Usage: python scripts/install_torch.py [--venv .venv-torch]    (idempotent: about a second when nothing changed)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PTH = "statestream-torch-deps.pth"


def requirements(pyproject: Path) -> list[str]:
    """The base dependencies and the torch extra, as pyproject.toml pins them (read without tomllib: Python 3.10)."""
    text = pyproject.read_text()
    out = []
    for key in ("dependencies", "torch"):
        block = re.search(rf"^{key} = \[(.*?)^\]", text, re.M | re.S)
        if block is None:
            sys.exit(f"install_torch: no `{key} = [...]` list in {pyproject}")
        out += re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)
    return out


def cache_root() -> Path:
    if os.environ.get("STATESTREAM_CACHE_DIR"):
        return Path(os.environ["STATESTREAM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "statestream"


def key(reqs: list[str]) -> str:
    ident = "\n".join([f"python {sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}", *sorted(reqs)])
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "-q", *args],
                   check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def cached_deps(reqs: list[str]) -> Path:
    """The cache venv holding `reqs`, built now if it is not there yet."""
    final = cache_root() / f"venv-torch-{key(reqs)}"
    if (final / "COMPLETE").is_file():
        print(f"install_torch: reusing {final}")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    print(f"install_torch: installing {', '.join(reqs)} into {final} (about 5 GB, minutes; once per machine)")
    t0 = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
        pip(partial, *reqs)
        (partial / "COMPLETE").write_text("\n".join([*reqs, f"installed in {time.monotonic() - t0:.0f} s", ""]))
        try:
            partial.rename(final)
        except OSError:  # another install finished first: use its venv
            if not (final / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"install_torch: {final} ready in {time.monotonic() - t0:.0f} s")
    return final


def clone_venv(venv: Path, deps: Path) -> None:
    """The clone's small venv: the cached packages through a .pth file, this clone's code installed editable."""
    line = f"import site; site.addsitedir({str(site_packages(deps))!r})\n"
    pth = site_packages(venv) / PTH
    stamp = venv / ".installed"
    if (pth.is_file() and pth.read_text() == line and stamp.is_file()
            and stamp.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime):
        return
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pth.write_text(line)
    pip(venv, "--no-deps", "-e", str(ROOT))
    stamp.touch()
    print(f"install_torch: {venv} ready (statestream from {ROOT}, torch from {deps})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", default=str(ROOT / ".venv-torch"), help="the clone's venv to create (.venv-torch)")
    args = p.parse_args()
    deps = cached_deps(requirements(ROOT / "pyproject.toml"))
    clone_venv(Path(args.venv).absolute(), deps)


if __name__ == "__main__":
    main()
