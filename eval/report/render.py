"""Render sections to a self-contained HTML page (Jinja2 templates) and to Markdown with image files.

The HTML has no external reference of any kind (inline CSS, images as ``data:`` URIs, no scripts), so it
can be mailed, archived or opened offline years later and look the same. Its markup lives in
``templates/report.html.jinja`` and ``templates/blocks.html.jinja`` (one macro per block type), rendered
with autoescaping on, so no recorded string (a source name, an error message) can inject markup.
"""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

import jinja2

from dapt.eval.report.doc import Bullets, Figure, Para, Pre, Section, Table

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _numeric(t: Table) -> list[bool]:
    return t.numeric or [i > 0 for i in range(len(t.headers))]


def right_aligned(t: Table) -> list[bool]:
    """Per body column: right-align (numbers); columns beyond the declared ones are numeric."""
    num = _numeric(t)
    width = max([len(t.headers), *(len(r) for r in t.rows)])
    return [num[i] if i < len(num) else True for i in range(width)]


def _unknown_block(b: object) -> str:
    raise TypeError(f"unknown block {type(b).__name__}")


@cache
def environment() -> jinja2.Environment:
    """The report's Jinja environment: templates next to this module, HTML autoescaped, undefined names
    an error (a typo in a template fails the stage instead of rendering an empty cell)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.jinja",), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.tests.update(
        para=lambda b: isinstance(b, Para),
        bullets=lambda b: isinstance(b, Bullets),
        table=lambda b: isinstance(b, Table),
        figure=lambda b: isinstance(b, Figure),
        pre=lambda b: isinstance(b, Pre),
    )
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    env.filters["md"] = md_escape
    env.filters["md_table"] = md_table
    env.globals.update(right_aligned=right_aligned, unknown_block=_unknown_block)
    return env


def to_html(title: str, subtitle: str, sections: list[Section], footer: str) -> str:
    return (
        environment()
        .get_template("report.html.jinja")
        .render(title=title, subtitle=subtitle, sections=sections, footer=footer)
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
    """Markdown is built in Python rather than a template: it is whitespace-significant (pipe tables,
    fences, blank lines between blocks), which a template would obscure."""
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
