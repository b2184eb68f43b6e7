"""Records and the text helpers every parser shares: ``Doc``, normalisation, splitting, packing, reading."""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------
# Records


@dataclass
class Doc:
    """One document before it is written: ``where`` says where in the source file it came from."""

    id: str
    text: str
    title: str = ""
    where: str = ""
    meta: dict = field(default_factory=dict)


def normalize_text(text: str) -> str:
    """NFC, Unix newlines, no trailing spaces, at most one blank line in a row, no leading/trailing blanks.

    Why: the same character written two ways (composed or not) would split the tokenizer's statistics,
    and trailing whitespace from hard-wrapped manuals is noise the model would learn to produce.
    """
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\u00a0", " ")
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").strip()


def split_long(text: str, max_chars: int) -> list[str]:
    """Split at blank lines into pieces of at most ~``max_chars`` (a single longer paragraph stays whole).

    Long documents (a 200 KB library reference page) would make byte budgets coarse and one document would
    dominate a source; paragraph boundaries keep every piece readable on its own.
    """
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    cur: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if cur and size + 2 + len(para) > max_chars:
            pieces.append("\n\n".join(cur))
            cur, size = [], 0
        size += len(para) + (2 if cur else 0)
        cur.append(para)
    if cur:
        pieces.append("\n\n".join(cur))
    return pieces


def pack(
    items: Iterable[tuple[str, str]], target_chars: int, sep: str = "\n\n"
) -> Iterator[tuple[list[str], str]]:
    """Group consecutive small ``(key, text)`` items into documents of about ``target_chars``.

    Dictionary entries, glosses and fortunes are a few hundred bytes each; as separate documents they are
    too short for the cleaning stage's quality rules and for packing. Consecutive items (alphabetical for
    dictionaries, file order for fortunes) make a readable "page". Yields (keys, text).
    """
    keys: list[str] = []
    texts: list[str] = []
    size = 0
    for key, text in items:
        if texts and size + len(text) > target_chars:
            yield keys, sep.join(texts)
            keys, texts, size = [], [], 0
        keys.append(key)
        texts.append(text)
        size += len(text) + len(sep)
    if texts:
        yield keys, sep.join(texts)


# ---------------------------------------------------------------------------------------------------------
# small helpers


def read_text(path: Path) -> str:
    """A text file, gunzipped if it ends in .gz; invalid UTF-8 replaced (never silently truncated)."""
    opener: Callable = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")
