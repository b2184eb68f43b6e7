"""Held-out splits: which documents of each source are validation and test, decided before mixing.

The split key of a document is a 64-bit hash of its text alone (not its id, position or ``mix.seed``):
re-running with another mix ratio or seed never moves a document between training and held-out, and
two copies of the same text always land on the same side. Per source, the test set is the documents
with the smallest keys and validation the next ones (``by: hash``), or test is everything dated after
``split.after`` and validation the smallest keys among the rest (``by: date``).

Selection is one Ray task per kept Parquet file (:func:`scan_file`): it reads the file a batch at a
time and returns only its best candidates, ``(key, id, row)`` without text; the driver keeps a running
top-k per source as the results arrive, and the winners' text is read back by one task per file
(:func:`read_texts`). Memory is bounded everywhere: a task by one batch plus ``k`` candidates, the
driver by ``k`` candidates per source plus the held-out text itself, whatever the corpus size.

With ``by: date`` the test set is the ``max_docs`` documents dated after the cut with the smallest
keys (all of them when fewer); every document dated after the cut stays out of training whether it is
in the test sample or not (:func:`is_after`, applied by the consumers next to the held-out ids), so the
model never trains on the future and no process holds the post-cut documents.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
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
    n_test = 0 if cfg.by == "date" else one(cfg.test_fraction, cfg.test_docs)  # date: every doc after the cut
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
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def of(self, source: str, split: str) -> list[HeldoutDoc]:
        return [d for d in self.docs if d.source == source and d.split == split]


CANDIDATES = pa.schema(
    [("key", pa.uint64()), ("id", pa.string()), ("file", pa.string()), ("row", pa.int64())]
)
SCAN_BATCH_ROWS = 4096


@dataclass(frozen=True)
class ScanJob:
    """One kept Parquet file to scan (the payload of :func:`scan_file`)."""

    file: str
    k: int
    """Candidates to return from the pool (validation, and test with ``by: hash``)."""
    k_after: int
    """Candidates to return among documents dated after the cut (``by: date``)."""
    after: str | None


@dataclass(frozen=True)
class ScanResult:
    file: str
    docs: int
    undated: int
    dated_after: int
    pool: pa.Table
    """``CANDIDATES``: the file's ``k`` smallest (key, id) among documents not dated after the cut."""
    after_pool: pa.Table
    """``CANDIDATES``: its ``k_after`` smallest among documents dated after the cut."""


def smallest(tables: Iterable[pa.Table], k: int) -> pa.Table:
    """The ``k`` rows of smallest (key, id) among ``CANDIDATES`` tables."""
    t = pa.concat_tables(list(tables))
    if k <= 0 or t.num_rows == 0:
        return CANDIDATES.empty_table()
    return t.sort_by([("key", "ascending"), ("id", "ascending")]).slice(0, k)


def scan_file(job: ScanJob) -> ScanResult:
    """Split keys of every document of one file; keeps only the best candidates (no text leaves)."""
    after = dt.date.fromisoformat(job.after[:10]) if job.after else None
    pf = pq.ParquetFile(job.file)
    cols = ["id", "text"] + (["date"] if after is not None and "date" in pf.schema_arrow.names else [])
    pool, late = CANDIDATES.empty_table(), CANDIDATES.empty_table()
    docs = undated = dated_after = 0
    for batch in pf.iter_batches(columns=cols, batch_size=SCAN_BATCH_ROWS):
        d = batch.to_pydict()
        n = batch.num_rows
        late_mask = [False] * n
        if after is not None:
            parsed = [parse_date(x) for x in (d.get("date") or [None] * n)]
            undated += sum(p is None for p in parsed)
            late_mask = [p is not None and p > after for p in parsed]
            dated_after += sum(late_mask)
        t = pa.table(
            {
                "key": pa.array([split_key(x) for x in d["text"]], pa.uint64()),
                "id": pa.array([str(i) for i in d["id"]], pa.string()),
                "file": pa.array([job.file] * n, pa.string()),
                "row": pa.array(range(docs, docs + n), pa.int64()),
            },
            schema=CANDIDATES,
        )
        docs += n
        mask = pa.array(late_mask, pa.bool_())
        if job.k:
            pool = smallest([pool, t.filter(pc.invert(mask))], job.k)
        if job.k_after and any(late_mask):
            late = smallest([late, t.filter(mask)], job.k_after)
    return ScanResult(job.file, docs, undated, dated_after, pool, late)


