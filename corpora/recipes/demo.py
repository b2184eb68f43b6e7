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

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dapt.corpora.recipes import parsers, sources
from dapt.corpora.recipes.debian import ensure_packages, installed_version, missing_packages
from dapt.corpora.recipes.parsers import Doc, normalize_text
from dapt.corpora.recipes.sources import MIN_DOC_CHARS, SOURCES, BuildOptions, RecipeSource
from dapt.pipeline.errors import ConfigError, InputError
from dapt.pipeline.fsutil import sha256_file

RECIPE_VERSION = 1
"""Bumped when a parser's output changes, so an old build is rebuilt rather than reused."""


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
        "sha256": sha256_file(path),
        **opts.stats,
    }


def _code_hash() -> str:
    """Hash of the recipe's own code: a changed parser rebuilds its outputs without a manual version bump."""
    h = hashlib.sha256()
    for mod in (*sorted(parsers.MODULE_FILES), sources.__file__, __file__):
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
            and prev.get("sha256") == sha256_file(path)
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
