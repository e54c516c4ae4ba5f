"""The README shows the very commands the tests run."""

from __future__ import annotations

import re

import pytest
from serverproc import ROOT

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.sh")))
def test_example_scripts_are_in_the_readme_verbatim(script):
    body = (ROOT / "examples" / script).read_text().split("set -euo pipefail\n", 1)[1].strip()
    assert body in README, f"README's snippet for examples/{script} differs from the file the tests run"
    assert f"examples/{script}" in README


def test_the_two_commands():
    assert re.search(r"^make serve\b", README, re.M) and re.search(r"^make test\b", README, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