def read_texts(file: str, rows: list[int]) -> list[tuple[str, str]]:
    """(kind, text) of the given rows of one kept file, in the order asked."""
    t = pq.read_table(file, columns=["kind", "text"]).take(pa.array(rows, pa.int64()))
    return list(zip(t["kind"].to_pylist(), t["text"].to_pylist(), strict=True))


Mapper = Callable[[Callable[..., Any], list[tuple[Any, ...]]], Iterable[Any]]
"""Runs ``fn(*args)`` for each args tuple and yields the results in call order, one at a time (Ray
tasks in the stage, a plain loop in unit tests: the same functions either way)."""


def in_process(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> Iterable[Any]:
    return (fn(*args) for args in calls)


def select_heldout(
    files_by_source: dict[str, list[Path]], cfg: SplitConfig, run: Mapper = in_process
) -> HeldoutSet:
    """Choose each source's held-out documents (see the module docstring)."""
    after = cfg.after if cfg.by == "date" and cfg.after else None
    plans: dict[str, tuple[int, int, int]] = {}  # source -> (validation, hash test, date test cap)
    jobs, owner = [], []
    for source, files in files_by_source.items():
        n_docs = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        n_val, n_test = split_counts(n_docs, cfg)
        plans[source] = (n_val, n_test, cfg.max_docs if after else 0)
        for f in files:
            jobs.append((ScanJob(str(f), n_val + n_test, plans[source][2], after),))
            owner.append(source)

    # A running top-k per source as the results come in: the driver holds k candidates per source.
    best = {s: CANDIDATES.empty_table() for s in files_by_source}
    best_after = dict(best)
    tally = {s: Counter() for s in files_by_source}
    for source, r in zip(owner, run(scan_file, jobs), strict=True):
        n_val, n_test, k_after = plans[source]
        best[source] = smallest([best[source], r.pool], n_val + n_test)
        best_after[source] = smallest([best_after[source], r.after_pool], k_after)
        tally[source].update(docs=r.docs, undated=r.undated, dated_after=r.dated_after)

    # Picks in the order the files list them: hash picks by (key, id), the smallest n_test being
    # test, then the date-test sample by (key, id).
    picks: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for source in files_by_source:
        n_test = plans[source][1]
        hashed = best[source].to_pylist()
        picks[source] = [(c, "test" if i < n_test else "validation") for i, c in enumerate(hashed)]
        picks[source] += [(c, "test") for c in best_after[source].to_pylist()]
    by_file: dict[str, list[int]] = defaultdict(list)
    for chosen in picks.values():
        for c, _split in chosen:
            by_file[c["file"]].append(c["row"])
    calls = [(f, sorted(rows)) for f, rows in by_file.items()]
    texts: dict[tuple[str, int], tuple[str, str]] = {}
    for (f, rows), got in zip(calls, run(read_texts, calls), strict=True):
        texts.update({(f, row): kt for row, kt in zip(rows, got, strict=True)})

    out = HeldoutSet()
    for source, chosen in picks.items():
        for c, split in chosen:
            kind, text = texts[(c["file"], c["row"])]
            out.docs.append(HeldoutDoc(int(c["key"]), c["id"], source, kind, text, split))
        t = tally[source]
        n_test = sum(1 for _c, split in chosen if split == "test")
        out.stats[source] = {"docs": t["docs"], "validation": len(chosen) - n_test, "test": n_test}
        if after:
            out.stats[source]["undated"] = t["undated"]
            out.stats[source]["dated_after"] = t["dated_after"]
            out.stats[source]["dated_after_not_in_test"] = t["dated_after"] - len(best_after[source])
    return out
