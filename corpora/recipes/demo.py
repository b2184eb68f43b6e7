"""The demo corpora: finance/accounting text (domain) and general English, rebuilt from Debian packages.

No sizeable finance corpus exists offline, so the domain side is what Debian ships about money: the
GnuCash guide and help, the ledger and hledger manuals, the Eqonomize! manual, the GCIDE dictionary
entries labelled with a commerce/finance subject, and WordNet's ``noun.possession`` glosses. The general
side is the King James bible, fortunes, the rest of GCIDE and WordNet, and the Python documentation.

Each source writes ``<out>/<name>.jsonl`` with one record per document::

    {"id", "text", "title", "source", "kind", "license", "license_file", "provenance", "package", "package_version"}

``provenance`` names the Debian package and version and the file (and offset or node) the text came from,
so every document can be traced and its licence checked. Builds are deterministic: the same package
versions and options give byte-identical files. Large general sources are capped (``budget_mb``) by a
hash-ordered selection of whole documents, so the cap does not favour the start of the alphabet or the
first books of the bible. ``<out>/manifest.json`` records what was built and with which versions.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapt.corpora.recipes import parsers
from dapt.corpora.recipes.debian import ensure_packages, installed_version, missing_packages
from dapt.corpora.recipes.parsers import Doc, normalize_text, pack, split_long
from dapt.pipeline.errors import ConfigError, InputError

RECIPE_VERSION = 1
"""Bumped when a parser's output changes, so an old build is rebuilt rather than reused."""

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


# ---------------------------------------------------------------------------------------------------------
# selection and writing


def _hash_key(doc_id: str) -> str:
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).hexdigest()


def select_budget(
    docs: list[Doc], budget_bytes: int | None, keep: Callable[[Doc], bool] | None = None
) -> list[Doc]:
    """Whole documents in hash-of-id order until the budget is full, returned in their original order.

    Hash order is a deterministic stand-in for a random sample: it spreads the selection over the whole
    source instead of taking its first pages. A document that would overflow the budget is skipped (a
    smaller later one may still fit), so the result stays within the budget. ``keep`` is asked only about
    documents that would fit (so an expensive check runs on the candidates, not on the whole source).
    """
    if budget_bytes is None:
        return [d for d in docs if keep is None or keep(d)]
    chosen: set[int] = set()
    used = 0
    for i in sorted(range(len(docs)), key=lambda i: _hash_key(docs[i].id)):
        size = len(docs[i].text.encode("utf-8"))
        if used + size <= budget_bytes and (keep is None or keep(docs[i])):
            chosen.add(i)
            used += size
    return [d for i, d in enumerate(docs) if i in chosen]


def _record(src: RecipeSource, doc: Doc, versions: dict[str, str]) -> dict[str, Any]:
    """The JSONL record: the text plus everything needed to trace it and to honour its licence."""
    pkg = doc.meta.get("package") or (src.packages[-1] if src.name == "bible" else src.packages[0])
    if pkg not in versions:
        versions[pkg] = installed_version(pkg) or "unknown"
    ver = versions[pkg]
    return {
        "id": doc.id,
        "text": doc.text,
        "title": doc.title,
        "source": src.name,
        "kind": src.kind,
        "license": src.license,
        "license_file": src.license_file,
        "provenance": f"debian:{pkg}={ver}:{doc.where}",
        "package": pkg,
        "package_version": ver,
    }


