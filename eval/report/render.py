"""Render sections to a self-contained HTML page and to Markdown with image files.

The HTML has no external reference of any kind (inline CSS, images as ``data:`` URIs, no scripts), so it
can be mailed, archived or opened offline years later and look the same.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from dapt.eval.report.doc import Bullets, Figure, Para, Pre, Section, Table

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1b1f23;background:#fafbfc}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin:0.2em 0 0.1em}h2{border-bottom:1px solid #e1e4e8;padding-bottom:4px;margin-top:2em}
.sub{color:#586069;margin:0 0 1em}
nav{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:8px 16px;margin:1em 0}
nav a{margin-right:14px;color:#0366d6;text-decoration:none;font-size:0.92em}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.88em;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #dfe2e5;padding:4px 9px;vertical-align:top}
th{background:#f6f8fa;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0;color:#24292e}
tr:nth-child(even) td{background:#fcfcfd}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#586069;font-size:0.88em}
p.note{color:#6a737d;font-size:0.9em}
section#conclusions li{margin:0.3em 0}
footer{color:#6a737d;font-size:0.85em;margin-top:3em}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:8px 12px;font-size:0.8em;overflow-x:auto}
p.cap{font-weight:600;margin:0.8em 0 0.2em;font-size:0.88em}
"""


def _cell(text: str, numeric: bool, header: bool = False) -> str:
    tag = "th" if header else "td"
    cls = ' class="n"' if numeric and not header else ""
    return f"<{tag}{cls}>{html.escape(text)}</{tag}>"


def _numeric(t: Table) -> list[bool]:
    return t.numeric or [i > 0 for i in range(len(t.headers))]


def block_html(b: object) -> str:
    if isinstance(b, Para):
        cls = ' class="note"' if b.kind == "note" else ""
        return f"<p{cls}>{html.escape(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        num = _numeric(b)
        cap = f"<caption>{html.escape(b.caption)}</caption>" if b.caption else ""
        head = "<tr>" + "".join(_cell(h, False, True) for h in b.headers) + "</tr>"
        body = "".join(
            "<tr>" + "".join(_cell(c, num[i] if i < len(num) else True) for i, c in enumerate(row)) + "</tr>"
            for row in b.rows
        )
        return f"<table>{cap}<thead>{head}</thead><tbody>{body}</tbody></table>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        alt = html.escape(b.caption)
        return (
            f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption>{alt}</figcaption></figure>"
        )
    if isinstance(b, Pre):
        cap = f'<p class="cap">{html.escape(b.caption)}</p>' if b.caption else ""
        return f"{cap}<pre>{html.escape(b.text)}</pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def to_html(title: str, subtitle: str, sections: list[Section], footer: str) -> str:
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>'
        + "".join(block_html(b) for b in s.blocks)
        + "</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f'<body><main><h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>'
        f"<nav>{nav}</nav>{body}<footer>{html.escape(footer)}</footer></main></body></html>\n"
    )


# --------------------------------------------------------------------------------------------- markdown


def md_escape(text: str) -> str:
    """Escape what would break a pipe table cell or start unintended markup."""
    return (
        text.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("\n", " ")
        .replace("*", "\\*")
        .replace("_", "\\_")
    )


def md_table(t: Table) -> str:
    num = _numeric(t)
    lines = []
    if t.caption:
        lines.append(f"**{md_escape(t.caption)}**\n")
    lines.append("| " + " | ".join(md_escape(h) or " " for h in t.headers) + " |")
    lines.append(
        "|"
        + "|".join("---:" if (num[i] if i < len(num) else True) else "---" for i in range(len(t.headers)))
        + "|"
    )
    for row in t.rows:
        lines.append("| " + " | ".join(md_escape(c) for c in row) + " |")
    return "\n".join(lines)


def block_md(b: object) -> str:
    if isinstance(b, Para):
        return f"*{md_escape(b.text)}*" if b.kind == "note" else md_escape(b.text)
    if isinstance(b, Bullets):
        return "\n".join(f"- {md_escape(i)}" for i in b.items)
    if isinstance(b, Table):
        return md_table(b)
    if isinstance(b, Figure):
        return f"![{md_escape(b.caption)}]({b.name})\n\n*{md_escape(b.caption)}*"
    if isinstance(b, Pre):
        fence = "~~~~" if "```" in b.text else "```"
        cap = f"**{md_escape(b.caption)}**\n\n" if b.caption else ""
        return f"{cap}{fence}text\n{b.text.rstrip()}\n{fence}"
    raise TypeError(f"unknown block {type(b).__name__}")


def to_markdown(title: str, subtitle: str, sections: list[Section], footer: str) -> str:
    parts = [f"# {md_escape(title)}", md_escape(subtitle)]
    parts.append("Contents: " + " · ".join(f"[{md_escape(s.title)}](#{s.id})" for s in sections))
    for s in sections:
        parts.append(f'<a id="{s.id}"></a>\n\n## {md_escape(s.title)}')
        parts.extend(block_md(b) for b in s.blocks)
    parts.append(f"---\n*{md_escape(footer)}*")
    return "\n\n".join(parts) + "\n"


def figures(sections: list[Section]) -> list[Figure]:
    return [b for s in sections for b in s.blocks if isinstance(b, Figure)]


def write_figures(sections: list[Section], folder: Path) -> list[str]:
    """Write each figure's PNG next to report.md; returns the file names."""
    names = []
    for f in figures(sections):
        (folder / f.name).write_bytes(f.png)
        names.append(f.name)
    return names
