"""dictd databases (``.index`` + ``.dict.dz``) and GCIDE entries: finance subject labels and GCIDE's ASCII markup."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------
# dictd databases

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def dictd_b64(digits: str) -> int:
    """Decode dictd's base-64 *number* (most significant digit first; not RFC 4648 byte encoding).

    ``"A"`` is 0, ``"B"`` 1, ``"BA"`` 64. An index line ``Debit<TAB>irGt<TAB>D2`` means the entry starts
    at byte ``dictd_b64("irGt")`` of the uncompressed ``.dict`` and is ``dictd_b64("D2")`` bytes long.
    """
    if not digits:
        raise ValueError("empty dictd base-64 number")
    n = 0
    for c in digits:
        try:
            n = n * 64 + _B64_VALUE[c]
        except KeyError:
            raise ValueError(f"invalid dictd base-64 digit {c!r} in {digits!r}") from None
    return n


@dataclass(frozen=True)
class IndexEntry:
    headword: str
    offset: int
    length: int


def parse_dictd_index(lines: Iterable[str]) -> list[IndexEntry]:
    """``headword<TAB>offset<TAB>length`` lines; dictd's own ``00-database-*`` entries are skipped.

    Several headwords can point at the same entry (``Banc``, ``Bancus`` and ``Bank`` share one); callers
    dedupe by (offset, length).
    """
    out = []
    for i, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"dictd index line {i}: expected 3 tab-separated fields, got {len(parts)}")
        head, off, ln = parts
        if head.startswith("00-database-") or head.startswith("00database"):
            continue
        out.append(IndexEntry(head, dictd_b64(off), dictd_b64(ln)))
    return out


def dictd_entries(index: list[IndexEntry], data: bytes) -> list[tuple[IndexEntry, str]]:
    """The distinct entries in file order, each with its first headword and its text.

    Offsets are byte offsets, so the slice is decoded per entry; the few entries that are not valid UTF-8
    (GCIDE has three) are decoded as Latin-1 rather than dropped.
    """
    seen: dict[tuple[int, int], IndexEntry] = {}
    for e in index:
        seen.setdefault((e.offset, e.length), e)
    out = []
    for (off, ln), e in sorted(seen.items()):
        raw = data[off : off + ln]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        out.append((e, text))
    return out


def read_dictd(index_path: Path, dict_path: Path) -> list[tuple[IndexEntry, str]]:
    """Read a dictd database; ``.dict.dz`` is gzip-compatible (dictzip adds random-access chunks)."""
    with open(index_path, encoding="utf-8", errors="replace") as f:
        index = parse_dictd_index(f)
    opener = gzip.open if str(dict_path).endswith(".dz") or str(dict_path).endswith(".gz") else open
    with opener(dict_path, "rb") as f:
        data = f.read()
    return dictd_entries(index, data)


# ---------------------------------------------------------------------------------------------------------
# GCIDE

# A subject label is a parenthesised capitalised phrase: "(Com.)", "(Stock Exchange)", "(Polit. Econ.)".
SUBJECT_LABEL = re.compile(r"\(([A-Z][A-Za-z.]*(?:[ .][A-Za-z.]+){0,4})\)")

# Labels that put an entry on the finance/commerce side. Matched against the label with case folded and
# spaces normalised. Chosen by listing every label GCIDE uses (about 1,300 distinct) and keeping those about
# commerce, finance, economics, accounting, banking, insurance and exchanges; "Com. Chem." (commercial
# chemistry) and "Dict. Econ. Plants" (economic botany) look similar and are deliberately left out.
FINANCE_LABEL_RE = re.compile(
    r"^(?:u\. ?s\. |eng\. |new york |london |railroad )?(?:"
    r"com\.|commerce|commercial law|com\. law|mercantile(?: law)?|finance|"
    r"stock exch(?:\.|ange|anges)|stock market|stock jobbing|"
    r"polit\. econ\.|pol\. econ\.|econ\.|economics|macroeconomics|"
    r"bookkeeping|accounts|accounting|banking|bankrupt law|bankruptcy practice|"
    r"(?:life |fire |marine )?insurance(?: law)?|exchanges?|trade"
    r")$"
)


def gcide_labels(entry: str) -> list[str]:
    """The subject labels in an entry, in order, without duplicates."""
    seen: dict[str, None] = {}
    for m in SUBJECT_LABEL.finditer(entry):
        seen.setdefault(m.group(1), None)
    return list(seen)


def is_finance_label(label: str) -> bool:
    return bool(FINANCE_LABEL_RE.match(" ".join(label.lower().split())))


def gcide_finance_labels(entry: str) -> list[str]:
    """The entry's finance/commerce subject labels (empty: a general entry)."""
    return [lb for lb in gcide_labels(entry) if is_finance_label(lb)]


SENSE_START = re.compile(r"^ {3}(?:\d+\.\s|\{)")


