"""Held-out selection (corpora/split/select.py) in-process, against a brute-force choice over all text.

The stage runs the same functions as Ray tasks (tests/test_mix.py runs it end to end); here the mapper
is a plain loop, so the merge of per-file candidates can be checked against sorting every document.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dapt.corpora.split.config import SplitConfig
from dapt.corpora.split.select import SCAN_BATCH_ROWS, select_heldout, split_counts, split_key


def _files(tmp: Path, source: str, texts: list[str], dates: list[str | None], per_file: int) -> list[Path]:
    out = []
    for f, lo in enumerate(range(0, len(texts), per_file)):
        chunk = range(lo, min(lo + per_file, len(texts)))
        path = tmp / f"{source}-{f}.parquet"
        pq.write_table(
            pa.table(
                {
                    "id": [f"{source}-{i}" for i in chunk],
                    "kind": ["domain"] * len(chunk),
                    "text": [texts[i] for i in chunk],
                    "date": pa.array([dates[i] for i in chunk], pa.string()),
                }
            ),
            path,
            row_group_size=700,
        )
        out.append(path)
    return out


def _texts(n: int, tag: str) -> list[str]:
    return [f"{tag} document {i} about rates and {i * 7 % 13} bonds" for i in range(n)]


def test_hash_split_equals_sorting_every_document(tmp_path: Path) -> None:
    """Per-file top-k merged as results arrive = the global (key, id) order; a file larger than one
    scan batch and a duplicate text (equal keys, ordered by id) included."""
    texts = _texts(SCAN_BATCH_ROWS + 900, "a")
    texts[5] = texts[4000]  # a copy: same key, so the id breaks the tie
    files = _files(tmp_path, "a", texts, [None] * len(texts), per_file=2100)
    cfg = SplitConfig(validation_fraction=0.004, test_fraction=0.003)
    held = select_heldout({"a": files}, cfg)
    n_val, n_test = split_counts(len(texts), cfg)
    order = sorted((split_key(t), f"a-{i}") for i, t in enumerate(texts))
    want = [(i, "test") for _k, i in order[:n_test]] + [
        (i, "validation") for _k, i in order[n_test : n_test + n_val]
    ]
    assert [(d.id, d.split) for d in held.docs] == want
    assert all(d.text == texts[int(d.id.split("-")[1])] for d in held.docs)
    assert held.stats["a"] == {"docs": len(texts), "validation": n_val, "test": n_test}


def test_date_split_samples_the_documents_after_the_cut(tmp_path: Path) -> None:
    texts = _texts(40, "b")
    dates = [None if i % 10 == 0 else ("2024-05-01" if i >= 25 else "2022-01-01") for i in range(40)]
    files = _files(tmp_path, "b", texts, dates, per_file=9)
    cfg = SplitConfig(by="date", after="2023-12-31", validation_docs=3, max_docs=5)
    held = select_heldout({"b": files}, cfg)
    late = [i for i in range(40) if dates[i] == "2024-05-01"]
    late_by_key = sorted((split_key(texts[i]), f"b-{i}") for i in late)
    test = [d.id for d in held.docs if d.split == "test"]
    assert test == [i for _k, i in late_by_key[:5]]
    val = [d.id for d in held.docs if d.split == "validation"]
    assert len(val) == 3 and not set(val) & {f"b-{i}" for i in late}
    assert held.stats["b"] == {
        "docs": 40,
        "validation": 3,
        "test": 5,
        "undated": 4,
        "dated_after": len(late),
        "dated_after_not_in_test": len(late) - 5,
    }
