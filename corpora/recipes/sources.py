"""The demo's sources: one builder per Debian package family, and the table of sources with their licences.

Each builder yields ``Doc`` records in a deterministic order from installed package files (parsed by
``parsers``); selection under a size budget, provenance records and writing live in ``demo``.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dapt.corpora.recipes import parsers
from dapt.corpora.recipes.parsers import Doc, normalize_text, pack, split_long
from dapt.pipeline.errors import InputError

MIN_DOC_CHARS = 200
"""Fragments shorter than this (a page that was all navigation, an empty info node) are dropped here."""

MAX_DOC_CHARS = 16_000
"""Long pages are split at paragraph boundaries into pieces of at most about this many characters."""

PAGE_CHARS = 2_000
"""Dictionary entries, glosses and fortunes are packed into "pages" of about this many characters."""


@dataclass
class BuildOptions:
    """What a builder may need besides its package files."""

    exclude_glosses: frozenset[str] = frozenset()
    """``parsers.gloss_key`` of definitions used as evaluation items: WordNet senses with these
    definitions are left out of the corpora (see ``eval_glosses``)."""
    stats: dict[str, int] = field(default_factory=dict)
    """Counters a builder reports into the manifest (e.g. ``excluded_eval_senses``)."""
    _index: parsers.PhraseIndex | None = None

    @property
    def phrase_index(self) -> parsers.PhraseIndex:
        """Evaluation definitions of 5+ words, searched in every document of every source."""
        if self._index is None:
            self._index = parsers.PhraseIndex(self.exclude_glosses, min_words=5)
        return self._index


@dataclass(frozen=True)
class RecipeSource:
    """One demo source: where it comes from, what it may be used under, and how to build it."""

    name: str
    kind: str  # "domain" | "general"
    packages: tuple[str, ...]
    license: str
    license_file: str
    description: str
    build: Callable[[BuildOptions], Iterator[Doc]]
    budget_mb: float | None = None
    """Default cap on the written text (UTF-8 MB); None writes everything."""


# ---------------------------------------------------------------------------------------------------------
# builders (each yields Docs in a deterministic order)


# Licence text (the GFDL appendix, identical in both GnuCash manuals), title pages and author lists: boilerplate.
_HTML_SKIP = re.compile(r"^(?:fdl.*|authors|titlepage|credits)$")


def _html_manual(folders: list[str], prefix: str) -> Iterator[Doc]:
    for folder in folders:
        for path in sorted(Path(folder).glob("*.html")):
            if _HTML_SKIP.match(path.stem):
                continue
            title, text = parsers.html_to_text(parsers.read_text(path))
            for i, piece in enumerate(split_long(text, MAX_DOC_CHARS)):
                rel = f"{Path(folder).name}/{path.stem}"
                yield Doc(id=f"{prefix}/{rel}#{i}", text=piece, title=title, where=str(path))


def build_gnucash(opts: BuildOptions) -> Iterator[Doc]:
    """The English GnuCash Tutorial and Concepts Guide and the GnuCash Help manual (HTML)."""
    base = "/usr/share/doc/gnucash-docs"
    yield from _html_manual([f"{base}/gnucash-guide-en", f"{base}/gnucash-help-en"], "gnucash")


def build_eqonomize(opts: BuildOptions) -> Iterator[Doc]:
    yield from _html_manual(["/usr/share/doc/eqonomize/html/C"], "eqonomize")


def _info_manual(path: str, prefix: str) -> Iterator[Doc]:
    text = parsers.read_text(Path(path))
    for node, body in parsers.parse_info(text):
        for i, piece in enumerate(split_long(body, MAX_DOC_CHARS)):
            yield Doc(id=f"{prefix}/{node}#{i}", text=piece, title=node, where=f"{path}#{node}")


def build_ledger(opts: BuildOptions) -> Iterator[Doc]:
    yield from _info_manual("/usr/share/info/ledger3.info.gz", "ledger")


def build_hledger(opts: BuildOptions) -> Iterator[Doc]:
    yield from _info_manual("/usr/share/doc/hledger/hledger.info.gz", "hledger")


_GCIDE = ("/usr/share/dictd/gcide.index", "/usr/share/dictd/gcide.dict.dz")


def _gcide_pages(finance: bool) -> Iterator[Doc]:
    entries = parsers.read_dictd(Path(_GCIDE[0]), Path(_GCIDE[1]))
    chosen = (
        (
            f"{e.headword}@{e.offset}",
            parsers.gcide_to_text(parsers.gcide_finance_part(text) if finance else text),
        )
        for e, text in entries
        if bool(parsers.gcide_finance_labels(text)) == finance
    )
    name = "gcide_finance" if finance else "gcide"
    for n, (keys, text) in enumerate(pack(chosen, PAGE_CHARS)):
        first, last = keys[0].split("@")[0], keys[-1].split("@")[0]
        offsets = f"{keys[0].split('@')[1]}..{keys[-1].split('@')[1]}"
        yield Doc(
            id=f"{name}/{n:05d}",
            text=text,
            title=f"{first} - {last}",
            where=f"{_GCIDE[1]}@{offsets}",
        )


def build_gcide_finance(opts: BuildOptions) -> Iterator[Doc]:
    """GCIDE entries carrying a commerce/finance/economics/accounting subject label (see FINANCE_LABEL_RE)."""
    yield from _gcide_pages(finance=True)


def build_gcide_general(opts: BuildOptions) -> Iterator[Doc]:
    yield from _gcide_pages(finance=False)


_WN_DATA_NOUN = "/usr/share/wordnet/data.noun"


def _possession_synsets() -> list[parsers.Synset]:
    with open(_WN_DATA_NOUN, encoding="utf-8", errors="replace") as f:
        return [s for s in parsers.parse_wordnet_data(f) if s.lexname == "noun.possession"]


def build_wordnet_possession(opts: BuildOptions) -> Iterator[Doc]:
    """Glossary pages of the ~1,060 ``noun.possession`` synsets (money, assets, debts, payments, ...)."""
    synsets = _possession_synsets()
    kept = [
        s for s in synsets if parsers.gloss_key(parsers.wn_definition(s.gloss)) not in opts.exclude_glosses
    ]
    opts.stats["excluded_eval_senses"] = len(synsets) - len(kept)
    items = ((s.offset, parsers.synset_text(s)) for s in kept)
    for n, (keys, text) in enumerate(pack(items, PAGE_CHARS, sep="\n")):
        yield Doc(
            id=f"wordnet_possession/{n:05d}",
            text=text,
            title="WordNet noun.possession",
            where=f"{_WN_DATA_NOUN}@{keys[0]}..{keys[-1]}",
        )


def build_wordnet_general(opts: BuildOptions) -> Iterator[Doc]:
    """dict-wn entries, except every headword that is a lemma of a ``noun.possession`` synset.

    The exclusion is whole-word (an entry lists all senses of its word), so no possession gloss appears on
    both sides of the mix.
    """
    excluded = {w.lower() for s in _possession_synsets() for w in s.words}
    entries = parsers.read_dictd(Path("/usr/share/dictd/wn.index"), Path("/usr/share/dictd/wn.dict.dz"))
    dropped: list[int] = []
    items = (
        (f"{e.headword}@{e.offset}", parsers.wn_entry_to_text(text, opts.exclude_glosses, dropped))
        for e, text in entries
        if e.headword.lower() not in excluded
    )
    items = ((k, t) for k, t in items if t)
    for n, (keys, text) in enumerate(pack(items, PAGE_CHARS)):
        yield Doc(
            id=f"wordnet/{n:05d}",
            text=text,
            title=f"{keys[0].split('@')[0]} - {keys[-1].split('@')[0]}",
            where=f"/usr/share/dictd/wn.dict.dz@{keys[0].split('@')[1]}..{keys[-1].split('@')[1]}",
        )
    opts.stats["excluded_eval_senses"] = sum(dropped)


def build_bible(opts: BuildOptions) -> Iterator[Doc]:
    """One document per chapter of the King James bible, read with the ``bible`` program."""
    exe = shutil.which("bible") or "/usr/bin/bible"
    r = subprocess.run(
        [exe, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if r.returncode != 0 or not r.stdout:
        raise InputError(f"`bible -f` failed (exit {r.returncode}): {r.stderr.strip()[:200]}")
    for key, text in parsers.bible_chapters(r.stdout.splitlines()):
        yield Doc(id=f"bible/{key}", text=text, title=key, where=f"/usr/lib/bible.data#{key}")


_FORTUNE_DIR = "/usr/share/games/fortunes"
_FORTUNE_SKIP = {"art", "ascii-art"}  # pictures made of characters, not language


def build_fortunes(opts: BuildOptions) -> Iterator[Doc]:
    for path in sorted(Path(_FORTUNE_DIR).iterdir()):
        if (
            path.suffix in {".dat", ".u8"}
            or path.is_symlink()
            or not path.is_file()
            or path.name in _FORTUNE_SKIP
        ):
            continue
        fortunes = parsers.parse_fortunes(parsers.read_text(path))
        for n, (_, text) in enumerate(pack(((str(i), f) for i, f in enumerate(fortunes)), PAGE_CHARS)):
            yield Doc(id=f"fortunes/{path.name}#{n}", text=text, title=path.name, where=str(path))


def _python_sources_dir() -> Path:
    """The real (symlink-resolved) ``_sources`` folder of the newest installed Python documentation."""
    found = sorted({Path(p).resolve() for p in glob.glob("/usr/share/doc/python3*/html/_sources")})
    if not found:
        raise InputError("no Python documentation sources under /usr/share/doc/python3*/html/_sources")
    return found[-1]


def _owning_package(path: Path) -> str | None:
    """The Debian package that installed ``path`` (``dpkg -S``): python3-doc is only a pointer to it."""
    if not shutil.which("dpkg-query"):
        return None
    r = subprocess.run(["dpkg-query", "-S", str(path)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return None
    return r.stdout.split(":", 1)[0].strip() or None


_PY_SKIP = ("whatsnew/changelog",)  # a list of bug numbers, not prose


def build_python_docs(opts: BuildOptions) -> Iterator[Doc]:
    """The Python documentation's reStructuredText sources (shipped as ``_sources/*.rst.txt``)."""
    base = _python_sources_dir()
    owner = _owning_package(base)
    meta = {"package": owner} if owner else {}
    for path in sorted(base.rglob("*.rst.txt")):
        rel = str(path.relative_to(base))[: -len(".rst.txt")]
        if rel.startswith(_PY_SKIP):
            continue
        text = normalize_text(parsers.read_text(path))
        for i, piece in enumerate(split_long(text, MAX_DOC_CHARS)):
            yield Doc(id=f"python_docs/{rel}#{i}", text=piece, title=rel, where=str(path), meta=meta)


