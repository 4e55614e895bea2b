"""Render a :class:`~cxrkit.report.document.Document` as one self-contained HTML page.

Figures are embedded as base64 ``data:`` URIs and the stylesheet is inline,
so the page can be mailed or opened offline with no file beside it.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from cxrkit.report.document import BulletList, Callout, Document, Figure, Heading, Paragraph, Table, column_align

__all__ = ["to_html", "CSS"]

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.5rem; color: #1f2328; line-height: 1.5; }
h1 { font-size: 1.7rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
h3 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .65rem; }
th { background: #f6f8fa; text-align: left; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
caption { caption-side: top; text-align: left; font-style: italic; color: #57606a; padding-bottom: .3rem; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-style: italic; color: #57606a; font-size: .9rem; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; font-size: .88em; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; border-left: 6px solid #bf8700;
           padding: .7rem 1rem; margin: 1rem 0; border-radius: 4px; }
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    out = html.escape(str(text))
    out = _CODE.sub(r"<code>\1</code>", out)
    return _BOLD.sub(r"<strong>\1</strong>", out)


def _table(table: Table) -> str:
    align = column_align(table)
    cls = lambda i: ' class="r"' if align[i] == "r" else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{_inline(h)}</th>" for i, h in enumerate(table.headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in table.rows
    )
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figure: Figure, base_dir: Path) -> str:
    path = base_dir / figure.path
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(figure.caption, quote=True)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{_inline(figure.caption)}</figcaption></figure>"
    )


def to_html(doc: Document, base_dir: Path) -> str:
    """Render a document to a standalone HTML page.

    Args:
        doc: the document.
        base_dir: folder the document's figure paths are relative to.

    Returns:
        The HTML text.

    Raises:
        FileNotFoundError: a figure's PNG is missing.
    """
    parts = [f"<h1>{_inline(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Figure):
            parts.append(_figure(block, base_dir))
        elif isinstance(block, BulletList):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Callout):
            parts.append(f'<div class="warning"><strong>Warning:</strong> {_inline(block.text)}</div>')
        else:  # pragma: no cover
            raise TypeError(f"unknown block {type(block).__name__}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
