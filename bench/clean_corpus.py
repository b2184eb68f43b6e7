"""Build the clean benchmark corpus from Debian text, with planted exact and near duplicates.

Sources (all installed from Debian, read offline): GCIDE and WordNet dictd databases
(``dict-gcide``, ``dict-wn``) and the ``fortunes`` files. Paragraphs are grouped into documents of
about 3 KB. The base pool is first made duplicate-free (exact hashes, then MinHash candidates
verified at true Jaccard >= 0.5 are dropped), so the only duplicates in the corpus are the planted
ones and the ground truth is exact:

- ``exact``: verbatim copies of a base document;
- ``near``: copies with a few words replaced, true Jaccard >= 0.8 (measured);
- ``hard``: copies edited down to Jaccard 0.5-0.75 (must NOT be removed: precision bait).

To reach the requested size without more real text, extra documents are recombined from random
paragraphs of the pool; recombined documents share paragraphs with many others but have a low
Jaccard with any single one (checked by the same dedup of the pool).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import numpy as np

from dapt.corpora.clean.minhash import MinHasher, band_keys, jaccard

DICTD = Path("/usr/share/dictd")
FORTUNES = Path("/usr/share/games/fortunes")
PARA = re.compile(r"\n\s*\n")


def _paragraphs() -> list[str]:
    paras: list[str] = []
    for name in ("gcide.dict.dz", "wn.dict.dz"):
        p = DICTD / name
        if not p.exists():
            raise SystemExit(f"{p} missing: apt-get update && apt-get install -y dict-gcide dict-wn fortunes")
        with gzip.open(p, "rt", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        text = text.replace("{", "").replace("}", "")  # GCIDE's cross-reference markup, not prose
        paras.extend(" ".join(x.split()) for x in PARA.split(text))
    if FORTUNES.exists():
        for f in sorted(FORTUNES.iterdir()):
            if f.suffix or not f.is_file():
                continue
            text = f.read_text(encoding="utf-8", errors="replace")
            paras.extend(" ".join(x.split()) for x in text.split("\n%\n"))
    # Keep paragraphs that C4's line rules leave intact (terminal punctuation, >= 3 words, no code or
    # policy words): then no filter edits a document, and the planted Jaccard is the Jaccard of the
    # text that reaches dedup in both systems, so the ground truth stays exact.
    return [p for p in paras if len(p) >= 40 and _c4_intact(p)]


_TERMINAL = (".", "!", "?", '"', "'")
_C4_WORDS = ("javascript", "terms of use", "privacy policy", "cookie", "lorem ipsum")


def _c4_intact(p: str) -> bool:
    low = p.lower()
    return (
        p.endswith(_TERMINAL)
        and len(p.split()) >= 3
        and "{" not in p
        and not any(w in low for w in _C4_WORDS)
    )


def _group(paras: list[str], target: int) -> list[str]:
    docs, cur, size = [], [], 0
    for p in paras:
        cur.append(p)
        size += len(p)
        if size >= target:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
    return docs


def _dedup_pool(docs: list[str], threshold: float = 0.5) -> list[str]:
    """Drop exact copies and verified near-duplicates (J >= threshold) from the base pool."""
    seen: set[str] = set()
    uniq = []
    for d in docs:
        if d not in seen:
            seen.add(d)
            uniq.append(d)
    mh = MinHasher(112, 5)
    # loose LSH (28 x 4): a pair at J >= 0.5 is a candidate with p > 0.8, at 0.6 with p > 0.98
    keys = np.concatenate(
        [band_keys(mh.signatures(uniq[s : s + 2000]), 28, 4) for s in range(0, len(uniq), 2000)]
    )
    drop: set[int] = set()
    buckets: dict[int, int] = {}
    for i in range(len(uniq)):
        for k in keys[i].tolist():
            j = buckets.setdefault(k, i)
            if j != i and j not in drop and i not in drop and jaccard(uniq[i], uniq[j]) >= threshold:
                drop.add(i)
    return [d for i, d in enumerate(uniq) if i not in drop]


def _edit(text: str, rng: random.Random, frac: float, vocab: list[str]) -> str:
    # Only whole alphabetic words are replaced, so punctuation (which line rules look at) is kept.
    words = text.split(" ")
    alpha = [i for i, w in enumerate(words) if w.isalpha()]
    n = max(1, int(len(words) * frac))
    for i in rng.sample(alpha, min(n, len(alpha))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def build(
    out: Path, size_mb: float, seed: int = 0, files: int = 8, real_docs: bool = True, id_prefix: str = ""
) -> dict:
    """Write ``files`` JSONL shards totalling about ``size_mb`` MB and ``truth.json``; reuse if present.

    ``real_docs=False`` leaves out the real (grouped, not recombined) documents and ``id_prefix`` prefixes
    every id: both let a caller concatenate independently built chunks without planting exact copies
    of the real documents across chunks or repeating an id (bench/scale.py above 2 GB)."""
    truth_path = out / "truth.json"
    if truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth.get("size_mb") == size_mb and truth.get("seed") == seed:
            return truth
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paras = _paragraphs()
    base = _group(paras, 3000)
    target = int(size_mb * 1e6)
    # Recombined documents until the unique pool is ~82% of the target (the rest is planted copies).
    unique_target = int(target * 0.82)
    rng.shuffle(base)
    pool, size = [], 0
    for d in base if real_docs else ():  # real documents first, as many as fit
        if size >= unique_target:
            break
        pool.append(d)
        size += len(d)
    while size < unique_target:
        k = rng.randint(4, 12)
        d = "\n\n".join(rng.choice(paras) for _ in range(k))
        pool.append(d)
        size += len(d)
    pool = _dedup_pool(pool)
    size = sum(len(d) for d in pool)
    vocab = [w for w in " ".join(rng.sample(paras, 2000)).split() if w.isalpha()]
    docs = [{"id": f"{id_prefix}u{i}", "text": t} for i, t in enumerate(pool)]
    pairs = []
    planted = 0
    n = len(pool)
    planted_size = 0
    while planted_size < target - size and planted < n:
        i = rng.randrange(n)
        src = pool[i]
        r = rng.random()
        if r < 0.3:
            kind, text, j = "exact", src, 1.0
        elif r < 0.9:
            kind = "near"
            for frac in (0.02, 0.01, 0.005):
                text = _edit(src, rng, frac, vocab)
                j = jaccard(src, text)
                if j >= 0.8 and text != src:
                    break
            else:
                continue
        else:
            kind = "hard"
            text = _edit(src, rng, 0.05, vocab)
            j = jaccard(src, text)
            if not 0.5 <= j <= 0.75:
                continue
        cid = f"{id_prefix}{kind[0]}{planted}"
        docs.append({"id": cid, "text": text})
        planted_size += len(text)
        pairs.append({"orig": f"{id_prefix}u{i}", "copy": cid, "kind": kind, "jaccard": round(j, 4)})
        planted += 1
    rng.shuffle(docs)
    per = (len(docs) + files - 1) // files
    total = 0
    for f in range(files):
        with open(out / f"part-{f:02d}.jsonl", "w", encoding="utf-8") as fh:
            for d in docs[f * per : (f + 1) * per]:
                line = json.dumps(d, ensure_ascii=False)
                total += len(line.encode()) + 1
                fh.write(line + "\n")
    truth = {
        "size_mb": size_mb,
        "seed": seed,
        "docs": len(docs),
        "bytes": total,
        "pairs": pairs,
        "counts": {k: sum(1 for p in pairs if p["kind"] == k) for k in ("exact", "near", "hard")},
    }
    truth_path.write_text(json.dumps(truth))
    return truth


if __name__ == "__main__":
    import sys

    t = build(Path(sys.argv[1]), float(sys.argv[2]))
    print({k: v for k, v in t.items() if k != "pairs"})
    print(np.mean([p["jaccard"] for p in t["pairs"] if p["kind"] == "near"]))
