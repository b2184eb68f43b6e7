"""Whole documents: fortune files, GNU info nodes, DocBook HTML manuals, the ``bible`` program's output."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser

from dapt.corpora.recipes.parsers.records import normalize_text

# ---------------------------------------------------------------------------------------------------------
# fortunes


def parse_fortunes(text: str) -> list[str]:
    """Fortunes are separated by lines holding a single ``%``; empty fortunes are dropped."""
    out = []
    for chunk in re.split(r"^%[ \t]*$", text, flags=re.M):
        chunk = chunk.strip("\n")
        if chunk.strip():
            out.append(chunk.rstrip())
    return out


# ---------------------------------------------------------------------------------------------------------
# GNU info

_INFO_HEADER = re.compile(r"^File: [^,]+,\s+Node: ([^,\n]+)")


def parse_info(text: str) -> list[tuple[str, str]]:
    """``(node name, text)`` per node of an info file; menus, index nodes and the tag table removed.

    Menus (``* Menu:`` then ``* Name::`` lines) are navigation, not prose; ``*Note X::`` cross-references
    become ``see X``.
    """
    out = []
    for chunk in text.split("\x1f"):
        chunk = chunk.lstrip("\n")
        m = _INFO_HEADER.match(chunk)
        if not m:
            continue  # preamble, "Tag Table:", "Local Variables:"
        node = m.group(1).strip()
        if "index" in node.lower():
            continue
        body = chunk.split("\n", 1)[1] if "\n" in chunk else ""
        lines = []
        in_menu = False
        for ln in body.split("\n"):
            if ln.startswith("* Menu:"):
                in_menu = True
                continue
            if in_menu:
                if ln.startswith("* ") or not ln.strip() or ln.startswith("   "):
                    continue
                in_menu = False
            lines.append(ln)
        body = "\n".join(lines)
        body = re.sub(r"\*[Nn]ote\s+([^:]+?)::", r"see \1", body)
        body = re.sub(r"\*[Nn]ote\s+[^:]+?:\s*([^.,]+)[.,]", r"see \1.", body)
        body = normalize_text(body)
        if body:
            out.append((node, body))
    return out


# ---------------------------------------------------------------------------------------------------------
# HTML (DocBook chunked manuals)

_BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "tr",
    "table",
    "pre",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "section",
    "title",
    "hr",
    "figure",
    "caption",
}
_SKIP_TAGS = {"script", "style", "head"}
# DocBook's navigation bars and the table of contents repeat on every page.
_SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-figures", "list-of-tables", "list-of-examples"}


class _TextExtractor(HTMLParser):
    """Visible text with block structure, skipping scripts, styles and navigation chrome.

    ``<pre>`` keeps its line breaks and spacing (screen listings and ledger journal examples matter).
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.stack: list[tuple[str, bool]] = []
        self.pre = 0
        self.title = ""
        self._in_title = False
        self.bullet = False  # a "- " was written and no text yet: the item's first block adds no break

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
        if tag in {"br", "hr", "img", "meta", "link", "input"}:
            if tag in {"br", "hr"} and not self.skip_depth:
                self.parts.append("\n")
            return
        if tag == "title":
            self._in_title = True
        self.stack.append((tag, skip))
        if skip:
            self.skip_depth += 1
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK_TAGS and not self.skip_depth and not self.bullet:
            self.parts.append("\n\n" if tag in {"p", "pre", "h1", "h2", "h3", "h4", "table", "dl"} else "\n")
        if tag == "li" and not self.skip_depth:
            self.parts.append("- ")
            self.bullet = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        # Pop to the matching open tag (HTML in the wild leaves <p>, <li> unclosed).
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for t, skip in self.stack[i:]:
                    if skip:
                        self.skip_depth -= 1
                    if t == "pre":
                        self.pre -= 1
                del self.stack[i:]
                break
        if tag in _BLOCK_TAGS and not self.skip_depth:
            self.parts.append("\n\n" if tag in {"p", "pre", "table", "dl", "h1", "h2", "h3", "h4"} else "\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self.skip_depth:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if self.bullet:
                data = data.lstrip()
        if data.strip():
            self.bullet = False
        self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str]:
    """(title, text) of an HTML page."""
    p = _TextExtractor()
    p.feed(markup)
    p.close()
    raw = "".join(p.parts)
    lines = []
    for ln in raw.split("\n"):
        lines.append(ln if ln.startswith("  ") else ln.strip())
    text = normalize_text(html.unescape("\n".join(lines)))
    return " ".join(p.title.split()), text


# ---------------------------------------------------------------------------------------------------------
# The bible program's output

_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def parse_bible_verses(lines: Iterable[str]) -> Iterator[tuple[str, int, int, str]]:
    """``(book, chapter, verse, text)`` from ``bible -f`` output (``Ge1:1 In the beginning ...``)."""
    for i, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        m = _VERSE.match(line)
        if not m:
            raise ValueError(f"bible output line {i}: not a 'BookC:V text' verse: {line[:60]!r}")
        yield m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()


def bible_chapters(lines: Iterable[str]) -> list[tuple[str, str]]:
    """One document per chapter: ``("Ge1", "1 In the beginning ... 2 And the earth ...")``.

    Verse numbers are kept inline (as printed bibles do) so the text stays citable.
    """
    chapters: dict[str, list[str]] = {}
    for book, ch, v, text in parse_bible_verses(lines):
        chapters.setdefault(f"{book}{ch}", []).append(f"{v} {text}")
    return [(key, " ".join(verses)) for key, verses in chapters.items()]
