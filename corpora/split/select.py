"""Held-out splits: which documents of each source are validation and test, decided before mixing.

The split key of a document is a 64-bit hash of its text alone (not its id, position or ``mix.seed``):
re-running with another mix ratio or seed never moves a document between training and held-out, and
two copies of the same text always land on the same side. Per source, the test set is the documents
with the smallest keys and validation the next ones (``by: hash``), or test is everything dated after
``split.after`` and validation the smallest keys among the rest (``by: date``).

Selection streams the clean stage's Parquet files once, keeping a bounded heap per source, so memory
is the held-out text plus 8 bytes per document, whatever the corpus size.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import xxhash

from dapt.corpora.split.config import SplitConfig

SPLIT_SEED = 0x5B1D_D4A7
"""Salt of the split hash (fixed: held-out sets must not depend on any run setting)."""


def split_key(text: str) -> int:
    """The document's stable split key (xxh64 of its UTF-8 text)."""
    return xxhash.xxh64_intdigest(text.encode("utf-8", "surrogatepass"), seed=SPLIT_SEED)


def parse_date(value: object) -> dt.date | None:
    """The calendar date of an ISO date or timestamp string; None if missing or unparseable."""
    if value is None:
        return None
    s = str(value).strip()
    if not s:
        return None
    try:
        return dt.date.fromisoformat(s[:10])
    except ValueError:
        return None


def is_after(date_value: object, after: dt.date) -> bool:
    """True when the document is dated strictly after ``after`` (undated documents never are)."""
    d = parse_date(date_value)
    return d is not None and d > after


def split_counts(n_docs: int, cfg: SplitConfig) -> tuple[int, int]:
    """(validation, test) document counts for a source of ``n_docs`` documents (test is 0 for ``by: date``).

    Fractions are rounded, raised to ``min_docs`` when non-zero and capped at ``max_docs``; explicit counts
    are taken as given. Together they never take more than half of a source, so training keeps most of it.
    """

    def one(frac: float, count: int | None) -> int:
        if count is not None:
            return count
        if frac <= 0:
            return 0
        return min(cfg.max_docs, max(cfg.min_docs, round(frac * n_docs)))

    n_val = one(cfg.validation_fraction, cfg.validation_docs)
    n_test = 0 if cfg.by == "date" else one(cfg.test_fraction, cfg.test_docs)
    limit = n_docs // 2
    while n_val + n_test > limit and (n_val or n_test):
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


@dataclass
class HeldoutDoc:
    key: int
    id: str
    source: str
    kind: str
    text: str
    split: str  # "validation" | "test"


@dataclass
class HeldoutSet:
    """Every held-out document, plus per-source statistics of the selection."""

    docs: list[HeldoutDoc] = field(default_factory=list)
    by_id: dict[tuple[str, str], str] = field(default_factory=dict)
    """(source, id) -> split, for the hash-chosen documents (date-test documents are decided by rule)."""
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def of(self, source: str, split: str) -> list[HeldoutDoc]:
        return [d for d in self.docs if d.source == source and d.split == split]


def _iter_rows(files: list[Path], with_date: bool) -> Iterator[tuple[str, str, str, object]]:
    cols = ["id", "kind", "text"] + (["date"] if with_date else [])
    for f in files:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        use = [c for c in cols if c in names]
        for batch in pf.iter_batches(columns=use, batch_size=4096):
            d = batch.to_pydict()
            n = batch.num_rows
            dates = d.get("date") or [None] * n
            yield from zip(d["id"], d["kind"], d["text"], dates, strict=True)


def select_heldout(files_by_source: dict[str, list[Path]], cfg: SplitConfig) -> HeldoutSet:
    """Choose each source's held-out documents (see the module docstring)."""
    out = HeldoutSet()
    after = dt.date.fromisoformat(cfg.after[:10]) if cfg.by == "date" and cfg.after else None
    for source, files in files_by_source.items():
        n_docs = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        n_val, n_test = split_counts(n_docs, cfg)
        k = n_val + n_test
        heap: list[tuple[int, str, str, str]] = []  # max-heap by (key, id) via negation of key
        test_docs: list[HeldoutDoc] = []
        undated = 0
        for doc_id, kind, text, date in _iter_rows(files, after is not None):
            doc_id = str(doc_id)
            if after is not None:
                if parse_date(date) is None:
                    undated += 1
                elif is_after(date, after):
                    test_docs.append(HeldoutDoc(split_key(text), doc_id, source, kind, text, "test"))
                    continue
            if k == 0:
                continue
            key = split_key(text)
            item = (-key, _neg_id(doc_id), kind, text)
            if len(heap) < k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        chosen = sorted(((-nk, _unneg_id(nid), kind, text) for nk, nid, kind, text in heap))
        for i, (key, doc_id, kind, text) in enumerate(chosen):
            split = "test" if i < n_test else "validation"
            out.docs.append(HeldoutDoc(key, doc_id, source, kind, text, split))
            out.by_id[(source, doc_id)] = split
        test_docs.sort(key=lambda d: (d.key, d.id))
        out.docs.extend(test_docs)
        out.stats[source] = {
            "docs": n_docs,
            "validation": sum(1 for _, *_r in chosen[n_test:]),
            "test": min(n_test, len(chosen)) + len(test_docs),
        }
        if after is not None:
            out.stats[source]["undated"] = undated
    return out


def _neg_id(doc_id: str) -> tuple[int, ...]:
    """An ordering key that reverses string order, so the heap keeps the smallest (key, id) pairs."""
    return tuple(-ord(c) for c in doc_id) + (1,)


def _unneg_id(neg: tuple[int, ...]) -> str:
    return "".join(chr(-c) for c in neg[:-1])