def build_source(
    src: RecipeSource, out_dir: Path, max_mb: float | None = None, opts: BuildOptions | None = None
) -> dict[str, Any]:
    """Build one source into ``out_dir/<name>.jsonl`` (atomically) and return its manifest entry."""
    opts = BuildOptions(exclude_glosses=opts.exclude_glosses, _index=opts._index) if opts else BuildOptions()
    versions = {p: installed_version(p) or "unknown" for p in src.packages}
    docs: list[Doc] = []
    seen: set[str] = set()
    raw_docs = 0
    for d in src.build(opts):
        raw_docs += 1
        text = normalize_text(d.text)
        if len(text) < MIN_DOC_CHARS:
            continue
        if d.id in seen:
            raise RuntimeError(f"{src.name}: duplicate document id {d.id!r} (a parser bug)")

        seen.add(d.id)
        d.text = text
        docs.append(d)
    total_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    caps = [c for c in (src.budget_mb, max_mb) if c is not None]
    budget = int(min(caps) * 1_000_000) if caps else None

    def clean_of_eval(d: Doc) -> bool:
        # Any document quoting an evaluation definition (GCIDE copies many WordNet 1.5 glosses) is left out.
        # Checked inside the selection so a capped source only scans the documents it considers.
        if opts.exclude_glosses and opts.phrase_index.find(d.text):
            opts.stats["excluded_eval_docs"] = opts.stats.get("excluded_eval_docs", 0) + 1
            return False
        return True

    kept = select_budget(docs, budget, keep=clean_of_eval)
    path = out_dir / f"{src.name}.jsonl"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in kept:
            f.write(json.dumps(_record(src, d, versions), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    written = sum(len(d.text.encode("utf-8")) for d in kept)
    return {
        "file": path.name,
        "kind": src.kind,
        "description": src.description,
        "license": src.license,
        "license_file": src.license_file,
        "packages": versions,
        "budget_mb": min(caps) if caps else None,
        "documents_parsed": raw_docs,
        "documents_available": len(docs),
        "bytes_available": total_bytes,
        "documents": len(kept),
        "bytes": written,
        "sha256": _sha256(path),
        **opts.stats,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _code_hash() -> str:
    """Hash of the recipe's own code: a changed parser rebuilds its outputs without a manual version bump."""
    h = hashlib.sha256()
    for mod in (parsers.__file__, __file__):
        h.update(Path(mod).read_bytes())
    return h.hexdigest()[:16]


def eval_glosses(task_dir: str | os.PathLike) -> frozenset[str]:
    """The definitions used as evaluation items under ``task_dir`` (``eval.build_tasks`` output).

    Every ``*.jsonl`` file below it is read and each record's ``gloss`` kept (as ``parsers.gloss_key``).
    Why here and not only in the mix stage's n-gram decontamination: most of these definitions are shorter
    than the 13 words an n-gram filter needs ("liability to taxation"), and 192 of the 550 finance items
    appear verbatim among WordNet's noun.possession glosses, so they would be trained on and then asked.
    """
    keys: set[str] = set()
    for path in sorted(Path(task_dir).rglob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise InputError(f"{path}: line {i}: not JSON") from None
                gloss = rec.get("gloss") if isinstance(rec, dict) else None
                if isinstance(gloss, str) and gloss.strip():
                    keys.add(parsers.gloss_key(gloss))
    return frozenset(keys)


def _build_key(src: RecipeSource, max_mb: float | None, opts: BuildOptions | None = None) -> dict[str, Any]:
    """What a source's output depends on: reuse an existing file only when all of it is unchanged."""
    excl = sorted(opts.exclude_glosses) if opts else []
    return {
        "exclusions": hashlib.sha256("\n".join(excl).encode()).hexdigest()[:16] if excl else None,
        "recipe_version": RECIPE_VERSION,
        "code": _code_hash(),
        "packages": {p: installed_version(p) for p in src.packages},
        "budget_mb": src.budget_mb,
        "max_mb": max_mb,
    }


def build_demo(
    out_dir: str | os.PathLike,
    *,
    sources: list[str] | None = None,
    max_mb: float | None = None,
    install: bool = True,
    force: bool = False,
    exclude_eval: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the demo corpora into ``out_dir``; returns (and writes) ``manifest.json``.

    ``sources`` restricts the build to some source names; ``max_mb`` caps every source (tests and quick
    runs); ``install`` lets missing Debian packages be installed with apt-get (as root), otherwise sources
    whose packages are missing are skipped with a message. A source whose inputs and options are unchanged
    since the last build is reused (``force`` rebuilds). ``exclude_eval`` is a folder of evaluation tasks
    (``eval.build_tasks``): WordNet senses whose definitions are evaluation items are left out.
    """
    names = sources if sources else list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ConfigError(f"corpus demo: unknown source(s) {unknown}; known: {', '.join(SOURCES)}")
    if max_mb is not None and max_mb <= 0:
        raise ConfigError(f"corpus demo: --max-mb must be > 0, got {max_mb}")
    selected = [SOURCES[n] for n in names]
    needed = [p for s in selected for p in s.packages]
    if install:
        ensure_packages(needed, log=log)
    else:
        absent = missing_packages(needed)
        if absent:
            log(f"skipping sources whose Debian packages are missing ({' '.join(absent)})")
            selected = [s for s in selected if not set(s.packages) & set(absent)]
            if not selected:
                raise InputError(f"none of the selected sources can be built: missing packages {absent}")

    opts = BuildOptions()
    if exclude_eval is not None:
        if Path(exclude_eval).is_dir():
            opts.exclude_glosses = eval_glosses(exclude_eval)
            log(f"excluding {len(opts.exclude_glosses)} evaluation definitions found under {exclude_eval}")
        else:
            log(
                f"warning: no evaluation tasks under {exclude_eval} (python -m dapt.eval.build_tasks): WordNet senses "
                "are not checked against them; only the mix stage's n-gram decontamination applies"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    old: dict[str, Any] = {}
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8")).get("sources", {})
        except (json.JSONDecodeError, AttributeError):
            old = {}
    result: dict[str, Any] = dict(old)
    for src in selected:
        key = _build_key(src, max_mb, opts)
        prev = old.get(src.name)
        path = out / f"{src.name}.jsonl"
        if (
            not force
            and prev
            and prev.get("build_key") == key
            and path.exists()
            and prev.get("sha256") == _sha256(path)
        ):
            log(f"{src.name:<20} up to date ({prev['documents']} docs, {prev['bytes'] / 1e6:.2f} MB)")
            continue
        entry = build_source(src, out, max_mb=max_mb, opts=opts)
        entry["build_key"] = key
        result[src.name] = entry
        log(
            f"{src.name:<20} {src.kind:<8} {entry['documents']:>6} docs {entry['bytes'] / 1e6:6.2f} MB "
            f"(of {entry['documents_available']} docs, {entry['bytes_available'] / 1e6:.2f} MB)"
        )
        # Write after every source so an interrupted build keeps what it finished.
        _write_manifest(manifest_path, result)
    _write_manifest(manifest_path, result)
    totals = {
        kind: sum(e["bytes"] for e in result.values() if e["kind"] == kind) for kind in ("domain", "general")
    }
    log(f"domain {totals['domain'] / 1e6:.2f} MB, general {totals['general'] / 1e6:.2f} MB -> {out}")
    return {"sources": result, "totals_bytes": totals}


def _write_manifest(path: Path, sources: dict[str, Any]) -> None:
    data = {"recipe": "dapt.corpora.recipes.demo", "recipe_version": RECIPE_VERSION, "sources": sources}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
