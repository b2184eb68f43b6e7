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

One module per family of formats (``records`` holds the shared ``Doc`` and text helpers).
Nothing here reads the file system except the ``read_*`` helpers; the rest takes text, so tests feed them
hand-made inputs.
"""

from __future__ import annotations

from pathlib import Path

from dapt.corpora.recipes.parsers.dictd import (
    FINANCE_LABEL_RE,
    IndexEntry,
    dictd_b64,
    dictd_entries,
    gcide_finance_labels,
    gcide_finance_part,
    gcide_labels,
    gcide_to_text,
    is_finance_label,
    parse_dictd_index,
    read_dictd,
    rejoin_wrapped,
)
from dapt.corpora.recipes.parsers.documents import (
    bible_chapters,
    html_to_text,
    parse_bible_verses,
    parse_fortunes,
    parse_info,
)
from dapt.corpora.recipes.parsers.records import (
    Doc,
    normalize_text,
    pack,
    read_text,
    split_long,
)
from dapt.corpora.recipes.parsers.wordnet import (
    WN_LEXNAMES,
    PhraseIndex,
    Synset,
    gloss_key,
    parse_wordnet_data,
    synset_text,
    wn_definition,
    wn_entry_to_text,
)

MODULE_FILES = tuple(Path(__file__).parent.glob("*.py"))
"""The parser sources (the demo recipe hashes them: a changed parser rebuilds its outputs)."""

__all__ = [
    "Doc",
    "FINANCE_LABEL_RE",
    "IndexEntry",
    "PhraseIndex",
    "Synset",
    "WN_LEXNAMES",
    "bible_chapters",
    "dictd_b64",
    "dictd_entries",
    "gcide_finance_labels",
    "gcide_finance_part",
    "gcide_labels",
    "gcide_to_text",
    "gloss_key",
    "html_to_text",
    "is_finance_label",
    "normalize_text",
    "pack",
    "parse_bible_verses",
    "parse_dictd_index",
    "parse_fortunes",
    "parse_info",
    "parse_wordnet_data",
    "read_dictd",
    "read_text",
    "rejoin_wrapped",
    "split_long",
    "synset_text",
    "wn_definition",
    "wn_entry_to_text",
]
