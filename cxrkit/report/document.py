"""A report as a list of blocks, rendered to Markdown (and by :mod:`cxrkit.report.html` to HTML).

Reports are built once as a :class:`Document` of headings, paragraphs,
tables, figures, lists and warnings, and rendered to both formats, so
``report.md`` and ``report.html`` always say the same thing. Text may use
Markdown inline code (```code```) and bold (``**bold**``); nothing else is
interpreted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

__all__ = [
    "Document",
    "Heading",
    "Paragraph",
    "Table",
    "Figure",
    "BulletList",
    "Callout",
    "Block",
    "to_markdown",
    "fmt",
    "fmt_ci",
    "column_align",
]


@dataclass
class Heading:
    """A section heading (level 2 = section, 3 = subsection)."""

    text: str
    level: int = 2


@dataclass
class Paragraph:
    """A paragraph of text."""

    text: str


@dataclass
class Table:
    """A table; cells are already formatted strings. ``align`` per column: 'l' or 'r'."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str | None = None
    align: Sequence[str] | None = None


@dataclass
class Figure:
    """A PNG figure stored beside the report (``path`` is relative to the report folder)."""

    path: str
    caption: str


@dataclass
class BulletList:
    """A bulleted list."""

    items: Sequence[str]


@dataclass
class Callout:
    """A prominent warning box."""

    text: str


Block = Union[Heading, Paragraph, Table, Figure, BulletList, Callout]


@dataclass
class Document:
    """A report: a title and its blocks, in order."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> "Document":
        """Append blocks; returns self for chaining."""
        self.blocks.extend(blocks)
        return self

    def figures(self) -> list[str]:
        """Relative paths of the figures in the document."""
        return [b.path for b in self.blocks if isinstance(b, Figure)]


def fmt(value: float | int | None, digits: int = 4) -> str:
    """Format a metric like the study's tables (4 decimals); ``n/a`` for None/nan; ints as ints."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_ci(low: float | None, high: float | None, digits: int = 4) -> str:
    """Format an interval as ``low – high`` (``n/a`` when undefined)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"{low:.{digits}f} – {high:.{digits}f}"


_NUMERIC_START = tuple("0123456789-+.")
_BLANKS = {"", "n/a", "–", "not computed"}


def column_align(table: Table) -> list[str]:
    """Alignment per column: the table's own, else 'r' for columns whose cells are all numbers, else 'l'."""
    if table.align:
        return list(table.align)
    out = []
    for i in range(len(table.headers)):
        cells = [str(row[i]).strip() for row in table.rows if i < len(row)]
        numeric = [c for c in cells if c not in _BLANKS]
        out.append("r" if numeric and all(c.startswith(_NUMERIC_START) for c in numeric) else "l")
    return out


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    align = column_align(table)
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines = [f"*{table.caption}*", ""] + lines
    return "\n".join(lines)


def to_markdown(doc: Document) -> str:
    """Render a document to GitHub-flavoured Markdown; figures link to the PNGs beside it.

    Args:
        doc: the document.

    Returns:
        The Markdown text, ending with a newline.
    """
    parts = [f"# {doc.title}"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(_md_table(block))
        elif isinstance(block, Figure):
            parts.append(f"![{block.caption}]({Path(block.path).as_posix()})\n\n*{block.caption}*")
        elif isinstance(block, BulletList):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Callout):
            parts.append("> **Warning:** " + block.text.replace("\n", "\n> "))
        else:  # pragma: no cover - every Block type is handled above
            raise TypeError(f"unknown block {type(block).__name__}")
    return "\n\n".join(parts) + "\n"