SOURCES: dict[str, RecipeSource] = {
    s.name: s
    for s in [
        RecipeSource(
            "gnucash",
            "domain",
            ("gnucash-docs",),
            "GFDL-1.1+",
            "/usr/share/doc/gnucash-docs/copyright",
            "GnuCash Tutorial and Concepts Guide + GnuCash Help (English)",
            build_gnucash,
        ),
        RecipeSource(
            "ledger",
            "domain",
            ("ledger",),
            "BSD-3-Clause",
            "/usr/share/doc/ledger/copyright",
            "Ledger 3 manual (info)",
            build_ledger,
        ),
        RecipeSource(
            "hledger",
            "domain",
            ("hledger",),
            "GPL-3+",
            "/usr/share/doc/hledger/copyright",
            "hledger manual (info)",
            build_hledger,
        ),
        RecipeSource(
            "eqonomize",
            "domain",
            ("eqonomize-doc",),
            "GFDL-1.2+",
            "/usr/share/doc/eqonomize-doc/copyright",
            "Eqonomize! personal accounting manual",
            build_eqonomize,
        ),
        RecipeSource(
            "gcide_finance",
            "domain",
            ("dict-gcide",),
            "GPL-2+",
            "/usr/share/doc/dict-gcide/copyright",
            "GCIDE entries labelled with a commerce/finance subject",
            build_gcide_finance,
        ),
        RecipeSource(
            "wordnet_possession",
            "domain",
            ("wordnet-base",),
            "WordNet-3.0",
            "/usr/share/doc/wordnet-base/copyright",
            "WordNet 3.0 noun.possession glosses",
            build_wordnet_possession,
        ),
        RecipeSource(
            "bible",
            "general",
            ("bible-kjv", "bible-kjv-text"),
            "public-domain (KJV text)",
            "/usr/share/doc/bible-kjv-text/copyright",
            "King James bible, one document per chapter",
            build_bible,
            budget_mb=0.6,
        ),
        RecipeSource(
            "fortunes",
            "general",
            ("fortunes",),
            "BSD-3-Clause (fortune-mod; per-file notes in the copyright file)",
            "/usr/share/doc/fortunes/copyright",
            "fortune cookie files (art excluded)",
            build_fortunes,
            budget_mb=0.4,
        ),
        RecipeSource(
            "gcide",
            "general",
            ("dict-gcide",),
            "GPL-2+",
            "/usr/share/doc/dict-gcide/copyright",
            "GCIDE entries without a finance label",
            build_gcide_general,
            budget_mb=0.5,
        ),
        RecipeSource(
            "wordnet",
            "general",
            ("dict-wn", "wordnet-base"),
            "WordNet-3.0",
            "/usr/share/doc/dict-wn/copyright",
            "WordNet 3.0 dictionary entries (noun.possession words excluded)",
            build_wordnet_general,
            budget_mb=0.3,
        ),
        RecipeSource(
            "python_docs",
            "general",
            ("python3-doc",),
            "PSF-2.0",
            "/usr/share/doc/python3-doc/copyright",
            "Python documentation (reStructuredText sources)",
            build_python_docs,
            budget_mb=0.5,
        ),
    ]
}
