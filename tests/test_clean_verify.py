"""Near-duplicate verification's two passes (corpora/clean/dedup/verify.py) in-process: the same
edges as the true Jaccard of every candidate pair, with a star's centre shipped once per partner shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.corpora.clean.dedup.verify import verify_a, verify_b
from dapt.corpora.clean.minhash import jaccard
from dapt.corpora.clean.schema import SHARD_BITS, shard_dir


def _shard(work: Path, shard: int, texts: list[str]) -> list[int]:
    ranks = [shard << SHARD_BITS | i for i in range(len(texts))]
    folder = shard_dir(work, shard)
    folder.mkdir(parents=True)
    table = pa.table(
        {"rank": pa.array(ranks, pa.int64()), "text": texts, "ktext": pa.nulls(len(texts), pa.string())}
    )
    pq.write_table(table, folder / "docs.parquet")
    return ranks


def test_verification_keeps_exactly_the_pairs_at_the_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    base = [str(w) for w in rng.choice(words, 60)]

    def variant(k: int) -> str:  # k of 60 words replaced: Jaccard falls with k
        out = list(base)
        for j in rng.choice(60, k, replace=False):
            out[j] = f"x{k}-{j}"
        return " ".join(out)

    a = _shard(tmp_path, 0, [" ".join(base), variant(1), variant(12)])
    b = _shard(tmp_path, 1, [variant(2), variant(3), variant(20), variant(0), variant(6)])
    texts: dict[int, str] = {}
    for ranks in (a, b):
        shard = ranks[0] >> SHARD_BITS
        t = pq.read_table(shard_dir(tmp_path, shard) / "docs.parquet")
        texts.update(zip(t["rank"].to_pylist(), t["text"].to_pylist(), strict=True))
    centre = a[0]
    pairs = [(centre, v) for v in a[1:] + b] + [(a[1], b[0]), (a[1], b[0])]  # a star, plus a repeated pair
    u = np.array([p[0] for p in pairs], np.int64)
    v = np.array([p[1] for p in pairs], np.int64)

    shipped = verify_a({"u": u, "v": v}, str(tmp_path), ngram=5)
    assert sorted(zip(shipped["u"].tolist(), shipped["sb"].tolist(), strict=True)) == [
        (centre, 0),
        (centre, 1),
        (a[1], 1),
    ]  # the centre's shingles once per partner shard, not once per pair
    edges: set[tuple[int, int]] = set()
    for sb in (0, 1):
        rows = shipped["sb"] == sb
        got = verify_b({k: shipped[k][rows] for k in shipped}, str(tmp_path), ngram=5, threshold=0.8)
        edges |= set(zip(got["u"].tolist(), got["v"].tolist(), strict=True))
    want = {(x, y) for x, y in set(pairs) if jaccard(texts[x], texts[y], 5) >= 0.8}
    assert edges == want and 0 < len(want) < len(set(pairs))
