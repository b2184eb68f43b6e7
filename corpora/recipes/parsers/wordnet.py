"""WordNet database files (``data.noun``), lexicographer file numbers, glosses and dictd-served entries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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