def gcide_finance_part(entry: str) -> str:
    """The finance part of an entry: its head (headword, etymology) and only the senses or phrases that
    carry a finance label; the whole entry when the label is in the head or the entry has a single sense.

    Why: "Address" has one commercial sense among eight ("to consign a ship to an agent"); putting all
    eight on the domain side would dilute it with Chaucer and Spenser.
    """
    lines = entry.split("\n")
    units: list[list[str]] = [[]]
    for ln in lines:
        if SENSE_START.match(ln):
            units.append([])
        units[-1].append(ln)
    head, senses = units[0], units[1:]
    if not senses or gcide_finance_labels("\n".join(head)):
        return entry
    kept = [u for u in senses if gcide_finance_labels("\n".join(u))]
    return "\n".join(head + [ln for u in kept for ln in u])


# GCIDE writes non-ASCII characters as bracketed ASCII codes. The common ones; unknown codes are kept as-is.
_GCIDE_CHARS = {
    '["a]': "ä",
    '["e]': "ë",
    '["i]': "ï",
    '["o]': "ö",
    '["u]': "ü",
    '["y]': "ÿ",
    "['a]": "á",
    "['e]": "é",
    "['i]": "í",
    "['o]": "ó",
    "['u]": "ú",
    "['y]": "ý",
    "[`a]": "à",
    "[`e]": "è",
    "[`i]": "ì",
    "[`o]": "ò",
    "[`u]": "ù",
    "[^a]": "â",
    "[^e]": "ê",
    "[^i]": "î",
    "[^o]": "ô",
    "[^u]": "û",
    "[a^]": "ă",
    "[e^]": "ĕ",
    "[i^]": "ĭ",
    "[o^]": "ŏ",
    "[u^]": "ŭ",
    "[=a]": "ā",
    "[=e]": "ē",
    "[=i]": "ī",
    "[=o]": "ō",
    "[=u]": "ū",
    "[a=]": "ā",
    "[e=]": "ē",
    "[i=]": "ī",
    "[o=]": "ō",
    "[u=]": "ū",
    "[~n]": "ñ",
    "[,c]": "ç",
    "[ae]": "æ",
    "[AE]": "Æ",
    "[oe]": "œ",
    "[OE]": "Œ",
    "[deg]": "°",
    "[pound]": "£",
    "[cent]": "¢",
    "[sect]": "§",
    "[para]": "¶",
    "[frac12]": "½",
    "[frac14]": "¼",
    "[frac34]": "¾",
    "[times]": "×",
    "[divide]": "÷",
    "[ng]": "ŋ",
    "[th]": "θ",
    "[sm]": "ˈ",
    "[asl]": "ɑ",
    "[-]": "—",
    "[--]": "—",
}
_GCIDE_CODE = re.compile(r"\[[^\[\]\s]{1,8}\]")
_GCIDE_SRC = r"(?:1913 Webster|Webster 1913 Suppl\.|PJC\.?|WordNet[ .0-9a-z]*|Century Dict\.[ 0-9]*|RDH|AS)"
# An editor's source line, "[1913 Webster]" or "[Webster 1913 Suppl. +PJC]"; dictfmt sometimes glued the next
# headword to it ("[1913 Webster] Alizarin"), so a short remainder goes with the line.
_GCIDE_SOURCE_LINE = re.compile(rf"^\s*\[{_GCIDE_SRC}(?:\s*\+\s*{_GCIDE_SRC})*\]\s*.{{0,40}}$")


def gcide_to_text(entry: str) -> str:
    """GCIDE markup to plain text: codes to characters, ``{Cross refs}`` and ``\\Head\\`` marks removed,
    editor source lines (``[1913 Webster]``, ``[PJC]``) dropped, hard-wrapped lines rejoined.

    The source lines are dropped because they repeat after every sense and carry no language; the
    provenance of the entry as a whole is kept in the record instead.
    """
    lines = [ln for ln in entry.split("\n") if not _GCIDE_SOURCE_LINE.match(ln)]
    text = "\n".join(lines)
    text = _GCIDE_CODE.sub(lambda m: _GCIDE_CHARS.get(m.group(0), m.group(0)), text)
    text = text.replace("{", "").replace("}", "")
    # "Debit \\Deb"it\\, n." : the backslashed part is the syllabified headword, a duplicate.
    text = re.sub(r" ?\\[^\\\n]*\\", "", text)
    # Pronunciations like (ăd*drĕs") or (-drĕst"): "*" marks syllables and '"' the stress.
    text = re.sub(r' ?\((?=[^()\s]*[*"])[^()\s]*\)', "", text)
    return rejoin_wrapped(text)


def rejoin_wrapped(text: str) -> str:
    """Join hard-wrapped lines inside each blank-line-separated block; drop the wrap indentation.

    A new numbered sense (``2.``, ``(a)``) starts a new line so the structure of an entry survives.
    """
    blocks = []
    for block in re.split(r"\n\s*\n", text):
        out: list[str] = []
        for ln in block.split("\n"):
            s = ln.strip()
            if not s:
                continue
            if out and not re.match(r"^(?:\d+\.|\([a-z]\)|--)\s", s):
                out[-1] = out[-1] + " " + s
            else:
                out.append(s)
        if out:
            blocks.append("\n".join(out))
    return "\n\n".join(blocks)
