"""The fenced code blocks of README.md and docs/*.md, for the tests that run them as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from serverproc import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEFAULT_TARGET = "localhost:50051"
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!-- not run: (.+) -->$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code, and why it is not run (None: it is run)."""

    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def against(self, target: str) -> str:
        """The code pointed at `target` instead of the default address the docs use."""
        return self.code.replace(DEFAULT_TARGET, target)


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, with the `<!-- not run: reason -->` line just above it, if any."""
    out, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        reason = _NOT_RUN.match(above)
        out.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n", reason and reason.group(1)))
        i = end + 1
    return out


def all_blocks(lang: str) -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.lang == lang]


def docs_text() -> str:
    """README.md and every docs/*.md, for checks that a snippet is shown somewhere a reader finds it."""
    return "\n".join(p.read_text() for p in PAGES)


def section(page: Path, heading: str) -> list[Block]:
    """The blocks under one `## heading` of a page."""
    text = page.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    first, last = text[:start].count("\n") + 1, text[:end if end > 0 else len(text)].count("\n") + 1
    return [b for b in blocks(page) if first <= b.line <= last]
