"""Parsers for the file formats the demo corpora come in (pure functions, stdlib only).

Each parser turns one installed file format into ``Doc`` records: a stable id, a title, the text, and
where in the file it came from (``where``, which becomes part of the record's provenance). The formats:

- dictd databases (``.index`` + ``.dict.dz``): GCIDE and WordNet as served by ``dictd``;
- GCIDE entries: subject labels such as ``(Com.)`` or ``(Stock Exchange)`` that select the finance entries,
  and GCIDE's ASCII markup for accents and symbols (``["e]``, ``[deg]``);
- WordNet database files (``data.noun``) and their lexicographer file numbers (``noun.possession``);
- fortune files (``%`` lines between fortunes);
- GNU info files (nodes between ``\\x1f`` separators);
- DocBook HTML manuals (gnucash-docs, eqonomize-doc) with their navigation chrome removed;
- the ``bible`` program's ``-f`` output (one ``Ge1:1 text`` verse per line).

Nothing here reads the file system except the ``read_*`` helpers; the rest takes text, so tests feed them
hand-made inputs.
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
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
_LABEL = re.compile(r"\(([A-Z][A-Za-z.]*(?:[ .][A-Za-z.]+){0,4})\)")

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
    for m in _LABEL.finditer(entry):
        seen.setdefault(m.group(1), None)
    return list(seen)


def is_finance_label(label: str) -> bool:
    return bool(FINANCE_LABEL_RE.match(" ".join(label.lower().split())))


def gcide_finance_labels(entry: str) -> list[str]:
    """The entry's finance/commerce subject labels (empty: a general entry)."""
    return [lb for lb in gcide_labels(entry) if is_finance_label(lb)]


_SENSE_START = re.compile(r"^ {3}(?:\d+\.\s|\{)")


def gcide_finance_part(entry: str) -> str:
    """The finance part of an entry: its head (headword, etymology) and only the senses or phrases that
    carry a finance label; the whole entry when the label is in the head or the entry has a single sense.

    Why: "Address" has one commercial sense among eight ("to consign a ship to an agent"); putting all
    eight on the domain side would dilute it with Chaucer and Spenser.
    """
    lines = entry.split("\n")
    units: list[list[str]] = [[]]
    for ln in lines:
        if _SENSE_START.match(ln):
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


# ---------------------------------------------------------------------------------------------------------
# WordNet

# lexnames(5WN): the lexicographer file number (second field of a data.* line) -> its name. Debian's
# wordnet-base does not ship the lexnames file itself, so the table from the manual page is here.
WN_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]


@dataclass(frozen=True)
class Synset:
    offset: str
    lexname: str
    words: tuple[str, ...]
    gloss: str


def parse_wordnet_data(lines: Iterable[str]) -> Iterator[Synset]:
    """Synsets from a WordNet ``data.noun``/``data.verb``/... file (wndb(5WN)).

    Line: ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ... | gloss``; ``w_cnt``
    is two hex digits; words use ``_`` for spaces and may carry an adjective marker like ``(a)``. Lines
    starting with two spaces are the licence header.
    """
    for line in lines:
        if line.startswith("  ") or not line.strip():
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        lexnum = int(f[1])
        w_cnt = int(f[3], 16)
        words = tuple(re.sub(r"\([a-z]+\)$", "", f[4 + 2 * i]).replace("_", " ") for i in range(w_cnt))
        lexname = WN_LEXNAMES[lexnum] if lexnum < len(WN_LEXNAMES) else f"lex{lexnum}"
        yield Synset(f[0], lexname, words, gloss.strip())


def synset_text(s: Synset) -> str:
    """``word (also: a, b): gloss.`` - one glossary line."""
    also = f" (also: {', '.join(s.words[1:])})" if len(s.words) > 1 else ""
    gloss = s.gloss.rstrip()
    if gloss and gloss[-1] not in '.!?"':
        gloss += "."
    return f"{s.words[0]}{also}: {gloss}"


def gloss_key(text: str) -> str:
    """A gloss as compared for exclusion: lower case, single spaces, no trailing period or semicolon."""
    return " ".join(text.lower().split()).strip(" .;")


_PUNCT = re.compile(r"[^\w\s'-]")


def _words(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


class PhraseIndex:
    """Finds any of many phrases (word sequences) in a text in one pass over its words.

    Phrases are indexed by their first three words, so a text costs one dictionary lookup per word plus a
    comparison per candidate. Punctuation and case are ignored on both sides ("price." matches "price").
    """

    def __init__(self, phrases: Iterable[str], min_words: int = 5) -> None:
        self.index: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for p in phrases:
            w = tuple(_words(p))
            if len(w) >= max(min_words, 3):
                self.index.setdefault(w[:3], []).append(w)

    def __len__(self) -> int:
        return sum(len(v) for v in self.index.values())

    def find(self, text: str) -> str | None:
        """The first indexed phrase occurring in ``text``, or None."""
        if not self.index:
            return None
        words = _words(text)
        for i in range(len(words) - 2):
            for cand in self.index.get((words[i], words[i + 1], words[i + 2]), ()):
                if tuple(words[i : i + len(cand)]) == cand:
                    return " ".join(cand)
        return None


def wn_definition(gloss: str) -> str:
    """The definition part of a WordNet gloss: no ``[syn: ...]`` lists, no braces, no quoted examples.

    The same reduction ``eval.build_tasks`` applies to make its multiple-choice items, so a definition
    used as an evaluation question can be recognised (and kept out of training) exactly.
    """
    text = re.sub(r"\[(?:syn|ant|also):[^\]]*\]", " ", gloss, flags=re.S)
    text = text.replace("{", "").replace("}", "")
    text = " ".join(text.split())
    return text.split('; "')[0].strip(" ;")


_WN_SENSE = re.compile(r"^(?:(n|v|adj|adv)\s+)?(\d+):\s*(.*)$", re.S)


def wn_entry_to_text(
    entry: str, exclude: frozenset[str] = frozenset(), dropped: list[int] | None = None
) -> str:
    """A dict-wn entry: the headword line, then one line per sense (``{links}`` unbraced, wrapped lines
    rejoined). Senses whose definition's ``gloss_key`` is in ``exclude`` are left out (their count is
    appended to ``dropped``); the part-of-speech marker moves to the next kept sense of that part of speech.
    """
    text = entry.replace("{", "").replace("}", "")
    lines = text.split("\n")
    head = lines[0].strip()
    body: list[str] = []
    for ln in lines[1:]:
        s = ln.strip()
        if not s:
            continue
        if body and not _WN_SENSE.match(s):
            body[-1] += " " + s
        else:
            body.append(s)
    out: list[str] = []
    pos = last_pos = None
    n_dropped = 0
    for line in body:
        m = _WN_SENSE.match(line)
        if not m:
            out.append(line)
            continue
        pos = m.group(1) or pos
        if exclude and gloss_key(wn_definition(m.group(3))) in exclude:
            n_dropped += 1
            continue
        marker = f"{pos} " if pos and pos != last_pos else ""
        out.append(f"{marker}{m.group(2)}: {m.group(3)}")
        last_pos = pos
    if dropped is not None:
        dropped.append(n_dropped)
    if not out:
        return ""
    return head + "\n" + "\n".join(out)


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


# ---------------------------------------------------------------------------------------------------------
# small helpers


def read_text(path: Path) -> str:
    """A text file, gunzipped if it ends in .gz; invalid UTF-8 replaced (never silently truncated)."""
    opener: Callable = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")
