"""The code base's own rules: ruff clean, no dead code, and imports that follow the layers without cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = {  # import name prefix -> folder
    "statestream.contract": ROOT / "client" / "statestream" / "contract",
    "statestream.client": ROOT / "client" / "statestream" / "client",
    "statestream.aio": ROOT / "client" / "statestream" / "aio",
    "statestream.server": ROOT / "server" / "statestream" / "server",
    "statestream.export": ROOT / "export" / "statestream" / "export",
}
BIN = Path(sys.executable).parent


def test_ruff_finds_nothing():
    r = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_dead_code():
    r = subprocess.run([str(BIN / "vulture"), "server", "client/statestream/client", "client/statestream/aio",
                        "client/statestream/contract",
                        "export", "tests/support", "scripts/vulture_whitelist.py", "--min-confidence", "60"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def _nodes(tree):
    """Every node, except what sits under `if TYPE_CHECKING:` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports(path: Path, name: str, known: dict) -> set[str]:
    """Every statestream module this file imports, at the top or inside functions (lazy imports count)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in _nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & known.keys()
            out.update(subs if subs else {base})  # `from pkg import module` needs the module, not more of pkg
    return {m for m in out if m.startswith("statestream.")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(path, name, mods) if m in mods and m != name} for name, path in mods.items()}


LAYERS = ["statestream.server.app", "statestream.server.api", "statestream.server.engine", "statestream.server.store"]


def layer(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def test_dependencies_point_down_the_layers():
    """app -> api -> engine -> store; export, client and the contract never import the server; no adapter imports
    another."""
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if not mod.startswith("statestream.server") and dep.startswith("statestream.server"):
                bad.append(f"{mod} imports the server ({dep})")
            if mod.startswith("statestream.contract") and not dep.startswith("statestream.contract"):
                bad.append(f"the contract {mod} imports {dep}")
            a, b = layer(mod), layer(dep)
            if a is not None and b is not None and b < a:
                bad.append(f"{mod} imports {dep}: up the layers")
        if mod in ("statestream.server.api.v1", "statestream.server.api.kserve"):
            other = {"statestream.server.api.v1", "statestream.server.api.kserve"} - {mod}
            bad += [f"adapter {mod} imports adapter {d}" for d in deps & other]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in g.get(node, ()):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in g:
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
