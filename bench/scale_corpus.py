"""The corpora of bench/scale.py: built by ``bench/clean_corpus.build``, cached by size under
``bench/out/scale-<size>/``, split into a ``domain`` and a ``general`` half. See bench/scale.py."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import bench.clean_corpus as clean_corpus


def parse_size(s: str) -> float:
    """'0.5' or '0.5gb' -> 500.0 MB, '50mb' -> 50.0 (decimal units, as the corpus builder's)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gb|mb|g|m)?\s*", s.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (e.g. 0.5, 2gb, 50mb)")
    v, unit = float(m.group(1)), m.group(2) or "gb"
    return v * 1000 if unit.startswith("g") else v


def size_label(mb: float) -> str:
    return f"{mb / 1000:g}gb" if mb >= 1000 else f"{mb:g}mb"


def debian_installed() -> bool:
    return all((clean_corpus.DICTD / n).exists() for n in ("gcide.dict.dz", "wn.dict.dz"))


def synthetic_paragraphs(size_mb: float, seed: int = 1) -> list[str]:
    """Template paragraphs of corpora/synthetic.py, domain and general, about 1.2x the target size,
    filtered like clean_corpus's Debian paragraphs (C4-intact, >= 40 chars)."""
    from dapt.corpora import synthetic

    n = max(4000, int(size_mb * 1e6 * 1.2 / 2 / 1300))  # ~1.3 KB of kept paragraphs per document
    paras = []
    for kind in ("domain", "general"):
        for d in synthetic.make_corpus(kind, n, seed=seed):
            paras.extend(" ".join(p.split()) for p in d["text"].split("\n\n"))
    return [p for p in paras if len(p) >= 40 and clean_corpus._c4_intact(p)]


@contextmanager
def _paragraph_source(paras: list[str] | None):
    """Make clean_corpus.build read ``paras`` instead of the Debian files (None: leave it)."""
    orig = clean_corpus._paragraphs
    if paras is not None:
        clean_corpus._paragraphs = lambda: paras
    try:
        yield
    finally:
        clean_corpus._paragraphs = orig


def build_corpus(out_root: Path, size_mb: float, seed: int = 0) -> dict:
    """bench/out/scale-<size>/{part-*.jsonl, truth.json, scale_meta.json}; cached by size."""
    out = out_root / f"scale-{size_label(size_mb)}"
    meta_path = out / "scale_meta.json"
    files = max(8, 2 * round(size_mb / 128))  # ~64 MB part files at the large sizes, an even number
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("size_mb") == size_mb and meta.get("seed") == seed:
            meta["cached"] = True
            return _with_paths(meta, out)
    t0 = time.perf_counter()
    text = "debian" if debian_installed() else "synthetic"
    if text == "synthetic":
        print(
            f"corpus {size_label(size_mb)}: Debian demo text not installed ({clean_corpus.DICTD}); "
            "falling back to corpora/synthetic.py template paragraphs",
            flush=True,
        )
    with _paragraph_source(synthetic_paragraphs(min(size_mb, CHUNK_MB)) if text == "synthetic" else None):
        if size_mb > CHUNK_MB:
            truth = _build_chunked(out, size_mb, seed, files)
        else:
            truth = clean_corpus.build(out, size_mb, seed=seed, files=files)
    parts = sorted(out.glob("part-*.jsonl"))
    half = len(parts) // 2
    meta = {
        "size_mb": size_mb,
        "seed": seed,
        "text": text,
        "bytes": truth["bytes"],
        "docs": truth["docs"],
        "planted": truth["counts"],
        "files": len(parts),
        "domain": [p.name for p in parts[:half]],
        "general": [p.name for p in parts[half:]],
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    meta["cached"] = False
    return _with_paths(meta, out)


# clean_corpus.build holds its whole pool, every document and the pool's LSH buckets in memory, which
# grows with the size (2 GB is the largest built in one piece on this 24 GiB machine; building the 4 GB
# corpus as two such chunks peaked at 5.9 GB RSS): larger corpora are built as independent chunks of at
# most this size.
CHUNK_MB = 2000.0


def _build_chunked(out: Path, size_mb: float, seed: int, files: int) -> dict:
    """Build ``ceil(size / CHUNK_MB)`` chunks with clean_corpus.build (seed + k, ids prefixed ``c<k>-``,
    the real Debian documents only in chunk 0, so no exact copy of them crosses chunks) and interleave
    their part files (chunk k's j-th part is part ``j * n + k``), so both halves of the domain/general
    split hold every chunk and its planted copies. Planted duplicates stay within a chunk; a chance
    near-duplicate between two recombined documents of different chunks is not checked (recombined
    documents of 4-12 random paragraphs share a Jaccard >= 0.5 with almost no other document, which
    is what the pool check verifies within a chunk)."""
    n = math.ceil(size_mb / CHUNK_MB)
    per = max(1, files // n)
    merged: dict = {"size_mb": size_mb, "seed": seed, "docs": 0, "bytes": 0, "pairs": [], "chunks": n}
    counts: Counter[str] = Counter()
    for k in range(n):
        tmp = out / f".chunk-{k}"
        shutil.rmtree(tmp, ignore_errors=True)
        truth = clean_corpus.build(
            tmp, size_mb / n, seed=seed + k, files=per, real_docs=k == 0, id_prefix=f"c{k}-"
        )
        for j, part in enumerate(sorted(tmp.glob("part-*.jsonl"))):
            part.rename(out / f"part-{j * n + k:03d}.jsonl")
        merged["docs"] += truth["docs"]
        merged["bytes"] += truth["bytes"]
        merged["pairs"] += truth["pairs"]
        counts.update(truth["counts"])
        shutil.rmtree(tmp)
    merged["counts"] = dict(counts)
    (out / "truth.json").write_text(json.dumps(merged))
    return merged


def _with_paths(meta: dict, folder: Path) -> dict:
    """The meta with its part files as absolute paths (the cache stores names, so it can move)."""
    for kind in ("domain", "general"):
        meta[kind] = [str((folder / Path(p).name).resolve()) for p in meta[kind]]
    return meta
